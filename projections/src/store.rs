//! The `Store` trait: every read the API needs and the atomic application of event batches.
//!
//! Each read is a partition lookup or a clustering-range scan (partition by user or thread,
//! clustered by time-ordered id, newest first); counters are kept on write. No method needs a
//! join or an unbounded scan, so a wide-column backend can serve each from one table.

use async_trait::async_trait;
use exchange::events::Envelope;
use exchange::live::LiveNotice;
use time::OffsetDateTime;
use uuid::Uuid;

use exchange::dispatch::DispatchTask;

use crate::model::{
    ArmCounts, Device, ExperimentRecord, FailedDelivery, FunnelEntry, FunnelMessage, FunnelScope,
    HistoryQuery, InboxCounts, InboxQuery, InboxStats, Notification, NotificationType,
    OnlineRecord, Page, Receipt, ScheduledMessage, StageDoc, StoredMessage, Thread, ThreadMessage,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store backend: {0}")]
    Backend(String),
    #[error("store data corrupt: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// One event to apply, with its stream sequence.
#[derive(Debug, Clone)]
pub struct SequencedEvent {
    pub seq: u64,
    pub envelope: Envelope,
    /// The trace context of this event's fold (tracing on, live events only): the dispatch
    /// tasks it queues carry it.
    pub trace: Option<exchange::trace::TraceParent>,
}

impl SequencedEvent {
    /// An event without trace context (replay, rebuild, tests).
    pub fn new(seq: u64, envelope: Envelope) -> Self {
        Self {
            seq,
            envelope,
            trace: None,
        }
    }
}

/// How a batch is applied.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Build live notices only for events that occurred at or after this instant; `None` builds
    /// none (replay and rebuild never notify anyone).
    pub live_since: Option<OffsetDateTime>,
    /// Queue dispatch tasks only for messages that occurred at or after this instant; `None`
    /// queues none (replay and rebuild never send anything).
    pub dispatch_since: Option<OffsetDateTime>,
    /// Queue thread-topic tasks (a topic channel such as MQTT is configured).
    pub topic_tasks: bool,
}

/// The dispatcher's [`exchange::dispatch::Directory`] reads that every store answers the same
/// way through the `Store` trait.
pub(crate) mod directory {
    use super::Store;
    use exchange::events::{DeviceAddress, Preferences};
    use uuid::Uuid;

    pub(crate) async fn devices(
        store: &dyn Store,
        uid: &str,
    ) -> Result<Vec<(String, DeviceAddress)>, String> {
        store
            .devices(uid)
            .await
            .map(|ds| ds.into_iter().map(|d| (d.id, d.address)).collect())
            .map_err(|e| e.to_string())
    }

    pub(crate) async fn preferences(store: &dyn Store, uid: &str) -> Result<Preferences, String> {
        store.preferences(uid).await.map_err(|e| e.to_string())
    }

    /// Whether the user has read the message (or no longer has it).
    pub(crate) async fn is_read(store: &dyn Store, mid: Uuid, uid: &str) -> Result<bool, String> {
        let n = store
            .notifications(uid, &[mid])
            .await
            .map_err(|e| e.to_string())?;
        Ok(n.first().is_none_or(|n| n.read_at.is_some()))
    }
}

/// Per-channel, per-status receipt counts of one message.
pub type ReceiptCounts = Vec<(String, String, u64)>;

