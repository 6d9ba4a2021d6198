//! The event vocabulary: every state change in msgxc is one of these, appended to JetStream.
//!
//! Events are immutable facts. Their JSON form is the public contract analysts read (see
//! `schema/events/`), so changes must be additive; a breaking change bumps [`SCHEMA_VERSION`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::experiment::Experiment;
use crate::subject;

/// Version of the envelope and payload shapes written by this build.
pub const SCHEMA_VERSION: u32 = 1;

/// One event as stored in the log: metadata shared by every kind plus the typed payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Envelope {
    /// Schema version of this event ([`SCHEMA_VERSION`] when written).
    pub v: u32,
    /// Time-ordered UUIDv7, unique per event. For message events it is also the message id (`mid`).
    pub id: Uuid,
    /// When the gateway accepted the request (RFC 3339, UTC).
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub occurred_at: OffsetDateTime,
    /// Who caused the event.
    pub actor: Actor,
    /// The kind and its payload: `{"type": "...", "data": {...}}`.
    #[serde(flatten)]
    pub event: Event,
}

impl Envelope {
    /// A new event caused by `actor`, stamped now with a fresh UUIDv7. A message's experiment
    /// without an id (no `opts.experiment`) is named after the message.
    pub fn new(actor: Actor, mut event: Event) -> Self {
        let id = Uuid::now_v7();
        if let Event::MessagePublished(MessagePublished {
            experiment: Some(e),
            ..
        })
        | Event::MessageSent(MessageSent {
            experiment: Some(e),
            ..
        }) = &mut event
            && e.id.is_empty()
        {
            e.id = id.to_string();
        }
        Self {
            v: SCHEMA_VERSION,
            id,
            occurred_at: OffsetDateTime::now_utc(),
            actor,
            event,
        }
    }

    /// The JetStream subject this event is stored under (see [`crate::subject`]).
    pub fn subject(&self) -> String {
        let (aggregate, id) = self.event.aggregate(self.id);
        subject::event_subject(aggregate, &id, self.event.kind())
    }
}

impl Envelope {
    /// Decodes an envelope from its JSON. The derived `Deserialize` (a flattened event) first
    /// buffers the whole object in a generic tree; the fields this build writes, in the order
    /// it writes them (`v`, `id`, `occurred_at`, `actor`, then `type` before `data`), are read
    /// here straight into their types. Any other shape (another order, an unknown field) is
    /// read by the derived path, which also words the errors.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        match serde_json::from_slice::<InOrder>(bytes) {
            Ok(InOrder(env)) => Ok(env),
            Err(_) => serde_json::from_slice(bytes),
        }
    }
}

/// An [`Envelope`] read by [`Envelope::from_json`]'s direct path.
struct InOrder(Envelope);

impl<'de> Deserialize<'de> for InOrder {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(InOrderVisitor)
    }
}

struct InOrderVisitor;

/// `occurred_at` in its RFC 3339 form.
#[derive(Deserialize)]
struct Rfc3339(#[serde(with = "time::serde::rfc3339")] OffsetDateTime);

impl<'de> serde::de::Visitor<'de> for InOrderVisitor {
    type Value = InOrder;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an event envelope")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<InOrder, A::Error> {
        use serde::de::Error;
        let (mut v, mut id, mut occurred_at, mut actor) = (None, None, None, None);
        loop {
            let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? else {
                return Err(A::Error::custom("no event type"));
            };
            match &*key {
                "v" => v = Some(map.next_value()?),
                "id" => id = Some(map.next_value()?),
                "occurred_at" => occurred_at = Some(map.next_value::<Rfc3339>()?.0),
                "actor" => actor = Some(map.next_value()?),
                // The event reads the rest of the object: its tag, then its data.
                "type" => {
                    let event = Event::deserialize(serde::de::value::MapAccessDeserializer::new(
                        TagFirst {
                            tag_pending: true,
                            map: &mut map,
                        },
                    ))?;
                    let missing = || A::Error::custom("envelope fields after the event");
                    return Ok(InOrder(Envelope {
                        v: v.ok_or_else(missing)?,
                        id: id.ok_or_else(missing)?,
                        occurred_at: occurred_at.ok_or_else(missing)?,
                        actor: actor.ok_or_else(missing)?,
                        event,
                    }));
                }
                other => return Err(A::Error::unknown_field(other, &[])),
            }
        }
    }
}

/// The envelope's map from its `type` key on (the key itself already read by the envelope).
struct TagFirst<'a, A> {
    tag_pending: bool,
    map: &'a mut A,
}

