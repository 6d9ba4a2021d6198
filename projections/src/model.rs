//! Read models: what the API returns, shaped as it returns them.

use exchange::events::{DeviceAddress, MessageOpts};
use exchange::experiment::{Arm, Experiment};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Thread {
    pub tid: Uuid,
    pub name: String,
    pub owner: String,
    pub open_subscribe: bool,
    pub open_publish: bool,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Device {
    pub id: String,
    pub uid: String,
    #[serde(flatten)]
    pub address: DeviceAddress,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub enlisted_at: OffsetDateTime,
}

/// A message as kept in a thread's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ThreadMessage {
    pub mid: Uuid,
    pub tid: Uuid,
    pub sender: String,
    pub msg: String,
    pub opts: MessageOpts,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub created_at: OffsetDateTime,
}

/// One inbox entry: a message as received by one user. Its `id` is the message id, since a user
/// receives a message at most once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub read_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub archived_at: Option<OffsetDateTime>,
    /// The experiment of the message and the variant this user got (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Stream position of the message event: inbox order for cursors, never reused.
    #[serde(skip)]
    pub seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotificationStatus {
    Unread,
    Read,
    Archived,
}

impl Notification {
    /// A new unread entry of message `m` for `uid` at stream position `seq`: the text and
    /// options of the user's variant when the message has an experiment (a variant's copy, see
    /// [`StoredMessage::as_variant`], is taken as it is).
    pub fn new(m: &StoredMessage, uid: String, seq: u64) -> Self {
        if m.experiment.is_some()
            && m.variant.is_none()
            && let Some(Arm::Variant(i)) = m.arm_of(&uid)
        {
            return Self::new(&m.as_variant(i), uid, seq);
        }
        let (experiment, variant) = m.arm_names();
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
            experiment,
            variant,
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
    /// `Some(true)`: only messages marked for clients (`opts.forclient` = 1, seed 003);
    /// `Some(false)`: only the others.
    pub forclient: Option<bool>,
}

impl InboxFilter {
    /// Whether a message's options mark it for clients (seed 003's `forclient`).
    pub fn is_forclient(opts: &exchange::events::MessageOpts) -> bool {
        opts.extra
            .get("forclient")
            .is_some_and(|v| v.as_i64() == Some(1))
    }
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InboxStats {
    pub total: u64,
    pub unread: u64,
    /// Entries that arrived since the user last cleared their stats.
    pub unseen: u64,
    pub unread_by_type: std::collections::BTreeMap<String, u64>,
    pub unread_by_level: std::collections::BTreeMap<String, u64>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub seen_at: Option<OffsetDateTime>,
}

/// A registered notification type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NotificationType {
    pub name: String,
    pub title: String,
    pub description: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
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
    /// Variants and holdout (see [`exchange::experiment`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<Experiment>,
    /// Set on a copy holding variant `i`'s text and options ([`StoredMessage::as_variant`]).
    #[serde(skip)]
    pub variant: Option<usize>,
}

impl StoredMessage {
    /// The recipient's arm, for a message with an experiment.
    pub fn arm_of(&self, uid: &str) -> Option<Arm> {
        self.experiment.as_ref().map(|e| e.assign(uid))
    }

    /// The message as the recipients of variant `i` get it.
    pub fn as_variant(&self, i: usize) -> StoredMessage {
        let Some(e) = &self.experiment else {
            return self.clone();
        };
        let (msg, opts) = e.content(i, &self.msg, &self.opts);
        StoredMessage {
            msg,
            opts,
            variant: Some(i),
            ..self.clone()
        }
    }

    /// The message as `uid` gets it: their variant's copy, or `None` for a user held out of it
    /// or not in this send of it.
    pub fn for_uid(&self, uid: &str) -> Option<std::borrow::Cow<'_, StoredMessage>> {
        match (self.variant, self.arm_of(uid)) {
            (_, None) => Some(std::borrow::Cow::Borrowed(self)),
            (_, Some(Arm::Holdout | Arm::Later)) => None,
            (Some(v), Some(Arm::Variant(i))) if v == i => Some(std::borrow::Cow::Borrowed(self)),
            (_, Some(Arm::Variant(i))) => Some(std::borrow::Cow::Owned(self.as_variant(i))),
        }
    }

    /// The experiment id and variant name of a variant's copy.
    pub fn arm_names(&self) -> (Option<String>, Option<String>) {
        match (&self.experiment, self.variant) {
            (Some(e), Some(i)) => (
                Some(e.id.clone()),
                Some(e.arm_name(Arm::Variant(i)).to_owned()),
            ),
            _ => (None, None),
        }
    }
}

/// Where one delivery stands. Receipts only move forward (in this order), except that a
/// requeued dead letter can still succeed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptStatus {
    /// Waiting for the recipient's quiet hours to end (any later outcome replaces it).
    Held,
    /// Not sent: a frequency cap stopped it.
    Suppressed,
    Retrying,
    Failed,
    Sent,
    Delivered,
    Opened,
}

