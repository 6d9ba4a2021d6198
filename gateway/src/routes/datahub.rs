//! Seed 003's API (DataHub messages) verbatim, over the same handlers, events and read models:
//! `POST /notifications`, `GET /notifications`, `GET` and `DELETE /notification_stat`. Mounted
//! at `/compat/datahub/` always, and at the root when `MSGXC_COMPAT` names `datahub-root`.
//!
//! Mapping (choices where the seed is silent are in `docs/seeds.md` too):
//! - `admin_message` (admins): a multicast to the `receiver` list (commas or spaces, at most
//!   100 users, as the seed says); `site_broadcast` (admins): a broadcast; `private_message` and
//!   any other registered type: a private message from the caller to the one `receiver`
//!   (blocks and the per-sender limit apply). The entry's text is `data.content` when it is a
//!   string, else the type's name; `data` and `level` travel as they are. Types are registered
//!   types (`POST /api/v1/types`), the three above included.
//! - `forclient` (0 browser, the default; 1 client) is kept on the message (`opts.forclient`)
//!   and `GET` lists one kind at a time, as the seed's two tables did.
//! - `messageid` is the entry's stream position: a number, increasing, never reused.
//! - `GET /notification_stat` is the unread count per type; `DELETE` clears it by reading
//!   everything unread (so the next `GET` is empty, as after the seed's clear).

use std::collections::HashMap;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use projections::model::{InboxFilter, InboxQuery, StatusFilter};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, Paging};
use crate::routes::{messages, notifications, private};
use crate::state::AppState;

/// The seed's limit on an admin message's receivers.
const MAX_RECEIVERS: usize = 100;

/// The option key that marks a message for clients rather than browsers.
pub const FORCLIENT: &str = "forclient";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/notifications", get(list).post(post))
        .route("/notification_stat", get(stat).delete(clear_stat))
}

#[derive(Deserialize)]
pub struct PostBody {
    #[serde(rename = "type")]
    ntype: String,
    #[serde(default)]
    pub(super) receiver: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    level: Option<u8>,
    /// 0 browser (default), 1 client.
    #[serde(default)]
    forclient: Option<u8>,
}

/// The receivers of a `receiver` field: split on commas and white space.
pub(super) fn receivers(raw: Option<&str>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    raw.unwrap_or_default()
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .filter(|s| seen.insert(s.to_string()))
        .map(str::to_owned)
        .collect()
}

/// `POST /notifications`: answers 200 with an empty body once the event is stored.
pub async fn post(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PostBody>,
) -> ApiResult<StatusCode> {
    let mut opts = serde_json::Map::new();
    match body.forclient {
        None | Some(0) => {}
        Some(1) => {
            opts.insert(FORCLIENT.into(), json!(1));
        }
        Some(_) => return Err(ApiError::field("forclient", "must be 0 or 1")),
    }
    let msg = body
        .data
        .as_ref()
        .and_then(|d| d.get("content"))
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .map_or_else(|| body.ntype.clone(), str::to_owned);
    let mut request = json!({
        "type": body.ntype,
        "msg": msg,
        "data": body.data,
        "level": body.level,
        "opts": opts,
    });
    let to = receivers(body.receiver.as_deref());
    match body.ntype.as_str() {
        "admin_message" => {
            caller.require_admin()?;
            if to.is_empty() {
                return Err(ApiError::field("receiver", "must name at least one user"));
            }
            if to.len() > MAX_RECEIVERS {
                return Err(ApiError::field(
                    "receiver",
                    format!("at most {MAX_RECEIVERS} users"),
                ));
            }
            request["uids"] = json!(to);
            let body = parse(request)?;
            // The seed's answer is empty: the message id is not returned.
            let (_accepted, _id) =
                messages::multicast(State(state), caller, headers, JsonBody(body)).await?;
        }
        "site_broadcast" => {
            caller.require_admin()?;
            let body = parse(request)?;
            // The seed's answer is empty: the message id is not returned.
            let (_accepted, _id) =
                messages::broadcast(State(state), caller, headers, JsonBody(body)).await?;
        }
        _ => {
            let [to] = to.as_slice() else {
                return Err(ApiError::field(
                    "receiver",
                    "must name exactly one user for this type",
                ));
            };
            request["to"] = json!(to);
            let body = parse(request)?;
            // The seed's answer is empty: the message id is not returned.
            let (_accepted, _id) =
                private::send(State(state), caller, headers, JsonBody(body)).await?;
        }
    }
    Ok(StatusCode::OK)
}

