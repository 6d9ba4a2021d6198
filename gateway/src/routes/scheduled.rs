//! Scheduled sends: `opts.deliver_at` / `opts.delay` on the message endpoints, `GET
//! /messages/scheduled`, `DELETE /messages/{mid}/schedule`.
//!
//! A scheduled message's event waits in the stream as a JetStream message schedule (see
//! `EventLog::schedule`); nats-server stores it under its own subject when it is due, once,
//! whichever of our processes are running, and from there it is delivered as any message. A
//! `message_scheduled` event records it for the listing; a cancel is a `schedule_cancelled`
//! event written only while the schedule still waits, and removing it in the same write.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use exchange::Actor;
use exchange::events::{
    DELIVER_AT, DELIVER_AT_LOCAL, Envelope, Event, LOCAL_GROUP, LOCAL_ZONES, LocalWave,
    MessageOpts, MessageScheduled, ScheduleCancelled,
};
use exchange::log::LogError;
use projections::model::{ScheduleStatus, ScheduledMessage};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::parse_id;
use crate::state::{AppState, Recorded};

/// The latest a message may be scheduled for, from now.
pub const HORIZON: time::Duration = time::Duration::days(2 * 366);
/// A time closer than this is not worth a schedule: the message is sent at once.
const AT_ONCE: time::Duration = time::Duration::seconds(1);

/// When the message is due, from `opts.deliver_at` (RFC 3339) or `opts.delay` (seconds, or
/// `90s`, `10m`, `2h`, `3d`): `None` to send now (neither given, or a time not in the future).
/// The options keep `deliver_at` as the absolute UTC time (and lose `delay`) when scheduled,
/// and neither when sent at once.
pub(crate) fn due_of(
    opts: &mut MessageOpts,
    now: OffsetDateTime,
) -> ApiResult<Option<OffsetDateTime>> {
    let at = opts.extra.remove(DELIVER_AT);
    let delay = opts.extra.remove("delay");
    let due = match (at, delay) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(ApiError::field(
                "opts.delay",
                "give opts.deliver_at or opts.delay, not both",
            ));
        }
        (Some(at), None) => at
            .as_str()
            .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
            .ok_or_else(|| {
                ApiError::field(
                    "opts.deliver_at",
                    "must be an RFC 3339 time with an offset, such as 2027-01-15T09:00:00Z",
                )
            })?,
        (None, Some(d)) => {
            let secs = delay_seconds(&d).ok_or_else(|| {
                ApiError::field(
                    "opts.delay",
                    "must be seconds or a duration such as 90s, 10m, 2h, 3d",
                )
            })?;
            now + time::Duration::seconds(secs)
        }
    };
    if due > now + HORIZON {
        return Err(ApiError::field(
            "opts.deliver_at",
            "may be at most two years ahead",
        ));
    }
    if due <= now + AT_ONCE {
        return Ok(None);
    }
    let due = due.to_offset(time::UtcOffset::UTC);
    let text = due
        .format(&Rfc3339)
        .map_err(|_| ApiError::field("opts.deliver_at", "cannot be written as an RFC 3339 time"))?;
    opts.extra.insert(DELIVER_AT.into(), Value::String(text));
    Ok(Some(due))
}

fn delay_seconds(v: &Value) -> Option<i64> {
    let secs = exchange::events::duration_seconds(v)?;
    i64::try_from(secs)
        .ok()
        .filter(|s| *s <= HORIZON.whole_seconds() + 1)
}

fn opts_mut(event: &mut Event) -> Option<&mut MessageOpts> {
    match event {
        Event::MessagePublished(e) => Some(&mut e.opts),
        Event::MessageSent(e) => Some(&mut e.opts),
        _ => None,
    }
}

/// The message's due time, when it is to be scheduled (see [`due_of`]).
pub(crate) fn due_of_event(event: &mut Event) -> ApiResult<Option<OffsetDateTime>> {
    match opts_mut(event) {
        Some(opts) => due_of(opts, OffsetDateTime::now_utc()),
        None => Ok(None),
    }
}

/// Stores the message as a schedule due at `due`, then its `message_scheduled` record. The
/// message event occurs when it is sent (`occurred_at` = `due`). A retried request (same
/// idempotency key) gets the original message back while it waits. Answers once the record is
/// projected (bounded by `MSGXC_READ_YOUR_WRITES`), so the message is listed.
pub(crate) async fn schedule(
    state: &AppState,
    actor: &Actor,
    event: Event,
    due: OffsetDateTime,
    key: Option<&str>,
) -> ApiResult<Recorded> {
    let envelope = Envelope::new(actor.clone(), event);
    let msg_id = key.map(|k| crate::state::message_id(&actor.uid, k));
    let (recorded, record_seq) =
        schedule_envelope(state, actor, envelope, due, msg_id.as_deref(), None).await?;
    // Listed (and cancellable) when the answer comes, as other structural writes.
    state.wait_projected(record_seq).await;
    Ok(recorded)
}

