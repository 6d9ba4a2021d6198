//! Seed 004's API (Django REST notifications) verbatim, over the same handlers, events and read
//! models: `GET`/`PATCH /notifications`, `PATCH`/`DELETE /notifications/{id}`,
//! `GET`/`PATCH /notifications/filter` and the WebSocket `/ws/notifications`. Mounted at
//! `/compat/drf/` always, and at the root when `MSGXC_COMPAT` names `drf-root`.
//!
//! A notification is the seed's `{"id","user","readed","event":{"id","timestamp","author",
//! "type":{"id","name","title","description"},"title","message","data"}}`. Choices where the
//! seed is silent (also in `docs/seeds.md`):
//! - `id` (and `event.id`) is the entry's stream position: a number, growing, never reused for
//!   one user (a message has one position, so its recipients share it; ids are per user, as
//!   every route is the caller's own). `user` and `author` are user ids (strings here).
//! - A type's `id` is its place among the registered types in registration order, from 1.
//! - Times are `YYYY-MM-DDTHH:MM:SS` in UTC, as the seed writes them.
//! - `readed=<time>` lists the entries read at or after it (at most [`MAX_SCANNED`] read
//!   entries are looked at; beyond, 400 `too_many_notifications`: narrow it).
//! - `PATCH /notifications [ids]` and `PATCH /notifications/{id}` answer the notifications as
//!   read; the socket sends `new` and `readed` (a read on any device), nothing for archives
//!   and deletes, which the seed does not have.

use std::collections::HashMap;

use axum::Json;
use axum::Router;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, patch};
use projections::model::{InboxFilter, InboxQuery, Notification, NotificationType, StatusFilter};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::format_description;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, Paging};
use crate::routes::{notifications, preferences, ws};
use crate::state::AppState;

/// Read entries a `readed=<time>` listing looks at.
pub const MAX_SCANNED: u32 = 10_000;

/// Entries looked up by one numeric id (a message has one position per user, several only
/// for seed 002's ticks that send one user several subscriptions' messages at once).
const PER_POSITION: u32 = 16;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/notifications", get(list).patch(read_many))
        .route(
            "/notifications/filter",
            get(preferences::get_filter).patch(preferences::patch_filter),
        )
        .route("/notifications/{id}", patch(read_one).delete(delete))
        .route("/ws/notifications", get(socket))
}

/// The seed's time format, in UTC.
fn seed_time(t: OffsetDateTime) -> Option<String> {
    t.to_offset(time::UtcOffset::UTC)
        .format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]"
        ))
        .ok()
}

fn parse_seed_time(raw: &str) -> Option<OffsetDateTime> {
    time::PrimitiveDateTime::parse(
        raw,
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
    )
    .ok()
    .map(time::PrimitiveDateTime::assume_utc)
}

/// The registered types with the seed's numeric ids.
pub struct Types(Vec<NotificationType>);

impl Types {
    pub async fn load(state: &AppState) -> ApiResult<Self> {
        let mut types = state.store.types().await?;
        types.sort_by(|a, b| (a.registered_at, &a.name).cmp(&(b.registered_at, &b.name)));
        Ok(Self(types))
    }

    fn knows(&self, name: &str) -> bool {
        self.0.iter().any(|t| t.name == name)
    }

    fn json(&self, name: Option<&str>) -> Value {
        let Some(name) = name else {
            return Value::Null;
        };
        match self.0.iter().position(|t| t.name == name) {
            Some(i) => {
                let t = &self.0[i];
                json!({
                    "id": i + 1,
                    "name": t.name,
                    "title": t.title,
                    "description": (!t.description.is_empty()).then_some(&t.description),
                })
            }
            None => json!({ "id": null, "name": name, "title": name, "description": null }),
        }
    }
}

/// An entry in the seed's shape.
pub fn notification(n: &Notification, types: &Types) -> Value {
    json!({
        "id": n.seq,
        "user": n.uid,
        "readed": n.read_at.and_then(seed_time),
        "event": {
            "id": n.seq,
            "timestamp": seed_time(n.created_at),
            "author": n.sender,
            "type": types.json(n.ntype.as_deref()),
            "title": n.title.clone().unwrap_or_default(),
            "message": n.msg,
            "data": n.data,
        },
    })
}

