//! Messages: `POST /publish` to a thread; admin `POST /broadcast`, `/multicast`, `/send`.
//! All answer 202 with the message id once the event is stored; fan-out happens after.

use std::collections::HashSet;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use exchange::Actor;
use exchange::events::{Audience, Event, MessageOpts, MessagePublished, MessageSent};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::routes::{idempotency_key, threads, validate};
use crate::state::AppState;

type Accepted = (StatusCode, Json<Value>);

#[derive(Deserialize)]
pub struct PublishBody {
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
    validate::opts(&body.opts)?;
    let thread = threads::load(&state, &body.tid).await?;
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
        opts: body.opts,
    });
    accept(&state, &actor, &headers, event).await
}

#[derive(Deserialize)]
pub struct BroadcastBody {
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
        body.opts,
    )
    .await
}

#[derive(Deserialize)]
pub struct MulticastBody {
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
    send_to(&state, &caller.0, &headers, audience, body.msg, body.opts).await
}

#[derive(Deserialize)]
pub struct SendBody {
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
    send_to(&state, &caller.0, &headers, audience, body.msg, body.opts).await
}

async fn send_to(
    state: &AppState,
    actor: &Actor,
    headers: &HeaderMap,
    audience: Audience,
    msg: String,
    opts: MessageOpts,
) -> ApiResult<Accepted> {
    validate::opts(&opts)?;
    let event = Event::MessageSent(MessageSent {
        audience,
        sender: actor.uid.clone(),
        msg,
        opts,
    });
    accept(state, actor, headers, event).await
}

/// Appends the message event and answers 202 `{"mid"}` (the original mid on a retried key).
async fn accept(
    state: &AppState,
    actor: &Actor,
    headers: &HeaderMap,
    event: Event,
) -> ApiResult<Accepted> {
    let key = idempotency_key(headers)?;
    let recorded = state.append(actor, event, key.as_deref()).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "mid": recorded.envelope.id })),
    ))
}