impl ReceiptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptStatus::Held => "held",
            ReceiptStatus::Suppressed => "suppressed",
            ReceiptStatus::Retrying => "retrying",
            ReceiptStatus::Failed => "failed",
            ReceiptStatus::Sent => "sent",
            ReceiptStatus::Delivered => "delivered",
            ReceiptStatus::Opened => "opened",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "held" => ReceiptStatus::Held,
            "suppressed" => ReceiptStatus::Suppressed,
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Receipt {
    pub mid: Uuid,
    pub uid: String,
    pub device_id: String,
    pub channel: String,
    pub status: ReceiptStatus,
    pub attempts: u32,
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub updated_at: OffsetDateTime,
}

/// A dead letter: a delivery that failed for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub failed_at: OffsetDateTime,
}

impl FailedDelivery {
    pub fn id_of(mid: Uuid, device_id: &str) -> String {
        format!("{mid}.{device_id}")
    }
}

/// Where a scheduled message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub deliver_at: OffsetDateTime,
    /// When it was scheduled.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub scheduled_at: OffsetDateTime,
    pub status: ScheduleStatus,
    /// When it was sent or cancelled.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub settled_at: Option<OffsetDateTime>,
    /// Stream position of the waiting schedule (what a cancel must find).
    #[serde(skip)]
    pub schedule_seq: u64,
    /// A wave of a send at a local time: its wall-clock time, group and zones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<exchange::events::LocalWave>,
}

/// A stage-based messaging document (seed 002): a record as its API shows it (`kind` one of
/// `schedule`, `messageset`, `message`, `binarycontent`, `subscription`), or an index row the
/// fold keeps beside them (`messages_of.<set>`, `subscriptions_on.<schedule>`, ...). Lists are
/// ordered by `ord`, then `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageDoc {
    pub kind: String,
    pub id: String,
    pub ord: i64,
    pub body: String,
}

/// An experiment as its first message defined it (`GET /experiments/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentRecord {
    pub id: String,
    /// The sender of its first message: they and admins may read its report.
    pub owner: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Variants and holdout of its first message (the arms and shares the report checks).
    pub spec: Experiment,
    /// Messages sent in it.
    pub messages: u64,
    /// The first and the latest of them.
    pub first_mid: Uuid,
    pub last_mid: Uuid,
    /// Stream position of the latest of them.
    #[serde(default)]
    pub last_seq: u64,
    /// The variant a promotion sent to the rest of a test share's audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted: Option<String>,
}

/// The steps a user goes through after a message, in funnel order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    Exposed,
    Delivered,
    Opened,
    Clicked,
    Converted,
}

/// One user in one experiment: their arm and when they first reached each step (any of the
/// experiment's messages counts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentUser {
    pub experiment: String,
    pub uid: String,
    pub arm: String,
    /// The message that exposed them first.
    pub mid: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub exposed_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub opened_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub clicked_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub converted_at: Option<OffsetDateTime>,
}

impl ExperimentUser {
    pub fn at(&self, step: Step) -> Option<OffsetDateTime> {
        match step {
            Step::Exposed => Some(self.exposed_at),
            Step::Delivered => self.delivered_at,
            Step::Opened => self.opened_at,
            Step::Clicked => self.clicked_at,
            Step::Converted => self.converted_at,
        }
    }

    /// Records the first time the user reached `step`; false when they had already.
    pub fn reach(&mut self, step: Step, at: OffsetDateTime) -> bool {
        let slot = match step {
            Step::Exposed => return false,
            Step::Delivered => &mut self.delivered_at,
            Step::Opened => &mut self.opened_at,
            Step::Clicked => &mut self.clicked_at,
            Step::Converted => &mut self.converted_at,
        };
        first_time(slot, at)
    }
}

/// Sets a step's time unless it is set already; whether it was set now.
fn first_time(slot: &mut Option<OffsetDateTime>, at: OffsetDateTime) -> bool {
    if slot.is_some() {
        return false;
    }
    *slot = Some(at);
    true
}

/// Users of one arm at each step, kept on write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmCounts {
    pub arm: String,
    pub exposed: u64,
    pub delivered: u64,
    pub opened: u64,
    pub clicked: u64,
    pub converted: u64,
}

impl ArmCounts {
    /// One user more at `step`.
    pub fn one(arm: &str, step: Step) -> Self {
        let mut c = ArmCounts {
            arm: arm.to_owned(),
            ..Default::default()
        };
        *c.slot(step) += 1;
        c
    }

    fn slot(&mut self, step: Step) -> &mut u64 {
        match step {
            Step::Exposed => &mut self.exposed,
            Step::Delivered => &mut self.delivered,
            Step::Opened => &mut self.opened,
            Step::Clicked => &mut self.clicked,
            Step::Converted => &mut self.converted,
        }
    }

    pub fn get(&self, step: Step) -> u64 {
        match step {
            Step::Exposed => self.exposed,
            Step::Delivered => self.delivered,
            Step::Opened => self.opened,
            Step::Clicked => self.clicked,
            Step::Converted => self.converted,
        }
    }

