//! Online time (seed 001's WebSocket check-in): `GET /presence?uids=` for admins: who has a
//! live connection now, when each was last seen, and their seconds online per UTC day, folded
//! from the `session_ended` events the live connections write when they close.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::routes::validate;
use crate::state::AppState;

/// Users one request may ask about.
const MAX_UIDS: usize = 100;

pub async fn presence(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<super::schemas::PresenceList>> {
    caller.require_admin()?;
    let uids: Vec<&str> = query
        .get("uids")
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if uids.is_empty() || uids.len() > MAX_UIDS {
        return Err(ApiError::field(
            "uids",
            format!("1 to {MAX_UIDS} comma-separated user ids"),
        ));
    }
    for (i, uid) in uids.iter().enumerate() {
        validate::uid(&format!("uids[{i}]"), uid)?;
    }
    let days = crate::extract::bounded(&query, "days", 7, 1..=366, "1 to 366")?;
    let rfc3339 = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let mut out = Vec::with_capacity(uids.len());
    for uid in uids {
        let online = match &state.presence {
            Some(p) => p.is_present(uid).await,
            None => false,
        };
        let record = state.store.online(uid).await?;
        let per_day: Vec<super::schemas::OnlineDay> = state
            .store
            .online_days(uid, days)
            .await?
            .into_iter()
            .map(|(day, seconds)| {
                let date = time::OffsetDateTime::from_unix_timestamp(i64::from(day) * 86_400)
                    .map(|t| t.date().to_string())
                    .unwrap_or_default();
                super::schemas::OnlineDay { day: date, seconds }
            })
            .collect();
        out.push(super::schemas::PresenceOf {
            uid: uid.to_owned(),
            online,
            last_seen: record.as_ref().map(|r| rfc3339(r.last_seen)),
            sessions: record.as_ref().map_or(0, |r| r.sessions),
            online_seconds: record.as_ref().map_or(0, |r| r.seconds),
            days: per_day,
        });
    }
    Ok(Json(super::schemas::PresenceList { results: out }))
}
