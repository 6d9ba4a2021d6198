//! The fold's writes against Scylla: [`FoldTarget`] over buffered statements.
//!
//! Writes are buffered and flushed as one logged batch at each group boundary the fold marks
//! (one recipient of a message, one entry of a read/archive/delete request) and at the end of
//! each event, so an inbox entry, the counts it moves, its change-feed entry and its dispatch
//! tasks land together or not at all. Counts a group reads and moves are kept per batch, so
//! the group never has to send its writes early to read them back; any other read of a table
//! with buffered writes flushes first, so the fold always reads what it wrote (the crash-replay
//! test shows no group is split where it matters). A message's own row is written last in its event: its
//! presence is what tells a replay that the event was applied in full. The statements of one
//! batch share a write timestamp, on which a delete beats an insert: no batch deletes and
//! re-writes the same row (a device's owner row is the one case, flushed in between).

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};
use time::OffsetDateTime;
use uuid::Uuid;

use exchange::dispatch::DispatchTask;
use exchange::events::Preferences;

use super::exec::FromRow;
use super::statements::{Bound, InboxRow};
use super::{ScyllaStore, count, from_ns, month, ns, parse_json, seq_i64, to_json};
use crate::fold::{CHANGE_RETENTION, FoldTarget, Position};
use crate::model::{
    ArmCounts, Device, ExperimentRecord, ExperimentUser, FailedDelivery, FunnelEntry,
    FunnelMessage, Notification, NotificationStatus, NotificationType, OnlineRecord, Receipt,
    ReceiptStatus, ScheduleStatus, ScheduledMessage, StageDoc, StoredMessage, Thread,
    ThreadMessage,
};
use crate::store::{StoreError, StoreResult};

/// Partitions of the `users` table (broadcast audience).
pub(crate) const USER_BUCKETS: i32 = 64;
/// The one partition of `scheduled_pending`.
pub(crate) const SCHEDULED_SCOPE: i32 = 0;
/// Partitions of the outbox.
pub(crate) const OUTBOX_SHARDS: i64 = 16;
/// The one partition of `notification_types`.
pub(crate) const TYPES_SCOPE: &str = "all";
/// Bits of an outbox id that hold the task's index within its event.
const OUTBOX_INDEX_BITS: u32 = 28;
/// Tasks one group (one recipient) may queue: a task and its fallback timer today.
const TASKS_PER_GROUP: i32 = 4;

/// A user's `users` partition: FNV-1a of the uid (stable across processes and builds).
pub(crate) fn user_bucket(uid: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in uid.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % USER_BUCKETS as u32) as i32
}

/// An outbox row's id as the `Store` trait passes it around: position and index in one i64.
pub(crate) fn outbox_id(seq: i64, n: i32) -> i64 {
    (seq << OUTBOX_INDEX_BITS) | i64::from(n)
}

/// (shard, seq, n) of an outbox id.
pub(crate) fn outbox_key(id: i64) -> (i32, i64, i32) {
    let seq = id >> OUTBOX_INDEX_BITS;
    let n = (id & ((1 << OUTBOX_INDEX_BITS) - 1)) as i32;
    ((seq % OUTBOX_SHARDS) as i32, seq, n)
}

/// The inbox counts row of a user.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    total: i64,
    unread: i64,
    archived: i64,
    unseen: i64,
    seen_seq: i64,
}

impl Counts {
    fn of(row: Option<super::statements::CountsRow>) -> Self {
        row.map_or_else(Self::default, |r| Self {
            total: r.0.unwrap_or(0),
            unread: r.1.unwrap_or(0),
            archived: r.5.unwrap_or(0),
            unseen: r.2.unwrap_or(0),
            seen_seq: r.3.unwrap_or(0),
        })
    }
}

/// Requests of one fold transaction in flight at once when they are independent (reads ahead
/// of a message's recipients, their groups' batches).
const IN_FLIGHT: usize = 64;

/// A message whose row is written at the end of its event.
struct PendingMessage {
    message: StoredMessage,
    seq: i64,
}

pub(crate) struct ScyllaTx<'a> {
    store: &'a ScyllaStore,
    rt: &'a tokio::runtime::Handle,
    seq: u64,
    /// Writes not yet sent, and the tables they touch.
    pending: Vec<Bound<'a, ()>>,
    pending_tables: Vec<&'a str>,
    /// Finished groups of independent recipients (see `prefetch_recipients`) not sent yet:
    /// sent together, concurrently, one logged batch each, at the next flush.
    deferred: Vec<Vec<Bound<'a, ()>>>,
    deferred_tables: Vec<&'a str>,
    /// The stored `new` change of an entry being deleted, written after the reads of the
    /// deletion's own change (a write of the changes table before them would split the
    /// group's batch).
    arrival: Option<Bound<'a, ()>>,
    /// The current event's groups are independent recipients of one message.
    independent: bool,
    /// Read ahead for the current message's recipients: whether each has its entry already,
    /// and (when the fold will ask) their preferences and whether they have a device.
    entry_exists: HashMap<String, bool>,
    preferences: HashMap<String, Preferences>,
    has_device: HashMap<String, bool>,
    new_users: std::collections::HashSet<String>,
    /// `inbox_months` keys this transaction wrote (see `Inner::known_months`).
    months_written: Vec<String>,
    /// Messages the current event created (a stage tick creates one per subscription), written
    /// by `end_event` after everything derived from them.
    messages: Vec<PendingMessage>,
    /// Groups the current event has started, and tasks queued in the current group: a task's
    /// index in the outbox key is `group * TASKS_PER_GROUP + task`, the same when the event is
    /// applied again (a replay must overwrite, never collide with, the tasks written before).
    groups: i32,
    tasks: i32,
    /// UTC days whose first change position is known to be recorded, and the answers to
    /// "the first recorded day from this one on" (the pruning cutoff of every change that day).
    feed_days: HashMap<i32, i64>,
    feed_cutoffs: HashMap<i32, Option<(i32, i64)>>,
    /// Counts as this batch has left them (read once, then kept here): a group reads and
    /// writes the same counts row several times without sending its writes in between, which
    /// would split the group's logged batch.
    counts: HashMap<String, Counts>,
    unread_by: HashMap<(String, &'static str, String), i64>,
    receipt_counts: HashMap<(Uuid, String, String), i64>,
    /// Experiment rows as this batch has left them (as the counts above: a group moves one
    /// user's row several times, e.g. a click also opens and delivers).
    experiments: HashMap<String, ExperimentRecord>,
    experiment_users: HashMap<(String, String), ExperimentUser>,
    /// (uid, experiment) rows the current event read ahead and found absent.
    experiment_absent: std::collections::HashSet<(String, String)>,
    arm_counts: HashMap<(String, Uuid, String), ArmCounts>,
    /// Funnel rows as this batch has left them (a click moves one row three times).
    funnel_entries: HashMap<(Uuid, String), FunnelEntry>,
}