/// What applying a batch did.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// The last stream sequence now reflected in the store.
    pub checkpoint: u64,
    /// Events applied by this call (those at or below the previous checkpoint are skipped).
    pub applied: usize,
    /// Frames to push to connected clients, in order.
    pub notices: Vec<LiveNotice>,
    /// Events of the batch not applied yet: the store committed the dispatch tasks of the first
    /// of them ahead of its fold (`fold::plan_ahead`). Relay the outbox, then apply these.
    pub rest: Vec<SequencedEvent>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A stable identity of this store's data, used to name its projector consumer.
    async fn store_id(&self) -> StoreResult<String>;

    /// The last stream sequence applied (0 when empty).
    async fn checkpoint(&self) -> StoreResult<u64>;

    /// Applies events in order, atomically with the new checkpoint. Events at or below the
    /// current checkpoint are skipped, so a redelivered batch changes nothing.
    async fn apply(&self, batch: Vec<SequencedEvent>, opts: ApplyOptions) -> StoreResult<Applied>;

    async fn thread(&self, tid: Uuid) -> StoreResult<Option<Thread>>;

    async fn is_subscribed(&self, tid: Uuid, uid: &str) -> StoreResult<bool>;

    /// The threads a user is subscribed to (any order): the live hub routes a connected user's
    /// thread messages from it.
    async fn user_threads(&self, uid: &str) -> StoreResult<Vec<Uuid>>;

    /// Whether the user is known to the projection (a broadcast reaches known users only).
    async fn user_exists(&self, uid: &str) -> StoreResult<bool>;

    /// A thread's messages, newest first, optionally by sender and time.
    async fn thread_messages(
        &self,
        tid: Uuid,
        query: &HistoryQuery,
    ) -> StoreResult<Page<ThreadMessage>>;

    /// The thread holding an alias.
    async fn thread_by_alias(&self, alias: &str) -> StoreResult<Option<Thread>>;

    /// A user's devices, newest first.
    async fn devices(&self, uid: &str) -> StoreResult<Vec<Device>>;

    /// How many devices each channel has (channels with none left out), by channel name.
    async fn devices_per_channel(&self) -> StoreResult<Vec<(String, u64)>>;

    /// A page of a user's inbox (see [`InboxQuery`]).
    async fn inbox(&self, uid: &str, query: &InboxQuery) -> StoreResult<Page<Notification>>;

    /// A page of a user's inbox and, from the same snapshot, the position of their newest entry
    /// (0 when empty): the cursor a client continues from neither skips nor repeats an entry.
    async fn inbox_snapshot(
        &self,
        uid: &str,
        query: &InboxQuery,
    ) -> StoreResult<(Page<Notification>, u64)>;

    async fn inbox_stats(&self, uid: &str) -> StoreResult<InboxStats>;

    /// Users whose private messages `uid` refuses.
    async fn blocks(&self, uid: &str) -> StoreResult<Vec<String>>;
    async fn is_blocked(&self, uid: &str, sender: &str) -> StoreResult<bool>;

    /// A user's inbox changes after a feed position (frames as sent live), oldest first.
    async fn changes_after(
        &self,
        uid: &str,
        after: crate::fold::Position,
        limit: u32,
    ) -> StoreResult<Vec<(crate::fold::Position, String)>>;

    /// Registered notification types, by name.
    async fn types(&self) -> StoreResult<Vec<NotificationType>>;

    /// The given notifications of a user that exist (any order).
    async fn notifications(&self, uid: &str, ids: &[Uuid]) -> StoreResult<Vec<Notification>>;

    async fn inbox_counts(&self, uid: &str) -> StoreResult<InboxCounts>;

    /// Dispatch tasks committed but not yet relayed to the work queue, oldest first.
    async fn outbox(&self, limit: usize) -> StoreResult<Vec<(i64, DispatchTask)>>;
    /// Forgets relayed outbox entries.
    async fn outbox_done(&self, ids: Vec<i64>) -> StoreResult<()>;

    async fn message(&self, mid: Uuid) -> StoreResult<Option<StoredMessage>>;

    /// A message's receipts, by recipient and device.
    async fn receipts(&self, mid: Uuid, limit: u32, offset: u64) -> StoreResult<Page<Receipt>>;
    async fn receipt_counts(&self, mid: Uuid) -> StoreResult<ReceiptCounts>;

    /// Dead letters, newest first.
    async fn failed_deliveries(&self, limit: u32, offset: u64)
    -> StoreResult<Page<FailedDelivery>>;
    async fn failed_delivery(&self, id: &str) -> StoreResult<Option<FailedDelivery>>;

    /// A user's delivery preferences (defaults when never set).
    async fn preferences(&self, uid: &str) -> StoreResult<exchange::events::Preferences>;

    /// An experiment's record.
    async fn experiment(&self, id: &str) -> StoreResult<Option<ExperimentRecord>>;
    /// An experiment's users per arm and step (every arm that has exposed users).
    async fn experiment_arms(&self, id: &str) -> StoreResult<Vec<ArmCounts>>;

    /// A message's funnel record.
    async fn funnel_message(&self, mid: Uuid) -> StoreResult<Option<FunnelMessage>>;
    /// The funnel records of the messages in a scope, in id order within each day.
    async fn funnel_messages(&self, scope: &FunnelScope) -> StoreResult<Vec<FunnelMessage>>;
    /// Every recipient of a message that went past `sent` (steps and channels), by uid.
    async fn funnel_entries(&self, mid: Uuid) -> StoreResult<Vec<FunnelEntry>>;

    /// A user's online time.
    async fn online(&self, uid: &str) -> StoreResult<Option<OnlineRecord>>;
    /// A user's seconds online per UTC day (days since the epoch), the newest `limit` days
    /// with any, newest first.
    async fn online_days(&self, uid: &str, limit: u32) -> StoreResult<Vec<(i32, u64)>>;

    /// A scheduled message's record, whatever its status.
    async fn scheduled_message(&self, mid: Uuid) -> StoreResult<Option<ScheduledMessage>>;
    /// A stage-based messaging document (seed 002) by kind and id.
    async fn stage_doc(&self, kind: &str, id: &str) -> StoreResult<Option<StageDoc>>;
    /// A page of the documents of `kind` (by `ord`, then id) and how many there are.
    async fn stage_docs(
        &self,
        kind: &str,
        limit: u32,
        offset: u32,
    ) -> StoreResult<(u64, Vec<StageDoc>)>;
    /// Messages waiting to be sent, soonest first (then by mid): of one sender, or all.
    async fn scheduled_messages(
        &self,
        sender: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<ScheduledMessage>>;
}
