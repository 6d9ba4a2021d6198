//! The Ona messaging API (seed 000): messages to a user or to a group target such as a form or
//! a project (a thread with the alias `<target_type>:<target_id>`).
//!
//! Rules: only members of a target (its subscribers, owner, admins) may post to or read it; a
//! user target is readable only by that user and obeys the private-message rules (blocks,
//! rate); only the author or an admin may delete a message.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use exchange::Actor;
use exchange::events::{Audience, Event, MessageDeleted, MessagePublished, MessageSent};
use projections::model::{
    HistoryQuery, InboxFilter, InboxQuery, StatusFilter, StoredMessage, Thread,
};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, Paging, parse_id, time_param};
use crate::routes::{idempotency_key, threads, validate};
use crate::state::AppState;

#[derive(Deserialize)]
pub struct PostBody {
    target_type: String,
    target_id: String,
    message: String,
}

fn item(
    mid: uuid::Uuid,
    message: &str,
    user: &str,
    target: (&str, &str),
    at: OffsetDateTime,
) -> Value {
    json!({
        "id": mid,
        "message": message,
        "user": user,
        "target_type": target.0,
        "target_id": target.1,
        "timestamp": at.format(&Rfc3339).unwrap_or_default(),
    })
}

/// `(target_type, target_id)` of a thread: its alias split at the first `:`, or the tid.
fn target_of(thread: &Thread) -> (String, String) {
    match thread.alias.as_deref().and_then(|a| a.split_once(':')) {
        Some((t, id)) => (t.to_owned(), id.to_owned()),
        None => ("thread".to_owned(), thread.tid.to_string()),
    }
}

/// The thread behind a group target, if the caller is a member.
async fn member_target(state: &AppState, actor: &Actor, kind: &str, id: &str) -> ApiResult<Thread> {
    let alias = format!("{kind}:{id}");
    let thread = state
        .store
        .thread_by_alias(&alias)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no target {alias}")))?;
    if !(threads::is_owner_or_admin(actor, &thread)
        || state.store.is_subscribed(thread.tid, &actor.uid).await?)
    {
        return Err(ApiError::forbidden(
            "only members of the target may do this",
        ));
    }
    Ok(thread)
}

pub async fn post(
    State(state): State<AppState>,
    Caller(actor): Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PostBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    validate::text("message", &body.message, state.config.max_message_chars)?;
    validate::text("target_type", &body.target_type, 64)?;
    validate::text("target_id", &body.target_id, 256)?;
    let key = idempotency_key(&headers)?;
    let event = if body.target_type == "user" {
        validate::uid("target_id", &body.target_id)?;
        if state.store.is_blocked(&body.target_id, &actor.uid).await? {
            return Err(ApiError::forbidden(
                "the receiver does not accept your messages",
            ));
        }
        if let Err(retry) = state.rate.check(
            &actor.uid,
            state.config.private_messages_per_minute,
            std::time::Duration::from_secs(60),
        ) {
            return Err(ApiError::too_many(
                "too many private messages; slow down",
                retry.as_secs().max(1),
            ));
        }
        Event::MessageSent(MessageSent {
            audience: Audience::User {
                uid: body.target_id.clone(),
            },
            sender: actor.uid.clone(),
            msg: body.message.clone(),
            opts: Default::default(),
            experiment: None,
        })
    } else {
        let thread = member_target(&state, &actor, &body.target_type, &body.target_id).await?;
        Event::MessagePublished(MessagePublished {
            tid: thread.tid,
            sender: actor.uid.clone(),
            msg: body.message.clone(),
            opts: Default::default(),
            experiment: None,
        })
    };
    let recorded = state.append(&actor, event, key.as_deref()).await?;
    let env = &recorded.envelope;
    Ok((
        StatusCode::CREATED,
        Json(item(
            env.id,
            &body.message,
            &actor.uid,
            (&body.target_type, &body.target_id),
            env.occurred_at,
        )),
    ))
}

fn required<'a>(q: &'a HashMap<String, String>, key: &str) -> Result<&'a str, ApiError> {
    q.get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            let mut e = ApiError::field(key, "is required");
            e.code = "missing_field";
            e
        })
}