impl<'de, A: serde::de::MapAccess<'de>> serde::de::MapAccess<'de> for TagFirst<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        if std::mem::take(&mut self.tag_pending) {
            return seed
                .deserialize(serde::de::value::BorrowedStrDeserializer::new("type"))
                .map(Some);
        }
        self.map.next_key_seed(seed)
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// The principal behind an event: the JWT `sub` and its roles, or the exchange itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Actor {
    pub uid: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

impl Actor {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }
}

/// Every event kind. Serialized adjacently tagged so the kind is a plain string field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum Event {
    DeviceEnlisted(DeviceEnlisted),
    DeviceRemoved(DeviceRemoved),
    ThreadCreated(ThreadCreated),
    Subscribed(Subscribed),
    Unsubscribed(Unsubscribed),
    MessagePublished(MessagePublished),
    MessageSent(MessageSent),
    NotificationsRead(NotificationsRead),
    DeliverySent(DeliverySent),
    DeliveryFailed(DeliveryFailed),
    DeviceDisabled(DeviceDisabled),
    DeliveryAcked(DeliveryAcked),
    DeliveryRequeued(DeliveryRequeued),
    PreferencesSet(PreferencesSet),
    TypeRegistered(TypeRegistered),
    NotificationsArchived(NotificationsArchived),
    NotificationsDeleted(NotificationsDeleted),
    InboxReadAll(InboxReadAll),
    InboxSeen(InboxSeen),
    UserBlocked(UserBlocked),
    UserUnblocked(UserUnblocked),
    MessageDeleted(MessageDeleted),
    DeliveriesSettled(DeliveriesSettled),
    MessageScheduled(MessageScheduled),
    ScheduleCancelled(ScheduleCancelled),
    Tracked(Tracked),
    SessionEnded(SessionEnded),
    StageRecordSaved(StageRecordSaved),
    StageRecordDeleted(StageRecordDeleted),
    StageTick(StageTick),
    StageSendRequested(StageSendRequested),
}

/// The aggregate an event belongs to; the second subject token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    User,
    Thread,
    Message,
    Type,
    /// Stage-based messaging (seed 002): schedules, message sets, messages, subscriptions.
    Stage,
}

impl Aggregate {
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregate::User => "user",
            Aggregate::Thread => "thread",
            Aggregate::Message => "message",
            Aggregate::Type => "type",
            Aggregate::Stage => "stage",
        }
    }
}

