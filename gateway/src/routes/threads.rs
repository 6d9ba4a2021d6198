//! Threads: create, read, subscribe, unsubscribe, history.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use exchange::Actor;
use exchange::events::{Event, Subscribed, ThreadCreated, Unsubscribed};
use projections::model::Thread;
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, Paging, parse_id};
use crate::routes::{idempotency_key, validate};
use crate::state::AppState;

#[derive(Deserialize, schemars::JsonSchema)]
pub struct CreateThread {
    name: String,
    #[serde(default)]
    alias: Option<String>,
    #[serde(default)]
    open_subscribe: bool,
    #[serde(default)]
    open_publish: bool,
}

pub async fn create(
    State(state): State<AppState>,
    Caller(actor): Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateThread>,
) -> ApiResult<(StatusCode, Json<super::schemas::ThreadCreated>)> {
    validate::text("name", &body.name, 200)?;
    if let Some(a) = &body.alias {
        check_alias(a)?;
        if state.store.thread_by_alias(a).await?.is_some() {
            return Err(ApiError::conflict(
                "alias_taken",
                format!("alias {a} is taken"),
            ));
        }
    }
    let key = idempotency_key(&headers)?;
    let event = Event::ThreadCreated(ThreadCreated {
        tid: Uuid::now_v7(),
        name: body.name,
        owner: actor.uid.clone(),
        open_subscribe: body.open_subscribe,
        open_publish: body.open_publish,
        alias: body.alias,
    });
    let recorded = state
        .append_consistent(&actor, event, key.as_deref())
        .await?;
    let Event::ThreadCreated(t) = recorded.envelope.event else {
        return Err(ApiError::internal("unexpected stored event"));
    };
    if let Some(a) = &t.alias {
        // Two concurrent claims: the first in the stream keeps the alias.
        let holder = state.store.thread_by_alias(a).await?;
        if holder.is_some_and(|h| h.tid != t.tid) {
            return Err(ApiError::conflict(
                "alias_taken",
                format!("alias {a} was claimed first by another thread; this thread has none"),
            ));
        }
    }
    Ok((
        StatusCode::CREATED,
        Json(super::schemas::ThreadCreated {
            tid: t.tid,
            alias: t.alias,
        }),
    ))
}

/// Aliases: `<kind>:<id>` such as `xform:1337`, 3-128 characters of `[A-Za-z0-9_.:-]`.
pub(crate) fn check_alias(a: &str) -> Result<(), ApiError> {
    let ok = (3..=128).contains(&a.len())
        && a.contains(':')
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            "alias",
            "must look like kind:id (letters, digits, _ . : -)",
        ))
    }
}

/// `GET /threads/by-alias/{alias}`.
pub async fn by_alias(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(alias): Path<String>,
) -> ApiResult<Json<super::schemas::ThreadView>> {
    let thread = state
        .store
        .thread_by_alias(&alias)
        .await?
        .ok_or_else(|| ApiError::not_found("no thread has this alias"))?;
    let subscribed = state.store.is_subscribed(thread.tid, &actor.uid).await?;
    Ok(Json(super::schemas::ThreadView { thread, subscribed }))
}

/// Loads a thread or answers 404.
pub(crate) async fn load(state: &AppState, raw_tid: &str) -> ApiResult<Thread> {
    let tid = parse_id("tid", raw_tid)?;
    state
        .store
        .thread(tid)
        .await?
        .ok_or_else(|| ApiError::not_found("no such thread"))
}

/// Loads a thread for a permission check, from the gateway's cache when it was read before:
/// a thread's owner and open flags never change after it is created (its counts do, so they
/// are stale here; [`load`] reads them fresh).
pub(crate) async fn rules(state: &AppState, raw_tid: &str) -> ApiResult<Arc<Thread>> {
    let tid = parse_id("tid", raw_tid)?;
    if let Some(t) = state.thread_rules.get(tid) {
        return Ok(t);
    }
    let thread = Arc::new(
        state
            .store
            .thread(tid)
            .await?
            .ok_or_else(|| ApiError::not_found("no such thread"))?,
    );
    state.thread_rules.put(thread.clone());
    Ok(thread)
}

pub(crate) fn is_owner_or_admin(actor: &Actor, thread: &Thread) -> bool {
    actor.is_admin() || thread.owner == actor.uid
}

pub async fn get(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(tid): Path<String>,
) -> ApiResult<Json<super::schemas::ThreadView>> {
    let thread = load(&state, &tid).await?;
    let subscribed = state.store.is_subscribed(thread.tid, &actor.uid).await?;
    Ok(Json(super::schemas::ThreadView { thread, subscribed }))
}

#[derive(Deserialize, schemars::JsonSchema)]
pub struct ThreadRef {
    tid: String,
}

pub async fn subscribe(
    State(state): State<AppState>,
    Caller(actor): Caller,
    JsonBody(body): JsonBody<ThreadRef>,
) -> ApiResult<Json<super::schemas::Subscription>> {
    let thread = rules(&state, &body.tid).await?;
    if !(thread.open_subscribe || is_owner_or_admin(&actor, &thread)) {
        return Err(ApiError::forbidden(
            "this thread is closed: only its owner or an admin may subscribe",
        ));
    }
    if !state.store.is_subscribed(thread.tid, &actor.uid).await? {
        let event = Event::Subscribed(Subscribed {
            tid: thread.tid,
            uid: actor.uid.clone(),
        });
        state.append_consistent(&actor, event, None).await?;
    }
    Ok(Json(super::schemas::Subscription {
        tid: thread.tid,
        subscribed: true,
    }))
}

pub async fn unsubscribe(
    State(state): State<AppState>,
    Caller(actor): Caller,
    JsonBody(body): JsonBody<ThreadRef>,
) -> ApiResult<Json<super::schemas::Subscription>> {
    let thread = rules(&state, &body.tid).await?;
    if state.store.is_subscribed(thread.tid, &actor.uid).await? {
        let event = Event::Unsubscribed(Unsubscribed {
            tid: thread.tid,
            uid: actor.uid.clone(),
        });
        state.append_consistent(&actor, event, None).await?;
    }
    Ok(Json(super::schemas::Subscription {
        tid: thread.tid,
        subscribed: false,
    }))
}

/// `GET /threads/{tid}/messages`: history for subscribers, the owner and admins.
pub async fn messages(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(tid): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<super::schemas::Paged<projections::model::ThreadMessage>>> {
    let paging = Paging::from_query(&query)?;
    let thread = rules(&state, &tid).await?;
    if !(is_owner_or_admin(&actor, &thread)
        || state.store.is_subscribed(thread.tid, &actor.uid).await?)
    {
        return Err(ApiError::forbidden(
            "only subscribers, the owner or an admin may read this thread",
        ));
    }
    let page = state
        .store
        .thread_messages(
            thread.tid,
            &projections::model::HistoryQuery {
                limit: paging.limit,
                offset: paging.offset,
                ..Default::default()
            },
        )
        .await?;
    let path = format!("/api/v1/threads/{}/messages", thread.tid);
    let (next, previous) = paging.links(&path, page.total);
    Ok(Json(super::schemas::Paged {
        count: page.total,
        next,
        previous,
        results: page.items,
    }))
}
