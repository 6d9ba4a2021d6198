//! The caller's inbox: listing with filters and two pagination styles, read/archive/delete,
//! read-all, and the counters (`/notifications/stats`).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use base64::Engine;
use exchange::events::{
    Event, InboxReadAll, InboxSeen, NotificationsArchived, NotificationsDeleted, NotificationsRead,
};
use projections::model::{InboxFilter, InboxQuery, StatusFilter};
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, Paging, parse_id, time_param};
use crate::state::AppState;

/// Opaque cursor: base64url of `p<position>`.
fn encode_cursor(position: u64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("p{position}"))
}

fn decode_cursor(raw: &str) -> Result<u64, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix('p').and_then(|n| n.parse().ok()))
        .ok_or_else(|| ApiError::field("cursor", "is not a cursor this server issued"))
}

fn filter_from(q: &HashMap<String, String>) -> Result<InboxFilter, ApiError> {
    // Seed 004's `readed=true|false` means status read / unread.
    let readed = match q.get("readed").map(String::as_str) {
        None => None,
        Some("true") => Some("read"),
        Some("false") => Some("unread"),
        Some(_) => return Err(ApiError::field("readed", "must be true or false")),
    };
    let status = match q.get("status").map(String::as_str).or(readed) {
        None => None,
        Some("unread") => Some(StatusFilter::Unread),
        Some("read") => Some(StatusFilter::Read),
        Some("archived") => Some(StatusFilter::Archived),
        Some("all") => Some(StatusFilter::All),
        Some(_) => {
            return Err(ApiError::field(
                "status",
                "must be unread, read, archived or all",
            ));
        }
    };
    let level = q
        .get("level")
        .map(|l| {
            l.parse::<u8>()
                .map_err(|_| ApiError::field("level", "must be 0 or 50"))
        })
        .transpose()?;
    let tid = q.get("thread").map(|t| parse_id("thread", t)).transpose()?;
    Ok(InboxFilter {
        status,
        ntype: q.get("type").cloned(),
        sender: q.get("sender").cloned(),
        level,
        tid,
        since: time_param(q, "since")?,
        before: time_param(q, "before")?,
        direct: false,
        forclient: None,
    })
}