impl<'a> ScyllaTx<'a> {
    pub(crate) fn new(store: &'a ScyllaStore, rt: &'a tokio::runtime::Handle) -> Self {
        Self {
            store,
            rt,
            seq: 0,
            pending: Vec::new(),
            pending_tables: Vec::new(),
            deferred: Vec::new(),
            deferred_tables: Vec::new(),
            arrival: None,
            independent: false,
            entry_exists: HashMap::new(),
            preferences: HashMap::new(),
            has_device: HashMap::new(),
            new_users: Default::default(),
            months_written: Vec::new(),
            messages: Vec::new(),
            groups: 0,
            tasks: 0,
            feed_days: HashMap::new(),
            feed_cutoffs: HashMap::new(),
            counts: HashMap::new(),
            unread_by: HashMap::new(),
            receipt_counts: HashMap::new(),
            experiments: HashMap::new(),
            experiment_users: HashMap::new(),
            experiment_absent: Default::default(),
            arm_counts: HashMap::new(),
            funnel_entries: HashMap::new(),
        }
    }

    fn q(&self) -> &'a super::statements::Prepared {
        &self.store.inner.q
    }

    /// Starts applying the event at stream position `seq`.
    pub(crate) fn begin_event(&mut self, seq: u64) {
        self.seq = seq;
        self.groups = 0;
        self.tasks = 0;
    }

    /// Flushes the event's writes, then writes its message row (the event's completion mark).
    pub(crate) fn end_event(&mut self) -> StoreResult<()> {
        self.write_arrival();
        self.flush()?;
        self.independent = false;
        self.entry_exists.clear();
        self.experiment_absent.clear();
        self.preferences.clear();
        self.has_device.clear();
        self.new_users.clear();
        let messages = std::mem::take(&mut self.messages);
        if messages.is_empty() {
            return Ok(());
        }
        for p in messages {
            let m = p.message;
            let write = self.q().message_put(
                m.mid,
                m.tid,
                &m.sender,
                &m.msg,
                message_opts_column(&m)?,
                ns(m.created_at),
                i64::try_from(m.recipients).unwrap_or(i64::MAX),
                p.seq,
            );
            self.write(write);
        }
        self.flush()
    }

    /// The `inbox_months` keys written by this transaction, to remember once it succeeded.
    pub(crate) fn months_written(self) -> Vec<String> {
        self.months_written
    }

    fn write_arrival(&mut self) {
        if let Some(w) = self.arrival.take() {
            self.write(w);
        }
    }

    fn write(&mut self, b: Bound<'a, ()>) {
        self.pending_tables.push(b.statement.table);
        self.pending.push(b);
    }

    /// Sends the deferred groups (concurrently: they are independent of each other), then the
    /// pending writes.
    fn flush(&mut self) -> StoreResult<()> {
        self.send_deferred()?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let writes = std::mem::take(&mut self.pending);
        self.pending_tables.clear();
        self.rt.block_on(self.store.write_all(writes))
    }

    /// Sends the finished groups not sent yet, concurrently (they are independent), several
    /// to a batch.
    fn send_deferred(&mut self) -> StoreResult<()> {
        if self.deferred.is_empty() {
            return Ok(());
        }
        let groups = super::coalesce(std::mem::take(&mut self.deferred));
        self.deferred_tables.clear();
        let store = self.store;
        self.rt.block_on(
            futures::stream::iter(groups.into_iter().map(|g| store.write_all(g)))
                .buffer_unordered(IN_FLIGHT)
                .try_collect::<()>(),
        )
    }

    /// Flushes first when the statement reads a table with buffered writes: the finished
    /// groups' only, when the current group has not written that table (so the current
    /// group's batch is not split).
    fn before_read<R>(&mut self, b: &Bound<'a, R>) -> StoreResult<()> {
        let table = &b.statement.table;
        if self.pending_tables.contains(table) {
            self.flush()?;
        } else if self.deferred_tables.contains(table) {
            self.send_deferred()?;
        }
        Ok(())
    }

    /// Runs reads concurrently (up to [`IN_FLIGHT`] at once), answers in order.
    fn many<R: FromRow>(&self, reads: Vec<Bound<'a, R>>) -> StoreResult<Vec<Option<R>>> {
        let store = self.store;
        self.rt.block_on(
            futures::stream::iter(reads.into_iter().map(|b| store.one(b)))
                .buffered(IN_FLIGHT)
                .try_collect(),
        )
    }

    fn one<R: FromRow>(&mut self, b: Bound<'a, R>) -> StoreResult<Option<R>> {
        self.before_read(&b)?;
        self.rt.block_on(self.store.one(b))
    }

    fn all<R: FromRow>(&mut self, b: Bound<'a, R>) -> StoreResult<Vec<R>> {
        self.before_read(&b)?;
        self.rt.block_on(self.store.all(b))
    }

    /// A row this batch has not written (the count caches hold every one it has): read
    /// without sending the buffered writes first.
    fn one_unwritten<R: FromRow>(&mut self, b: Bound<'a, R>) -> StoreResult<Option<R>> {
        self.rt.block_on(self.store.one(b))
    }

    /// The UTC day (unix day number) of a feed change at `at`, and the first feed position
    /// recorded for that day, if any. Only reads: a change's reads come before its writes, so
    /// the writes join the group's batch.
    fn feed_day(&mut self, at: OffsetDateTime) -> StoreResult<(i32, Option<i64>)> {
        let day = i32::try_from(at.unix_timestamp().div_euclid(86_400)).unwrap_or(i32::MAX);
        let today = match self.feed_days.get(&day) {
            Some(first) => Some(*first),
            None => self
                .one(self.q().feed_day_get(0, day))?
                .map(|(first,)| first),
        };
        Ok((day, today))
    }

    /// Records `seq` as the first feed position of `day` when none was (`today`).
    fn record_feed_day(&mut self, day: i32, today: Option<i64>, seq: i64) {
        if today.is_none() {
            let w = self.q().feed_day_put(0, day, seq);
            self.write(w);
            // Cached cutoffs that this day now precedes are stale.
            self.feed_cutoffs
                .retain(|from, found| *from > day || found.is_some_and(|(d, _)| d < day));
        }
        self.feed_days.insert(day, today.unwrap_or(seq));
    }

    fn counts(&mut self, uid: &str) -> StoreResult<Counts> {
        if let Some(c) = self.counts.get(uid) {
            return Ok(*c);
        }
        let c = Counts::of(self.one_unwritten(self.q().counts_get(uid))?);
        self.counts.insert(uid.to_owned(), c);
        Ok(c)
    }

    /// The unread-count dimensions an entry moves: its level (not level 0, most entries':
    /// its count is what the other levels leave of the unread count, see `stats`) and, when
    /// typed, its type.
    fn unread_dims(n: &Notification) -> Vec<(&'static str, String)> {
        let mut dims = Vec::with_capacity(2);
        if n.level != 0 {
            dims.push(("level", n.level.to_string()));
        }
        if let Some(t) = &n.ntype {
            dims.push(("type", t.clone()));
        }
        dims
    }

    fn put_counts(&mut self, uid: &str, c: Counts) {
        let c = Counts {
            total: c.total.max(0),
            unread: c.unread.max(0),
            archived: c.archived.max(0),
            unseen: c.unseen.max(0),
            seen_seq: c.seen_seq,
        };
        self.counts.insert(uid.to_owned(), c);
        let w = self
            .q()
            .counts_put(c.total, c.unread, c.unseen, c.archived, uid);
        self.write(w);
    }

    /// Moves the per-type and per-level unread counts of an entry by `delta`.
    fn adjust_unread_by(&mut self, n: &Notification, delta: i64) -> StoreResult<()> {
        for (dim, key) in Self::unread_dims(n) {
            let cache_key = (n.uid.clone(), dim, key.clone());
            let current = match self.unread_by.get(&cache_key) {
                Some(v) => *v,
                None => self
                    .one_unwritten(self.q().unread_by_get(&n.uid, dim, &key))?
                    .map_or(0, |r| r.0),
            };
            let next = (current + delta).max(0);
            self.unread_by.insert(cache_key, next);
            let w = self.q().unread_by_put(next, &n.uid, dim, &key);
            self.write(w);
        }
        Ok(())
    }

    /// Takes an entry out of the user's unread counts.
    fn no_longer_unread(&mut self, n: &Notification) -> StoreResult<()> {
        let mut c = self.counts(&n.uid)?;
        c.unread -= 1;
        self.put_counts(&n.uid, c);
        self.adjust_unread_by(n, -1)
    }

    /// Moves a message's count of receipts on one channel in one status by `delta`.
    fn adjust_receipt_count(
        &mut self,
        mid: Uuid,
        channel: &str,
        status: &str,
        delta: i64,
    ) -> StoreResult<()> {
        let cache_key = (mid, channel.to_owned(), status.to_owned());
        let current = match self.receipt_counts.get(&cache_key) {
            Some(v) => *v,
            None => self
                .one_unwritten(self.q().receipt_count_get(mid, channel, status))?
                .map_or(0, |r| r.0),
        };
        let next = (current + delta).max(0);
        self.receipt_counts.insert(cache_key, next);
        let w = self.q().receipt_count_put(next, mid, channel, status);
        self.write(w);
        Ok(())
    }

    /// An inbox entry and where it sits.
    fn entry(&mut self, uid: &str, id: Uuid) -> StoreResult<Option<(i32, i64, Notification)>> {
        let Some((m, seq)) = self.one(self.q().inbox_id_get(uid, id))? else {
            return Ok(None);
        };
        let Some(row) = self.one(self.q().inbox_get(uid, m, seq))? else {
            return Ok(None);
        };
        Ok(Some((m, seq, notification_from(uid, seq, row)?)))
    }

    fn stored_message(&mut self, mid: Uuid) -> StoreResult<Option<(StoredMessage, Option<i64>)>> {
        if let Some(p) = self.messages.iter().find(|p| p.message.mid == mid) {
            return Ok(Some((p.message.clone(), Some(p.seq))));
        }
        let row = self.one(self.q().message_get(mid))?;
        row.map(|r| Ok((message_from(mid, &r)?, r.6))).transpose()
    }
}

