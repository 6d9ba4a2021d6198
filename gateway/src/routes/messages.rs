//! Messages: `POST /publish` to a thread; admin `POST /broadcast`, `/multicast`, `/send`.
//! All answer 202 with the message id once the event is stored; fan-out happens after.

use std::collections::HashSet;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use exchange::Actor;
use exchange::events::{Audience, Event, MessageOpts, MessagePublished, MessageSent};
use serde::Deserialize;
use serde_json::Value;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::routes::experiments::{Testing, experiment_of};
use crate::routes::{idempotency_key, threads, validate};
use crate::state::AppState;

pub(crate) type Accepted = (StatusCode, Json<super::schemas::Accepted>);

/// Top-level classification fields of the message bodies (seed 003/004 style); they are stored
/// in the message options and win over the same keys inside `opts`.
#[derive(Deserialize, Default, schemars::JsonSchema)]
pub struct Classification {
    #[serde(default, rename = "type")]
    ntype: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    level: Option<u8>,
    #[serde(default)]
    mandatory: Option<bool>,
}

/// Merges and checks the classification: a registered type, level 0 or 50, and `mandatory`
/// only on level-50 messages from admins.
pub(crate) async fn classify(
    state: &AppState,
    actor: &Actor,
    class: Classification,
    mut opts: MessageOpts,
) -> ApiResult<MessageOpts> {
    if class.ntype.is_some() {
        opts.ntype = class.ntype;
    }
    if class.title.is_some() {
        opts.title = class.title;
    }
    if class.data.is_some() {
        opts.data = class.data;
    }
    if class.level.is_some() {
        opts.level = class.level;
    }
    if class.mandatory.is_some() {
        opts.mandatory = class.mandatory;
    }
    validate::opts(&opts)?;
    if let Some(l) = opts.level
        && l != 0
        && l != 50
    {
        return Err(ApiError::field(
            "level",
            "must be 0 (normal) or 50 (needs action)",
        ));
    }
    if opts.mandatory == Some(true) && !(actor.is_admin() && opts.level == Some(50)) {
        return Err(ApiError::field(
            "mandatory",
            "only admins may send mandatory messages, and only at level 50",
        ));
    }
    match opts.extra.get(exchange::events::CRITICAL) {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) if actor.is_admin() => {}
        Some(Value::Bool(true)) => {
            return Err(ApiError::forbidden(
                "only admins may send critical messages (opts.critical)",
            ));
        }
        Some(_) => {
            return Err(ApiError::field("opts.critical", "must be true or false"));
        }
    }
    if let Some(t) = &opts.ntype {
        super::types::require_registered(state, "type", [t]).await?;
    }
    Ok(opts)
}

#[derive(Deserialize, schemars::JsonSchema)]
pub struct PublishBody {
    #[serde(flatten)]
    class: Classification,
    #[serde(flatten)]
    testing: Testing,
    tid: String,
    msg: String,
    #[serde(default)]
    opts: MessageOpts,
}

pub async fn publish(
    State(state): State<AppState>,
    Caller(actor): Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PublishBody>,
) -> ApiResult<Accepted> {
    validate::text("msg", &body.msg, state.config.max_message_chars)?;
    let mut opts = body.opts;
    let experiment = experiment_of(&state, &actor, body.testing, &mut opts, false).await?;
    let opts = classify(&state, &actor, body.class, opts).await?;
    let thread = threads::rules(&state, &body.tid).await?;
    let allowed = actor.is_admin()
        || thread.owner == actor.uid
        || (thread.open_publish && state.store.is_subscribed(thread.tid, &actor.uid).await?);
    if !allowed {
        return Err(ApiError::forbidden(
            "only the owner, an admin, or subscribers of an open-publish thread may publish",
        ));
    }
    let event = Event::MessagePublished(MessagePublished {
        tid: thread.tid,
        sender: actor.uid.clone(),
        msg: body.msg,
        opts,
        experiment,
    });
    accept(&state, &actor, &headers, event).await
}

#[derive(Deserialize, schemars::JsonSchema)]
pub struct BroadcastBody {
    #[serde(flatten)]
    class: Classification,
    #[serde(flatten)]
    testing: Testing,
    msg: String,
    #[serde(default)]
    opts: MessageOpts,
}