/// `GET /notifications`: newest first with `limit`/`offset`, or with `cursor` the entries that
/// arrived after it, oldest first. Every answer carries the `cursor` to continue from.
pub async fn list(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<super::schemas::InboxPage>> {
    let paging = Paging::from_query(&query)?;
    let filter = filter_from(&query)?;
    let after = query.get("cursor").map(|c| decode_cursor(c)).transpose()?;
    if after.is_some() && paging.offset > 0 {
        return Err(ApiError::field("offset", "cannot be combined with cursor"));
    }
    // The page and the position come from one snapshot, so a client continuing from the
    // returned cursor neither skips nor repeats an entry.
    let (page, position) = state
        .store
        .inbox_snapshot(
            &actor.uid,
            &InboxQuery {
                filter,
                limit: paging.limit,
                offset: paging.offset,
                after,
            },
        )
        .await?;
    let counts = state.store.inbox_counts(&actor.uid).await?;
    let cursor = match after {
        // Sync: continue after the last entry returned (or stay put when none came).
        Some(a) => page.items.iter().map(|n| n.seq).max().unwrap_or(a),
        None => position,
    };
    let (next, previous) = if after.is_some() {
        (None, None)
    } else {
        paging.links("/api/v1/notifications", page.total)
    };
    Ok(Json(super::schemas::InboxPage {
        count: page.total,
        unread: counts.unread,
        next,
        previous,
        cursor: encode_cursor(cursor),
        results: page.items,
    }))
}

#[derive(Deserialize, schemars::JsonSchema)]
pub struct Ids {
    ids: Vec<Uuid>,
}

fn check_ids(ids: &mut Vec<Uuid>) -> Result<(), ApiError> {
    if ids.is_empty() {
        return Err(ApiError::field(
            "ids",
            "must list at least one notification id",
        ));
    }
    if ids.len() > 1000 {
        return Err(ApiError::field("ids", "at most 1000 ids per request"));
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(())
}

/// `PATCH /notifications {"ids"}`: marks them read; answers with the ids this call changed.
pub async fn mark_read(
    State(state): State<AppState>,
    Caller(actor): Caller,
    JsonBody(mut body): JsonBody<Ids>,
) -> ApiResult<Json<super::schemas::ReadAnswer>> {
    check_ids(&mut body.ids)?;
    let changed = read_ids(&state, &actor, &body.ids).await?;
    let counts = state.store.inbox_counts(&actor.uid).await?;
    Ok(Json(super::schemas::ReadAnswer {
        read: changed,
        unread: counts.unread,
    }))
}

pub(super) async fn read_ids(
    state: &AppState,
    actor: &exchange::Actor,
    ids: &[Uuid],
) -> ApiResult<Vec<Uuid>> {
    let unread: Vec<Uuid> = state
        .notifications_seen_live(&actor.uid, ids)
        .await?
        .into_iter()
        .filter(|n| n.read_at.is_none())
        .map(|n| n.id)
        .collect();
    if !unread.is_empty() {
        let event = Event::NotificationsRead(NotificationsRead {
            uid: actor.uid.clone(),
            ids: unread.clone(),
        });
        state.append_consistent(actor, event, None).await?;
    }
    Ok(unread)
}

/// Loads one of the caller's notifications or answers 404.
async fn one(
    state: &AppState,
    uid: &str,
    raw_id: &str,
) -> ApiResult<projections::model::Notification> {
    let id = parse_id("id", raw_id)?;
    state
        .notifications_seen_live(uid, &[id])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found("no such notification"))
}

/// `PATCH /notifications/{id}`: marks one read (no body needed).
pub async fn read_one(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<projections::model::Notification>> {
    let n = one(&state, &actor.uid, &id).await?;
    read_ids(&state, &actor, &[n.id]).await?;
    let n = one(&state, &actor.uid, &id).await?;
    Ok(Json(n))
}

/// `POST /notifications/{id}/archive`.
pub async fn archive(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<projections::model::Notification>> {
    let n = one(&state, &actor.uid, &id).await?;
    if n.archived_at.is_none() {
        let event = Event::NotificationsArchived(NotificationsArchived {
            uid: actor.uid.clone(),
            ids: vec![n.id],
        });
        state.append_consistent(&actor, event, None).await?;
    }
    let n = one(&state, &actor.uid, &id).await?;
    Ok(Json(n))
}

/// `DELETE /notifications/{id}`.
pub async fn delete(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let n = one(&state, &actor.uid, &id).await?;
    let event = Event::NotificationsDeleted(NotificationsDeleted {
        uid: actor.uid.clone(),
        ids: vec![n.id],
    });
    state.append_consistent(&actor, event, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
pub struct ReadAll {
    #[serde(default, rename = "type")]
    ntype: Option<String>,
    #[serde(default)]
    thread: Option<Uuid>,
}

/// `POST /notifications/read-all {"type"?, "thread"?}`: everything unread so far.
pub async fn read_all(
    State(state): State<AppState>,
    Caller(actor): Caller,
    body: axum::body::Bytes,
) -> ApiResult<Json<super::schemas::Unread>> {
    // The body is optional: empty means everything.
    let body: ReadAll = if body.iter().all(u8::is_ascii_whitespace) {
        ReadAll::default()
    } else if body.len() > state.config.body_limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body is too large",
        ));
    } else {
        crate::extract::parse_json(&body)?
    };
    let event = Event::InboxReadAll(InboxReadAll {
        uid: actor.uid.clone(),
        ntype: body.ntype,
        tid: body.thread,
    });
    state.append_consistent(&actor, event, None).await?;
    let counts = state.store.inbox_counts(&actor.uid).await?;
    Ok(Json(super::schemas::Unread {
        unread: counts.unread,
    }))
}

/// `GET /notifications/stats`: unread per type and level, and what arrived since the last clear.
pub async fn stats(
    State(state): State<AppState>,
    Caller(actor): Caller,
) -> ApiResult<Json<projections::model::InboxStats>> {
    Ok(Json(state.store.inbox_stats(&actor.uid).await?))
}

/// `DELETE /notifications/stats`: "I have looked": the unseen count restarts from zero.
pub async fn clear_stats(
    State(state): State<AppState>,
    Caller(actor): Caller,
) -> ApiResult<Json<projections::model::InboxStats>> {
    let event = Event::InboxSeen(InboxSeen {
        uid: actor.uid.clone(),
    });
    state.append_consistent(&actor, event, None).await?;
    Ok(Json(state.store.inbox_stats(&actor.uid).await?))
}