/// The caller's entries at the numeric id (stream position) `seq`.
async fn at_position(state: &AppState, uid: &str, seq: u64) -> ApiResult<Vec<Notification>> {
    if seq == 0 {
        return Ok(Vec::new());
    }
    let page = state
        .store
        .inbox(
            uid,
            &InboxQuery {
                filter: InboxFilter {
                    status: Some(StatusFilter::All),
                    ..Default::default()
                },
                limit: PER_POSITION,
                offset: 0,
                after: Some(seq - 1),
            },
        )
        .await?;
    Ok(page.items.into_iter().filter(|n| n.seq == seq).collect())
}

fn parse_id(raw: &str) -> ApiResult<u64> {
    raw.parse()
        .map_err(|_| ApiError::field("id", "must be a notification id (a number)"))
}

/// `GET /notifications?readed=true|false|YYYY-MM-DDTHH:MM:SS&limit&offset`:
/// `{"count","next","previous","results"}`, newest first, links absolute as the seed's
/// paginator writes them.
pub async fn list(
    State(state): State<AppState>,
    Caller(actor): Caller,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let paging = Paging::from_query(&query)?;
    let readed = query.get("readed").map(String::as_str);
    let since = match readed {
        None | Some("true" | "false") => None,
        Some(t) => Some(parse_seed_time(t).ok_or_else(|| {
            ApiError::field(
                "readed",
                "must be true, false or a time YYYY-MM-DDTHH:MM:SS",
            )
        })?),
    };
    let status = match readed {
        None => None,
        Some("false") => Some(StatusFilter::Unread),
        Some(_) => Some(StatusFilter::Read),
    };
    let filter = InboxFilter {
        status,
        ..Default::default()
    };
    // A time filter scans the read entries and pages them here; otherwise the store pages.
    let (limit, offset) = match since {
        None => (paging.limit, paging.offset),
        Some(_) => (MAX_SCANNED + 1, 0),
    };
    let page = state
        .store
        .inbox(
            &actor.uid,
            &InboxQuery {
                filter,
                limit,
                offset,
                after: None,
            },
        )
        .await?;
    let (items, total) = match since {
        None => (page.items, page.total),
        Some(since) => {
            if page.items.len() > MAX_SCANNED as usize {
                return Err(ApiError::bad_request(
                    "too_many_notifications",
                    format!(
                        "more than {MAX_SCANNED} read notifications to look at; use readed=true"
                    ),
                ));
            }
            let hits: Vec<Notification> = page
                .items
                .into_iter()
                .filter(|n| n.read_at.is_some_and(|r| r >= since))
                .collect();
            let total = hits.len() as u64;
            let items = hits
                .into_iter()
                .skip(usize::try_from(paging.offset).unwrap_or(usize::MAX))
                .take(paging.limit as usize)
                .collect();
            (items, total)
        }
    };
    let types = Types::load(&state).await?;
    let results: Vec<Value> = items.iter().map(|n| notification(n, &types)).collect();
    let link = |offset: u64| {
        let mut q: Vec<(String, String)> = query
            .iter()
            .filter(|(k, _)| *k != "limit" && *k != "offset")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        q.sort();
        q.push(("limit".into(), paging.limit.to_string()));
        q.push(("offset".into(), offset.to_string()));
        format!(
            "{}{}?{}",
            crate::routes::stage::base_url(&headers),
            uri.path(),
            serde_urlencoded::to_string(&q).unwrap_or_default()
        )
    };
    let next_offset = paging.offset.saturating_add(u64::from(paging.limit));
    let next = (next_offset < total).then(|| link(next_offset));
    let previous =
        (paging.offset > 0).then(|| link(paging.offset.saturating_sub(u64::from(paging.limit))));
    Ok(Json(json!({
        "count": total,
        "next": next,
        "previous": previous,
        "results": results,
    })))
}

