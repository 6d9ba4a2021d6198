//! Delivery receipts and dead letters: `POST /ack`, `GET /messages/{mid}/receipts`,
//! `GET /deliveries/failed`, `POST /deliveries/{id}/retry`.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use exchange::Actor;
use exchange::events::{AckStatus, DeliveryAcked, DeliveryRequeued, Event};
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, Paging, parse_id};
use crate::state::AppState;

#[derive(Deserialize, schemars::JsonSchema)]
pub struct AckBody {
    mid: Uuid,
    status: AckStatus,
    #[serde(default)]
    device: Option<String>,
}

/// Records that the caller's app received or opened a message (push receipts).
pub async fn ack(
    State(state): State<AppState>,
    Caller(actor): Caller,
    JsonBody(body): JsonBody<AckBody>,
) -> ApiResult<(StatusCode, Json<super::schemas::Acked>)> {
    let channel = match &body.device {
        None => "app".to_owned(),
        Some(id) => state
            .store
            .devices(&actor.uid)
            .await?
            .into_iter()
            .find(|d| &d.id == id)
            .map(|d| d.address.channel().to_owned())
            .ok_or_else(|| ApiError::field("device", "is not one of your devices"))?,
    };
    record_ack(&state, &actor, body.mid, body.status, body.device, channel).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(super::schemas::Acked {
            mid: body.mid,
            status: body.status.as_str(),
        }),
    ))
}

/// Appends a `delivery_acked` event after checking the message is in the caller's inbox.
pub async fn record_ack(
    state: &AppState,
    actor: &Actor,
    mid: Uuid,
    status: AckStatus,
    device_id: Option<String>,
    channel: String,
) -> ApiResult<()> {
    if state
        .notifications_seen_live(&actor.uid, &[mid])
        .await?
        .is_empty()
    {
        return Err(ApiError::not_found("no such message in your inbox"));
    }
    let event = Event::DeliveryAcked(DeliveryAcked {
        mid,
        uid: actor.uid.clone(),
        device_id,
        channel,
        status,
    });
    state.append(actor, event, None).await.map(drop)
}

/// Receipts of one message: counts per channel and status, and per-recipient rows.
/// Message `mid`, when the caller sent it or is an admin (403 otherwise, 404 when there is
/// none).
pub(crate) async fn sent_by_caller(
    state: &AppState,
    actor: &exchange::Actor,
    mid: uuid::Uuid,
    what: &str,
) -> ApiResult<projections::model::StoredMessage> {
    let message = state
        .store
        .message(mid)
        .await?
        .ok_or_else(|| ApiError::not_found("no such message"))?;
    if !(actor.is_admin() || message.sender == actor.uid) {
        return Err(ApiError::forbidden(format!(
            "only the sender or an admin may {what}"
        )));
    }
    Ok(message)
}

pub async fn receipts(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(mid): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<super::schemas::ReceiptsPage>> {
    let paging = Paging::from_query(&query)?;
    let mid = parse_id("mid", &mid)?;
    let message = sent_by_caller(&state, &actor, mid, "read receipts").await?;
    let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (channel, status, n) in state.store.receipt_counts(mid).await? {
        counts.entry(channel).or_default().insert(status, n);
    }
    let page = state
        .store
        .receipts(mid, paging.limit, paging.offset)
        .await?;
    let (next, previous) = paging.links(&format!("/api/v1/messages/{mid}/receipts"), page.total);
    // An experiment's receipts name the recipient's variant.
    let results = page
        .items
        .into_iter()
        .map(|receipt| super::schemas::ReceiptView {
            variant: message
                .experiment
                .as_ref()
                .map(|e| e.arm_name(e.assign(&receipt.uid)).to_owned()),
            receipt,
        })
        .collect();
    Ok(Json(super::schemas::ReceiptsPage {
        mid,
        recipients: message.recipients,
        counts,
        count: page.total,
        next,
        previous,
        experiment: message.experiment.as_ref().map(|e| e.id.clone()),
        results,
    }))
}

/// Dead letters, newest first (admin).
pub async fn failed(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<super::schemas::Paged<projections::model::FailedDelivery>>> {
    caller.require_admin()?;
    let paging = Paging::from_query(&query)?;
    let page = state
        .store
        .failed_deliveries(paging.limit, paging.offset)
        .await?;
    let (next, previous) = paging.links("/api/v1/deliveries/failed", page.total);
    Ok(Json(super::schemas::Paged {
        count: page.total,
        next,
        previous,
        results: page.items,
    }))
}

/// Requeues one dead letter (admin).
pub async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<super::schemas::Requeued>)> {
    caller.require_admin()?;
    let failed = state
        .store
        .failed_delivery(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such failed delivery"))?;
    let event = Event::DeliveryRequeued(DeliveryRequeued {
        mid: failed.mid,
        uid: failed.uid.clone(),
        device_id: failed.device_id.clone(),
    });
    state.append_consistent(&caller.0, event, None).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(super::schemas::Requeued { id, requeued: true }),
    ))
}
