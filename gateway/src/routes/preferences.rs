//! `GET /preferences` and `PUT /preferences`: which channels the caller wants, globally and per
//! thread. Opted-out channels receive nothing; the inbox always does.

use axum::Json;
use axum::extract::State;
use exchange::events::{Event, Preferences, PreferencesSet};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::routes::validate::CHANNELS;
use crate::state::AppState;

pub async fn get(
    State(state): State<AppState>,
    Caller(actor): Caller,
) -> ApiResult<Json<Preferences>> {
    let prefs = state.store.preferences(&actor.uid).await?;
    Ok(Json(prefs))
}

fn check_channels(
    field: &str,
    m: &std::collections::BTreeMap<String, bool>,
) -> Result<(), ApiError> {
    match m.keys().find(|c| !CHANNELS.contains(&c.as_str())) {
        Some(bad) => Err(ApiError::field(
            field,
            format!("unknown channel {bad}; use {}", CHANNELS.join(", ")),
        )),
        None => Ok(()),
    }
}

/// The time zone must be an IANA name (stored as the database spells it), the quiet hours
/// two times of day.
fn check_local_time(prefs: &mut Preferences) -> Result<(), ApiError> {
    if let Some(z) = &mut prefs.timezone {
        *z = exchange::local::canonical(z)
            .map_err(|e| ApiError::field("timezone", e.to_string()))?;
    }
    if let Some(q) = &prefs.quiet_hours {
        q.check()
            .map_err(|e| ApiError::field("quiet_hours", e.to_string()))?;
    }
    Ok(())
}

/// Replaces the caller's preferences.
pub async fn put(
    State(state): State<AppState>,
    Caller(actor): Caller,
    JsonBody(prefs): JsonBody<Preferences>,
) -> ApiResult<Json<Preferences>> {
    check_channels("channels", &prefs.channels)?;
    if prefs.threads.len() > 1000 {
        return Err(ApiError::field("threads", "at most 1000 threads"));
    }
    for (tid, m) in &prefs.threads {
        check_channels(&format!("threads.{tid}"), m)?;
    }
    super::types::require_registered(&state, "types", prefs.types.keys()).await?;
    let mut prefs = prefs;
    check_local_time(&mut prefs)?;
    let stored = store(&state, &actor, prefs).await?;
    Ok(Json(stored))
}

/// Records the caller's new preferences and returns them as stored.
async fn store(
    state: &AppState,
    actor: &exchange::Actor,
    preferences: Preferences,
) -> ApiResult<Preferences> {
    let event = Event::PreferencesSet(PreferencesSet {
        uid: actor.uid.clone(),
        preferences,
    });
    let recorded = state.append_consistent(actor, event, None).await?;
    match recorded.envelope.event {
        Event::PreferencesSet(p) => Ok(p.preferences),
        _ => Err(ApiError::internal("unexpected stored event")),
    }
}

/// Seed 004's `GET /notifications/filter`: the caller's type choices.
pub async fn get_filter(
    State(state): State<AppState>,
    Caller(actor): Caller,
) -> ApiResult<Json<super::schemas::TypeFilter>> {
    let prefs = state.store.preferences(&actor.uid).await?;
    Ok(Json(super::schemas::TypeFilter { types: prefs.types }))
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
pub struct FilterPatch {
    types: std::collections::BTreeMap<String, bool>,
}

/// Seed 004's `PATCH /notifications/filter {"types": {...}}`: merges type choices into the
/// caller's preferences, leaving channel choices as they are.
pub async fn patch_filter(
    State(state): State<AppState>,
    Caller(actor): Caller,
    JsonBody(patch): JsonBody<FilterPatch>,
) -> ApiResult<Json<super::schemas::TypeFilter>> {
    super::types::require_registered(&state, "types", patch.types.keys()).await?;
    let mut prefs = state.store.preferences(&actor.uid).await?;
    prefs.types.extend(patch.types);
    let stored = store(&state, &actor, prefs).await?;
    Ok(Json(super::schemas::TypeFilter {
        types: stored.types,
    }))
}
