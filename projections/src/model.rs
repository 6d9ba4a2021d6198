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
