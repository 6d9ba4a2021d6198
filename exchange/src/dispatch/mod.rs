//! Delivery: tasks on a JetStream work queue with one lane per urgency, and the dispatcher that
//! sends each task to the recipient's devices through the configured channels.
//!
//! A task is one message for a batch of recipients (up to a few hundred; one for a message to
//! one user). The projector creates tasks (through its outbox) when it folds a message into
//! inboxes; the dispatcher resolves the recipients' devices in bulk through the [`Directory`]
//! the store implements, so the core depends on no store.

pub mod caps;
pub mod metrics;
mod queue;
pub mod throttle;
mod worker;

pub use caps::{Cap, CapSettings};
pub use queue::{DISPATCH_STREAM, Lane, LaneDepth, TaskQueue, depths};
pub use throttle::Limits;
pub use worker::{DispatchSettings, Dispatcher, system_actor as worker_actor};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::events::{DeviceAddress, MessageOpts, Urgency};

/// One message to deliver to the devices of one recipient or of a batch of recipients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DispatchTask {
    pub mid: Uuid,
    /// The one recipient (empty in a batch).
    #[serde(default)]
    pub uid: String,
    /// A batch's recipients, in the fold's order (empty for a one-recipient task). Tasks
    /// written before batching have only `uid`, and are handled as a batch of one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uids: Vec<String>,
    /// Which batch of the message's recipients this is (part of its JetStream message id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<u32>,
    pub tid: Option<Uuid>,
    pub sender: String,
    pub msg: String,
    #[serde(default)]
    pub opts: MessageOpts,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Restricts the task to these devices (an admin requeue of one dead letter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only_devices: Option<Vec<String>>,
    /// Distinguishes repeated requeues of the same delivery (their JetStream message ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requeue: Option<Uuid>,
    /// The once-per-message publication on a thread's MQTT topic (no recipient).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub thread_topic: bool,
    /// A fallback waiting in the fallback lane until this instant.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub fallback_due: Option<OffsetDateTime>,
    /// Restricts the task to these channels (a due fallback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only_channels: Option<Vec<String>>,
    /// Held for its recipients' quiet hours: waits in the waiting lane until this instant.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub hold_until: Option<OffsetDateTime>,
    /// Released from a hold that ended at this instant: sent without looking at quiet hours
    /// again.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub released_from: Option<OffsetDateTime>,
    /// The trace context of the fold that queued the task (tracing on): the dispatcher's span
    /// continues that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::trace::TraceParent>,
}

impl DispatchTask {
    pub fn urgency(&self) -> Urgency {
        self.opts.urgency.unwrap_or(Urgency::Normal)
    }

    /// The recipients: a batch's, or the one recipient's.
    pub fn recipients(&self) -> &[String] {
        if self.uids.is_empty() {
            std::slice::from_ref(&self.uid)
        } else {
            &self.uids
        }
    }

    /// Whether quiet hours may hold this task: not for high urgency, critical messages, an
    /// admin's requeue, or a task already released from a hold.
    pub fn may_be_held(&self) -> bool {
        self.urgency() < Urgency::High
            && !self.opts.critical()
            && self.requeue.is_none()
            && self.released_from.is_none()
            && !self.thread_topic
    }

    /// The same task for some of its recipients (a due fallback for those who did not read).
    pub fn for_recipients(&self, uids: Vec<String>) -> Self {
        let mut t = self.clone();
        if self.uids.is_empty() {
            t.uid = uids.into_iter().next().unwrap_or_default();
        } else {
            t.uids = uids;
        }
        t
    }

    /// JetStream message id: the same task enqueued twice (a re-run outbox, a re-projected
    /// event inside the duplicate window) is stored once.
    pub fn message_id(&self) -> String {
        let uid = match self.batch {
            Some(k) => format!("b{k}"),
            None => crate::subject::token(&self.uid),
        };
        // A hold, and its release, are named after the task they came from (a fallback's and
        // its message's own task may be held until the same instant).
        if self.hold_until.is_some() || self.released_from.is_some() {
            let (kind, until) = match (self.hold_until, self.released_from) {
                (Some(u), _) => ("held", u),
                (None, Some(u)) => ("released", u),
                (None, None) => ("held", self.created_at),
            };
            let from = DispatchTask {
                hold_until: None,
                released_from: None,
                ..self.clone()
            };
            return format!("{kind}.{}.{}", until.unix_timestamp(), from.message_id());
        }
        if let Some(r) = self.requeue {
            format!("requeue.{r}")
        } else if self.thread_topic {
            format!("thread.{}", self.mid)
        } else if self.fallback_due.is_some() {
            format!("fallback-wait.{}.{uid}", self.mid)
        } else if self.only_channels.is_some() {
            format!("fallback.{}.{uid}", self.mid)
        } else if self.batch.is_some() {
            format!("batch.{}.{uid}", self.mid)
        } else {
            format!("task.{}.{uid}", self.mid)
        }
    }