/// [`schedule`] of a built envelope (its id is the mid), without waiting for the record to be
/// projected: the schedule and the record's stream position.
async fn schedule_envelope(
    state: &AppState,
    actor: &Actor,
    mut envelope: Envelope,
    due: OffsetDateTime,
    msg_id: Option<&str>,
    local: Option<LocalWave>,
) -> ApiResult<(Recorded, u64)> {
    envelope.occurred_at = due;
    let appended = state.log.schedule(&envelope, due, msg_id).await?;
    if appended.duplicate {
        let original = match state.log.get(appended.seq).await {
            Ok(stored) => stored.envelope,
            Err(LogError::NotFound(_)) => {
                return Err(ApiError::conflict(
                    "idempotency_key_reused",
                    "the message scheduled with this Idempotency-Key has been sent or cancelled",
                ));
            }
            Err(e) => return Err(e.into()),
        };
        if original.actor.uid != actor.uid || original.event.kind() != envelope.event.kind() {
            return Err(ApiError::conflict(
                "idempotency_key_reused",
                "this Idempotency-Key was already used for a different request",
            ));
        }
        envelope = original;
    }
    let (kind, tid, audience, msg) = match &envelope.event {
        Event::MessagePublished(e) => ("message_published", Some(e.tid), None, e.msg.clone()),
        Event::MessageSent(e) => (
            "message_sent",
            None,
            Some(e.audience.clone()),
            e.msg.clone(),
        ),
        _ => return Err(ApiError::internal("only messages can be scheduled")),
    };
    let record = Envelope::new(
        actor.clone(),
        Event::MessageScheduled(MessageScheduled {
            mid: envelope.id,
            sender: actor.uid.clone(),
            deliver_at: envelope.occurred_at,
            schedule_seq: appended.seq,
            kind: kind.into(),
            tid,
            audience,
            msg,
            local,
        }),
    );
    let record_id = format!("scheduled-{}", envelope.id);
    let recorded = state.log.append(&record, Some(&record_id)).await?;
    Ok((Recorded { envelope, appended }, recorded.seq))
}

/// A send at a local time: the wall-clock time, the zones where it has passed (sent at once)
/// and the waves to schedule, soonest first.
pub(crate) struct LocalPlan {
    at: String,
    now: Vec<String>,
    waves: Vec<(OffsetDateTime, Vec<String>)>,
}

/// The plan of a message with `opts.deliver_at_local` (`None` without one). Zones where that
/// time has passed (or is within a second) get the message at once: late rather than never.
pub(crate) fn local_plan_of(event: &mut Event) -> ApiResult<Option<LocalPlan>> {
    let (opts, experiment) = match event {
        Event::MessagePublished(e) => (&mut e.opts, e.experiment.is_some()),
        Event::MessageSent(e) => (&mut e.opts, e.experiment.is_some()),
        _ => return Ok(None),
    };
    let Some(at) = opts.extra.remove(DELIVER_AT_LOCAL) else {
        return Ok(None);
    };
    if opts.extra.contains_key(DELIVER_AT) || opts.extra.contains_key("delay") {
        return Err(ApiError::field(
            "opts.deliver_at_local",
            "give one of opts.deliver_at, opts.delay and opts.deliver_at_local",
        ));
    }
    if experiment {
        return Err(ApiError::field(
            "opts.deliver_at_local",
            "an experiment's message cannot be sent at a local time",
        ));
    }
    for reserved in [LOCAL_ZONES, LOCAL_GROUP] {
        opts.extra.remove(reserved);
    }
    let at = at.as_str().unwrap_or_default().to_owned();
    let wall = exchange::local::parse_wall_clock(&at)
        .map_err(|e| ApiError::field("opts.deliver_at_local", e.to_string()))?;
    let now = OffsetDateTime::now_utc();
    let mut plan = LocalPlan {
        at,
        now: Vec::new(),
        waves: Vec::new(),
    };
    for (instant, zones) in exchange::local::waves(wall) {
        if instant > now + HORIZON {
            return Err(ApiError::field(
                "opts.deliver_at_local",
                "may be at most two years ahead",
            ));
        }
        if instant <= now + AT_ONCE {
            plan.now.extend(zones);
        } else {
            plan.waves.push((instant, zones));
        }
    }
    Ok(Some(plan))
}