impl Event {
    /// The snake_case kind name, identical to the serialized `type` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::DeviceEnlisted(_) => "device_enlisted",
            Event::DeviceRemoved(_) => "device_removed",
            Event::ThreadCreated(_) => "thread_created",
            Event::Subscribed(_) => "subscribed",
            Event::Unsubscribed(_) => "unsubscribed",
            Event::MessagePublished(_) => "message_published",
            Event::MessageSent(_) => "message_sent",
            Event::NotificationsRead(_) => "notifications_read",
            Event::DeliverySent(_) => "delivery_sent",
            Event::DeliveryFailed(_) => "delivery_failed",
            Event::DeviceDisabled(_) => "device_disabled",
            Event::DeliveryAcked(_) => "delivery_acked",
            Event::DeliveryRequeued(_) => "delivery_requeued",
            Event::PreferencesSet(_) => "preferences_set",
            Event::TypeRegistered(_) => "type_registered",
            Event::NotificationsArchived(_) => "notifications_archived",
            Event::NotificationsDeleted(_) => "notifications_deleted",
            Event::InboxReadAll(_) => "inbox_read_all",
            Event::InboxSeen(_) => "inbox_seen",
            Event::UserBlocked(_) => "user_blocked",
            Event::UserUnblocked(_) => "user_unblocked",
            Event::MessageDeleted(_) => "message_deleted",
            Event::DeliveriesSettled(_) => "deliveries_settled",
            Event::MessageScheduled(_) => "message_scheduled",
            Event::ScheduleCancelled(_) => "schedule_cancelled",
            Event::Tracked(_) => "tracked",
            Event::SessionEnded(_) => "session_ended",
            Event::StageRecordSaved(_) => "stage_record_saved",
            Event::StageRecordDeleted(_) => "stage_record_deleted",
            Event::StageTick(_) => "stage_tick",
            Event::StageSendRequested(_) => "stage_send_requested",
        }
    }

    /// Every kind name, in declaration order (used by schema generation and docs).
    pub const KINDS: [&'static str; 31] = [
        "device_enlisted",
        "device_removed",
        "thread_created",
        "subscribed",
        "unsubscribed",
        "message_published",
        "message_sent",
        "notifications_read",
        "delivery_sent",
        "delivery_failed",
        "device_disabled",
        "delivery_acked",
        "delivery_requeued",
        "preferences_set",
        "type_registered",
        "notifications_archived",
        "notifications_deleted",
        "inbox_read_all",
        "inbox_seen",
        "user_blocked",
        "user_unblocked",
        "message_deleted",
        "deliveries_settled",
        "message_scheduled",
        "schedule_cancelled",
        "tracked",
        "session_ended",
        "stage_record_saved",
        "stage_record_deleted",
        "stage_tick",
        "stage_send_requested",
    ];

    /// Which aggregate the event is filed under and that aggregate's id.
    /// A message sent to one user is filed under that user; multicasts and broadcasts under the message.
    pub fn aggregate(&self, event_id: Uuid) -> (Aggregate, String) {
        match self {
            Event::DeviceEnlisted(e) => (Aggregate::User, e.uid.clone()),
            Event::DeviceRemoved(e) => (Aggregate::User, e.uid.clone()),
            Event::NotificationsRead(e) => (Aggregate::User, e.uid.clone()),
            Event::DeviceDisabled(e) => (Aggregate::User, e.uid.clone()),
            Event::PreferencesSet(e) => (Aggregate::User, e.uid.clone()),
            Event::NotificationsArchived(e) => (Aggregate::User, e.uid.clone()),
            Event::NotificationsDeleted(e) => (Aggregate::User, e.uid.clone()),
            Event::InboxReadAll(e) => (Aggregate::User, e.uid.clone()),
            Event::InboxSeen(e) => (Aggregate::User, e.uid.clone()),
            Event::UserBlocked(e) => (Aggregate::User, e.uid.clone()),
            Event::UserUnblocked(e) => (Aggregate::User, e.uid.clone()),
            Event::Tracked(e) => (Aggregate::User, e.uid.clone()),
            Event::SessionEnded(e) => (Aggregate::User, e.uid.clone()),
            Event::StageRecordSaved(e) => {
                (Aggregate::Stage, format!("{}.{}", e.kind.as_str(), e.id))
            }
            Event::StageRecordDeleted(e) => {
                (Aggregate::Stage, format!("{}.{}", e.kind.as_str(), e.id))
            }
            Event::StageTick(e) => (Aggregate::Stage, format!("schedule.{}", e.schedule)),
            Event::StageSendRequested(e) => {
                (Aggregate::Stage, format!("subscription.{}", e.subscription))
            }
            Event::MessageDeleted(e) => (Aggregate::Message, e.mid.to_string()),
            Event::TypeRegistered(e) => (Aggregate::Type, e.name.clone()),
            Event::DeliverySent(e) => (Aggregate::Message, e.mid.to_string()),
            Event::DeliveryFailed(e) => (Aggregate::Message, e.mid.to_string()),
            Event::DeliveriesSettled(e) => (Aggregate::Message, e.mid.to_string()),
            Event::MessageScheduled(e) => (Aggregate::Message, e.mid.to_string()),
            Event::ScheduleCancelled(e) => (Aggregate::Message, e.mid.to_string()),
            Event::DeliveryAcked(e) => (Aggregate::Message, e.mid.to_string()),
            Event::DeliveryRequeued(e) => (Aggregate::Message, e.mid.to_string()),
            Event::ThreadCreated(e) => (Aggregate::Thread, e.tid.to_string()),
            Event::Subscribed(e) => (Aggregate::Thread, e.tid.to_string()),
            Event::Unsubscribed(e) => (Aggregate::Thread, e.tid.to_string()),
            Event::MessagePublished(e) => (Aggregate::Thread, e.tid.to_string()),
            Event::MessageSent(e) => match &e.audience {
                Audience::User { uid } => (Aggregate::User, uid.clone()),
                Audience::Users { .. } | Audience::All => {
                    (Aggregate::Message, event_id.to_string())
                }
            },
        }
    }
}

/// A delivery address a user enlisted. `device_id` is derived from the address, so re-enlisting
/// the same token yields the same device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeviceEnlisted {
    pub uid: String,
    pub device_id: String,
    pub address: DeviceAddress,
}

/// Where and how to reach one device. The tag is the delivery channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "channel", rename_all = "snake_case")]
pub enum DeviceAddress {
    /// An iOS device token for APNs (hex).
    Apns { token: String },
    /// An Android registration token for FCM.
    Fcm { token: String },
    /// A browser's Push API subscription (RFC 8030 endpoint, RFC 8291 keys).
    Webpush {
        endpoint: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expiration_time: Option<i64>,
        p256dh: String,
        auth: String,
    },
    /// A phone number in E.164 form.
    Sms { phone: String },
    /// An e-mail address.
    Email { email: String },
}

