//! Notification types: `POST /types` (admin) registers or re-describes one, `GET /types` lists
//! them. Messages may only use registered types; users enable or disable them in preferences.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use exchange::events::{Event, TypeRegistered};
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::routes::validate;
use crate::state::AppState;

#[derive(Deserialize, schemars::JsonSchema)]
pub struct TypeBody {
    name: String,
    title: String,
    #[serde(default)]
    description: String,
}

/// Type names: 1-64 of `[a-z0-9_.-]`.
pub fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            "must be 1-64 characters of a-z, 0-9, _ . -",
        ))
    }
}

pub async fn register(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<TypeBody>,
) -> ApiResult<(StatusCode, Json<projections::model::NotificationType>)> {
    caller.require_admin()?;
    check_name("name", &body.name)?;
    validate::text("title", &body.title, 200)?;
    if body.description.chars().count() > 2000 {
        return Err(ApiError::field(
            "description",
            "must be at most 2000 characters",
        ));
    }
    let event = Event::TypeRegistered(TypeRegistered {
        name: body.name.clone(),
        title: body.title,
        description: body.description,
    });
    state.append_consistent(&caller.0, event, None).await?;
    let t = state
        .store
        .types()
        .await?
        .into_iter()
        .find(|t| t.name == body.name)
        .ok_or_else(|| ApiError::unavailable("the type is stored but not projected yet"))?;
    Ok((StatusCode::CREATED, Json(t)))
}

pub async fn list(
    State(state): State<AppState>,
    _caller: Caller,
) -> ApiResult<Json<super::schemas::List<projections::model::NotificationType>>> {
    let types = state.store.types().await?;
    Ok(Json(types.into()))
}

/// 400 unless every name is a registered type.
pub async fn require_registered<'a>(
    state: &AppState,
    field: &str,
    names: impl IntoIterator<Item = &'a String>,
) -> ApiResult<()> {
    let names: Vec<&String> = names.into_iter().collect();
    if names.is_empty() {
        return Ok(());
    }
    let known = state.store.types().await?;
    match names.iter().find(|n| !known.iter().any(|t| t.name == ***n)) {
        Some(unknown) => Err(ApiError::field(
            field,
            format!("unknown notification type {unknown}; register it with POST /api/v1/types"),
        )),
        None => Ok(()),
    }
}