/// Schedules a send at a local time: one message per wave (each a schedule and a record,
/// the first wave's mid the group's id), plus one at once for the zones where the time has
/// passed. 202 `{"mid": group, "deliver_at_local", "waves": [{"mid", "deliver_at", "zones"}]}`.
pub(crate) async fn schedule_local(
    state: &AppState,
    actor: &Actor,
    event: Event,
    plan: LocalPlan,
    key: Option<&str>,
) -> ApiResult<super::schemas::Accepted> {
    let fmt = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
    let mids: Vec<uuid::Uuid> = plan.waves.iter().map(|_| uuid::Uuid::now_v7()).collect();
    let group = mids.first().copied();
    let wave_event = |zones: &[String], due: Option<OffsetDateTime>| {
        let mut e = event.clone();
        if let Some(opts) = opts_mut(&mut e) {
            opts.extra
                .insert(DELIVER_AT_LOCAL.into(), Value::String(plan.at.clone()));
            opts.extra.insert(LOCAL_ZONES.into(), json!(zones));
            if let Some(g) = group {
                opts.extra.insert(LOCAL_GROUP.into(), json!(g));
            }
            if let Some(due) = due {
                opts.extra
                    .insert(DELIVER_AT.into(), Value::String(fmt(due)));
            }
        }
        e
    };
    let mut answer = Vec::new();
    let mut last_record = 0;
    for (i, ((due, zones), mid)) in plan.waves.iter().zip(&mids).enumerate() {
        let mut envelope = Envelope::new(actor.clone(), wave_event(zones, Some(*due)));
        envelope.id = *mid;
        let msg_id = key.map(|k| crate::state::message_id(&actor.uid, &format!("{k}.wave{i}")));
        let local = LocalWave {
            at: plan.at.clone(),
            group: group.unwrap_or(*mid),
            zones: zones.clone(),
            waves: if i == 0 { mids.clone() } else { Vec::new() },
        };
        let (recorded, seq) =
            schedule_envelope(state, actor, envelope, *due, msg_id.as_deref(), Some(local)).await?;
        last_record = last_record.max(seq);
        answer.push(json!({
            "mid": recorded.envelope.id,
            "deliver_at": fmt(recorded.envelope.occurred_at),
            "zones": zones,
        }));
    }
    let mut group = group;
    if !plan.now.is_empty() {
        // Where the time has passed: at once (for everyone when it has passed everywhere).
        let e = if plan.waves.is_empty() {
            event.clone()
        } else {
            wave_event(&plan.now, None)
        };
        let now_key = key.map(|k| format!("{k}.now"));
        let recorded = state.append(actor, e, now_key.as_deref()).await?;
        group.get_or_insert(recorded.envelope.id);
        answer.insert(
            0,
            json!({
                "mid": recorded.envelope.id,
                "deliver_at": fmt(recorded.envelope.occurred_at),
                "zones": plan.now,
                "sent": true,
            }),
        );
    }
    // The first scheduled wave's mid, as the original request stored it.
    let group = answer
        .iter()
        .find(|w| w.get("sent").is_none())
        .map(|w| w["mid"].clone())
        .or_else(|| group.map(|g| json!(g)))
        .unwrap_or(Value::Null);
    state.wait_projected(last_record).await;
    Ok(super::schemas::Accepted {
        mid: serde_json::from_value(group).unwrap_or(None),
        deliver_at: None,
        deliver_at_local: Some(json!(plan.at)),
        waves: Some(answer),
    })
}

