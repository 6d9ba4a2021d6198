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
    DELIVER_AT, Envelope, Event, MessageOpts, MessageScheduled, ScheduleCancelled,
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
    let mut envelope = Envelope::new(actor.clone(), event);
    envelope.occurred_at = due;
    let msg_id = key.map(|k| crate::state::message_id(&actor.uid, k));
    let appended = state
        .log
        .schedule(&envelope, due, msg_id.as_deref())
        .await?;
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
        }),
    );
    let record_id = format!("scheduled-{}", envelope.id);
    let recorded = state.log.append(&record, Some(&record_id)).await?;
    // Listed (and cancellable) when the answer comes, as other structural writes.
    state.wait_projected(recorded.seq).await;
    Ok(Recorded { envelope, appended })
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    limit: Option<u32>,
    /// Admins: one sender's only.
    #[serde(default)]
    sender: Option<String>,
}

fn item(s: &ScheduledMessage) -> Value {
    serde_json::to_value(s).unwrap_or(Value::Null)
}

/// `GET /messages/scheduled`: messages waiting to be sent, soonest first; an admin sees every
/// sender's (or one's with `?sender=`), a user their own.
pub async fn list(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::field("limit", "must be 1-1000"));
    }
    let sender = if actor.is_admin() {
        q.sender
    } else {
        if q.sender.as_deref().is_some_and(|s| s != actor.uid) {
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
    Ok(Json(json!({
        "scheduled": items.iter().map(item).collect::<Vec<_>>(),
    })))
}

/// `DELETE /messages/{mid}/schedule`: cancels a message that has not been sent; 409 once it
/// has been (or was cancelled already). Its sender or an admin.
pub async fn cancel(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(mid): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let mid = parse_id("mid", &mid)?;
    let found = state
        .store
        .scheduled_message(mid)
        .await?
        .filter(|s| actor.is_admin() || s.sender == actor.uid)
        .ok_or_else(|| ApiError::not_found(format!("no scheduled message {mid}")))?;
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
        Event::ScheduleCancelled(ScheduleCancelled { mid }),
    );
    let appended = match state
        .log
        .cancel_schedule(&env, mid, found.schedule_seq)
        .await
    {
        Ok(a) => a,
        // The schedule is not where it waited: it fired (or another cancel won) meanwhile.
        Err(LogError::Conflict(_)) => {
            return Err(ApiError::conflict(
                "already_sent",
                "the message has been sent (or cancelled) meanwhile",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    state.wait_projected(appended.seq).await;
    Ok((
        StatusCode::OK,
        Json(json!({ "mid": mid, "status": "cancelled" })),
    ))
}
