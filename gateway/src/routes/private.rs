//! Private messages between users (seed 003) and the block list that refuses them:
//! `POST /messages`, `GET /blocks`, `PUT /blocks/{uid}`, `DELETE /blocks/{uid}`.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use exchange::events::{Audience, Event, MessageOpts, MessageSent, UserBlocked, UserUnblocked};
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::routes::messages::{Classification, accept, classify};
use crate::routes::validate;
use crate::state::AppState;

#[derive(Deserialize, schemars::JsonSchema)]
pub struct PrivateBody {
    to: String,
    msg: String,
    #[serde(flatten)]
    class: Classification,
    #[serde(default)]
    opts: MessageOpts,
}

/// A message from the caller to one user; refused when the receiver blocks the caller, and
/// limited per sender.
pub async fn send(
    State(state): State<AppState>,
    Caller(actor): Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PrivateBody>,
) -> ApiResult<super::messages::Accepted> {
    validate::uid("to", &body.to)?;
    validate::text("msg", &body.msg, state.config.max_message_chars)?;
    let opts = classify(&state, &actor, body.class, body.opts).await?;
    if state.store.is_blocked(&body.to, &actor.uid).await? {
        return Err(ApiError::forbidden(
            "the receiver does not accept your messages",
        ));
    }
    let window = Duration::from_secs(60);
    if let Err(retry) =
        state
            .rate
            .check(&actor.uid, state.config.private_messages_per_minute, window)
    {
        return Err(ApiError::too_many(
            "too many private messages; slow down",
            retry.as_secs().max(1),
        ));
    }
    let event = Event::MessageSent(MessageSent {
        audience: Audience::User { uid: body.to },
        sender: actor.uid.clone(),
        msg: body.msg,
        opts,
        experiment: None,
    });
    accept(&state, &actor, &headers, event).await
}

pub async fn list(
    State(state): State<AppState>,
    Caller(actor): Caller,
) -> ApiResult<Json<super::schemas::List<String>>> {
    let blocked = state.store.blocks(&actor.uid).await?;
    Ok(Json(blocked.into()))
}

pub async fn block(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(uid): Path<String>,
) -> ApiResult<StatusCode> {
    validate::uid("uid", &uid)?;
    if !state.store.is_blocked(&actor.uid, &uid).await? {
        let event = Event::UserBlocked(UserBlocked {
            uid: actor.uid.clone(),
            blocked: uid,
        });
        state.append_consistent(&actor, event, None).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

pub async fn unblock(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(uid): Path<String>,
) -> ApiResult<StatusCode> {
    if state.store.is_blocked(&actor.uid, &uid).await? {
        let event = Event::UserUnblocked(UserUnblocked {
            uid: actor.uid.clone(),
            blocked: uid,
        });
        state.append_consistent(&actor, event, None).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}
