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

/// A listing: how many, and the items.
#[derive(Debug, Serialize, JsonSchema)]
pub struct List<T> {
    pub count: usize,
    pub results: Vec<T>,
}

impl<T> From<Vec<T>> for List<T> {
    fn from(results: Vec<T>) -> Self {
        Self {
            count: results.len(),
            results,
        }
    }
}

/// A page of a listing with limit/offset links.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Paged<T> {
    /// Items in the whole listing.
    pub count: u64,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<T>,
}

/// `GET /messages/{mid}/receipts`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ReceiptsPage {
    pub mid: Uuid,
    /// Inbox entries the message created.
    pub recipients: u64,
    /// Receipts per channel and status.
    pub counts: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
    /// Receipts in the whole listing.
    pub count: u64,
    pub next: Option<String>,
    pub previous: Option<String>,
    /// The message's experiment, if any.
    pub experiment: Option<String>,
    pub results: Vec<ReceiptView>,
}

/// A receipt, with the recipient's variant when the message is an experiment's.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ReceiptView {
    #[serde(flatten)]
    pub receipt: projections::model::Receipt,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// `POST /threads`: the new thread's id and the alias it holds (none when another thread
/// claimed it first).
#[derive(Debug, Serialize, JsonSchema)]
pub struct ThreadCreated {
    pub tid: Uuid,
    pub alias: Option<String>,
}

/// A thread, with whether the caller is subscribed to it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ThreadView {
    #[serde(flatten)]
    pub thread: projections::model::Thread,
    pub subscribed: bool,
}

/// `POST /subscribe`, `POST /unsubscribe`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Subscription {
    pub tid: Uuid,
    pub subscribed: bool,
}

/// `PATCH /notifications`: the ids this call marked read, and the caller's unread count.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ReadAnswer {
    pub read: Vec<Uuid>,
    pub unread: u64,
}

/// The caller's unread count after a change.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Unread {
    pub unread: u64,
}

/// Seed 004's type filter: type name -> on or off.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TypeFilter {
    pub types: std::collections::BTreeMap<String, bool>,
}

/// `POST /ack`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Acked {
    pub mid: Uuid,
    pub status: &'static str,
}

/// `POST /deliveries/{id}/retry`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Requeued {
    pub id: String,
    pub requeued: bool,
}

/// `GET /devices/channels`: enlisted devices per channel, every user's.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DeviceChannels {
    /// Devices of all users.
    pub total: u64,
    /// Channel (`apns`, `fcm`, `webpush`, `sms`, `email`) -> devices; channels with none are
    /// left out.
    pub channels: std::collections::BTreeMap<String, u64>,
}

/// `GET /messages/scheduled`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ScheduledList {
    pub scheduled: Vec<projections::model::ScheduledMessage>,
}

/// A cancelled schedule (`DELETE /messages/{mid}/schedule`, `POST /cancel`).
#[derive(Debug, Serialize, JsonSchema)]
pub struct Cancelled {
    pub mid: Uuid,
    /// Always `cancelled`.
    pub status: &'static str,
    /// A send in local time: the waves this cancel stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waves_cancelled: Option<u64>,
    /// A send in local time: the waves that had gone out already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waves_sent: Option<u64>,
}

/// `POST /track`: the recorded event.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TrackedAnswer {
    /// The event's id.
    pub id: Uuid,
    /// `conversion`, `click` or a custom name.
    pub event: String,
    pub mid: Option<Uuid>,
}

/// `GET /presence`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PresenceList {
    pub results: Vec<PresenceOf>,
}

/// One user's presence and time online.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PresenceOf {
    pub uid: String,
    /// Connected to a gateway now.
    pub online: bool,
    /// RFC 3339.
    pub last_seen: Option<String>,
    pub sessions: u64,
    pub online_seconds: u64,
    /// Seconds online per UTC day, newest first.
    pub days: Vec<OnlineDay>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct OnlineDay {
    /// `YYYY-MM-DD`.
    pub day: String,
    pub seconds: u64,
}

/// Seed 000 (Ona): one message as its API shows it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct OnaMessage {
    pub id: Uuid,
    /// `message` unless the post named another verb.
    pub verb: String,
    pub message: String,
    pub user: String,
    pub target_type: String,
    pub target_id: String,
    /// RFC 3339.
    pub timestamp: String,
}