    /// The delivered-markers key prefix of this task's progress records: unique per task (its
    /// message id), in the characters a KV key allows.
    pub fn progress_key(&self) -> String {
        format!("{}.{:016x}", self.mid, fnv1a(self.message_id().as_bytes()))
    }

    /// Whether this task may use `channel`: a due fallback only its fallback channels; any
    /// other task the message's channels minus its fallback channels.
    pub fn allows_channel(&self, channel: &str) -> bool {
        if let Some(only) = &self.only_channels {
            return only.iter().any(|c| c == channel);
        }
        let listed = self
            .opts
            .channels
            .as_ref()
            .is_none_or(|only| only.iter().any(|c| c == channel));
        let reserved = self
            .opts
            .fallback
            .as_ref()
            .is_some_and(|f| f.channels.iter().any(|c| c == channel));
        listed && !reserved
    }
}

/// What one provider call achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The provider accepted the message.
    Accepted { provider_id: Option<String> },
    /// Worth trying again (timeouts, 5xx, 429, connection errors), not before `after` if given.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// The device address is dead (APNs 410/BadDeviceToken, FCM UNREGISTERED, Web Push 404/410):
    /// disable the device.
    DeviceGone { reason: String },
    /// The provider rejected this message for good (bad payload, auth misconfiguration).
    Rejected { reason: String },
    /// The provider asks to slow down (429): every send to it pauses for `after` (or a
    /// second), then this one is tried again.
    Throttled {
        reason: String,
        after: Option<Duration>,
    },
}

/// What a channel builds once per task and reuses for each device (a payload, a body): the
/// message is serialized once per message and channel, not once per device.
#[derive(Default)]
pub struct Prepared {
    slots: std::sync::Mutex<Vec<(&'static str, bytes::Bytes)>>,
}

impl Prepared {
    /// The bytes cached under `key`, built by `build` the first time.
    pub fn get_or(&self, key: &'static str, build: impl FnOnce() -> Vec<u8>) -> bytes::Bytes {
        if let Ok(slots) = self.slots.lock()
            && let Some((_, b)) = slots.iter().find(|(k, _)| *k == key)
        {
            return b.clone();
        }
        let built = bytes::Bytes::from(build());
        if let Ok(mut slots) = self.slots.lock()
            && !slots.iter().any(|(k, _)| *k == key)
        {
            slots.push((key, built.clone()));
        }
        built
    }
}

/// Everything a channel needs to send one message to one device.
#[derive(Clone)]
pub struct Delivery<'a> {
    pub task: &'a DispatchTask,
    /// The recipient (one of the task's).
    pub uid: &'a str,
    /// Built once per task, shared by its devices.
    pub prepared: &'a Prepared,
    pub device_id: &'a str,
    pub address: &'a DeviceAddress,
    /// 1 for the first try.
    pub attempt: u32,
}

impl Delivery<'_> {
    /// A stable id per (message, device), for providers that take one (APNs `apns-id`).
    pub fn delivery_uuid(&self) -> Uuid {
        let mut bytes = *self.task.mid.as_bytes();
        let h = fnv1a(self.device_id.as_bytes());
        for (i, b) in h.to_be_bytes().iter().enumerate() {
            bytes[8 + i] ^= b;
        }
        // Keep the RFC 4122 variant bits valid.
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Uuid::from_bytes(bytes)
    }

    pub fn title(&self) -> &str {
        self.task.opts.title.as_deref().unwrap_or("")
    }
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A delivery channel (APNs, SMS, e-mail, ...).
#[async_trait]
pub trait Channel: Send + Sync {
    /// The channel name, equal to [`DeviceAddress::channel`] of the devices it serves.
    fn name(&self) -> &'static str;
    async fn send(&self, delivery: &Delivery<'_>) -> Outcome;
}

/// The configured channels, by name, plus the MQTT topic channel.
#[derive(Clone, Default)]
pub struct Channels {
    by_name: HashMap<&'static str, Arc<dyn Channel>>,
    mqtt: Option<Arc<crate::channels::mqtt::MqttChannel>>,
}

impl Channels {
    pub fn add(&mut self, channel: Arc<dyn Channel>) {
        self.by_name.insert(channel.name(), channel);
    }

