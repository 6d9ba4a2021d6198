//! Reports: `GET /reports/funnel`, the funnel of one message, an experiment's messages or the
//! messages sent in a time range (see [`projections::funnel`] for what each step counts).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use projections::funnel::Dim;
use projections::model::{FunnelMessage, FunnelScope};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::parse_id;
use crate::routes::deliveries::sent_by_caller;
use crate::routes::experiments::owned;
use crate::state::AppState;

/// The widest time range a report covers (a range is read day by day).
pub const MAX_RANGE_DAYS: i64 = 92;
/// The most messages one report folds (each message's recipients are read).
pub const MAX_MESSAGES: usize = 5_000;
/// The range without `since` (and without a message or experiment): the last week.
const DEFAULT_RANGE: Duration = Duration::days(7);

fn instant(query: &HashMap<String, String>, name: &str) -> ApiResult<Option<OffsetDateTime>> {
    let Some(v) = query.get(name) else {
        return Ok(None);
    };
    if let Ok(t) = OffsetDateTime::parse(v, &Rfc3339) {
        return Ok(Some(t));
    }
    let day = time::Date::parse(v, time::macros::format_description!("[year]-[month]-[day]")).ok();
    match day {
        Some(d) => Ok(Some(d.midnight().assume_utc())),
        None => Err(ApiError::field(
            name,
            "an RFC 3339 time (2026-12-01T00:00:00Z) or a UTC day (2026-12-01)",
        )),
    }
}

/// `?mid=` | `?experiment=` | `?since=&until=` (all combine: the time range filters the
/// messages of the others), `&by=channel,urgency,type,variant`. A message's report is for its
/// sender and admins, an experiment's for its owner and admins, a time range's for admins.
pub async fn funnel(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<super::schemas::FunnelAnswer>> {
    let mut by = Vec::new();
    for name in query
        .get("by")
        .map(String::as_str)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        by.push(Dim::parse(name).ok_or_else(|| {
            ApiError::field(
                "by",
                "a comma-separated list of channel, urgency, type, variant",
            )
        })?);
    }
    let mid = query.get("mid").map(|m| parse_id("mid", m)).transpose()?;
    let experiment = query.get("experiment").filter(|e| !e.is_empty());
    if mid.is_some() && experiment.is_some() {
        return Err(ApiError::field(
            "experiment",
            "give a message (mid) or an experiment, not both",
        ));
    }
    let since = instant(&query, "since")?;
    let until = instant(&query, "until")?;
    if let (Some(s), Some(u)) = (since, until)
        && s >= u
    {
        return Err(ApiError::field("until", "must be after since"));
    }

    let messages: Vec<FunnelMessage> = if let Some(mid) = mid {
        sent_by_caller(&state, &actor, mid, "read a message's funnel").await?;
        state.store.funnel_message(mid).await?.into_iter().collect()
    } else if let Some(id) = experiment {
        owned(&state, &actor, id, "read its funnel").await?;
        state
            .store
            .funnel_messages(&FunnelScope::Experiment(id.clone()))
            .await?
    } else {
        if !actor.is_admin() {
            return Err(ApiError::forbidden(
                "only admins may read the funnel of every message in a time range",
            ));
        }
        let until = until.unwrap_or_else(OffsetDateTime::now_utc);
        let since = since.unwrap_or(until - DEFAULT_RANGE);
        if until - since > Duration::days(MAX_RANGE_DAYS) {
            return Err(ApiError::field(
                "since",
                format!("a report covers at most {MAX_RANGE_DAYS} days"),
            ));
        }
        let scope = FunnelScope::Days {
            first: projections::fold::day_of(since),
            last: projections::fold::day_of(until - Duration::nanoseconds(1)),
        };
        state.store.funnel_messages(&scope).await?
    };
    let in_range = |m: &FunnelMessage| {
        since.is_none_or(|s| m.sent_at >= s) && until.is_none_or(|u| m.sent_at < u)
    };
    let messages: Vec<FunnelMessage> = messages.into_iter().filter(in_range).collect();
    if messages.len() > MAX_MESSAGES {
        return Err(ApiError::bad_request(
            "too_many_messages",
            format!(
                "{} messages in this report, at most {MAX_MESSAGES}: narrow it (since, until)",
                messages.len()
            ),
        ));
    }
    let report = projections::funnel::report(state.store.as_ref(), &messages, &by).await?;
    let rfc = |t: Option<OffsetDateTime>| t.and_then(|t| t.format(&Rfc3339).ok());
    Ok(Json(super::schemas::FunnelAnswer {
        report,
        scope: super::schemas::FunnelScope {
            mid,
            experiment: experiment.cloned(),
            since: rfc(since),
            until: rfc(until),
        },
    }))
}
