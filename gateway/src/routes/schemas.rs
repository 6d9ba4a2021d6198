//! Answer types that handlers return and the OpenAPI document describes (the same type for
//! both, so the document follows the code), and the enlist body's two shapes.

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// `GET /ping`, `GET /health`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Ping {
    pub ok: bool,
    pub service: &'static str,
    pub version: &'static str,
    /// The delivery channels this process is configured with.
    pub channels: Vec<String>,
}

/// A refused or failed request.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Error")]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code (`invalid_field`, `unauthorized`, `not_found`, ...).
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// The request field at fault, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// 202: the message event is durably in the log (or scheduled).
#[derive(Debug, Serialize, JsonSchema)]
pub struct Accepted {
    /// The message id (a retried `Idempotency-Key` answers the original one; for a send in
    /// the recipients' local time, the first wave still waiting, or null when every wave went
    /// out at once).
    pub mid: Option<Uuid>,
    /// When a scheduled message will be sent (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_at: Option<String>,
    /// A send in the recipients' local time: the requested local time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_at_local: Option<Value>,
    /// A send in the recipients' local time: one wave per group of time zones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waves: Option<Vec<Value>>,
}

impl Accepted {
    pub fn mid(mid: Uuid) -> Self {
        Self {
            mid: Some(mid),
            deliver_at: None,
            deliver_at_local: None,
            waves: None,
        }
    }
}

/// `GET /notifications`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct InboxPage {
    /// Entries matching the filter.
    pub count: u64,
    /// The caller's unread entries (whatever the filter).
    pub unread: u64,
    /// The next page (limit/offset paging), if any.
    pub next: Option<String>,
    /// The previous page, if any.
    pub previous: Option<String>,
    /// Continue from here with `?cursor=` to get what arrives later, oldest first.
    pub cursor: String,
    pub results: Vec<projections::model::Notification>,
}

/// Seed 002's refusal of `POST /subscriptions/{id}/send` (its own shape, not an error).
#[derive(Debug, Serialize, JsonSchema)]
pub struct StageSendRefused {
    /// Always false.
    pub accepted: bool,
    pub reason: String,
}

/// `POST /enlist`: a native device or a browser's Push API subscription.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum EnlistBody {
    Native(super::devices::NativeDevice),
    WebPush(super::devices::WebPushSubscription),
}