/// Seed 000: a row of `GET /messaging`, a message or (with `group_by`) a group's count.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum OnaRow {
    Message(OnaMessage),
    Group(OnaGroup),
}

/// Seed 000: the messages of one group (by period, user and/or verb).
#[derive(Debug, Serialize, JsonSchema)]
pub struct OnaGroup {
    /// Start of the period (RFC 3339), when grouped by time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verb: Option<String>,
    pub count: u64,
    pub earliest_timestamp: String,
    pub latest_timestamp: String,
}

/// Seed 000: `GET /stats/messaging`'s row, a period and its count per verb.
#[derive(Debug, Serialize, JsonSchema)]
pub struct OnaStat {
    /// The period: `2023`, `2023-04` or `2023-04-01`.
    pub group: String,
    /// Verb -> messages in the period.
    #[serde(flatten)]
    pub verbs: std::collections::BTreeMap<String, u64>,
}

/// `GET /reports/funnel`: the report and what it covers.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FunnelAnswer {
    #[serde(flatten)]
    pub report: projections::funnel::FunnelReport,
    pub scope: FunnelScope,
}

/// What a funnel report covers (one of `mid`, `experiment` or a time range).
#[derive(Debug, Serialize, JsonSchema)]
pub struct FunnelScope {
    pub mid: Option<Uuid>,
    pub experiment: Option<String>,
    /// RFC 3339.
    pub since: Option<String>,
    /// RFC 3339.
    pub until: Option<String>,
}

/// Seed 002's acknowledgement of `POST /subscriptions/request` (with the new subscription's
/// id) and of `POST /subscriptions/{id}/send`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct StageAccepted {
    /// Always true.
    pub accepted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
}

/// Seed 002's binary content record (the bytes are in the Object Store under `content`).
#[derive(Debug, Serialize, JsonSchema)]
pub struct BinaryContentRecord {
    pub id: u64,
    /// The stored object's name.
    pub content: String,
    pub content_type: String,
    pub size: usize,
    pub created_at: String,
    pub updated_at: String,
}

/// `GET /experiments/{id}`: per arm its users at each step and their rates, each arm against
/// the control on one metric, the sample-ratio check, and a winner only when the always-valid
/// test says so.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ExperimentReport {
    pub id: String,
    pub owner: String,
    /// RFC 3339.
    pub created_at: String,
    /// Messages sent in the experiment.
    pub messages: u64,
    pub first_mid: Uuid,
    pub last_mid: Uuid,
    pub holdout: f64,
    pub test_share: f64,
    /// The variant a promotion sent to the rest of the audience.
    pub promoted: Option<String>,
    /// The step compared: delivered, opened, clicked or converted.
    pub metric: &'static str,
    pub alpha: f64,
    /// The control arm's name (the holdout, else the first variant).
    pub control: String,
    pub arms: Vec<ArmReport>,
    pub sample_ratio: Option<SampleRatio>,
    pub winner: Option<String>,
    /// How each figure is computed, in words.
    pub method: ReportMethod,
}

/// One arm of an experiment's report.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ArmReport {
    pub name: String,
    pub expected_share: f64,
    pub control: bool,
    pub exposed: u64,
    pub delivered: u64,
    pub opened: u64,
    pub clicked: u64,
    pub converted: u64,
    /// Each step after `exposed` over `exposed`.
    pub rates: std::collections::BTreeMap<&'static str, f64>,
    /// This arm against the control (arms other than the control, once both have users).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub against_control: Option<AgainstControl>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct AgainstControl {
    pub difference: f64,
    pub relative_lift: Option<f64>,
    pub p_value: f64,
    pub ci: [f64; 2],
    pub always_valid_p: f64,
    pub always_valid_ci: [f64; 2],
    pub significant: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SampleRatio {
    pub chi_squared: f64,
    pub p_value: f64,
    pub mismatch: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ReportMethod {
    pub test: String,
    pub fixed_horizon: &'static str,
    pub multiple_arms: &'static str,
    pub sample_ratio: String,
    pub winner: &'static str,
}

/// `GET /webpush/vapid-public-key`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct VapidKey {
    /// The application server key, base64url (uncompressed P-256 point).
    #[serde(rename = "publicKey")]
    pub public_key: String,
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