    pub fn set_mqtt(&mut self, mqtt: Arc<crate::channels::mqtt::MqttChannel>) {
        self.mqtt = Some(mqtt);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Channel>> {
        self.by_name.get(name)
    }

    /// The configured channels but MQTT.
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Channel>> {
        self.by_name.values()
    }

    pub fn mqtt(&self) -> Option<&Arc<crate::channels::mqtt::MqttChannel>> {
        self.mqtt.as_ref()
    }

    /// Names of the configured channels, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self.by_name.keys().copied().collect();
        if self.mqtt.is_some() {
            v.push("mqtt");
        }
        v.sort_unstable();
        v
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty() && self.mqtt.is_none()
    }
}

/// One recipient's devices and preferences, as a batch reads them.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipient {
    pub uid: String,
    pub devices: Vec<(String, DeviceAddress)>,
    pub preferences: crate::events::Preferences,
}

/// What the dispatcher needs from the read side.
#[async_trait]
pub trait Directory: Send + Sync {
    /// A user's current devices as `(device_id, address)`.
    async fn devices(&self, uid: &str) -> Result<Vec<(String, DeviceAddress)>, String>;
    /// A user's delivery preferences (defaults when never set).
    async fn preferences(&self, uid: &str) -> Result<crate::events::Preferences, String>;
    /// Devices and preferences of a batch's recipients, in the order given. The default asks
    /// for each, a few at a time; a store answers in one go where it can.
    async fn recipients(&self, uids: &[String]) -> Result<Vec<Recipient>, String> {
        let mut out = Vec::with_capacity(uids.len());
        for chunk in uids.chunks(16) {
            let reads = chunk.iter().map(|uid| recipient(self, uid));
            for r in futures::future::join_all(reads).await {
                out.push(r?);
            }
        }
        Ok(out)
    }
    /// Whether the user acknowledged the message on a live WebSocket (skip-if-seen).
    async fn seen_live(&self, mid: Uuid, uid: &str) -> Result<bool, String>;
    /// Whether the user's notification of `mid` is read (or gone).
    async fn is_read(&self, mid: Uuid, uid: &str) -> Result<bool, String>;
}

/// One recipient's devices and preferences, read apart.
async fn recipient<D: Directory + ?Sized>(dir: &D, uid: &str) -> Result<Recipient, String> {
    let (devices, preferences) =
        futures::future::join(dir.devices(uid), dir.preferences(uid)).await;
    Ok(Recipient {
        uid: uid.to_owned(),
        devices: devices?,
        preferences: preferences?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(urgency: Option<Urgency>) -> DispatchTask {
        DispatchTask {
            trace: None,
            mid: Uuid::now_v7(),
            uid: "a.b".into(),
            uids: Vec::new(),
            batch: None,
            tid: None,
            sender: "s".into(),
            msg: "m".into(),
            opts: MessageOpts {
                urgency,
                ..Default::default()
            },
            created_at: OffsetDateTime::now_utc(),
            only_devices: None,
            requeue: None,
            thread_topic: false,
            fallback_due: None,
            only_channels: None,
            hold_until: None,
            released_from: None,
        }
    }

    #[test]
    fn delivery_ids_are_stable_per_message_and_device() {
        let t = task(None);
        let addr = DeviceAddress::Sms {
            phone: "+1555".into(),
        };
        let prepared = Prepared::default();
        let d = |id| Delivery {
            task: &t,
            uid: "a.b",
            prepared: &prepared,
            device_id: id,
            address: &addr,
            attempt: 1,
        };
        assert_eq!(d("x").delivery_uuid(), d("x").delivery_uuid());
        assert_ne!(d("x").delivery_uuid(), d("y").delivery_uuid());
        assert_eq!(t.urgency(), Urgency::Normal);
        assert!(t.message_id().contains("~"), "uids are token-encoded");
        // Holds of a task and of its fallback until the same instant are told apart.
        let until = OffsetDateTime::now_utc();
        let held = |t: &DispatchTask| DispatchTask {
            hold_until: Some(until),
            ..t.clone()
        };
        let fallback = DispatchTask {
            only_channels: Some(vec!["sms".into()]),
            ..t.clone()
        };
        assert_ne!(held(&t).message_id(), held(&fallback).message_id());
        assert_ne!(held(&t).message_id(), t.message_id());
        let released = DispatchTask {
            released_from: Some(until),
            ..t.clone()
        };
        assert_ne!(released.message_id(), held(&t).message_id());
    }
}