pub async fn broadcast(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<BroadcastBody>,
) -> ApiResult<Accepted> {
    caller.require_admin()?;
    validate::text("msg", &body.msg, state.config.max_message_chars)?;
    send_to(
        &state,
        &caller.0,
        &headers,
        Audience::All,
        body.msg,
        (body.class, body.testing, body.opts),
    )
    .await
}

#[derive(Deserialize, schemars::JsonSchema)]
pub struct MulticastBody {
    #[serde(flatten)]
    class: Classification,
    #[serde(flatten)]
    testing: Testing,
    msg: String,
    uids: Vec<String>,
    #[serde(default)]
    opts: MessageOpts,
}

pub async fn multicast(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<MulticastBody>,
) -> ApiResult<Accepted> {
    caller.require_admin()?;
    validate::text("msg", &body.msg, state.config.max_message_chars)?;
    if body.uids.is_empty() {
        return Err(ApiError::field("uids", "must list at least one user id"));
    }
    let max = state.config.max_recipients;
    let mut seen = HashSet::with_capacity(body.uids.len());
    let mut uids = Vec::with_capacity(body.uids.len());
    for (i, uid) in body.uids.into_iter().enumerate() {
        validate::uid(&format!("uids[{i}]"), &uid)?;
        if seen.insert(uid.clone()) {
            uids.push(uid);
        }
    }
    if uids.len() > max {
        return Err(ApiError::field(
            "uids",
            format!("at most {max} distinct recipients per request"),
        ));
    }
    let audience = Audience::Users { uids };
    send_to(
        &state,
        &caller.0,
        &headers,
        audience,
        body.msg,
        (body.class, body.testing, body.opts),
    )
    .await
}

#[derive(Deserialize, schemars::JsonSchema)]
pub struct SendBody {
    #[serde(flatten)]
    class: Classification,
    #[serde(flatten)]
    testing: Testing,
    msg: String,
    uid: String,
    #[serde(default)]
    opts: MessageOpts,
}

pub async fn send(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<SendBody>,
) -> ApiResult<Accepted> {
    caller.require_admin()?;
    validate::text("msg", &body.msg, state.config.max_message_chars)?;
    validate::uid("uid", &body.uid)?;
    let audience = Audience::User { uid: body.uid };
    send_to(
        &state,
        &caller.0,
        &headers,
        audience,
        body.msg,
        (body.class, body.testing, body.opts),
    )
    .await
}

async fn send_to(
    state: &AppState,
    actor: &Actor,
    headers: &HeaderMap,
    audience: Audience,
    msg: String,
    (class, testing, mut opts): (Classification, Testing, MessageOpts),
) -> ApiResult<Accepted> {
    let broadcast = audience == Audience::All;
    let experiment = experiment_of(state, actor, testing, &mut opts, broadcast).await?;
    let opts = classify(state, actor, class, opts).await?;
    let event = Event::MessageSent(MessageSent {
        audience,
        sender: actor.uid.clone(),
        msg,
        opts,
        experiment,
    });
    accept(state, actor, headers, event).await
}

/// Appends the message event and answers 202 `{"mid"}` (the original mid on a retried key);
/// a message with a future `opts.deliver_at` or `opts.delay` is scheduled instead (202
/// `{"mid", "deliver_at"}`).
pub(crate) async fn accept(
    state: &AppState,
    actor: &Actor,
    headers: &HeaderMap,
    mut event: Event,
) -> ApiResult<Accepted> {
    let key = idempotency_key(headers)?;
    if let Some(plan) = super::scheduled::local_plan_of(&mut event)? {
        let answer =
            super::scheduled::schedule_local(state, actor, event, plan, key.as_deref()).await?;
        return Ok((StatusCode::ACCEPTED, Json(answer)));
    }
    if let Some(due) = super::scheduled::due_of_event(&mut event)? {
        let recorded = super::scheduled::schedule(state, actor, event, due, key.as_deref()).await?;
        let at = recorded
            .envelope
            .occurred_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        return Ok((
            StatusCode::ACCEPTED,
            Json(super::schemas::Accepted {
                deliver_at: Some(at),
                ..super::schemas::Accepted::mid(recorded.envelope.id)
            }),
        ));
    }
    let recorded = state.append(actor, event, key.as_deref()).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(super::schemas::Accepted::mid(recorded.envelope.id)),
    ))
}