impl DeviceAddress {
    /// The channel name, identical to the serialized `channel` tag.
    pub fn channel(&self) -> &'static str {
        match self {
            DeviceAddress::Apns { .. } => "apns",
            DeviceAddress::Fcm { .. } => "fcm",
            DeviceAddress::Webpush { .. } => "webpush",
            DeviceAddress::Sms { .. } => "sms",
            DeviceAddress::Email { .. } => "email",
        }
    }

    /// The part of the address that identifies the device.
    pub fn key(&self) -> &str {
        match self {
            DeviceAddress::Apns { token } | DeviceAddress::Fcm { token } => token,
            DeviceAddress::Webpush { endpoint, .. } => endpoint,
            DeviceAddress::Sms { phone } => phone,
            DeviceAddress::Email { email } => email,
        }
    }

    /// Push tokens identify one physical device, so one can belong to only one user at a time:
    /// enlisting it for another user moves it. Phone numbers and e-mail addresses may be shared.
    pub fn is_exclusive(&self) -> bool {
        matches!(
            self,
            DeviceAddress::Apns { .. } | DeviceAddress::Fcm { .. } | DeviceAddress::Webpush { .. }
        )
    }

    /// Stable device id: `<channel>-<first 16 hex chars of sha256(address key)>`.
    pub fn device_id(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.key().as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}-{hex}", self.channel())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeviceRemoved {
    pub uid: String,
    pub device_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ThreadCreated {
    pub tid: Uuid,
    pub name: String,
    /// The creator; owns the thread.
    pub owner: String,
    /// Anyone may subscribe (otherwise only the owner or an admin may).
    pub open_subscribe: bool,
    /// Any subscriber may publish (otherwise only the owner or an admin may).
    pub open_publish: bool,
    /// A unique external name such as `xform:1337` or `project:7` (seed 000's targets). When
    /// two threads claim one alias, the first in the stream keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Subscribed {
    pub tid: Uuid,
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Unsubscribed {
    pub tid: Uuid,
    pub uid: String,
}

/// A message to every subscriber of a thread at the time the event is applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MessagePublished {
    pub tid: Uuid,
    pub sender: String,
    pub msg: String,
    #[serde(default)]
    pub opts: MessageOpts,
    /// Variants and holdout: each recipient gets the variant of their arm (see
    /// [`crate::experiment`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<Experiment>,
}

/// A message from an admin to one user, a list of users, or everyone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MessageSent {
    pub audience: Audience,
    pub sender: String,
    pub msg: String,
    #[serde(default)]
    pub opts: MessageOpts,
    /// Variants and holdout, as on [`MessagePublished`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<Experiment>,
}

/// Who a sent message is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Audience {
    /// `POST /send`.
    User { uid: String },
    /// `POST /multicast` (deduplicated, order kept).
    Users { uids: Vec<String> },
    /// `POST /broadcast`: every user known to the exchange when the event is applied.
    All,
}

/// Per-message options. Known keys are typed; unknown keys are kept verbatim in `extra` so a
/// client's data survives the round trip even before the exchange understands it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MessageOpts {
    /// Delivery urgency, 1 very-low .. 4 high (default 3, normal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urgency: Option<Urgency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Application data handed to the client unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
    /// Seconds a push provider may keep trying to reach an offline device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// A newer message with the same key replaces an undelivered older one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collapse_key: Option<String>,
    /// Deep link the app opens (universal link / app link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Restricts delivery to these channels (apns, fcm, webpush, sms, email, mqtt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// Channels used only if the notification is still unread after a delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// A registered notification type (`POST /types`).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub ntype: Option<String>,
    /// 0 normal, 50 needs action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<u8>,
    /// Level-50 admin messages marked mandatory ignore the recipients' type preferences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mandatory: Option<bool>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The option key a scheduled message carries in its fired event: when it was due (RFC 3339).
pub const DELIVER_AT: &str = "deliver_at";

/// The option key of an admin's critical message: `true` bypasses the recipients' quiet hours
/// and frequency caps. Kept among the extra keys (clients could send any value there before).
pub const CRITICAL: &str = "critical";

/// The option keys of one wave of a send at a local time: the wall-clock time asked for
/// (`2027-01-15T09:00`), the zones this wave reaches (those where that time is this wave's
/// instant), and the first wave's mid (the group's id).
pub const DELIVER_AT_LOCAL: &str = "deliver_at_local";
pub const LOCAL_ZONES: &str = "local_zones";
pub const LOCAL_GROUP: &str = "local_group";