/// A user's preferences from their row (defaults when they never set any).
pub(crate) fn preferences_of(row: Option<(String,)>) -> StoreResult<Preferences> {
    row.map_or_else(|| Ok(Preferences::default()), |(json,)| parse_json(&json))
}

/// A kind's documents from their rows, by ord then id.
pub(crate) fn stage_docs_sorted(kind: &str, rows: Vec<(String, i64, String)>) -> Vec<StageDoc> {
    let mut docs: Vec<StageDoc> = rows
        .into_iter()
        .map(|(id, ord, body)| StageDoc {
            kind: kind.to_owned(),
            id,
            ord,
            body,
        })
        .collect();
    docs.sort_by(|a, b| (a.ord, &a.id).cmp(&(b.ord, &b.id)));
    docs
}

/// A scheduled message from its row: the record, and the schedule's position kept beside it.
pub(crate) fn scheduled_of(record: &str, schedule_seq: i64) -> StoreResult<ScheduledMessage> {
    let mut s: ScheduledMessage = parse_json(record)?;
    s.schedule_seq = u64::try_from(schedule_seq).unwrap_or_default();
    Ok(s)
}

/// Keys under which this backend keeps a message's experiment and an entry's experiment and
/// variant in the `opts` JSON column (its tables predate experiments, see
/// `schema/cql/0004_experiments.cql`); taken out again when read.
const EXPERIMENT_KEY: &str = "msgxc.experiment";
const VARIANT_KEY: &str = "msgxc.variant";

/// The `opts` column of a message or an entry: the options and what this backend keeps
/// beside them.
fn opts_column(
    opts: &exchange::events::MessageOpts,
    beside: &[(&str, serde_json::Value)],
) -> StoreResult<String> {
    if beside.is_empty() {
        return to_json(opts);
    }
    let mut o = opts.clone();
    for (k, v) in beside {
        o.extra.insert((*k).to_owned(), v.clone());
    }
    to_json(&o)
}

/// The options of an `opts` column and, taken out of them, what was kept beside them.
fn opts_of_column(
    text: &str,
    keys: &[&str],
) -> StoreResult<(
    exchange::events::MessageOpts,
    Vec<Option<serde_json::Value>>,
)> {
    let mut o: exchange::events::MessageOpts = parse_json(text)?;
    let taken = keys.iter().map(|k| o.extra.remove(*k)).collect();
    Ok((o, taken))
}

/// The `opts` column of an inbox entry.
pub(crate) fn entry_opts_column(n: &Notification) -> StoreResult<String> {
    let mut beside = Vec::new();
    if let (Some(e), Some(v)) = (&n.experiment, &n.variant) {
        beside.push((EXPERIMENT_KEY, serde_json::Value::String(e.clone())));
        beside.push((VARIANT_KEY, serde_json::Value::String(v.clone())));
    }
    opts_column(&n.opts, &beside)
}

/// The `opts` column of a message.
pub(crate) fn message_opts_column(m: &StoredMessage) -> StoreResult<String> {
    match &m.experiment {
        Some(e) => opts_column(
            &m.opts,
            &[(
                EXPERIMENT_KEY,
                serde_json::to_value(e).map_err(|e| StoreError::Backend(e.to_string()))?,
            )],
        ),
        None => opts_column(&m.opts, &[]),
    }
}

pub(crate) fn notification_from(uid: &str, seq: i64, r: InboxRow) -> StoreResult<Notification> {
    let (opts, mut taken) = opts_of_column(&r.4, &[EXPERIMENT_KEY, VARIANT_KEY])?;
    let text = |v: Option<serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) => Some(s),
        _ => None,
    };
    let variant = text(taken.pop().flatten());
    let experiment = text(taken.pop().flatten());
    let read_at = r.8.map(from_ns).transpose()?;
    let archived_at = r.9.map(from_ns).transpose()?;
    Ok(Notification {
        id: r.0,
        uid: uid.to_owned(),
        tid: r.1,
        sender: r.2,
        msg: r.3,
        ntype: r.5,
        level: u8::try_from(r.6).unwrap_or(0),
        title: opts.title.clone(),
        data: opts.data.clone(),
        opts,
        status: Notification::status_of(read_at, archived_at),
        created_at: from_ns(r.7)?,
        read_at,
        archived_at,
        experiment,
        variant,
        seq: seq.max(0) as u64,
    })
}

