//! Read models: what the API returns, shaped as it returns them.

use exchange::events::{DeviceAddress, MessageOpts};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thread {
    pub tid: Uuid,
    pub name: String,
    pub owner: String,
    pub open_subscribe: bool,
    pub open_publish: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub subscribers: u64,
    pub messages: u64,
    pub alias: Option<String>,
}

/// A page request over a thread's history, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    pub limit: u32,
    pub offset: u64,
    pub sender: Option<String>,
    pub since: Option<OffsetDateTime>,
    pub before: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub id: String,
    pub uid: String,
    #[serde(flatten)]
    pub address: DeviceAddress,
    #[serde(with = "time::serde::rfc3339")]
    pub enlisted_at: OffsetDateTime,
}

/// A message as kept in a thread's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadMessage {
    pub mid: Uuid,
    pub tid: Uuid,
    pub sender: String,
    pub msg: String,
    pub opts: MessageOpts,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// One inbox entry: a message as received by one user. Its `id` is the message id, since a user
/// receives a message at most once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub id: Uuid,
    pub uid: String,
    pub tid: Option<Uuid>,
    pub sender: String,
    pub msg: String,
    /// The registered notification type, if any.
    #[serde(rename = "type")]
    pub ntype: Option<String>,
    /// 0 normal, 50 needs action.
    pub level: u8,
    pub title: Option<String>,
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
    pub opts: MessageOpts,
    pub status: NotificationStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub read_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub archived_at: Option<OffsetDateTime>,
    /// Stream position of the message event: inbox order for cursors, never reused.
    #[serde(skip)]
    pub seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationStatus {
    Unread,
    Read,
    Archived,
}

impl Notification {
    /// A new unread entry of message `m` for `uid` at stream position `seq`.
    pub fn new(m: &StoredMessage, uid: String, seq: u64) -> Self {
        Self {
            id: m.mid,
            uid,
            tid: m.tid,
            sender: m.sender.clone(),
            msg: m.msg.clone(),
            ntype: m.opts.ntype.clone(),
            level: m.opts.level.unwrap_or(0),
            title: m.opts.title.clone(),
            data: m.opts.data.clone(),
            opts: m.opts.clone(),
            status: NotificationStatus::Unread,
            created_at: m.created_at,
            read_at: None,
            archived_at: None,
            seq,
        }
    }

    pub fn status_of(
        read_at: Option<OffsetDateTime>,
        archived_at: Option<OffsetDateTime>,
    ) -> NotificationStatus {
        match (read_at, archived_at) {
            (_, Some(_)) => NotificationStatus::Archived,
            (Some(_), None) => NotificationStatus::Read,
            (None, None) => NotificationStatus::Unread,
        }
    }
}

/// Which inbox entries a listing wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxFilter {
    /// `None`: everything but archived.
    pub status: Option<StatusFilter>,
    pub ntype: Option<String>,
    pub sender: Option<String>,
    pub level: Option<u8>,
    pub tid: Option<Uuid>,
    /// Created at or after.
    pub since: Option<OffsetDateTime>,
    /// Created before.
    pub before: Option<OffsetDateTime>,
    /// Only direct messages (no thread).
    pub direct: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Unread,
    Read,
    Archived,
    All,
}

/// A page request: newest first with limit/offset, or, with `after`, the entries that came
/// after a cursor position, oldest first (incremental sync).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxQuery {
    pub filter: InboxFilter,
    pub limit: u32,
    pub offset: u64,
    pub after: Option<u64>,
}

/// Inbox counters of one user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxStats {
    pub total: u64,
    pub unread: u64,
    /// Entries that arrived since the user last cleared their stats.
    pub unseen: u64,
    pub unread_by_type: std::collections::BTreeMap<String, u64>,
    pub unread_by_level: std::collections::BTreeMap<String, u64>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub seen_at: Option<OffsetDateTime>,
}

/// A registered notification type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationType {
    pub name: String,
    pub title: String,
    pub description: String,
    #[serde(with = "time::serde::rfc3339")]
    pub registered_at: OffsetDateTime,
}

/// One page of a listing plus the total number of entries in the partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: u64,
}

/// Inbox counters of one user, maintained on write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxCounts {
    pub total: u64,
    pub unread: u64,
}

/// A message of any kind, as the fold and the receipts API need it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub mid: Uuid,
    pub tid: Option<Uuid>,
    pub sender: String,
    pub msg: String,
    pub opts: MessageOpts,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Inbox entries the message created (its recipients).
    #[serde(default)]
    pub recipients: u64,
}

/// Where one delivery stands. Receipts only move forward (in this order), except that a
/// requeued dead letter can still succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptStatus {
    Retrying,
    Failed,
    Sent,
    Delivered,
    Opened,
}

impl ReceiptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptStatus::Retrying => "retrying",
            ReceiptStatus::Failed => "failed",
            ReceiptStatus::Sent => "sent",
            ReceiptStatus::Delivered => "delivered",
            ReceiptStatus::Opened => "opened",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "retrying" => ReceiptStatus::Retrying,
            "failed" => ReceiptStatus::Failed,
            "sent" => ReceiptStatus::Sent,
            "delivered" => ReceiptStatus::Delivered,
            "opened" => ReceiptStatus::Opened,
            _ => return None,
        })
    }
}

/// The state of one (message, recipient, device) delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub mid: Uuid,
    pub uid: String,
    pub device_id: String,
    pub channel: String,
    pub status: ReceiptStatus,
    pub attempts: u32,
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A dead letter: a delivery that failed for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedDelivery {
    /// `<mid>.<device_id>`
    pub id: String,
    pub mid: Uuid,
    pub uid: String,
    pub device_id: String,
    pub channel: String,
    pub reason: String,
    pub permanent: bool,
    pub attempts: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub failed_at: OffsetDateTime,
}

impl FailedDelivery {
    pub fn id_of(mid: Uuid, device_id: &str) -> String {
        format!("{mid}.{device_id}")
    }
}

/// Where a scheduled message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleStatus {
    /// Waiting to fire.
    Pending,
    /// Fired: its event is in the stream and it was delivered as any message.
    Sent,
    /// Cancelled before it fired; it is never sent.
    Cancelled,
}

/// A message scheduled for later (`GET /messages/scheduled`), as it is returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduledMessage {
    pub mid: Uuid,
    pub sender: String,
    /// `message_published` (to a thread) or `message_sent` (to users).
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<exchange::events::Audience>,
    pub msg: String,
    #[serde(with = "time::serde::rfc3339")]
    pub deliver_at: OffsetDateTime,
    /// When it was scheduled.
    #[serde(with = "time::serde::rfc3339")]
    pub scheduled_at: OffsetDateTime,
    pub status: ScheduleStatus,
    /// When it was sent or cancelled.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub settled_at: Option<OffsetDateTime>,
    /// Stream position of the waiting schedule (what a cancel must find).
    #[serde(skip)]
    pub schedule_seq: u64,
}