impl MessageOpts {
    /// A local-time wave's zones (`None` for any other message: it reaches every zone).
    pub fn local_zones(&self) -> Option<impl Iterator<Item = &str>> {
        let zones = self.extra.get(LOCAL_ZONES)?.as_array()?;
        Some(zones.iter().filter_map(serde_json::Value::as_str))
    }

    /// Whether the message is critical (`opts.critical: true`, admins only).
    pub fn critical(&self) -> bool {
        self.extra
            .get(CRITICAL)
            .and_then(serde_json::Value::as_bool)
            == Some(true)
    }

    /// When a scheduled message was due, read from `opts.deliver_at` (kept as the client's
    /// extra data before scheduled sends existed, so any value may be there: only an RFC 3339
    /// time counts).
    pub fn deliver_at(&self) -> Option<OffsetDateTime> {
        let v = self.extra.get(DELIVER_AT)?.as_str()?;
        OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).ok()
    }
}

/// `{"after": "10m" | seconds, "channels": [...]}`: send on `channels` only if the user has
/// not read the notification `after` its creation. Those channels are not used otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Fallback {
    /// Delay in seconds (accepted as a number or a string such as `90s`, `10m`, `2h`, `1d`).
    #[serde(deserialize_with = "seconds_or_duration")]
    #[schemars(with = "u64")]
    pub after: u64,
    pub channels: Vec<String>,
}

fn seconds_or_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    duration_seconds(&v).ok_or_else(|| {
        serde::de::Error::custom("expected seconds or a duration such as 90s, 10m, 2h, 1d")
    })
}

/// Seconds from a JSON number or a string such as `90s`, `10m`, `2h`, `1d` (options such as
/// `fallback.after` and `delay`); `None` for anything else.
pub fn duration_seconds(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => {
            let s = s.trim();
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (num, unit) = s.split_at(split);
            let n: u64 = num.parse().ok()?;
            let mult = match unit {
                "" | "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86_400,
                _ => return None,
            };
            n.checked_mul(mult)
        }
        _ => None,
    }
}

/// Urgency levels from the msgxc design (and RFC 8030's Urgency header). Accepted as a number
/// (1-4) or a name (`very-low`, `low`, `normal`, `high`); always written as the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(into = "u8")]
#[schemars(with = "u8", extend("minimum" = 1, "maximum" = 4))]
pub enum Urgency {
    VeryLow = 1,
    Low = 2,
    Normal = 3,
    High = 4,
}

impl Urgency {
    pub fn name(self) -> &'static str {
        match self {
            Urgency::VeryLow => "very-low",
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::High => "high",
        }
    }

    fn from_number(n: u64) -> Option<Self> {
        match n {
            1 => Some(Urgency::VeryLow),
            2 => Some(Urgency::Low),
            3 => Some(Urgency::Normal),
            4 => Some(Urgency::High),
            _ => None,
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        match s {
            "very-low" | "very_low" | "verylow" => Some(Urgency::VeryLow),
            "low" => Some(Urgency::Low),
            "normal" => Some(Urgency::Normal),
            "high" => Some(Urgency::High),
            other => other.parse::<u64>().ok().and_then(Self::from_number),
        }
    }
}

impl From<Urgency> for u8 {
    fn from(u: Urgency) -> u8 {
        u as u8
    }
}

impl<'de> Deserialize<'de> for Urgency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let parsed = match &v {
            serde_json::Value::Number(n) => n.as_u64().and_then(Urgency::from_number),
            serde_json::Value::String(s) => Urgency::from_name(s),
            _ => None,
        };
        parsed.ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid urgency {v}: expected 1-4 or very-low, low, normal, high"
            ))
        })
    }
}

/// The user read some of their notifications (ids are message ids: one notification per
/// message per user).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NotificationsRead {
    pub uid: String,
    pub ids: Vec<Uuid>,
}

/// A user replaced their delivery preferences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PreferencesSet {
    pub uid: String,
    pub preferences: Preferences,
}

/// Which channels and notification types a user wants. A channel or type not mentioned is on;
/// a thread's channel entry overrides the global one for that thread's messages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Preferences {
    /// `type -> enabled`: a disabled type creates no notification and no delivery.
    #[serde(default)]
    pub types: std::collections::BTreeMap<String, bool>,
    /// `channel -> enabled`, e.g. `{"sms": false}`.
    #[serde(default)]
    pub channels: std::collections::BTreeMap<String, bool>,
    /// `tid -> {channel -> enabled}`.
    #[serde(default)]
    pub threads: std::collections::BTreeMap<Uuid, std::collections::BTreeMap<String, bool>>,
    /// The user's IANA time zone (`Europe/Berlin`); their quiet hours are in it. UTC when
    /// not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Hours in which pushes that are not urgent wait (see [`Preferences::quiet_until`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<crate::local::QuietHours>,
}