    /// Adds another arm's counts.
    pub fn add(&mut self, other: &ArmCounts) {
        for step in [
            Step::Exposed,
            Step::Delivered,
            Step::Opened,
            Step::Clicked,
            Step::Converted,
        ] {
            *self.slot(step) += other.get(step);
        }
    }
}

/// Per-arm totals of per-message counts, in the order arms first appear.
pub fn sum_arms(rows: impl IntoIterator<Item = ArmCounts>) -> Vec<ArmCounts> {
    let mut out: Vec<ArmCounts> = Vec::new();
    for r in rows {
        match out.iter_mut().find(|c| c.arm == r.arm) {
            Some(c) => c.add(&r),
            None => out.push(r),
        }
    }
    out
}

/// A user's time online over live connections (`GET /presence`), from their ended sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnlineRecord {
    pub uid: String,
    /// The end of their latest session.
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    pub sessions: u64,
    /// Seconds online, all days.
    pub seconds: u64,
    /// Stream position of the last session counted (a replayed one is not counted twice).
    #[serde(default)]
    pub last_seq: u64,
}

/// One message as the funnel report (`GET /reports/funnel`) counts it: when it was sent and how
/// many recipients each of its copies reached. Written once per message by its fold (absolute
/// counts, so an event applied again writes the same record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunnelMessage {
    pub mid: Uuid,
    pub sender: String,
    /// When the exchange folded it (its event's time): the start of every time-to-open.
    #[serde(with = "time::serde::rfc3339")]
    pub sent_at: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    /// One copy without an experiment, one per variant with one (those that reached anyone).
    pub copies: Vec<FunnelCopy>,
    /// Users an experiment's holdout kept from it (they get nothing; experiments count them).
    #[serde(default)]
    pub held_out: u64,
}

/// The recipients of one copy of a message and the copy's urgency and type (a variant's
/// options may change them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunnelCopy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    pub urgency: u8,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub ntype: Option<String>,
    /// Users who got an inbox entry of this copy.
    pub sent: u64,
}

impl FunnelMessage {
    /// The copy a recipient of variant `variant` got.
    pub fn copy(&self, variant: Option<&str>) -> Option<&FunnelCopy> {
        self.copies.iter().find(|c| c.variant.as_deref() == variant)
    }
}

/// A step of the funnel after `sent` (see [`FunnelEntry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FunnelStep {
    Delivered,
    Opened,
    Clicked,
    Converted,
}

/// One recipient's way through one message's funnel: written the first time anything happens
/// to it after the send (a dispatch outcome, an acknowledgement, a read, a click, a conversion);
/// each time is the first one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunnelEntry {
    pub mid: Uuid,
    pub uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Channels a provider was asked to reach them on (any outcome), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Channels whose provider accepted the message for one of their devices, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted: Vec<String>,
    /// A client confirmed it: an acknowledgement, reading the entry, a click.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<OffsetDateTime>,
    /// An `opened` acknowledgement, reading the entry, a click.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub opened_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub clicked_at: Option<OffsetDateTime>,
    /// A tracked conversion naming it, or the newest message they had within the event's
    /// attribution window.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub converted_at: Option<OffsetDateTime>,
}

impl FunnelEntry {
    pub fn new(mid: Uuid, uid: &str, variant: Option<String>) -> Self {
        Self {
            mid,
            uid: uid.to_owned(),
            variant,
            channels: Vec::new(),
            accepted: Vec::new(),
            delivered_at: None,
            opened_at: None,
            clicked_at: None,
            converted_at: None,
        }
    }

    pub fn at(&self, step: FunnelStep) -> Option<OffsetDateTime> {
        match step {
            FunnelStep::Delivered => self.delivered_at,
            FunnelStep::Opened => self.opened_at,
            FunnelStep::Clicked => self.clicked_at,
            FunnelStep::Converted => self.converted_at,
        }
    }

    /// Records the first time the recipient reached `step`; false when they had already.
    pub fn reach(&mut self, step: FunnelStep, at: OffsetDateTime) -> bool {
        let slot = match step {
            FunnelStep::Delivered => &mut self.delivered_at,
            FunnelStep::Opened => &mut self.opened_at,
            FunnelStep::Clicked => &mut self.clicked_at,
            FunnelStep::Converted => &mut self.converted_at,
        };
        first_time(slot, at)
    }

    /// Records a dispatch outcome on `channel`; false when it changes nothing.
    pub fn dispatched(&mut self, channel: &str, accepted: bool) -> bool {
        let mut changed = insert_sorted(&mut self.channels, channel);
        if accepted {
            changed |= insert_sorted(&mut self.accepted, channel);
        }
        changed
    }
}

fn insert_sorted(v: &mut Vec<String>, s: &str) -> bool {
    match v.binary_search_by(|x| x.as_str().cmp(s)) {
        Ok(_) => false,
        Err(i) => {
            v.insert(i, s.to_owned());
            true
        }
    }
}

/// Which messages a funnel report covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FunnelScope {
    /// The messages of an experiment, its promotion included.
    Experiment(String),
    /// Messages sent on these UTC days (days since the epoch), inclusive.
    Days { first: i32, last: i32 },
}