pub(crate) fn message_from(
    mid: Uuid,
    r: &super::statements::MessageRow,
) -> StoreResult<StoredMessage> {
    let (opts, mut taken) = opts_of_column(&r.3, &[EXPERIMENT_KEY])?;
    let experiment = taken
        .pop()
        .flatten()
        .map(|v| {
            serde_json::from_value(v)
                .map_err(|e| StoreError::Corrupt(format!("experiment of {mid}: {e}")))
        })
        .transpose()?;
    Ok(StoredMessage {
        mid,
        tid: r.0,
        sender: r.1.clone(),
        msg: r.2.clone(),
        opts,
        created_at: from_ns(r.4)?,
        recipients: count(r.5),
        experiment,
        variant: None,
    })
}

impl FoldTarget for ScyllaTx<'_> {
    fn group_done(&mut self) -> StoreResult<()> {
        self.write_arrival();
        self.groups = self.groups.saturating_add(1);
        self.tasks = 0;
        if !self.independent {
            return self.flush();
        }
        // One recipient's writes are one logged batch, sent with the other recipients' at the
        // next flush (at the latest before the message row, which marks the event complete).
        if !self.pending.is_empty() {
            self.deferred.push(std::mem::take(&mut self.pending));
            self.deferred_tables.append(&mut self.pending_tables);
        }
        if self.deferred.len() >= 4 * IN_FLIGHT {
            self.flush()?;
        }
        Ok(())
    }

    fn prefetch_recipients(
        &mut self,
        m: &StoredMessage,
        uids: &[String],
        needs: crate::fold::Needs,
    ) -> StoreResult<()> {
        // What came before lands first, so the reads below see it.
        self.flush()?;
        self.independent = true;
        let q = self.q();
        let exists = self.many(uids.iter().map(|u| q.inbox_id_get(u, m.mid)).collect())?;
        self.entry_exists = uids
            .iter()
            .cloned()
            .zip(exists.into_iter().map(|e| e.is_some()))
            .collect();
        let uncounted: Vec<&String> = uids
            .iter()
            .filter(|u| !self.counts.contains_key(u.as_str()))
            .collect();
        let counts = self.many(uncounted.iter().map(|u| q.counts_get(u)).collect())?;
        for (u, row) in uncounted.into_iter().zip(counts) {
            self.counts.insert(u.clone(), Counts::of(row));
        }
        // The per-level and per-type unread counts a new entry moves.
        let sample = Notification::new(m, String::new(), 0);
        let mut keys = Vec::new();
        for u in uids {
            for (dim, key) in Self::unread_dims(&sample) {
                let k = (u.clone(), dim, key);
                if !self.unread_by.contains_key(&k) {
                    keys.push(k);
                }
            }
        }
        let values = self.many(
            keys.iter()
                .map(|(u, d, k)| q.unread_by_get(u, d, k))
                .collect(),
        )?;
        for (k, v) in keys.into_iter().zip(values) {
            self.unread_by.insert(k, v.map_or(0, |r| r.0));
        }
        if needs.preferences {
            let prefs = self.many(uids.iter().map(|u| q.prefs_get(u)).collect())?;
            for (u, p) in uids.iter().zip(prefs) {
                self.preferences.insert(u.clone(), preferences_of(p)?);
            }
        }
        if needs.devices {
            let devices = self.many(uids.iter().map(|u| q.any_device_of(u)).collect())?;
            self.has_device = uids
                .iter()
                .cloned()
                .zip(devices.into_iter().map(|d| d.is_some()))
                .collect();
        }
        // Each recipient's row of the message's experiment (their arm, if an earlier message
        // exposed them), read ahead in one concurrent round instead of one read per recipient.
        if let Some(e) = &m.experiment {
            let unknown: Vec<&String> = uids
                .iter()
                .filter(|u| {
                    !self
                        .experiment_users
                        .contains_key(&((*u).clone(), e.id.clone()))
                })
                .collect();
            let rows = self.many(
                unknown
                    .iter()
                    .map(|u| q.experiment_user_get(u, &e.id))
                    .collect(),
            )?;
            for (u, row) in unknown.into_iter().zip(rows) {
                let key = (u.clone(), e.id.clone());
                match row {
                    Some((r,)) => {
                        self.experiment_users.insert(key, parse_json(&r)?);
                    }
                    None => {
                        self.experiment_absent.insert(key);
                    }
                }
            }
        }
        if needs.users {
            let known = self.many(uids.iter().map(|u| q.user_get(user_bucket(u), u)).collect())?;
            for (u, k) in uids.iter().zip(known) {
                if k.is_some() {
                    self.store.inner.known_users.remember(u);
                } else {
                    self.new_users.insert(u.clone());
                }
            }
        }
        Ok(())
    }

    fn touch_user(&mut self, uid: &str, at: OffsetDateTime) -> StoreResult<()> {
        if self.store.inner.known_users.contains(uid) {
            return Ok(());
        }
        let bucket = user_bucket(uid);
        // Read first so first_seen keeps the first event's time.
        if self.new_users.remove(uid) || self.one(self.q().user_get(bucket, uid))?.is_none() {
            let w = self.q().user_put(bucket, uid, ns(at));
            self.write(w);
        } else {
            self.store.inner.known_users.remember(uid);
        }
        Ok(())
    }

    fn all_users(&mut self) -> StoreResult<Vec<String>> {
        let mut out = Vec::new();
        for bucket in 0..USER_BUCKETS {
            out.extend(
                self.all(self.q().users_in_bucket(bucket))?
                    .into_iter()
                    .map(|(u,)| u),
            );
        }
        out.sort();
        Ok(out)
    }

    fn device_owner(&mut self, device_id: &str) -> StoreResult<Option<String>> {
        Ok(self
            .one(self.q().device_owner_get(device_id))?
            .map(|(u,)| u))
    }

    fn put_device(&mut self, d: &Device) -> StoreResult<()> {
        let w = self
            .q()
            .device_put(&d.uid, &d.id, to_json(&d.address)?, ns(d.enlisted_at));
        self.write(w);
        if d.address.is_exclusive() {
            let w = self.q().device_owner_put(&d.id, &d.uid);
            self.write(w);
        }
        Ok(())
    }

    fn has_devices(&mut self, uid: &str) -> StoreResult<bool> {
        if let Some(has) = self.has_device.get(uid) {
            return Ok(*has);
        }
        Ok(self.one(self.q().any_device_of(uid))?.is_some())
    }

    fn device_channel(&mut self, uid: &str, device_id: &str) -> StoreResult<Option<String>> {
        self.one(self.q().device_address_get(uid, device_id))?
            .map(|(address,)| {
                parse_json::<exchange::events::DeviceAddress>(&address)
                    .map(|a| a.channel().to_owned())
            })
            .transpose()
    }

    fn add_channel_devices(&mut self, channel: &str, delta: i64) -> StoreResult<()> {
        let n = self
            .one(self.q().device_count_get(0, channel))?
            .and_then(|(n,)| n)
            .unwrap_or(0);
        let w = self.q().device_count_put(0, channel, (n + delta).max(0));
        self.write(w);
        Ok(())
    }

    fn delete_device(&mut self, uid: &str, device_id: &str) -> StoreResult<bool> {
        let existed = self.one(self.q().device_get(uid, device_id))?.is_some();
        if existed {
            let w = self.q().device_delete(uid, device_id);
            self.write(w);
        }
        if self.device_owner(device_id)?.as_deref() == Some(uid) {
            let w = self.q().device_owner_delete(device_id);
            self.write(w);
        }
        // Sent now: statements of one batch share a write timestamp, and a tie between this
        // delete and the next owner's insert of the same row would go to the delete.
        self.flush()?;
        Ok(existed)
    }

    fn insert_thread(&mut self, t: &Thread) -> StoreResult<bool> {
        if self.one(self.q().thread_counts_get(t.tid))?.is_some() {
            return Ok(false);
        }
        // The first thread to claim an alias keeps it (a compare-and-set); a replay of the
        // claiming event finds its own claim.
        let alias = match &t.alias {
            Some(a) => {
                let claimed = self
                    .rt
                    .block_on(self.store.lwt(self.q().alias_claim(a, t.tid)))?
                    || self
                        .one(self.q().alias_get(a))?
                        .is_some_and(|(tid,)| tid == t.tid);
                claimed.then(|| a.clone())
            }
            None => None,
        };
        let w = self.q().thread_put(
            t.tid,
            &t.name,
            &t.owner,
            t.open_subscribe,
            t.open_publish,
            ns(t.created_at),
            i64::try_from(t.subscribers).unwrap_or(i64::MAX),
            i64::try_from(t.messages).unwrap_or(i64::MAX),
            alias,
        );
        self.write(w);
        Ok(true)
    }

    fn add_subscriber(&mut self, tid: Uuid, uid: &str, at: OffsetDateTime) -> StoreResult<bool> {
        if self.one(self.q().subscriber_get(tid, uid))?.is_some() {
            return Ok(false);
        }
        let w = self.q().subscriber_put(tid, uid, ns(at));
        self.write(w);
        let w = self.q().user_thread_put(uid, tid, ns(at));
        self.write(w);
        if let Some((subscribers, _)) = self.one(self.q().thread_counts_get(tid))? {
            let w = self
                .q()
                .thread_subscribers_put(subscribers.unwrap_or(0) + 1, tid);
            self.write(w);
        }
        Ok(true)
    }

    fn remove_subscriber(&mut self, tid: Uuid, uid: &str) -> StoreResult<bool> {
        if self.one(self.q().subscriber_get(tid, uid))?.is_none() {
            return Ok(false);
        }
        let w = self.q().subscriber_delete(tid, uid);
        self.write(w);
        let w = self.q().user_thread_delete(uid, tid);
        self.write(w);
        if let Some((subscribers, _)) = self.one(self.q().thread_counts_get(tid))? {
            let w = self
                .q()
                .thread_subscribers_put((subscribers.unwrap_or(0) - 1).max(0), tid);
            self.write(w);
        }
        Ok(true)
    }

    fn subscribers(&mut self, tid: Uuid) -> StoreResult<Vec<String>> {
        let mut out: Vec<String> = self
            .all(self.q().subscribers_of(tid))?
            .into_iter()
            .map(|(u,)| u)
            .collect();
        out.sort();
        Ok(out)
    }

    fn insert_thread_message(&mut self, m: &ThreadMessage) -> StoreResult<bool> {
        let (bucket, seq) = (month(m.created_at), seq_i64(self.seq));
        if self
            .one(self.q().thread_message_get(m.tid, bucket, seq))?
            .is_some()
        {
            return Ok(false);
        }
        let w = self.q().thread_message_put(
            m.tid,
            bucket,
            seq,
            m.mid,
            &m.sender,
            &m.msg,
            to_json(&m.opts)?,
            ns(m.created_at),
        );
        self.write(w);
        let w = self.q().thread_month_put(m.tid, bucket);
        self.write(w);
        if let Some((_, messages)) = self.one(self.q().thread_counts_get(m.tid))? {
            let w = self
                .q()
                .thread_messages_count_put(messages.unwrap_or(0) + 1, m.tid);
            self.write(w);
        }
        // The history entry and its count land before the fan-out that follows.
        self.flush()?;
        Ok(true)
    }

    fn insert_notification(&mut self, n: &Notification) -> StoreResult<bool> {
        let exists = match self.entry_exists.remove(&n.uid) {
            Some(known) => known,
            None => self.one(self.q().inbox_id_get(&n.uid, n.id))?.is_some(),
        };
        if exists {
            // Within the message's own event this entry can only come from an attempt that
            // failed before the message row (written last) landed: it is still a recipient.
            if let Some(p) = self.messages.iter_mut().find(|p| p.message.mid == n.id) {
                p.message.recipients += 1;
            }
            return Ok(false);
        }
        let (bucket, seq) = (month(n.created_at), seq_i64(n.seq));
        let w = self.q().inbox_put(
            &n.uid,
            bucket,
            seq,
            n.id,
            n.tid,
            &n.sender,
            &n.msg,
            entry_opts_column(n)?,
            n.ntype.clone(),
            i32::from(n.level),
            ns(n.created_at),
            n.read_at.map(ns),
            n.archived_at.map(ns),
        );
        self.write(w);
        let w = self.q().inbox_id_put(&n.uid, n.id, bucket, seq);
        self.write(w);
        let month_key = format!("{}\u{0}{bucket}", n.uid);
        if !self.store.inner.known_months.contains(&month_key) {
            let w = self.q().inbox_month_put(&n.uid, bucket);
            self.write(w);
            self.months_written.push(month_key);
        }
        let mut c = self.counts(&n.uid)?;
        c.total += 1;
        c.unseen += 1;
        if n.status == NotificationStatus::Unread {
            c.unread += 1;
            self.adjust_unread_by(n, 1)?;
        }
        self.put_counts(&n.uid, c);
        Ok(true)
    }

    fn mark_read(
        &mut self,
        uid: &str,
        id: Uuid,
        at: OffsetDateTime,
    ) -> StoreResult<Option<Notification>> {
        let Some((bucket, seq, mut n)) = self.entry(uid, id)? else {
            return Ok(None);
        };
        if n.read_at.is_some() {
            return Ok(None);
        }
        let w = self
            .q()
            .inbox_state_put(Some(ns(at)), n.archived_at.map(ns), uid, bucket, seq);
        self.write(w);
        if n.status == NotificationStatus::Unread {
            self.no_longer_unread(&n)?;
        }
        n.read_at = Some(at);
        n.status = Notification::status_of(n.read_at, n.archived_at);
        Ok(Some(n))
    }

    fn archive(
        &mut self,
        uid: &str,
        id: Uuid,
        at: OffsetDateTime,
    ) -> StoreResult<Option<Notification>> {
        let Some((bucket, seq, mut n)) = self.entry(uid, id)? else {
            return Ok(None);
        };
        if n.archived_at.is_some() {
            return Ok(None);
        }
        let read_at = n.read_at.unwrap_or(at);
        let w = self
            .q()
            .inbox_state_put(Some(ns(read_at)), Some(ns(at)), uid, bucket, seq);
        self.write(w);
        let mut c = self.counts(uid)?;
        c.archived += 1;
        if n.status == NotificationStatus::Unread {
            c.unread -= 1;
            self.adjust_unread_by(&n, -1)?;
        }
        self.put_counts(uid, c);
        n.read_at = Some(read_at);
        n.archived_at = Some(at);
        n.status = NotificationStatus::Archived;
        Ok(Some(n))
    }

    fn delete_notification(&mut self, uid: &str, id: Uuid) -> StoreResult<Option<Notification>> {
        let Some((bucket, seq, n)) = self.entry(uid, id)? else {
            return Ok(None);
        };
        // The entry's `new` change was derived from it: stored now (with the group's writes,
        // see `arrival`), so the feed keeps its arrival before its deletion.
        self.write_arrival();
        self.arrival = Some(self.q().change_put(
            uid,
            seq,
            seq,
            String::from_utf8_lossy(&crate::fold::new_frame(&n)).into_owned(),
        ));
        let w = self.q().inbox_delete(uid, bucket, seq);
        self.write(w);
        let w = self.q().inbox_id_delete(uid, id);
        self.write(w);
        let mut c = self.counts(uid)?;
        c.total -= 1;
        if n.archived_at.is_some() {
            c.archived -= 1;
        }
        if seq > c.seen_seq {
            c.unseen -= 1;
        }
        if n.status == NotificationStatus::Unread {
            c.unread -= 1;
            self.adjust_unread_by(&n, -1)?;
        }
        self.put_counts(uid, c);
        Ok(Some(n))
    }

    fn unread_ids(
        &mut self,
        uid: &str,
        ntype: Option<&str>,
        tid: Option<Uuid>,
    ) -> StoreResult<Vec<Uuid>> {
        let months = self.all(self.q().inbox_months_of(uid))?;
        let mut out = Vec::new();
        for (m,) in months {
            for r in self.all(self.q().inbox_in_month(uid, m))? {
                let unread = r.9.is_none() && r.10.is_none();
                let type_ok = ntype.is_none_or(|t| r.6.as_deref() == Some(t));
                let thread_ok = tid.is_none_or(|t| r.2 == Some(t));
                if unread && type_ok && thread_ok {
                    out.push(r.1);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn mark_seen(&mut self, uid: &str, at: OffsetDateTime, seq: u64) -> StoreResult<()> {
        let mut c = self.counts(uid)?;
        c.unseen = 0;
        c.seen_seq = seq_i64(seq);
        self.counts.insert(uid.to_owned(), c);
        let w = self.q().counts_seen_put(0, seq_i64(seq), ns(at), uid);
        self.write(w);
        Ok(())
    }

    fn put_type(&mut self, t: &NotificationType) -> StoreResult<()> {
        let w = self.q().type_put(
            TYPES_SCOPE,
            &t.name,
            &t.title,
            &t.description,
            ns(t.registered_at),
        );
        self.write(w);
        Ok(())
    }

    fn delete_message(&mut self, mid: Uuid) -> StoreResult<bool> {
        let Some((m, seq)) = self.stored_message(mid)? else {
            return Ok(false);
        };
        let w = self.q().message_delete(mid);
        self.write(w);
        if let (Some(tid), Some(seq)) = (m.tid, seq) {
            let bucket = month(m.created_at);
            if self
                .one(self.q().thread_message_get(tid, bucket, seq))?
                .is_some()
            {
                let w = self.q().thread_message_delete(tid, bucket, seq);
                self.write(w);
                if let Some((_, messages)) = self.one(self.q().thread_counts_get(tid))? {
                    let w = self
                        .q()
                        .thread_messages_count_put((messages.unwrap_or(0) - 1).max(0), tid);
                    self.write(w);
                }
            }
        }
        Ok(true)
    }

    fn set_blocked(
        &mut self,
        uid: &str,
        blocked: &str,
        on: bool,
        at: OffsetDateTime,
    ) -> StoreResult<()> {
        let exists = self.one(self.q().block_get(uid, blocked))?.is_some();
        if on && !exists {
            let w = self.q().block_put(uid, blocked, ns(at));
            self.write(w);
        } else if !on && exists {
            let w = self.q().block_delete(uid, blocked);
            self.write(w);
        }
        Ok(())
    }

    fn put_change(
        &mut self,
        uid: &str,
        position: Position,
        frame: &[u8],
        at: OffsetDateTime,
    ) -> StoreResult<()> {
        let seq = seq_i64(position.seq);
        let (day, today) = self.feed_day(at)?;
        // Changes from before the day CHANGE_RETENTION ago go (at least that much is kept):
        // a range delete below the first position of the first day since then (today's, this
        // one, when none is recorded), issued only when there is something to delete (a range
        // tombstone per write would slow every read of the feed).
        let cutoff_day = day.saturating_sub(CHANGE_RETENTION.whole_days() as i32);
        let recorded = match self.feed_cutoffs.get(&cutoff_day) {
            Some(known) => *known,
            None => {
                let found = self.one(self.q().feed_day_from(0, cutoff_day))?;
                self.feed_cutoffs.insert(cutoff_day, found);
                found
            }
        };
        // This day counts as recorded too (it is, below, if it was not): it is the cutoff
        // when no earlier day since the cutoff day has a record.
        let cutoff = match recorded {
            Some((first_day, first)) if first_day <= day => first,
            _ => today.unwrap_or(seq),
        };
        let prune = self.one(self.q().change_before(uid, cutoff))?.is_some();
        self.write_arrival();
        self.record_feed_day(day, today, seq);
        if prune {
            let w = self.q().changes_prune(uid, cutoff);
            self.write(w);
        }
        let w = self.q().change_put(
            uid,
            seq,
            seq_i64(position.sub),
            String::from_utf8_lossy(frame).into_owned(),
        );
        self.write(w);
        Ok(())
    }

    fn put_new_change(
        &mut self,
        _uid: &str,
        position: Position,
        _frame: &dyn Fn() -> Vec<u8>,
        at: OffsetDateTime,
    ) -> StoreResult<()> {
        // Derived from the entry when the feed is read (`changes_after`): only the feed's day
        // is recorded, which places the retention cutoff. The user's stored changes are
        // pruned when their next stored change is written, or expire by the table's TTL.
        let (day, today) = self.feed_day(at)?;
        self.record_feed_day(day, today, seq_i64(position.seq));
        Ok(())
    }

    fn preferences(&mut self, uid: &str) -> StoreResult<Preferences> {
        if let Some(p) = self.preferences.get(uid) {
            return Ok(p.clone());
        }
        preferences_of(self.one(self.q().prefs_get(uid))?)
    }

    fn insert_message(&mut self, m: &StoredMessage) -> StoreResult<bool> {
        if self.stored_message(m.mid)?.is_some() {
            return Ok(false);
        }
        // Written by end_event, after everything the event derives from it.
        self.messages.push(PendingMessage {
            message: m.clone(),
            seq: seq_i64(self.seq),
        });
        Ok(true)
    }

    fn message(&mut self, mid: Uuid) -> StoreResult<Option<StoredMessage>> {
        Ok(self.stored_message(mid)?.map(|(m, _)| m))
    }

    fn add_recipients(&mut self, mid: Uuid, n: u64) -> StoreResult<()> {
        if let Some(p) = self.messages.iter_mut().find(|p| p.message.mid == mid) {
            p.message.recipients += n;
            return Ok(());
        }
        if let Some((m, _)) = self.stored_message(mid)? {
            let total = i64::try_from(m.recipients.saturating_add(n)).unwrap_or(i64::MAX);
            let w = self.q().message_recipients_put(total, mid);
            self.write(w);
        }
        Ok(())
    }

    fn enqueue_task(&mut self, task: &DispatchTask) -> StoreResult<()> {
        let index = i64::from(self.groups) * i64::from(TASKS_PER_GROUP) + i64::from(self.tasks);
        if self.tasks >= TASKS_PER_GROUP || index >= (1 << OUTBOX_INDEX_BITS) {
            return Err(StoreError::Backend(format!(
                "event {} queues more delivery tasks than the outbox key holds ({} recipients, {} each)",
                self.seq,
                (1 << OUTBOX_INDEX_BITS) / TASKS_PER_GROUP,
                TASKS_PER_GROUP
            )));
        }
        let seq = seq_i64(self.seq);
        let w = self.q().outbox_put(
            (seq % OUTBOX_SHARDS) as i32,
            seq,
            index as i32,
            to_json(task)?,
        );
        self.write(w);
        self.tasks += 1;
        Ok(())
    }

    fn advance_receipt(&mut self, r: &Receipt) -> StoreResult<()> {
        let old = self.one(self.q().receipt_get(r.mid, &r.uid, &r.device_id))?;
        let old_attempts = old
            .as_ref()
            .and_then(|o| o.2)
            .map_or(0, |a| a.max(0) as u32);
        let attempts = i32::try_from(old_attempts.max(r.attempts)).unwrap_or(i32::MAX);
        if let Some((status, channel, _)) = &old {
            let current = ReceiptStatus::parse(status)
                .ok_or_else(|| StoreError::Corrupt(format!("receipt status {status}")))?;
            if r.status <= current
                && !(current == ReceiptStatus::Failed && r.status == ReceiptStatus::Retrying)
            {
                // Receipts only move forward; keep the attempt count current.
                let w = self
                    .q()
                    .receipt_attempts_put(attempts, r.mid, &r.uid, &r.device_id);
                self.write(w);
                return Ok(());
            }
            let (channel, status) = (channel.clone(), status.clone());
            self.adjust_receipt_count(r.mid, &channel, &status, -1)?;
        }
        let w = self.q().receipt_put(
            r.mid,
            &r.uid,
            &r.device_id,
            &r.channel,
            r.status.as_str(),
            attempts,
            r.reason.clone(),
            ns(r.updated_at),
        );
        self.write(w);
        self.adjust_receipt_count(r.mid, &r.channel, r.status.as_str(), 1)
    }

    fn put_failed_delivery(&mut self, f: &FailedDelivery) -> StoreResult<()> {
        // Replaces an earlier dead letter of the same delivery (not this event's own row, met
        // again on a replay: a delete and an insert of one row in one batch leave it deleted).
        // The row's position: the event's stream position and the group within it (one event
        // settles many deliveries), so it still sorts by time. Rows written before batched
        // outcomes hold the bare position, which sorts below every later one.
        let (bucket, seq) = (
            month(f.failed_at),
            seq_i64(self.seq).saturating_mul(1 << 16) | i64::from(self.groups.clamp(0, 0xffff)),
        );
        if let Some((m, s)) = self.one(self.q().failed_id_get(&f.id))?
            && (m, s) != (bucket, seq)
        {
            let w = self.q().failed_delete(m, s);
            self.write(w);
        }
        let w = self.q().failed_put(
            bucket,
            seq,
            &f.id,
            f.mid,
            &f.uid,
            &f.device_id,
            &f.channel,
            &f.reason,
            f.permanent,
            i32::try_from(f.attempts).unwrap_or(i32::MAX),
            ns(f.failed_at),
        );
        self.write(w);
        let w = self.q().failed_id_put(&f.id, bucket, seq);
        self.write(w);
        let w = self.q().failed_month_put(0, bucket);
        self.write(w);
        Ok(())
    }

    fn take_failed_delivery(&mut self, id: &str) -> StoreResult<Option<FailedDelivery>> {
        let Some((m, s)) = self.one(self.q().failed_id_get(id))? else {
            return Ok(None);
        };
        let found = self.rt.block_on(self.store.failed_at(m, s))?;
        let w = self.q().failed_delete(m, s);
        self.write(w);
        let w = self.q().failed_id_delete(id);
        self.write(w);
        Ok(found)
    }

    fn put_preferences(&mut self, uid: &str, preferences: &Preferences) -> StoreResult<()> {
        let w = self.q().prefs_put(uid, to_json(preferences)?);
        self.write(w);
        Ok(())
    }

    fn online(&mut self, uid: &str) -> StoreResult<Option<OnlineRecord>> {
        self.one(self.q().online_get(uid))?
            .map(|(r,)| parse_json(&r))
            .transpose()
    }

    fn online_day(&mut self, uid: &str, day: i32) -> StoreResult<u64> {
        Ok(self
            .one(self.q().online_day_get(uid, day))?
            .map_or(0, |(s,)| u64::try_from(s).unwrap_or(0)))
    }

    fn put_online(&mut self, r: &OnlineRecord, days: &[(i32, u64)]) -> StoreResult<()> {
        let w = self.q().online_put(&r.uid, to_json(r)?);
        self.write(w);
        for (day, seconds) in days {
            let w =
                self.q()
                    .online_day_put(&r.uid, *day, i64::try_from(*seconds).unwrap_or(i64::MAX));
            self.write(w);
        }
        Ok(())
    }

    fn experiment(&mut self, id: &str) -> StoreResult<Option<ExperimentRecord>> {
        if let Some(e) = self.experiments.get(id) {
            return Ok(Some(e.clone()));
        }
        self.one_unwritten(self.q().experiment_get(id))?
            .map(|(r,)| parse_json(&r))
            .transpose()
    }

    fn put_experiment(&mut self, e: &ExperimentRecord) -> StoreResult<()> {
        self.experiments.insert(e.id.clone(), e.clone());
        let w = self.q().experiment_put(&e.id, to_json(e)?);
        self.write(w);
        Ok(())
    }

    fn experiment_user(
        &mut self,
        experiment: &str,
        uid: &str,
    ) -> StoreResult<Option<ExperimentUser>> {
        let key = (uid.to_owned(), experiment.to_owned());
        if let Some(u) = self.experiment_users.get(&key) {
            return Ok(Some(u.clone()));
        }
        if self.experiment_absent.contains(&key) {
            return Ok(None);
        }
        // A row this batch has not written (the cache holds every one it has).
        self.one_unwritten(self.q().experiment_user_get(uid, experiment))?
            .map(|(r,)| parse_json(&r))
            .transpose()
    }

    fn user_experiments(&mut self, uid: &str) -> StoreResult<Vec<ExperimentUser>> {
        let stored: Vec<(String,)> = self
            .rt
            .block_on(self.store.all(self.q().experiment_users_of(uid)))?;
        let mut out: Vec<ExperimentUser> = stored
            .iter()
            .map(|(r,)| parse_json(r))
            .collect::<StoreResult<_>>()?;
        for ((u, _), row) in &self.experiment_users {
            if u != uid {
                continue;
            }
            match out.iter_mut().find(|o| o.experiment == row.experiment) {
                Some(o) => *o = row.clone(),
                None => out.push(row.clone()),
            }
        }
        out.sort_by(|a, b| a.experiment.cmp(&b.experiment));
        Ok(out)
    }

    fn put_experiment_user(&mut self, u: &ExperimentUser) -> StoreResult<()> {
        self.experiment_users
            .insert((u.uid.clone(), u.experiment.clone()), u.clone());
        let w = self
            .q()
            .experiment_user_put(&u.uid, &u.experiment, to_json(u)?);
        self.write(w);
        Ok(())
    }

    fn arm_counts(&mut self, experiment: &str, mid: Uuid, arm: &str) -> StoreResult<ArmCounts> {
        let key = (experiment.to_owned(), mid, arm.to_owned());
        if let Some(c) = self.arm_counts.get(&key) {
            return Ok(c.clone());
        }
        Ok(self
            .one_unwritten(self.q().experiment_arm_get(experiment, mid, arm))?
            .map(|(r,)| parse_json(&r))
            .transpose()?
            .unwrap_or_else(|| ArmCounts {
                arm: arm.to_owned(),
                ..Default::default()
            }))
    }

    fn put_arm_counts(&mut self, experiment: &str, mid: Uuid, c: &ArmCounts) -> StoreResult<()> {
        self.arm_counts
            .insert((experiment.to_owned(), mid, c.arm.clone()), c.clone());
        let w = self
            .q()
            .experiment_arm_put(experiment, mid, &c.arm, to_json(c)?);
        self.write(w);
        Ok(())
    }

    fn put_funnel_message(&mut self, m: &FunnelMessage) -> StoreResult<()> {
        let q = self.q();
        self.write(q.funnel_message_put(m.mid, to_json(m)?));
        self.write(q.funnel_day_put(crate::fold::day_of(m.sent_at), m.mid));
        if let Some(e) = &m.experiment {
            self.write(q.funnel_experiment_put(e, m.mid));
        }
        Ok(())
    }

    fn put_funnel_channel(
        &mut self,
        mid: Uuid,
        uid: &str,
        variant: Option<&str>,
        channel: &str,
        accepted: bool,
    ) -> StoreResult<()> {
        let q = self.q();
        self.write(q.funnel_channel_put(mid, uid, channel, false, variant));
        if accepted {
            self.write(q.funnel_channel_put(mid, uid, channel, true, variant));
        }
        Ok(())
    }

    fn funnel_entry(&mut self, mid: Uuid, uid: &str) -> StoreResult<Option<FunnelEntry>> {
        if let Some(e) = self.funnel_entries.get(&(mid, uid.to_owned())) {
            return Ok(Some(e.clone()));
        }
        // A row this batch has not written (the cache holds every one it has).
        self.one_unwritten(self.q().funnel_entry_get(mid, uid))?
            .map(|(r,)| parse_json(&r))
            .transpose()
    }

    fn put_funnel_entry(&mut self, e: &FunnelEntry) -> StoreResult<()> {
        self.funnel_entries
            .insert((e.mid, e.uid.clone()), e.clone());
        let w = self.q().funnel_entry_put(e.mid, &e.uid, to_json(e)?);
        self.write(w);
        Ok(())
    }

    fn inbox_entry(&mut self, uid: &str, id: Uuid) -> StoreResult<Option<Notification>> {
        Ok(self.entry(uid, id)?.map(|(_, _, n)| n))
    }

    fn newest_entry(&mut self, uid: &str) -> StoreResult<Option<Notification>> {
        let months = self.all(self.q().inbox_months_of(uid))?;
        for (month,) in months {
            if let Some((seq, _)) = self.one(self.q().inbox_newest_in_month(uid, month))? {
                let row = self.one(self.q().inbox_get(uid, month, seq))?;
                if let Some(row) = row {
                    return notification_from(uid, seq, row).map(Some);
                }
            }
        }
        Ok(None)
    }

    fn scheduled(&mut self, mid: Uuid) -> StoreResult<Option<ScheduledMessage>> {
        self.one(self.q().scheduled_get(mid))?
            .map(|(record, seq)| scheduled_of(&record, seq))
            .transpose()
    }

    fn stage_doc(&mut self, kind: &str, id: &str) -> StoreResult<Option<StageDoc>> {
        Ok(self
            .one(self.q().stage_doc_get(kind, id))?
            .map(|(ord, body)| StageDoc {
                kind: kind.to_owned(),
                id: id.to_owned(),
                ord,
                body,
            }))
    }

    fn stage_docs_of(&mut self, kind: &str) -> StoreResult<Vec<StageDoc>> {
        let rows = self.all(self.q().stage_docs_of(kind))?;
        Ok(stage_docs_sorted(kind, rows))
    }

    fn put_stage_doc(&mut self, d: &StageDoc) -> StoreResult<()> {
        let w = self
            .q()
            .stage_doc_put(&d.kind, &d.id, d.ord, d.body.clone());
        self.write(w);
        Ok(())
    }

    fn delete_stage_doc(&mut self, kind: &str, id: &str) -> StoreResult<()> {
        let w = self.q().stage_doc_delete(kind, id);
        self.write(w);
        Ok(())
    }

    fn put_scheduled(&mut self, s: &ScheduledMessage) -> StoreResult<()> {
        let q = self.q();
        let record = to_json(s)?;
        let (due, seq) = (ns(s.deliver_at), seq_i64(s.schedule_seq));
        let status = match s.status {
            ScheduleStatus::Pending => "pending",
            ScheduleStatus::Sent => "sent",
            ScheduleStatus::Cancelled => "cancelled",
        };
        self.write(q.scheduled_put(s.mid, status, due, seq, record.clone()));
        if s.status == ScheduleStatus::Pending {
            self.write(q.scheduled_pending_put(SCHEDULED_SCOPE, due, s.mid, seq, record.clone()));
            self.write(q.scheduled_sender_put(&s.sender, due, s.mid, seq, record));
        } else {
            self.write(q.scheduled_pending_delete(SCHEDULED_SCOPE, due, s.mid));
            self.write(q.scheduled_sender_delete(&s.sender, due, s.mid));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_ids_round_trip() {
        for (seq, n) in [(1_i64, 0_i32), (17, 5), (1 << 34, (1 << 28) - 1)] {
            let (shard, s, i) = outbox_key(outbox_id(seq, n));
            assert_eq!((s, i), (seq, n));
            assert_eq!(i64::from(shard), seq % OUTBOX_SHARDS);
        }
    }

    #[test]
    fn user_buckets_are_stable() {
        // Changing the hash would hide existing users from broadcasts.
        assert_eq!(user_bucket(""), (0x811c_9dc5_u32 % 64) as i32);
        assert_eq!(user_bucket("ann"), user_bucket("ann"));
        assert!((0..USER_BUCKETS).contains(&user_bucket("someone")));
    }
}