impl Preferences {
    /// Whether a message of this classification reaches the user.
    pub fn accepts(&self, opts: &MessageOpts) -> bool {
        if let Some(mut zones) = opts.local_zones() {
            // A wave of a local-time send reaches the users of its zones (UTC without one).
            let mine = self.timezone.as_deref().unwrap_or("UTC");
            if !zones.any(|z| z.eq_ignore_ascii_case(mine)) {
                return false;
            }
        }
        let mandatory = opts.mandatory == Some(true) && opts.level.unwrap_or(0) >= 50;
        mandatory
            || opts
                .ntype
                .as_ref()
                .is_none_or(|t| self.types.get(t).copied().unwrap_or(true))
    }

    /// When `now` is inside the user's quiet hours, the instant they end.
    pub fn quiet_until(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let window = self.quiet_hours.as_ref()?;
        let zone = self
            .timezone
            .as_deref()
            .and_then(|z| crate::local::zone(z).ok())
            .unwrap_or(jiff::tz::TimeZone::UTC);
        window.ends_after(&zone, now)
    }

    /// Whether `channel` may carry a message of thread `tid` (or a direct message).
    pub fn allows(&self, channel: &str, tid: Option<Uuid>) -> bool {
        tid.and_then(|t| self.threads.get(&t))
            .and_then(|m| m.get(channel))
            .or_else(|| self.channels.get(channel))
            .copied()
            .unwrap_or(true)
    }
}

/// An admin registered (or re-described) a notification type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TypeRegistered {
    pub name: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
}

/// The user archived notifications (archiving also marks them read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NotificationsArchived {
    pub uid: String,
    pub ids: Vec<Uuid>,
}

/// The user deleted notifications from their inbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NotificationsDeleted {
    pub uid: String,
    pub ids: Vec<Uuid>,
}

/// The user marked every unread notification (optionally of one type or thread) read, up to
/// the moment of the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InboxReadAll {
    pub uid: String,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub ntype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<Uuid>,
}

/// The user looked at their inbox: the unseen count restarts from zero (seed 003's mlast).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InboxSeen {
    pub uid: String,
}

/// A message was deleted by its author or an admin: it leaves the thread history and the
/// messaging API. Recipients' inbox copies stay until they delete them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MessageDeleted {
    pub mid: Uuid,
}

/// A message will be sent at `deliver_at`: its event (`message_published` or `message_sent`,
/// id `mid`) waits in the stream as a JetStream message schedule at `schedule_seq` and is
/// stored under its own subject when it fires. This event is the record the scheduled-sends
/// read model folds; the send itself is the fired event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MessageScheduled {
    pub mid: Uuid,
    pub sender: String,
    /// When it is to be sent (RFC 3339, UTC).
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub deliver_at: OffsetDateTime,
    /// Stream sequence of the waiting schedule (a cancel must find it there).
    pub schedule_seq: u64,
    /// The kind of the event that will be stored: `message_published` or `message_sent`.
    pub kind: String,
    /// The thread of a `message_published`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<Uuid>,
    /// The audience of a `message_sent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<Audience>,
    pub msg: String,
    /// A wave of a send at a local time (`opts.deliver_at_local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalWave>,
}

/// One wave of a send at a local time: the message scheduled for one of the distinct UTC
/// instants at which that wall-clock time comes in some zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LocalWave {
    /// The wall-clock time asked for, `2027-01-15T09:00`.
    pub at: String,
    /// The first wave's mid, the group's id: cancelling it cancels every wave.
    pub group: Uuid,
    /// The zones this wave reaches (users without a zone are in `UTC`'s).
    pub zones: Vec<String>,
    /// On the first wave only: every wave's mid, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<Uuid>,
}

/// A scheduled message was cancelled before it fired: its schedule was removed in the same
/// JetStream write (a cancel that comes after the fire is refused), so it is never sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScheduleCancelled {
    pub mid: Uuid,
}

/// A user's live connection (`GET /connect`) closed: they were online from `started_at` to
/// `ended_at`, the last time the connection was heard from (a connection silent for three
/// ping intervals is closed, so a gap longer than that ends a session).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionEnded {
    pub uid: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub ended_at: OffsetDateTime,
    /// `websocket`.
    pub transport: String,
}

/// The name of a tracked event that is a click on a message's link.
pub const CLICK: &str = "click";

