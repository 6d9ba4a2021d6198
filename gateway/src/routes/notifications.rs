//! The caller's inbox: `GET /notifications` (newest first) and `PATCH /notifications` (read).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use exchange::events::{Event, NotificationsRead};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, Paging};
use crate::state::AppState;

pub async fn list(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let paging = Paging::from_query(&query)?;
    let page = state
        .store
        .inbox(&actor.uid, paging.limit, paging.offset)
        .await?;
    let counts = state.store.inbox_counts(&actor.uid).await?;
    let (next, previous) = paging.links("/api/v1/notifications", page.total);
    Ok(Json(json!({
        "count": page.total,
        "unread": counts.unread,
        "next": next,
        "previous": previous,
        "results": page.items,
    })))
}

#[derive(Deserialize)]
pub struct MarkRead {
    ids: Vec<Uuid>,
}

/// Marks the listed notifications read. Ids that are unknown or already read are ignored; the
/// answer lists the ones this call changed.
pub async fn mark_read(
    State(state): State<AppState>,
    Caller(actor): Caller,
    JsonBody(body): JsonBody<MarkRead>,
) -> ApiResult<Json<Value>> {
    if body.ids.is_empty() {
        return Err(ApiError::field(
            "ids",
            "must list at least one notification id",
        ));
    }
    if body.ids.len() > 1000 {
        return Err(ApiError::field("ids", "at most 1000 ids per request"));
    }
    let mut ids = body.ids;
    ids.sort_unstable();
    ids.dedup();
    let unread: Vec<Uuid> = state
        .store
        .notifications(&actor.uid, &ids)
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
        state.append_consistent(&actor, event, None).await?;
    }
    let counts = state.store.inbox_counts(&actor.uid).await?;
    Ok(Json(json!({ "read": unread, "unread": counts.unread })))
}