/// A handler's body from the request this face built (its fields were checked above, so a
/// failure here names the field as the handler would).
fn parse<T: serde::de::DeserializeOwned>(request: Value) -> ApiResult<T> {
    crate::extract::parse_json(request.to_string().as_bytes())
}

/// `GET /notifications?forclient&type&sender&status&level&page&size`:
/// `{"total","results":[{"messageid","type","sender","time","data","level"}]}`, newest first.
pub async fn list(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let status = match query.get("status").map(String::as_str) {
        None | Some("2") => None,
        Some("0") => Some(StatusFilter::Unread),
        Some("1") => Some(StatusFilter::Read),
        Some(_) => return Err(ApiError::field("status", "must be 0, 1 or 2")),
    };
    let forclient = match query.get("forclient").map(String::as_str) {
        None | Some("0") => false,
        Some("1") => true,
        Some(_) => return Err(ApiError::field("forclient", "must be 0 or 1")),
    };
    let level = query
        .get("level")
        .map(|l| match l.as_str() {
            "0" => Ok(0),
            "50" => Ok(50),
            _ => Err(ApiError::field("level", "must be 0 or 50")),
        })
        .transpose()?;
    let mut paging = HashMap::new();
    for k in ["page", "size"] {
        if let Some(v) = query.get(k) {
            paging.insert(k.to_owned(), v.clone());
        }
    }
    if paging.is_empty() {
        paging.insert("page".into(), "1".into());
    }
    let paging = Paging::from_query(&paging)?;
    let page = state
        .store
        .inbox(
            &actor.uid,
            &InboxQuery {
                filter: InboxFilter {
                    status,
                    ntype: query.get("type").cloned(),
                    sender: query.get("sender").cloned(),
                    level,
                    forclient: Some(forclient),
                    ..Default::default()
                },
                limit: paging.limit,
                offset: paging.offset,
                after: None,
            },
        )
        .await?;
    let results: Vec<Value> = page
        .items
        .iter()
        .map(|n| {
            json!({
                "messageid": n.seq,
                "type": n.ntype,
                "sender": n.sender,
                "time": n.created_at.format(&time::format_description::well_known::Rfc3339).ok(),
                "data": n.data,
                "level": n.level,
            })
        })
        .collect();
    Ok(Json(json!({ "total": page.total, "results": results })))
}

/// `GET /notification_stat`: `{type: unread count}` (types with nothing unread left out).
pub async fn stat(State(state): State<AppState>, Caller(actor): Caller) -> ApiResult<Json<Value>> {
    let stats = state.store.inbox_stats(&actor.uid).await?;
    let counts: serde_json::Map<String, Value> = stats
        .unread_by_type
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(t, n)| (t, json!(n)))
        .collect();
    Ok(Json(Value::Object(counts)))
}

/// `DELETE /notification_stat`: reads everything unread; answers 200 with an empty body.
pub async fn clear_stat(State(state): State<AppState>, caller: Caller) -> ApiResult<StatusCode> {
    let _unread = notifications::read_all(State(state), caller, axum::body::Bytes::new()).await?;
    Ok(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receivers_split_on_commas_and_spaces_once_each() {
        assert_eq!(
            receivers(Some("zhang3@example.com,li4@example.com john@example.com")),
            ["zhang3@example.com", "li4@example.com", "john@example.com"]
        );
        assert_eq!(
            receivers(Some(" a ,, b\ta a ")),
            ["a", "b"],
            "empty parts dropped, repeats once"
        );
        assert!(receivers(None).is_empty());
    }
}