/// Something a user did after a message (`POST /track`, or a wrapped link's redirect): a
/// conversion, a custom event, or a click ([`CLICK`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Tracked {
    pub uid: String,
    /// `purchase`, `signup`, ... or `click`.
    pub event: String,
    /// The message the client attributes it to; without one, the last message the user
    /// received within `window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid: Option<Uuid>,
    /// The client's data, kept verbatim for analysts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub props: Option<serde_json::Map<String, serde_json::Value>>,
    /// The attribution window in seconds, fixed in the event when it is accepted
    /// (`MSGXC_ATTRIBUTION_WINDOW`), so a rebuild attributes it the same way.
    pub window: u64,
}

/// `uid` no longer accepts private messages from `blocked`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserBlocked {
    pub uid: String,
    pub blocked: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserUnblocked {
    pub uid: String,
    pub blocked: String,
}

/// A provider accepted a message for one device (APNs 200, FCM name, SMTP 250, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeliverySent {
    pub mid: Uuid,
    pub uid: String,
    pub device_id: String,
    pub channel: String,
    /// 1 for the first try.
    pub attempt: u32,
    /// The provider's id for the message, when it returns one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
}

/// One failed attempt to reach a device. `dead` marks the last one: no retry follows and the
/// delivery is listed under `GET /deliveries/failed` (dead letter) until an admin requeues it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeliveryFailed {
    pub mid: Uuid,
    pub uid: String,
    pub device_id: String,
    pub channel: String,
    pub attempt: u32,
    pub reason: String,
    /// The provider said retrying cannot help (bad token, rejected payload).
    pub permanent: bool,
    pub dead: bool,
}

/// The outcomes of one part of a delivery batch (the dispatcher's unit of work): what one
/// `delivery_sent`, `delivery_failed` or `device_disabled` event each said, for up to a few
/// dozen devices of one message. Written by dispatchers since batched dispatch; the single
/// kinds are still folded (older streams hold them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeliveriesSettled {
    pub mid: Uuid,
    pub deliveries: Vec<SettledDelivery>,
}

/// One device's outcome in [`DeliveriesSettled`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SettledDelivery {
    pub uid: String,
    pub device_id: String,
    pub channel: String,
    /// 1 for the first try.
    pub attempt: u32,
    /// `sent`: the provider accepted it; `failed`: this attempt failed (see `dead`).
    pub status: SettledStatus,
    /// The provider's id for the message (sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    /// Why it failed (failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The provider said retrying cannot help (failed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permanent: bool,
    /// No retry follows: a dead letter (failed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dead: bool,
    /// The provider reported the device's address invalid: the device is disabled (failed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// Held: when the hold ends. On an outcome after a hold (its release): when it ended.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub held_until: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SettledStatus {
    Sent,
    Failed,
    /// Not sent yet: the recipient is in their quiet hours (`reason`); it goes out at
    /// `held_until`.
    Held,
    /// Not sent: a frequency cap or another rule stopped it (`reason`). Final.
    Suppressed,
}

/// A device's token was reported invalid by its provider; it is never used again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeviceDisabled {
    pub uid: String,
    pub device_id: String,
    pub channel: String,
    pub reason: String,
}

/// A client reported a message delivered to or opened on a device (push receipt, WebSocket ack).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeliveryAcked {
    pub mid: Uuid,
    pub uid: String,
    /// The device, when the app knows its id; otherwise the receipt is per channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// `websocket` for acks over the live socket, `app` for `POST /ack` without a device.
    pub channel: String,
    pub status: AckStatus,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    Delivered,
    Opened,
}

impl AckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AckStatus::Delivered => "delivered",
            AckStatus::Opened => "opened",
        }
    }
}