/// Marks the caller's entries at these numeric ids read; answers them as they are then.
async fn read_positions(state: &AppState, caller: Caller, ids: &[u64]) -> ApiResult<Vec<Value>> {
    let mut found = Vec::new();
    for &seq in ids {
        let entries = at_position(state, &caller.0.uid, seq).await?;
        if entries.is_empty() {
            return Err(ApiError::not_found(format!("no notification {seq}")));
        }
        found.extend(entries.into_iter().map(|n| n.id));
    }
    if found.is_empty() {
        return Ok(Vec::new());
    }
    notifications::read_ids(state, &caller.0, &found).await?;
    let types = Types::load(state).await?;
    let mut read = state.notifications_seen_live(&caller.0.uid, &found).await?;
    read.sort_by_key(|n| std::cmp::Reverse(n.seq));
    Ok(read.iter().map(|n| notification(n, &types)).collect())
}

/// `PATCH /notifications [id, ...]`: a bare array of ids, marked read.
pub async fn read_many(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(mut ids): JsonBody<Vec<u64>>,
) -> ApiResult<Json<Value>> {
    if ids.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "expected a JSON array of notification ids",
        ));
    }
    if ids.len() > 1000 {
        return Err(ApiError::bad_request(
            "invalid_body",
            "at most 1000 ids per request",
        ));
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(Json(Value::Array(
        read_positions(&state, caller, &ids).await?,
    )))
}

/// `PATCH /notifications/{id}`: marks it read (no body needed).
pub async fn read_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let seq = parse_id(&id)?;
    let mut read = read_positions(&state, caller, &[seq]).await?;
    Ok(Json(if read.len() == 1 {
        read.remove(0)
    } else {
        Value::Array(read)
    }))
}

/// `DELETE /notifications/{id}`: 204.
pub async fn delete(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let seq = parse_id(&id)?;
    let entries = at_position(&state, &actor.uid, seq).await?;
    if entries.is_empty() {
        return Err(ApiError::not_found(format!("no notification {seq}")));
    }
    let event = exchange::Event::NotificationsDeleted(exchange::events::NotificationsDeleted {
        uid: actor.uid.clone(),
        ids: entries.iter().map(|n| n.id).collect(),
    });
    state.append_consistent(&actor, event, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /ws/notifications`: the caller's live frames as the seed's
/// `{"action":"new"|"readed","notification":{...}}`.
pub async fn socket(
    state: State<AppState>,
    caller: crate::auth::StreamCaller,
    upgrade: Result<
        axum::extract::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> axum::response::Response {
    ws::open(state, caller, upgrade, ws::Face::Drf).await
}

/// Turns one of the exchange's frames into the seed's, or `None` for changes the seed has no
/// action for (archived, deleted). `types` is read again when a frame names a type it lacks.
pub async fn translate(
    state: &AppState,
    uid: &str,
    types: &mut Option<Types>,
    frame: &[u8],
) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Frame {
        action: String,
        notification: Notification,
        position: String,
    }
    let f: Frame = serde_json::from_slice(frame).ok()?;
    let mut n = f.notification;
    let action = match f.action.as_str() {
        "new" => {
            // A new entry's frame is at the entry's own position.
            n.seq = f.position.split('.').next()?.parse().ok()?;
            "new"
        }
        "read" => {
            n.seq = state
                .store
                .notifications(uid, &[n.id])
                .await
                .ok()?
                .first()?
                .seq;
            "readed"
        }
        _ => return None,
    };
    let stale = match (types.as_ref(), n.ntype.as_deref()) {
        (None, _) => true,
        (Some(t), Some(name)) => !t.knows(name),
        (Some(_), None) => false,
    };
    if stale {
        *types = Types::load(state).await.ok();
    }
    let types = types.as_ref()?;
    Some(json!({ "action": action, "notification": notification(&n, types) }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_and_write_the_seed_s_format_in_utc() {
        let t = parse_seed_time("2024-06-20T10:11:12").unwrap();
        assert_eq!(seed_time(t).as_deref(), Some("2024-06-20T10:11:12"));
        let plus_two = t.to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap());
        assert_eq!(seed_time(plus_two).as_deref(), Some("2024-06-20T10:11:12"));
        for bad in [
            "2024-06-20",
            "2024-06-20T10:11",
            "true",
            "2024-13-01T00:00:00",
            "",
        ] {
            assert!(parse_seed_time(bad).is_none(), "{bad}");
        }
    }
}
