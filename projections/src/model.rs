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
    pub opts: MessageOpts,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub read_at: Option<OffsetDateTime>,
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