/// `GET /messages/scheduled`: messages waiting to be sent, soonest first; an admin sees every
/// sender's (or one's with `?sender=`), a user their own.
pub async fn list(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> ApiResult<Json<super::schemas::ScheduledList>> {
    // A bad value is refused in the API's error shape (a typed `Query` would answer text).
    let limit = crate::extract::bounded(&q, "limit", 100, 1..=1000, "must be 1-1000")?;
    let sender = q.get("sender").cloned();
    let sender = if actor.is_admin() {
        sender
    } else {
        if sender.as_deref().is_some_and(|s| s != actor.uid) {
            return Err(ApiError::forbidden(
                "only admins may list other senders' scheduled messages",
            ));
        }
        Some(actor.uid.clone())
    };
    let items = state
        .store
        .scheduled_messages(sender.as_deref(), limit)
        .await?;
    Ok(Json(super::schemas::ScheduledList { scheduled: items }))
}

/// `DELETE /messages/{mid}/schedule`: cancels a message that has not been sent; 409 once it
/// has been (or was cancelled already). Its sender or an admin. The group id of a send at a
/// local time (its first wave's mid) cancels every wave still waiting (409 when none is).
pub async fn cancel(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(mid): Path<String>,
) -> ApiResult<(StatusCode, Json<super::schemas::Cancelled>)> {
    let mid = parse_id("mid", &mid)?;
    cancel_mid(&state, &actor, mid, None).await
}

#[derive(Deserialize, schemars::JsonSchema)]
pub struct CancelBody {
    mid: String,
    #[serde(default)]
    tid: Option<String>,
}

/// `POST /cancel {"tid"?, "mid"}`: the original msgxc server's cancel (seed 001's
/// repository), the same as `DELETE /messages/{mid}/schedule`; a `tid` must be the thread
/// the message was scheduled to.
pub async fn cancel_posted(
    State(state): State<AppState>,
    Caller(actor): Caller,
    crate::extract::JsonBody(body): crate::extract::JsonBody<CancelBody>,
) -> ApiResult<(StatusCode, Json<super::schemas::Cancelled>)> {
    let mid = parse_id("mid", &body.mid)?;
    let tid = body
        .tid
        .as_deref()
        .map(|t| parse_id("tid", t))
        .transpose()?;
    cancel_mid(&state, &actor, mid, tid).await
}

async fn cancel_mid(
    state: &AppState,
    actor: &Actor,
    mid: uuid::Uuid,
    tid: Option<uuid::Uuid>,
) -> ApiResult<(StatusCode, Json<super::schemas::Cancelled>)> {
    let found = state
        .store
        .scheduled_message(mid)
        .await?
        .filter(|s| actor.is_admin() || s.sender == actor.uid)
        .filter(|s| tid.is_none() || s.tid == tid)
        .ok_or_else(|| ApiError::not_found(format!("no scheduled message {mid}")))?;
    let waves = match &found.local {
        Some(l) if l.group == mid && l.waves.len() > 1 => l.waves.clone(),
        _ => {
            let seq = cancel_one(state, actor, &found).await?;
            state.wait_projected(seq).await;
            return Ok((
                StatusCode::OK,
                Json(super::schemas::Cancelled {
                    mid,
                    status: "cancelled",
                    waves_cancelled: None,
                    waves_sent: None,
                }),
            ));
        }
    };
    let (mut cancelled, mut sent, mut last) = (0, 0, 0);
    for wave in waves {
        let Some(record) = state.store.scheduled_message(wave).await? else {
            continue;
        };
        match cancel_one(state, actor, &record).await {
            Ok(seq) => {
                cancelled += 1;
                last = last.max(seq);
            }
            Err(e) if e.status == StatusCode::CONFLICT => {
                if record.status != ScheduleStatus::Cancelled {
                    sent += 1;
                }
            }
            Err(e) => return Err(e),
        }
    }
    if cancelled == 0 {
        return Err(ApiError::conflict(
            "already_sent",
            "every wave of this message has been sent or cancelled",
        ));
    }
    state.wait_projected(last).await;
    Ok((
        StatusCode::OK,
        Json(super::schemas::Cancelled {
            mid,
            status: "cancelled",
            waves_cancelled: Some(cancelled),
            waves_sent: Some(sent),
        }),
    ))
}

/// Cancels one waiting schedule: the cancel's stream position, or 409 when it was sent or
/// cancelled already.
async fn cancel_one(state: &AppState, actor: &Actor, found: &ScheduledMessage) -> ApiResult<u64> {
    match found.status {
        ScheduleStatus::Pending => {}
        ScheduleStatus::Sent => {
            return Err(ApiError::conflict(
                "already_sent",
                "the message has been sent",
            ));
        }
        ScheduleStatus::Cancelled => {
            return Err(ApiError::conflict(
                "already_cancelled",
                "the message was cancelled already",
            ));
        }
    }
    let env = Envelope::new(
        actor.clone(),
        Event::ScheduleCancelled(ScheduleCancelled { mid: found.mid }),
    );
    match state
        .log
        .cancel_schedule(&env, found.mid, found.schedule_seq)
        .await
    {
        Ok(a) => Ok(a.seq),
        // The schedule is not where it waited: it fired (or another cancel won) meanwhile.
        Err(LogError::Conflict(_)) => Err(ApiError::conflict(
            "already_sent",
            "the message has been sent (or cancelled) meanwhile",
        )),
        Err(e) => Err(e.into()),
    }
}