/// `GET /messaging?target_type&target_id[&user][&since][&before][&limit][&offset]`.
pub async fn list(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let paging = Paging::from_query(&q)?;
    // As in the seed: without a target the list is empty.
    if !q.contains_key("target_type") && !q.contains_key("target_id") {
        return Ok(Json(
            json!({ "count": 0, "next": null, "previous": null, "results": [] }),
        ));
    }
    let (kind, id) = (required(&q, "target_type")?, required(&q, "target_id")?);
    let sender = q.get("user").cloned();
    let (since, before) = (time_param(&q, "since")?, time_param(&q, "before")?);
    let path = format!("/api/v1/messaging?target_type={kind}&target_id={id}");
    let (total, results) = if kind == "user" {
        if id != actor.uid && !actor.is_admin() {
            return Err(ApiError::forbidden(
                "a user's messages are readable only by that user",
            ));
        }
        let page = state
            .store
            .inbox(
                id,
                &InboxQuery {
                    filter: InboxFilter {
                        status: Some(StatusFilter::All),
                        sender,
                        since,
                        before,
                        direct: true,
                        ..Default::default()
                    },
                    limit: paging.limit,
                    offset: paging.offset,
                    after: None,
                },
            )
            .await?;
        let items = page
            .items
            .iter()
            .map(|n| item(n.id, &n.msg, &n.sender, ("user", id), n.created_at))
            .collect::<Vec<_>>();
        (page.total, items)
    } else {
        let thread = member_target(&state, &actor, kind, id).await?;
        let page = state
            .store
            .thread_messages(
                thread.tid,
                &HistoryQuery {
                    limit: paging.limit,
                    offset: paging.offset,
                    sender,
                    since,
                    before,
                },
            )
            .await?;
        let items = page
            .items
            .iter()
            .map(|m| item(m.mid, &m.msg, &m.sender, (kind, id), m.created_at))
            .collect::<Vec<_>>();
        (page.total, items)
    };
    let next_offset = paging.offset + u64::from(paging.limit);
    let next = (next_offset < total)
        .then(|| format!("{path}&limit={}&offset={next_offset}", paging.limit));
    let previous = (paging.offset > 0).then(|| {
        format!(
            "{path}&limit={}&offset={}",
            paging.limit,
            paging.offset.saturating_sub(u64::from(paging.limit))
        )
    });
    Ok(Json(
        json!({ "count": total, "next": next, "previous": previous, "results": results }),
    ))
}

/// The message and its target, if the caller may see it.
async fn visible(
    state: &AppState,
    actor: &Actor,
    raw_id: &str,
) -> ApiResult<(StoredMessage, (String, String))> {
    let mid = parse_id("id", raw_id)?;
    let m = state
        .store
        .message(mid)
        .await?
        .ok_or_else(|| ApiError::not_found("no such message"))?;
    let target = match m.tid {
        Some(tid) => {
            let thread = state
                .store
                .thread(tid)
                .await?
                .ok_or_else(|| ApiError::not_found("no such message"))?;
            if !(threads::is_owner_or_admin(actor, &thread)
                || state.store.is_subscribed(tid, &actor.uid).await?)
            {
                return Err(ApiError::forbidden(
                    "only members of the target may read this",
                ));
            }
            target_of(&thread)
        }
        None => {
            let mine = m.sender == actor.uid
                || actor.is_admin()
                || !state
                    .store
                    .notifications(&actor.uid, &[mid])
                    .await?
                    .is_empty();
            if !mine {
                return Err(ApiError::not_found("no such message"));
            }
            ("user".to_owned(), String::new())
        }
    };
    Ok((m, target))
}

pub async fn get(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let (m, target) = visible(&state, &actor, &id).await?;
    Ok(Json(item(
        m.mid,
        &m.msg,
        &m.sender,
        (&target.0, &target.1),
        m.created_at,
    )))
}

pub async fn delete(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let (m, _) = visible(&state, &actor, &id).await?;
    if m.sender != actor.uid && !actor.is_admin() {
        return Err(ApiError::forbidden(
            "only the author or an admin may delete a message",
        ));
    }
    state
        .append_consistent(
            &actor,
            Event::MessageDeleted(MessageDeleted { mid: m.mid }),
            None,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