/// An admin asked to try a dead-lettered delivery again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeliveryRequeued {
    pub mid: Uuid,
    pub uid: String,
    pub device_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope::new(
            Actor {
                uid: "alice".into(),
                roles: vec![],
            },
            Event::MessagePublished(MessagePublished {
                tid: Uuid::now_v7(),
                sender: "alice".into(),
                msg: "hi".into(),
                opts: MessageOpts {
                    urgency: Some(Urgency::High),
                    ..Default::default()
                },
                experiment: None,
            }),
        )
    }

    #[test]
    fn envelope_round_trips_with_flat_type_field() {
        let env = sample();
        let json = serde_json::to_value(&env).unwrap();
        assert_eq!(json["type"], "message_published");
        assert_eq!(json["v"], 1);
        assert_eq!(json["data"]["opts"]["urgency"], 4);
        let back: Envelope = serde_json::from_value(json).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn from_json_reads_the_written_order_directly_and_any_other_through_the_derived_path() {
        let env = sample();
        let written = serde_json::to_vec(&env).unwrap();
        // What this build writes takes the direct path...
        let direct = serde_json::from_slice::<InOrder>(&written).unwrap().0;
        assert_eq!(direct, env);
        assert_eq!(Envelope::from_json(&written).unwrap(), env);
        // ...and other orders and extra fields (ignored, as the derived path ignores them)
        // still decode, to the same event.
        let v = serde_json::to_value(&env).unwrap();
        // (Written by hand: a `serde_json::Map` sorts its keys.)
        let shape = |keys: &[&str]| {
            let fields: Vec<String> = keys
                .iter()
                .map(|k| format!("{:?}:{}", k, v.get(*k).unwrap_or(&serde_json::json!(1))))
                .collect();
            format!("{{{}}}", fields.join(","))
        };
        let reordered = shape(&["data", "type", "actor", "occurred_at", "id", "v"]);
        let event_first = shape(&["type", "data", "v", "id", "occurred_at", "actor"]);
        let extra = shape(&["v", "id", "occurred_at", "actor", "type", "data", "future"]);
        for shape in [reordered, event_first, extra] {
            let bytes = shape.into_bytes();
            assert_eq!(Envelope::from_json(&bytes).unwrap(), env);
        }
        // A broken envelope is an error either way.
        assert!(Envelope::from_json(br#"{"v":1,"type":"message_published","data":{}}"#).is_err());
        assert!(Envelope::from_json(b"{").is_err());
    }

    #[test]
    fn kind_matches_serialized_type_for_every_kind() {
        let e = sample();
        assert_eq!(
            serde_json::to_value(&e).unwrap()["type"],
            e.event.kind(),
            "kind() must equal the serde tag"
        );
        assert!(Event::KINDS.contains(&e.event.kind()));
    }

    #[test]
    fn urgency_accepts_numbers_and_names() {
        for (input, want) in [
            ("1", Urgency::VeryLow),
            ("\"very-low\"", Urgency::VeryLow),
            ("\"low\"", Urgency::Low),
            ("3", Urgency::Normal),
            ("\"high\"", Urgency::High),
        ] {
            let u: Urgency = serde_json::from_str(input).unwrap();
            assert_eq!(u, want, "{input}");
        }
        assert!(serde_json::from_str::<Urgency>("0").is_err());
        assert!(serde_json::from_str::<Urgency>("\"urgent\"").is_err());
        assert!(serde_json::from_str::<Urgency>("true").is_err());
    }

    #[test]
    fn unknown_opts_survive_the_round_trip() {
        let opts: MessageOpts =
            serde_json::from_str(r#"{"title":"t","data":{"k":1},"badge":3}"#).unwrap();
        assert_eq!(opts.title.as_deref(), Some("t"));
        assert_eq!(opts.extra["badge"], 3);
        let back = serde_json::to_value(&opts).unwrap();
        assert_eq!(back["badge"], 3);
        assert_eq!(back["data"]["k"], 1);
    }

    #[test]
    fn device_ids_are_stable_and_channel_scoped() {
        let a = DeviceAddress::Apns { token: "ab".into() };
        let f = DeviceAddress::Fcm { token: "ab".into() };
        assert_eq!(a.device_id(), a.clone().device_id());
        assert!(a.device_id().starts_with("apns-"));
        assert_ne!(a.device_id(), f.device_id());
    }
}

/// The resources of stage-based messaging (seed 002).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Schedule,
    Messageset,
    Message,
    Binarycontent,
    Subscription,
}

impl StageKind {
    pub const ALL: [StageKind; 5] = [
        StageKind::Schedule,
        StageKind::Messageset,
        StageKind::Message,
        StageKind::Binarycontent,
        StageKind::Subscription,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Schedule => "schedule",
            StageKind::Messageset => "messageset",
            StageKind::Message => "message",
            StageKind::Binarycontent => "binarycontent",
            StageKind::Subscription => "subscription",
        }
    }
}

/// A stage-based messaging record was created or replaced. `record` is the resource as the
/// seed's API shows it (checked by the gateway); `id` its id (an integer's decimal digits: the
/// stream sequence of its creation; a subscription's UUID).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StageRecordSaved {
    pub kind: StageKind,
    pub id: String,
    pub record: serde_json::Value,
}

/// A stage-based messaging record was deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StageRecordDeleted {
    pub kind: StageKind,
    pub id: String,
}

/// Schedule `schedule` came due at `due`: every active subscription on it is sent its next
/// message. Appended by the stage scheduler once per due time (its message id names both).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StageTick {
    pub schedule: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub due: OffsetDateTime,
}

/// `POST /subscriptions/{id}/send`: send the subscription's next message now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StageSendRequested {
    pub subscription: Uuid,
}
