//! SQLite backend of [`Store`]: one embedded file, WAL mode, one writer and a few readers.
//!
//! Each batch's writes and the new checkpoint commit in one transaction, so a crash never
//! applies an event twice or skips one. `synchronous = NORMAL` may lose the last commits on
//! power loss, never consistency: the checkpoint rolls back with them and the projector
//! re-applies those events from JetStream.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use exchange::events::DeviceAddress;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use exchange::dispatch::{Directory, DispatchTask};

mod inbox;

use crate::fold::{Effects, FoldTarget, apply_event};
use crate::model::{
    ArmCounts, Device, ExperimentRecord, ExperimentUser, FailedDelivery, FunnelCopy, FunnelEntry,
    FunnelMessage, FunnelScope, HistoryQuery, InboxCounts, InboxQuery, InboxStats, Notification,
    NotificationType, OnlineRecord, Page, Receipt, ReceiptStatus, ScheduleStatus, ScheduledMessage,
    StageDoc, StoredMessage, Thread, ThreadMessage,
};
use crate::store::{
    Applied, ApplyOptions, ReceiptCounts, SequencedEvent, Store, StoreError, StoreResult,
};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
-- broadcast audience
CREATE TABLE IF NOT EXISTS users (uid TEXT PRIMARY KEY, first_seen TEXT NOT NULL) WITHOUT ROWID;
-- GET /devices: partition uid
CREATE TABLE IF NOT EXISTS devices (
  uid TEXT NOT NULL, device_id TEXT NOT NULL, address TEXT NOT NULL, enlisted_at TEXT NOT NULL,
  PRIMARY KEY (uid, device_id)) WITHOUT ROWID;
-- who holds an exclusive push token
CREATE TABLE IF NOT EXISTS device_owners (device_id TEXT PRIMARY KEY, uid TEXT NOT NULL) WITHOUT ROWID;
-- devices per channel, kept by the fold (the admin's overview)
CREATE TABLE IF NOT EXISTS device_counts (channel TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
-- GET /threads/{tid}
CREATE TABLE IF NOT EXISTS threads (
  tid TEXT PRIMARY KEY, name TEXT NOT NULL, owner TEXT NOT NULL, open_subscribe INTEGER NOT NULL,
  open_publish INTEGER NOT NULL, created_at TEXT NOT NULL,
  subscribers INTEGER NOT NULL DEFAULT 0, messages INTEGER NOT NULL DEFAULT 0, alias TEXT)
  WITHOUT ROWID;
-- GET /threads/by-alias/{alias}, /messaging targets: unique, first claim wins
CREATE TABLE IF NOT EXISTS aliases (alias TEXT PRIMARY KEY, tid TEXT NOT NULL) WITHOUT ROWID;
-- permission checks and fan-out: partition tid
CREATE TABLE IF NOT EXISTS thread_subscribers (
  tid TEXT NOT NULL, uid TEXT NOT NULL, since TEXT NOT NULL, PRIMARY KEY (tid, uid)) WITHOUT ROWID;
-- the live hub's routing of a connecting user: partition uid
CREATE INDEX IF NOT EXISTS thread_subscribers_by_uid ON thread_subscribers (uid, tid);
-- GET /threads/{tid}/messages: partition tid, clustered by mid (UUIDv7, time-ordered)
-- (the text and options are read from `messages`)
CREATE TABLE IF NOT EXISTS thread_messages (
  tid TEXT NOT NULL, mid TEXT NOT NULL, sender TEXT NOT NULL, created_at TEXT NOT NULL,
  PRIMARY KEY (tid, mid)) WITHOUT ROWID;
-- private-message blocks: partition uid (the blocker)
CREATE TABLE IF NOT EXISTS blocks (
  uid TEXT NOT NULL, blocked TEXT NOT NULL, since TEXT NOT NULL,
  PRIMARY KEY (uid, blocked)) WITHOUT ROWID;
-- GET /types
CREATE TABLE IF NOT EXISTS types (
  name TEXT PRIMARY KEY, title TEXT NOT NULL, description TEXT NOT NULL,
  registered_at TEXT NOT NULL) WITHOUT ROWID;
-- every message by mid (receipts authorization, dead-letter requeue; the text of inbox entries
-- and thread history); a deleted message keeps its row, marked, for the entries that hold it
CREATE TABLE IF NOT EXISTS messages (
  mid TEXT PRIMARY KEY, tid TEXT, sender TEXT NOT NULL, msg TEXT NOT NULL, opts TEXT NOT NULL,
  created_at TEXT NOT NULL, recipients INTEGER NOT NULL DEFAULT 0,
  deleted INTEGER NOT NULL DEFAULT 0, experiment TEXT) WITHOUT ROWID;
-- GET /messages/{mid}/receipts: partition mid
CREATE TABLE IF NOT EXISTS receipts (
  mid TEXT NOT NULL, uid TEXT NOT NULL, device_id TEXT NOT NULL, channel TEXT NOT NULL,
  status TEXT NOT NULL, attempts INTEGER NOT NULL, reason TEXT, updated_at TEXT NOT NULL,
  PRIMARY KEY (mid, uid, device_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS receipt_counts (
  mid TEXT NOT NULL, channel TEXT NOT NULL, status TEXT NOT NULL, n INTEGER NOT NULL,
  PRIMARY KEY (mid, channel, status)) WITHOUT ROWID;
-- GET /deliveries/failed: dead letters, newest first
CREATE TABLE IF NOT EXISTS failed_deliveries (
  id TEXT PRIMARY KEY, mid TEXT NOT NULL, uid TEXT NOT NULL, device_id TEXT NOT NULL,
  channel TEXT NOT NULL, reason TEXT NOT NULL, permanent INTEGER NOT NULL,
  attempts INTEGER NOT NULL, failed_at TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS failed_deliveries_by_time ON failed_deliveries (failed_at DESC, id);
-- GET /preferences and dispatch routing: partition uid
CREATE TABLE IF NOT EXISTS preferences (uid TEXT PRIMARY KEY, prefs TEXT NOT NULL) WITHOUT ROWID;
-- GET /messages/scheduled, DELETE /messages/{mid}/schedule: every scheduled message by mid;
-- pending ones listed soonest first (deliver_at in ns since the epoch)
CREATE TABLE IF NOT EXISTS scheduled (
  mid TEXT PRIMARY KEY, sender TEXT NOT NULL, deliver_at INTEGER NOT NULL, status TEXT NOT NULL,
  schedule_seq INTEGER NOT NULL, record TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS scheduled_pending ON scheduled (status, deliver_at, mid);
CREATE INDEX IF NOT EXISTS scheduled_by_sender ON scheduled (sender, status, deliver_at, mid);
-- GET /experiments/{id}: the experiment's record (JSON), from its first message
CREATE TABLE IF NOT EXISTS experiments (id TEXT PRIMARY KEY, record TEXT NOT NULL) WITHOUT ROWID;
-- each user's arm and steps in each experiment (JSON): partition uid (a tracked event finds
-- the user's experiments), one row per experiment
CREATE TABLE IF NOT EXISTS experiment_users (
  uid TEXT NOT NULL, experiment TEXT NOT NULL, record TEXT NOT NULL,
  PRIMARY KEY (uid, experiment)) WITHOUT ROWID;
-- users per arm and step (JSON), per message that first exposed them; the report sums them
CREATE TABLE IF NOT EXISTS experiment_arms (
  experiment TEXT NOT NULL, mid TEXT NOT NULL, arm TEXT NOT NULL, record TEXT NOT NULL,
  PRIMARY KEY (experiment, mid, arm)) WITHOUT ROWID;
-- GET /presence: each user's online time (JSON) and seconds per UTC day (days since the epoch)
CREATE TABLE IF NOT EXISTS online (uid TEXT PRIMARY KEY, record TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS online_days (
  uid TEXT NOT NULL, day INTEGER NOT NULL, seconds INTEGER NOT NULL,
  PRIMARY KEY (uid, day)) WITHOUT ROWID;
-- GET /reports/funnel: each experiment message's recipients per copy (JSON), listed by UTC day
-- (days since the epoch) and by experiment; a message outside experiments has one copy, whose
-- record the reads derive from its `messages` row (listed by time: `messages_by_time`, made by
-- `migrate`), so the fold writes none (files of older versions hold such records too: the
-- reads prefer them)
CREATE TABLE IF NOT EXISTS funnel_messages (
  mid TEXT PRIMARY KEY, day INTEGER NOT NULL, experiment TEXT, record TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS funnel_messages_by_day ON funnel_messages (day, mid);
CREATE INDEX IF NOT EXISTS funnel_messages_by_experiment ON funnel_messages (experiment, mid);
-- each recipient's steps (JSON), once anything happened after the send: partition mid
CREATE TABLE IF NOT EXISTS funnel_entries (
  mid TEXT NOT NULL, uid TEXT NOT NULL, record TEXT NOT NULL,
  PRIMARY KEY (mid, uid)) WITHOUT ROWID;
-- the channels a provider was asked to reach a recipient on (accepted 0) and those it accepted
-- (accepted 1): inserts only
CREATE TABLE IF NOT EXISTS funnel_channels (
  mid TEXT NOT NULL, uid TEXT NOT NULL, channel TEXT NOT NULL, accepted INTEGER NOT NULL,
  variant TEXT, PRIMARY KEY (mid, uid, channel, accepted)) WITHOUT ROWID;
-- stage-based messaging (seed 002): records and the fold's index rows, by kind; lists by ord
CREATE TABLE IF NOT EXISTS stage_docs (
  kind TEXT NOT NULL, id TEXT NOT NULL, ord INTEGER NOT NULL, body TEXT NOT NULL,
  PRIMARY KEY (kind, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS stage_docs_by_ord ON stage_docs (kind, ord, id);
-- dispatch tasks committed with their batch, relayed to JetStream after it (not a read model)
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, task TEXT NOT NULL);
"#;

/// Every table holding projected data, for dumps and comparisons (not `meta`).
pub const DATA_TABLES: [&str; 29] = [
    "users",
    "devices",
    "device_owners",
    "threads",
    "thread_subscribers",
    "thread_messages",
    "inbox",
    "inbox_counts",
    "inbox_unread_by",
    "inbox_changes",
    "feed_days",
    "blocks",
    "aliases",
    "types",
    "messages",
    "receipts",
    "receipt_counts",
    "failed_deliveries",
    "preferences",
    "scheduled",
    "experiments",
    "experiment_users",
    "experiment_arms",
    "online",
    "online_days",
    "funnel_messages",
    "funnel_entries",
    "funnel_channels",
    "stage_docs",
];

const READERS: usize = 4;

/// SQLite store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(backend)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF;",
    )
    .map_err(backend)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the store file at `path`.
    ///
    /// Several processes may open one file at once (a gateway and two projectors sharing it):
    /// switching a new file to WAL can answer "database is locked" without waiting for the
    /// busy timeout, so opening is retried for a while when it does.
    pub fn open(path: &Path) -> StoreResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(backend)?;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Self::open_once(path) {
                Err(StoreError::Backend(e))
                    if e.contains("database is locked") && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                result => return result,
            }
        }
    }

    fn open_once(path: &Path) -> StoreResult<Self> {
        let writer = open_connection(path)?;
        // Checkpoint the WAL into the database every ~16 MiB instead of every 4 MiB: pages the
        // fold rewrites often (counters, index roots) are copied once per checkpoint.
        // A page cache of 64 MiB for the writer (2 MiB by default): the fold's inserts land
        // all over the users' partitions, and with the default cache a batch spilled dirty
        // pages and read others back from the file mid-transaction.
        writer
            .execute_batch("PRAGMA wal_autocheckpoint = 4000; PRAGMA cache_size = -65536;")
            .map_err(backend)?;
        // One IMMEDIATE transaction: processes opening a new file at once wait for each other
        // (busy timeout) instead of one failing to upgrade a stale read of the schema.
        let mut writer = writer;
        let tx = writer
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(backend)?;
        tx.execute_batch(SCHEMA).map_err(backend)?;
        tx.execute_batch(inbox::SCHEMA).map_err(backend)?;
        migrate(&tx)?;
        tx.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?1)",
            params![Uuid::now_v7().to_string()],
        )
        .map_err(backend)?;
        tx.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('checkpoint', '0')",
            [],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        let readers = (0..READERS)
            .map(|_| open_connection(path).map(Mutex::new))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer: Mutex::new(writer),
                readers,
                next_reader: AtomicUsize::new(0),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs a read on one of the reader connections, off the async runtime.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let i = inner.next_reader.fetch_add(1, Ordering::Relaxed) % inner.readers.len();
            let conn = inner.readers[i]
                .lock()
                .map_err(|_| StoreError::Backend("reader lock poisoned".into()))?;
            f(&conn)
        })
        .await
        .map_err(backend)?
    }

    /// Every data table's rows in primary-key order, as JSON text: two stores with equal dumps
    /// hold the same read models.
    pub async fn dump(&self) -> StoreResult<serde_json::Value> {
        self.read(|conn| {
            let mut out = serde_json::Map::new();
            for table in DATA_TABLES {
                let mut stmt = conn
                    .prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2"))
                    .map_err(backend)?;
                let cols = stmt.column_count();
                let rows = stmt
                    .query_map([], |row| {
                        (0..cols)
                            .map(|i| {
                                let v: rusqlite::types::Value = row.get(i)?;
                                Ok(match v {
                                    rusqlite::types::Value::Null => serde_json::Value::Null,
                                    rusqlite::types::Value::Integer(n) => n.into(),
                                    rusqlite::types::Value::Real(f) => f.into(),
                                    rusqlite::types::Value::Text(s) => s.into(),
                                    rusqlite::types::Value::Blob(b) => format!("{b:?}").into(),
                                })
                            })
                            .collect::<rusqlite::Result<Vec<_>>>()
                    })
                    .map_err(backend)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(backend)?;
                out.insert(table.into(), rows.into());
            }
            Ok(serde_json::Value::Object(out))
        })
        .await
    }
}

/// The text of a stored time (see [`ts`]).
const STORED_TIME: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
);

/// A time as stored: RFC 3339 in UTC with all nine fraction digits, so that SQL compares and
/// orders the text as it would the times (a shortest-form fraction does not: `57.5` sorts
/// after `57.500000001`). Rows written by builds before this one keep their shortest form
/// until `msgxc rebuild`; they read back the same.
///
/// Written digit by digit (the fold writes a few per event; `time`'s formatter was 5% of a
/// rebuild's fold); years outside 0-9999 go through `time`'s formatter, as before.
fn ts(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let year = match u32::try_from(t.year()) {
        Ok(year) if year <= 9999 => year,
        _ => return t.format(STORED_TIME).unwrap_or_default(),
    };
    let mut text = *b"0000-00-00T00:00:00.000000000Z";
    let mut put = |at: std::ops::Range<usize>, mut n: u32| {
        for digit in text[at].iter_mut().rev() {
            *digit = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0..4, year);
    put(5..7, u32::from(u8::from(t.month())));
    put(8..10, u32::from(t.day()));
    put(11..13, u32::from(t.hour()));
    put(14..16, u32::from(t.minute()));
    put(17..19, u32::from(t.second()));
    put(20..29, t.nanosecond());
    text.iter().map(|&b| char::from(b)).collect()
}

fn parse_ts(s: &str) -> StoreResult<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| StoreError::Corrupt(format!("time {s}: {e}")))
}

/// A scheduled message from its row: the record, and the schedule's position kept beside it.
fn scheduled_of(record: &str, schedule_seq: i64) -> StoreResult<ScheduledMessage> {
    let mut s: ScheduledMessage = parse_json(record)?;
    s.schedule_seq = u64::try_from(schedule_seq).unwrap_or_default();
    Ok(s)
}

fn stage_doc_of(c: &Connection, kind: &str, id: &str) -> StoreResult<Option<StageDoc>> {
    c.prepare_cached("SELECT ord, body FROM stage_docs WHERE kind = ?1 AND id = ?2")
        .and_then(|mut st| {
            st.query_row(params![kind, id], |r| {
                Ok(StageDoc {
                    kind: kind.to_owned(),
                    id: id.to_owned(),
                    ord: r.get(0)?,
                    body: r.get(1)?,
                })
            })
            .optional()
        })
        .map_err(backend)
}

/// A page of the documents of `kind` (by ord, then id); `limit` 0 is all of them.
fn stage_docs_page(
    c: &Connection,
    kind: &str,
    limit: u32,
    offset: u32,
) -> StoreResult<Vec<StageDoc>> {
    let limit = if limit == 0 { -1 } else { i64::from(limit) };
    c.prepare_cached(
        "SELECT id, ord, body FROM stage_docs WHERE kind = ?1 ORDER BY ord, id LIMIT ?2 OFFSET ?3",
    )
    .and_then(|mut st| {
        st.query_map(params![kind, limit, i64::from(offset)], |r| {
            Ok(StageDoc {
                kind: kind.to_owned(),
                id: r.get(0)?,
                ord: r.get(1)?,
                body: r.get(2)?,
            })
        })?
        .collect()
    })
    .map_err(backend)
}

fn scheduled_by_mid(c: &Connection, mid: Uuid) -> StoreResult<Option<ScheduledMessage>> {
    c.prepare_cached("SELECT record, schedule_seq FROM scheduled WHERE mid = ?1")
        .and_then(|mut st| {
            st.query_row(params![mid.to_string()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .optional()
        })
        .map_err(backend)?
        .map(|(record, seq)| scheduled_of(&record, seq))
        .transpose()
}

fn parse_uuid(s: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(s).map_err(|e| StoreError::Corrupt(format!("uuid {s}: {e}")))
}

fn parse_json<T: serde::de::DeserializeOwned>(s: &str) -> StoreResult<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("json {s}: {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(backend)
}

/// Rows are read as raw strings first, then parsed, so rusqlite errors and data errors stay
/// apart.
fn collect<R, T>(
    rows: rusqlite::MappedRows<'_, impl FnMut(&Row<'_>) -> rusqlite::Result<R>>,
    parse: impl Fn(R) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    rows.map(|r| r.map_err(backend).and_then(&parse)).collect()
}

type ThreadRow = (
    String,
    String,
    String,
    bool,
    bool,
    String,
    i64,
    i64,
    Option<String>,
);

const THREAD_COLS: &str =
    "tid, name, owner, open_subscribe, open_publish, created_at, subscribers, messages, alias";

fn thread_row(r: &Row<'_>) -> rusqlite::Result<ThreadRow> {
    tuple(r)
}

fn thread_from(r: ThreadRow) -> StoreResult<Thread> {
    Ok(Thread {
        tid: parse_uuid(&r.0)?,
        name: r.1,
        owner: r.2,
        open_subscribe: r.3,
        open_publish: r.4,
        created_at: parse_ts(&r.5)?,
        subscribers: r.6.max(0) as u64,
        messages: r.7.max(0) as u64,
        alias: r.8,
    })
}

/// A row as a tuple of its column types (rusqlite's conversion wants one lifetime; `Row` is
/// covariant, so the borrow is shortened to match).
fn tuple<'a, T: TryFrom<&'a Row<'a>, Error = rusqlite::Error>>(
    r: &'a Row<'_>,
) -> rusqlite::Result<T> {
    let r: &'a Row<'a> = r;
    T::try_from(r)
}

/// A maintained counter of one partition (0 when the partition does not exist).
fn counter(c: &Connection, sql: &str, key: &str) -> StoreResult<u64> {
    let n: Option<i64> = c
        .prepare_cached(sql)
        .and_then(|mut s| s.query_row(params![key], |r| r.get(0)).optional())
        .map_err(backend)?;
    Ok(n.unwrap_or(0).max(0) as u64)
}

fn limit_offset(limit: u32, offset: u64) -> (i64, i64) {
    (i64::from(limit), i64::try_from(offset).unwrap_or(i64::MAX))
}

/// The fold's view of one open write transaction.
struct SqliteTx<'a> {
    tx: &'a Transaction<'a>,
    /// Inbox counters and feed pruning, written once per user at the end.
    inbox: inbox::Pending,
    /// Users already recorded by this transaction.
    touched: HashSet<String>,
    /// Subscriber and message count changes per thread, written once at the end.
    thread_counts: HashMap<String, (i64, i64)>,
    /// Receipt count changes per (mid, channel, status), written once at the end: a batch of
    /// outcomes moves the same few counts many times.
    receipt_counts: HashMap<(String, String, &'static str), i64>,
    /// Each thread's subscribers as read (or last changed) in this transaction: a batch of
    /// messages to one thread reads them once.
    subscribers: HashMap<Uuid, Vec<String>>,
    /// The message row the event being folded creates, written with its recipient count once
    /// the event is folded (or before anything reads messages): one write, not an insert and
    /// an update of the same row.
    message: Option<StoredMessage>,
}

impl SqliteTx<'_> {
    /// Writes the pending message row, if any.
    fn write_message(&mut self) -> StoreResult<()> {
        let Some(m) = self.message.take() else {
            return Ok(());
        };
        self.exec(
            "INSERT INTO messages (mid, tid, sender, msg, opts, created_at, recipients, experiment)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                m.mid.to_string(),
                m.tid.map(|t| t.to_string()),
                m.sender,
                m.msg,
                to_json(&m.opts)?,
                ts(m.created_at),
                i64::try_from(m.recipients).unwrap_or(i64::MAX),
                m.experiment.as_ref().map(to_json).transpose()?
            ],
        )
        .map(drop)
    }

    /// Work deferred to the end of the transaction.
    fn finish(&mut self) -> StoreResult<()> {
        self.write_message()?;
        self.inbox.finish(self.tx)?;
        for (tid, (subscribers, messages)) in std::mem::take(&mut self.thread_counts) {
            self.exec(
                "UPDATE threads SET subscribers = subscribers + ?2, messages = messages + ?3
                 WHERE tid = ?1",
                params![tid, subscribers, messages],
            )?;
        }
        // Also a zero change: the row exists whichever way the events were batched.
        for ((mid, channel, status), n) in std::mem::take(&mut self.receipt_counts) {
            self.exec(
                "INSERT INTO receipt_counts (mid, channel, status, n) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (mid, channel, status) DO UPDATE SET n = n + ?4",
                params![mid, channel, status, n],
            )?;
        }
        Ok(())
    }
}

impl SqliteTx<'_> {
    fn exec(&self, sql: &str, p: impl rusqlite::Params) -> StoreResult<usize> {
        self.tx
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(p))
            .map_err(backend)
    }
}

/// The JSON records a query answers, parsed.
fn records<T: serde::de::DeserializeOwned>(
    c: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
) -> StoreResult<Vec<T>> {
    let raw: Vec<String> = c
        .prepare_cached(sql)
        .and_then(|mut s| s.query_map(p, |r| r.get(0))?.collect())
        .map_err(backend)?;
    raw.iter().map(|r| parse_json(r)).collect()
}

fn experiment_by_id(c: &Connection, id: &str) -> StoreResult<Option<ExperimentRecord>> {
    Ok(records(
        c,
        "SELECT record FROM experiments WHERE id = ?1",
        params![id],
    )?
    .pop())
}

/// An experiment's users per arm and step, summed over the messages that exposed them.
fn experiment_arm_totals(c: &Connection, id: &str) -> StoreResult<Vec<ArmCounts>> {
    let rows: Vec<ArmCounts> = records(
        c,
        "SELECT record FROM experiment_arms WHERE experiment = ?1",
        params![id],
    )?;
    Ok(crate::model::sum_arms(rows))
}

fn funnel_message_of(c: &Connection, mid: Uuid) -> StoreResult<Option<FunnelMessage>> {
    let mid = mid.to_string();
    if let Some(stored) = records(
        c,
        "SELECT record FROM funnel_messages WHERE mid = ?1",
        params![mid],
    )?
    .pop()
    {
        return Ok(Some(stored));
    }
    Ok(derived_funnel(c, "mid = ?1", params![mid])?.pop())
}

fn funnel_messages_in(c: &Connection, scope: &FunnelScope) -> StoreResult<Vec<FunnelMessage>> {
    match scope {
        FunnelScope::Experiment(id) => records(
            c,
            "SELECT record FROM funnel_messages WHERE experiment = ?1 ORDER BY mid",
            params![id],
        ),
        FunnelScope::Days { first, last } => {
            let mut listed: Vec<FunnelMessage> = records(
                c,
                "SELECT record FROM funnel_messages WHERE day BETWEEN ?1 AND ?2",
                params![first, last],
            )?;
            // Day `d` is the times from the start of `d` to the start of `d + 1` (fixed-width
            // text compares as the times do); days beyond what a time can hold leave the range
            // open on that side.
            let start = |day: i32| {
                OffsetDateTime::from_unix_timestamp(i64::from(day) * 86_400)
                    .ok()
                    .map(ts)
            };
            let from = start(*first).unwrap_or_default();
            let until = last
                .checked_add(1)
                .and_then(start)
                .unwrap_or_else(|| "~".to_owned());
            listed.extend(derived_funnel(
                c,
                "created_at >= ?1 AND created_at < ?2
                 AND NOT EXISTS (SELECT 1 FROM funnel_messages f WHERE f.mid = messages.mid)",
                params![from, until],
            )?);
            listed.sort_by_key(|m| (crate::fold::day_of(m.sent_at), m.mid));
            Ok(listed)
        }
    }
}

/// The funnel records of the messages outside experiments that `condition` selects (SQL over
/// `messages`): one copy of the message's urgency and type sent to its recipients (none when
/// it reached nobody), nobody held out; what the fold would have recorded, since a transaction
/// writes every entry of a message or none.
fn derived_funnel(
    c: &Connection,
    condition: &str,
    p: impl rusqlite::Params,
) -> StoreResult<Vec<FunnelMessage>> {
    let sql = format!(
        "SELECT mid, sender, opts, created_at, recipients FROM messages
         WHERE experiment IS NULL AND {condition}"
    );
    let rows: Vec<(String, String, String, String, i64)> = c
        .prepare_cached(&sql)
        .and_then(|mut s| s.query_map(p, |r| tuple(r))?.collect())
        .map_err(backend)?;
    rows.into_iter()
        .map(|(mid, sender, opts, created_at, recipients)| {
            let opts: exchange::events::MessageOpts = parse_json(&opts)?;
            let sent = recipients.max(0) as u64;
            Ok(FunnelMessage {
                mid: parse_uuid(&mid)?,
                sender,
                sent_at: parse_ts(&created_at)?,
                experiment: None,
                copies: (sent > 0)
                    .then(|| FunnelCopy {
                        variant: None,
                        urgency: opts.urgency.unwrap_or(exchange::events::Urgency::Normal) as u8,
                        ntype: opts.ntype,
                        sent,
                    })
                    .into_iter()
                    .collect(),
                held_out: 0,
            })
        })
        .collect()
}

/// A message's funnel rows: each recipient's steps with the channels of their dispatch.
fn funnel_entries_of(c: &Connection, mid: Uuid) -> StoreResult<Vec<FunnelEntry>> {
    let mid_s = mid.to_string();
    let mut by_uid: std::collections::BTreeMap<String, FunnelEntry> = records::<FunnelEntry>(
        c,
        "SELECT record FROM funnel_entries WHERE mid = ?1",
        params![mid_s],
    )?
    .into_iter()
    .map(|e| (e.uid.clone(), e))
    .collect();
    let rows: Vec<(String, String, bool, Option<String>)> = c
        .prepare_cached(
            "SELECT uid, channel, accepted, variant FROM funnel_channels WHERE mid = ?1
             ORDER BY uid, channel",
        )
        .and_then(|mut s| {
            s.query_map(params![mid_s], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect()
        })
        .map_err(backend)?;
    for (uid, channel, accepted, variant) in rows {
        by_uid
            .entry(uid.clone())
            .or_insert_with(|| FunnelEntry::new(mid, &uid, variant))
            .dispatched(&channel, accepted);
    }
    Ok(by_uid.into_values().collect())
}

fn online_of(c: &Connection, uid: &str) -> StoreResult<Option<OnlineRecord>> {
    Ok(records(c, "SELECT record FROM online WHERE uid = ?1", params![uid])?.pop())
}

fn online_days_of(c: &Connection, uid: &str, limit: u32) -> StoreResult<Vec<(i32, u64)>> {
    c.prepare_cached(
        "SELECT day, seconds FROM online_days WHERE uid = ?1 ORDER BY day DESC LIMIT ?2",
    )
    .and_then(|mut s| {
        s.query_map(params![uid, limit], |r| {
            Ok((r.get::<_, i32>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })?
        .collect()
    })
    .map_err(backend)
}

impl FoldTarget for SqliteTx<'_> {
    fn put_funnel_message(&mut self, m: &FunnelMessage) -> StoreResult<()> {
        if m.experiment.is_none() {
            // Derived from the message's row when read (`derived_funnel`).
            return Ok(());
        }
        self.exec(
            "INSERT OR REPLACE INTO funnel_messages (mid, day, experiment, record)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                m.mid.to_string(),
                crate::fold::day_of(m.sent_at),
                m.experiment,
                to_json(m)?
            ],
        )
        .map(drop)
    }

    fn put_funnel_channel(
        &mut self,
        mid: Uuid,
        uid: &str,
        variant: Option<&str>,
        channel: &str,
        accepted: bool,
    ) -> StoreResult<()> {
        self.exec(
            "INSERT OR IGNORE INTO funnel_channels (mid, uid, channel, accepted, variant)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![mid.to_string(), uid, channel, false, variant],
        )?;
        if accepted {
            self.exec(
                "INSERT OR IGNORE INTO funnel_channels (mid, uid, channel, accepted, variant)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![mid.to_string(), uid, channel, true, variant],
            )?;
        }
        Ok(())
    }

    fn funnel_entry(&mut self, mid: Uuid, uid: &str) -> StoreResult<Option<FunnelEntry>> {
        Ok(records(
            self.tx,
            "SELECT record FROM funnel_entries WHERE mid = ?1 AND uid = ?2",
            params![mid.to_string(), uid],
        )?
        .pop())
    }

    fn put_funnel_entry(&mut self, e: &FunnelEntry) -> StoreResult<()> {
        self.exec(
            "INSERT OR REPLACE INTO funnel_entries (mid, uid, record) VALUES (?1, ?2, ?3)",
            params![e.mid.to_string(), e.uid, to_json(e)?],
        )
        .map(drop)
    }

    fn inbox_entry(&mut self, uid: &str, id: Uuid) -> StoreResult<Option<Notification>> {
        self.write_message()?;
        inbox::get(self.tx, uid, id)
    }

    fn newest_entry(&mut self, uid: &str) -> StoreResult<Option<Notification>> {
        self.write_message()?;
        inbox::newest(self.tx, uid)
    }

    fn online(&mut self, uid: &str) -> StoreResult<Option<OnlineRecord>> {
        online_of(self.tx, uid)
    }

    fn online_day(&mut self, uid: &str, day: i32) -> StoreResult<u64> {
        self.tx
            .prepare_cached("SELECT seconds FROM online_days WHERE uid = ?1 AND day = ?2")
            .and_then(|mut s| {
                s.query_row(params![uid, day], |r| r.get::<_, i64>(0))
                    .optional()
            })
            .map(|v| v.unwrap_or(0).max(0) as u64)
            .map_err(backend)
    }

    fn put_online(&mut self, r: &OnlineRecord, days: &[(i32, u64)]) -> StoreResult<()> {
        self.exec(
            "INSERT OR REPLACE INTO online (uid, record) VALUES (?1, ?2)",
            params![r.uid, to_json(r)?],
        )?;
        for (day, seconds) in days {
            self.exec(
                "INSERT OR REPLACE INTO online_days (uid, day, seconds) VALUES (?1, ?2, ?3)",
                params![r.uid, day, i64::try_from(*seconds).unwrap_or(i64::MAX)],
            )?;
        }
        Ok(())
    }

    fn experiment(&mut self, id: &str) -> StoreResult<Option<ExperimentRecord>> {
        experiment_by_id(self.tx, id)
    }

    fn put_experiment(&mut self, e: &ExperimentRecord) -> StoreResult<()> {
        self.exec(
            "INSERT OR REPLACE INTO experiments (id, record) VALUES (?1, ?2)",
            params![e.id, to_json(e)?],
        )
        .map(drop)
    }

    fn experiment_user(
        &mut self,
        experiment: &str,
        uid: &str,
    ) -> StoreResult<Option<ExperimentUser>> {
        Ok(records(
            self.tx,
            "SELECT record FROM experiment_users WHERE uid = ?1 AND experiment = ?2",
            params![uid, experiment],
        )?
        .pop())
    }

    fn user_experiments(&mut self, uid: &str) -> StoreResult<Vec<ExperimentUser>> {
        records(
            self.tx,
            "SELECT record FROM experiment_users WHERE uid = ?1 ORDER BY experiment",
            params![uid],
        )
    }

    fn put_experiment_user(&mut self, u: &ExperimentUser) -> StoreResult<()> {
        self.exec(
            "INSERT OR REPLACE INTO experiment_users (uid, experiment, record) VALUES (?1, ?2, ?3)",
            params![u.uid, u.experiment, to_json(u)?],
        )
        .map(drop)
    }

    fn arm_counts(&mut self, experiment: &str, mid: Uuid, arm: &str) -> StoreResult<ArmCounts> {
        Ok(records(
            self.tx,
            "SELECT record FROM experiment_arms WHERE experiment = ?1 AND mid = ?2 AND arm = ?3",
            params![experiment, mid.to_string(), arm],
        )?
        .pop()
        .unwrap_or_else(|| ArmCounts {
            arm: arm.to_owned(),
            ..Default::default()
        }))
    }

    fn put_arm_counts(&mut self, experiment: &str, mid: Uuid, c: &ArmCounts) -> StoreResult<()> {
        self.exec(
            "INSERT OR REPLACE INTO experiment_arms (experiment, mid, arm, record)
             VALUES (?1, ?2, ?3, ?4)",
            params![experiment, mid.to_string(), c.arm, to_json(c)?],
        )
        .map(drop)
    }

    fn scheduled(&mut self, mid: Uuid) -> StoreResult<Option<ScheduledMessage>> {
        scheduled_by_mid(self.tx, mid)
    }

    fn stage_doc(&mut self, kind: &str, id: &str) -> StoreResult<Option<StageDoc>> {
        stage_doc_of(self.tx, kind, id)
    }

    fn stage_docs_of(&mut self, kind: &str) -> StoreResult<Vec<StageDoc>> {
        stage_docs_page(self.tx, kind, 0, 0)
    }

    fn put_stage_doc(&mut self, d: &StageDoc) -> StoreResult<()> {
        self.exec(
            "INSERT OR REPLACE INTO stage_docs (kind, id, ord, body) VALUES (?1, ?2, ?3, ?4)",
            params![d.kind, d.id, d.ord, d.body],
        )
        .map(drop)
    }

    fn delete_stage_doc(&mut self, kind: &str, id: &str) -> StoreResult<()> {
        self.exec(
            "DELETE FROM stage_docs WHERE kind = ?1 AND id = ?2",
            params![kind, id],
        )
        .map(drop)
    }

    fn put_scheduled(&mut self, s: &ScheduledMessage) -> StoreResult<()> {
        let status = match s.status {
            ScheduleStatus::Pending => "pending",
            ScheduleStatus::Sent => "sent",
            ScheduleStatus::Cancelled => "cancelled",
        };
        self.exec(
            "INSERT OR REPLACE INTO scheduled
               (mid, sender, deliver_at, status, schedule_seq, record)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                s.mid.to_string(),
                s.sender,
                i64::try_from(s.deliver_at.unix_timestamp_nanos()).unwrap_or(i64::MAX),
                status,
                i64::try_from(s.schedule_seq).unwrap_or(i64::MAX),
                to_json(s)?
            ],
        )
        .map(drop)
    }

    fn touch_user(&mut self, uid: &str, at: OffsetDateTime) -> StoreResult<()> {
        // Users are never removed: once recorded in this transaction, nothing to do.
        if self.touched.contains(uid) {
            return Ok(());
        }
        self.exec(
            "INSERT OR IGNORE INTO users (uid, first_seen) VALUES (?1, ?2)",
            params![uid, ts(at)],
        )?;
        self.touched.insert(uid.to_owned());
        Ok(())
    }

    fn all_users(&mut self) -> StoreResult<Vec<String>> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT uid FROM users ORDER BY uid")
            .map_err(backend)?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(backend)?;
        collect(rows, Ok)
    }

    fn device_owner(&mut self, device_id: &str) -> StoreResult<Option<String>> {
        self.tx
            .prepare_cached("SELECT uid FROM device_owners WHERE device_id = ?1")
            .and_then(|mut s| s.query_row(params![device_id], |r| r.get(0)).optional())
            .map_err(backend)
    }

    fn users_with_devices(&mut self) -> StoreResult<Option<HashSet<String>>> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT DISTINCT uid FROM devices")
            .map_err(backend)?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(backend)?;
        collect(rows, Ok).map(|uids| Some(uids.into_iter().collect()))
    }

    fn has_devices(&mut self, uid: &str) -> StoreResult<bool> {
        self.tx
            .prepare_cached("SELECT 1 FROM devices WHERE uid = ?1 LIMIT 1")
            .and_then(|mut s| s.query_row(params![uid], |_| Ok(())).optional())
            .map(|found| found.is_some())
            .map_err(backend)
    }

    fn put_device(&mut self, d: &Device) -> StoreResult<()> {
        self.exec(
            "INSERT OR REPLACE INTO devices (uid, device_id, address, enlisted_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![d.uid, d.id, to_json(&d.address)?, ts(d.enlisted_at)],
        )?;
        if d.address.is_exclusive() {
            self.exec(
                "INSERT OR REPLACE INTO device_owners (device_id, uid) VALUES (?1, ?2)",
                params![d.id, d.uid],
            )?;
        }
        Ok(())
    }

    fn device_channel(&mut self, uid: &str, device_id: &str) -> StoreResult<Option<String>> {
        let address: Option<String> = self
            .tx
            .prepare_cached("SELECT address FROM devices WHERE uid = ?1 AND device_id = ?2")
            .and_then(|mut s| {
                s.query_row(params![uid, device_id], |r| r.get(0))
                    .optional()
            })
            .map_err(backend)?;
        address
            .map(|a| {
                parse_json::<exchange::events::DeviceAddress>(&a).map(|a| a.channel().to_owned())
            })
            .transpose()
    }

    fn add_channel_devices(&mut self, channel: &str, delta: i64) -> StoreResult<()> {
        self.exec(
            "INSERT INTO device_counts (channel, n) VALUES (?1, MAX(?2, 0))
             ON CONFLICT (channel) DO UPDATE SET n = MAX(n + ?2, 0)",
            params![channel, delta],
        )
        .map(drop)
    }

    fn delete_device(&mut self, uid: &str, device_id: &str) -> StoreResult<bool> {
        let n = self.exec(
            "DELETE FROM devices WHERE uid = ?1 AND device_id = ?2",
            params![uid, device_id],
        )?;
        self.exec(
            "DELETE FROM device_owners WHERE device_id = ?1 AND uid = ?2",
            params![device_id, uid],
        )?;
        Ok(n > 0)
    }

    fn insert_thread(&mut self, t: &Thread) -> StoreResult<bool> {
        // The first thread to claim an alias keeps it; a later claimant gets none.
        let alias = match &t.alias {
            Some(a) => {
                let claimed = self.exec(
                    "INSERT OR IGNORE INTO aliases (alias, tid) VALUES (?1, ?2)",
                    params![a, t.tid.to_string()],
                )? > 0;
                claimed.then(|| a.clone())
            }
            None => None,
        };
        let n = self.exec(
            &format!("INSERT OR IGNORE INTO threads ({THREAD_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
            params![
                t.tid.to_string(),
                t.name,
                t.owner,
                t.open_subscribe,
                t.open_publish,
                ts(t.created_at),
                t.subscribers as i64,
                t.messages as i64,
                alias
            ],
        )?;
        Ok(n > 0)
    }

    fn delete_message(&mut self, mid: Uuid) -> StoreResult<bool> {
        self.write_message()?;
        let Some(m) = message_by_id(self.tx, mid)? else {
            return Ok(false);
        };
        // Kept, marked: inbox entries of the message still show its text.
        self.exec(
            "UPDATE messages SET deleted = 1 WHERE mid = ?1",
            params![mid.to_string()],
        )?;
        if let Some(tid) = m.tid {
            let n = self.exec(
                "DELETE FROM thread_messages WHERE tid = ?1 AND mid = ?2",
                params![tid.to_string(), mid.to_string()],
            )?;
            if n > 0 {
                self.thread_counts.entry(tid.to_string()).or_default().1 -= 1;
            }
        }
        Ok(true)
    }

    fn add_subscriber(&mut self, tid: Uuid, uid: &str, at: OffsetDateTime) -> StoreResult<bool> {
        let n = self.exec(
            "INSERT OR IGNORE INTO thread_subscribers (tid, uid, since) VALUES (?1, ?2, ?3)",
            params![tid.to_string(), uid, ts(at)],
        )?;
        if n > 0 {
            self.thread_counts.entry(tid.to_string()).or_default().0 += 1;
            if let Some(list) = self.subscribers.get_mut(&tid)
                && let Err(at) = list.binary_search_by(|u| u.as_str().cmp(uid))
            {
                list.insert(at, uid.to_owned());
            }
        }
        Ok(n > 0)
    }

    fn remove_subscriber(&mut self, tid: Uuid, uid: &str) -> StoreResult<bool> {
        let n = self.exec(
            "DELETE FROM thread_subscribers WHERE tid = ?1 AND uid = ?2",
            params![tid.to_string(), uid],
        )?;
        if n > 0 {
            self.thread_counts.entry(tid.to_string()).or_default().0 -= 1;
            if let Some(list) = self.subscribers.get_mut(&tid) {
                list.retain(|u| u != uid);
            }
        }
        Ok(n > 0)
    }

    fn subscribers(&mut self, tid: Uuid) -> StoreResult<Vec<String>> {
        if let Some(list) = self.subscribers.get(&tid) {
            return Ok(list.clone());
        }
        let mut stmt = self
            .tx
            .prepare_cached("SELECT uid FROM thread_subscribers WHERE tid = ?1 ORDER BY uid")
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![tid.to_string()], |r| r.get::<_, String>(0))
            .map_err(backend)?;
        let list: Vec<String> = collect(rows, Ok)?;
        self.subscribers.insert(tid, list.clone());
        Ok(list)
    }

    fn insert_thread_message(&mut self, m: &ThreadMessage) -> StoreResult<bool> {
        let tid = m.tid.to_string();
        let n = self.exec(
            "INSERT OR IGNORE INTO thread_messages (tid, mid, sender, created_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![tid, m.mid.to_string(), m.sender, ts(m.created_at)],
        )?;
        if n > 0 {
            self.thread_counts.entry(tid).or_default().1 += 1;
        }
        Ok(n > 0)
    }

    fn insert_notification(&mut self, n: &Notification) -> StoreResult<bool> {
        inbox::insert(self.tx, &mut self.inbox, n)
    }

    fn mark_read(
        &mut self,
        uid: &str,
        id: Uuid,
        at: OffsetDateTime,
    ) -> StoreResult<Option<Notification>> {
        self.write_message()?;
        inbox::mark_read(self.tx, &mut self.inbox, uid, id, at)
    }

    fn archive(
        &mut self,
        uid: &str,
        id: Uuid,
        at: OffsetDateTime,
    ) -> StoreResult<Option<Notification>> {
        self.write_message()?;
        inbox::archive(self.tx, &mut self.inbox, uid, id, at)
    }

    fn delete_notification(&mut self, uid: &str, id: Uuid) -> StoreResult<Option<Notification>> {
        self.write_message()?;
        inbox::delete(self.tx, &mut self.inbox, uid, id)
    }

    fn unread_ids(
        &mut self,
        uid: &str,
        ntype: Option<&str>,
        tid: Option<Uuid>,
    ) -> StoreResult<Vec<Uuid>> {
        self.write_message()?;
        inbox::unread_ids(self.tx, uid, ntype, tid)
    }

    fn mark_seen(&mut self, uid: &str, at: OffsetDateTime, seq: u64) -> StoreResult<()> {
        inbox::mark_seen(self.tx, &mut self.inbox, uid, at, seq)
    }

    fn put_type(&mut self, t: &NotificationType) -> StoreResult<()> {
        self.exec(
            "INSERT OR REPLACE INTO types (name, title, description, registered_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![t.name, t.title, t.description, ts(t.registered_at)],
        )
        .map(drop)
    }

    fn preferences(&mut self, uid: &str) -> StoreResult<exchange::events::Preferences> {
        preferences_of(self.tx, uid)
    }

    fn set_blocked(
        &mut self,
        uid: &str,
        blocked: &str,
        on: bool,
        at: OffsetDateTime,
    ) -> StoreResult<()> {
        if on {
            self.exec(
                "INSERT OR IGNORE INTO blocks (uid, blocked, since) VALUES (?1, ?2, ?3)",
                params![uid, blocked, ts(at)],
            )
        } else {
            self.exec(
                "DELETE FROM blocks WHERE uid = ?1 AND blocked = ?2",
                params![uid, blocked],
            )
        }
        .map(drop)
    }

    fn put_change(
        &mut self,
        uid: &str,
        position: crate::fold::Position,
        frame: &[u8],
        at: OffsetDateTime,
    ) -> StoreResult<()> {
        inbox::put_change(self.tx, &mut self.inbox, uid, position, frame, at)
    }

    fn put_new_change(
        &mut self,
        uid: &str,
        position: crate::fold::Position,
        _frame: &dyn Fn() -> Vec<u8>,
        at: OffsetDateTime,
    ) -> StoreResult<()> {
        // Derived from the entry when read (`inbox::changes_after`): only the feed's day and
        // pruning are recorded.
        self.inbox.changed(self.tx, uid, position.seq, at).map(drop)
    }

    fn insert_message(&mut self, m: &StoredMessage) -> StoreResult<bool> {
        self.write_message()?;
        let exists = self
            .tx
            .prepare_cached("SELECT 1 FROM messages WHERE mid = ?1")
            .and_then(|mut s| s.exists(params![m.mid.to_string()]))
            .map_err(backend)?;
        if !exists {
            // Written by `write_message`, after the event's fold.
            self.message = Some(m.clone());
        }
        Ok(!exists)
    }

    fn message(&mut self, mid: Uuid) -> StoreResult<Option<StoredMessage>> {
        self.write_message()?;
        message_by_id(self.tx, mid)
    }

    fn add_recipients(&mut self, mid: Uuid, n: u64) -> StoreResult<()> {
        if let Some(m) = self.message.as_mut().filter(|m| m.mid == mid) {
            m.recipients = m.recipients.saturating_add(n);
            return Ok(());
        }
        self.write_message()?;
        self.exec(
            "UPDATE messages SET recipients = recipients + ?2 WHERE mid = ?1",
            params![mid.to_string(), i64::try_from(n).unwrap_or(i64::MAX)],
        )
        .map(drop)
    }

    fn enqueue_task(&mut self, task: &DispatchTask) -> StoreResult<()> {
        self.exec(
            "INSERT INTO outbox (task) VALUES (?1)",
            params![to_json(task)?],
        )
        .map(drop)
    }

    fn advance_receipt(&mut self, r: &Receipt) -> StoreResult<()> {
        let mid = r.mid.to_string();
        let old: Option<(String, String, i64)> = self
            .tx
            .prepare_cached(
                "SELECT status, channel, attempts FROM receipts
                 WHERE mid = ?1 AND uid = ?2 AND device_id = ?3",
            )
            .and_then(|mut s| {
                s.query_row(params![mid, r.uid, r.device_id], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()
            })
            .map_err(backend)?;
        let attempts = old
            .as_ref()
            .map_or(0, |o| o.2.max(0) as u32)
            .max(r.attempts);
        if let Some((status, channel, _)) = &old {
            let current = ReceiptStatus::parse(status)
                .ok_or_else(|| StoreError::Corrupt(format!("receipt status {status}")))?;
            if r.status <= current
                && !(current == ReceiptStatus::Failed && r.status == ReceiptStatus::Retrying)
            {
                // Receipts only move forward; keep the attempt count current.
                self.exec(
                    "UPDATE receipts SET attempts = ?4 WHERE mid = ?1 AND uid = ?2 AND device_id = ?3",
                    params![mid, r.uid, r.device_id, attempts],
                )?;
                return Ok(());
            }
            if let Some(old) = ReceiptStatus::parse(status) {
                *self
                    .receipt_counts
                    .entry((mid.clone(), channel.clone(), old.as_str()))
                    .or_default() -= 1;
            }
        }
        self.exec(
            "INSERT OR REPLACE INTO receipts
             (mid, uid, device_id, channel, status, attempts, reason, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                mid,
                r.uid,
                r.device_id,
                r.channel,
                r.status.as_str(),
                attempts,
                r.reason,
                ts(r.updated_at)
            ],
        )?;
        *self
            .receipt_counts
            .entry((mid, r.channel.clone(), r.status.as_str()))
            .or_default() += 1;
        Ok(())
    }

    fn put_failed_delivery(&mut self, f: &FailedDelivery) -> StoreResult<()> {
        self.exec(
            "INSERT OR REPLACE INTO failed_deliveries
             (id, mid, uid, device_id, channel, reason, permanent, attempts, failed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                f.id,
                f.mid.to_string(),
                f.uid,
                f.device_id,
                f.channel,
                f.reason,
                f.permanent,
                f.attempts,
                ts(f.failed_at)
            ],
        )
        .map(drop)
    }

    fn put_preferences(
        &mut self,
        uid: &str,
        preferences: &exchange::events::Preferences,
    ) -> StoreResult<()> {
        self.exec(
            "INSERT OR REPLACE INTO preferences (uid, prefs) VALUES (?1, ?2)",
            params![uid, to_json(preferences)?],
        )
        .map(drop)
    }

    fn take_failed_delivery(&mut self, id: &str) -> StoreResult<Option<FailedDelivery>> {
        let found = failed_by_id(self.tx, id)?;
        if found.is_some() {
            self.exec("DELETE FROM failed_deliveries WHERE id = ?1", params![id])?;
        }
        Ok(found)
    }
}

/// Whether `table` has `column` (schema migrations).
fn has_column(c: &Connection, table: &str, column: &str) -> StoreResult<bool> {
    c.query_row(
        "SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2",
        params![table, column],
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
    .map_err(backend)
}

/// Brings a store written by an earlier version to this schema (in the opening transaction;
/// idempotent). Version 2: messages are kept when deleted (marked), and inbox entries and
/// thread history read their text from them instead of holding a copy each.
fn migrate(c: &Connection) -> StoreResult<()> {
    // Devices per channel: counted once from the devices a store already holds.
    let first = c
        .execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('device_counts', 'counted')",
            [],
        )
        .map_err(backend)?;
    if first == 1 {
        c.execute_batch(
            "INSERT OR REPLACE INTO device_counts (channel, n)
               SELECT json_extract(address, '$.channel'), COUNT(*) FROM devices GROUP BY 1",
        )
        .map_err(backend)?;
    }
    if !has_column(c, "messages", "deleted")? {
        c.execute_batch("ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;")
            .map_err(backend)?;
    }
    if !has_column(c, "messages", "experiment")? {
        c.execute_batch("ALTER TABLE messages ADD COLUMN experiment TEXT;")
            .map_err(backend)?;
    }
    // The funnel's listing of messages outside experiments (an index on a column older
    // files gain just above).
    c.execute_batch(
        "CREATE INDEX IF NOT EXISTS messages_by_time ON messages (created_at, mid)
           WHERE experiment IS NULL;",
    )
    .map_err(backend)?;
    inbox::migrate(c)?;
    if has_column(c, "thread_messages", "msg")? {
        c.execute_batch(
            "INSERT OR IGNORE INTO messages (mid, tid, sender, msg, opts, created_at)
               SELECT mid, tid, sender, msg, opts, created_at FROM thread_messages;
             CREATE TABLE thread_messages_v2 (
               tid TEXT NOT NULL, mid TEXT NOT NULL, sender TEXT NOT NULL,
               created_at TEXT NOT NULL, PRIMARY KEY (tid, mid)) WITHOUT ROWID;
             INSERT INTO thread_messages_v2 SELECT tid, mid, sender, created_at
               FROM thread_messages;
             DROP TABLE thread_messages;
             ALTER TABLE thread_messages_v2 RENAME TO thread_messages;",
        )
        .map_err(backend)?;
    }
    Ok(())
}

fn message_by_id(c: &Connection, mid: Uuid) -> StoreResult<Option<StoredMessage>> {
    type MessageRow = (
        Option<String>,
        String,
        String,
        String,
        String,
        i64,
        Option<String>,
    );
    let row: Option<MessageRow> = c
        .prepare_cached(
            "SELECT tid, sender, msg, opts, created_at, recipients, experiment FROM messages
             WHERE mid = ?1 AND deleted = 0",
        )
        .and_then(|mut s| {
            s.query_row(params![mid.to_string()], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get::<_, Option<String>>(6)?,
                ))
            })
            .optional()
        })
        .map_err(backend)?;
    row.map(|r| {
        Ok(StoredMessage {
            mid,
            tid: r.0.as_deref().map(parse_uuid).transpose()?,
            sender: r.1,
            msg: r.2,
            opts: parse_json(&r.3)?,
            created_at: parse_ts(&r.4)?,
            recipients: r.5.max(0) as u64,
            experiment: r.6.as_deref().map(parse_json).transpose()?,
            variant: None,
        })
    })
    .transpose()
}

const FAILED_COLS: &str =
    "id, mid, uid, device_id, channel, reason, permanent, attempts, failed_at";

type FailedRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    bool,
    i64,
    String,
);

fn failed_row(r: &Row<'_>) -> rusqlite::Result<FailedRow> {
    tuple(r)
}

fn failed_from(r: FailedRow) -> StoreResult<FailedDelivery> {
    Ok(FailedDelivery {
        id: r.0,
        mid: parse_uuid(&r.1)?,
        uid: r.2,
        device_id: r.3,
        channel: r.4,
        reason: r.5,
        permanent: r.6,
        attempts: r.7.max(0) as u32,
        failed_at: parse_ts(&r.8)?,
    })
}

fn failed_by_id(c: &Connection, id: &str) -> StoreResult<Option<FailedDelivery>> {
    let row = c
        .prepare_cached(&format!(
            "SELECT {FAILED_COLS} FROM failed_deliveries WHERE id = ?1"
        ))
        .and_then(|mut s| s.query_row(params![id], failed_row).optional())
        .map_err(backend)?;
    row.map(failed_from).transpose()
}

fn thread_by_tid(c: &Connection, tid: &str) -> StoreResult<Option<Thread>> {
    let row = c
        .prepare_cached(&format!("SELECT {THREAD_COLS} FROM threads WHERE tid = ?1"))
        .and_then(|mut s| s.query_row(params![tid], thread_row).optional())
        .map_err(backend)?;
    row.map(thread_from).transpose()
}

fn devices_of(c: &Connection, uid: &str) -> StoreResult<Vec<Device>> {
    let mut stmt = c
        .prepare_cached(
            "SELECT device_id, address, enlisted_at FROM devices WHERE uid = ?1
             ORDER BY enlisted_at DESC, device_id",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![uid], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(backend)?;
    collect(rows, |r| {
        Ok(Device {
            id: r.0,
            uid: uid.to_owned(),
            address: parse_json::<DeviceAddress>(&r.1)?,
            enlisted_at: parse_ts(&r.2)?,
        })
    })
}

fn preferences_of(c: &Connection, uid: &str) -> StoreResult<exchange::events::Preferences> {
    let json: Option<String> = c
        .prepare_cached("SELECT prefs FROM preferences WHERE uid = ?1")
        .and_then(|mut s| s.query_row(params![uid], |r| r.get(0)).optional())
        .map_err(backend)?;
    json.map_or_else(|| Ok(Default::default()), |j| parse_json(&j))
}

/// The event whose dispatch tasks were committed ahead of its fold (`fold::plan_ahead`).
fn read_planned(conn: &Connection) -> StoreResult<Option<u64>> {
    let v: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'planned'")
        .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
        .map_err(backend)?;
    Ok(v.and_then(|v| v.parse().ok()))
}

fn read_checkpoint(conn: &Connection) -> StoreResult<u64> {
    let v: String = conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'checkpoint'")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(backend)?;
    v.parse()
        .map_err(|e| StoreError::Corrupt(format!("checkpoint {v}: {e}")))
}

#[async_trait]
impl Store for SqliteStore {
    async fn store_id(&self) -> StoreResult<String> {
        self.read(|c| {
            c.query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| {
                r.get(0)
            })
            .map_err(backend)
        })
        .await
    }

    async fn checkpoint(&self) -> StoreResult<u64> {
        self.read(read_checkpoint).await
    }

    async fn apply(&self, batch: Vec<SequencedEvent>, opts: ApplyOptions) -> StoreResult<Applied> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner
                .writer
                .lock()
                .map_err(|_| StoreError::Backend("writer lock poisoned".into()))?;
            // IMMEDIATE: take the write lock before reading the checkpoint, so two writers on one
            // file serialize instead of failing on a stale snapshot.
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(backend)?;
            let mut checkpoint = read_checkpoint(&tx)?;
            let planned = read_planned(&tx)?;
            let mut out = Applied::default();
            let mut rest = None;
            {
                let mut target = SqliteTx {
                    tx: &tx,
                    inbox: inbox::Pending::default(),
                    touched: HashSet::new(),
                    thread_counts: HashMap::new(),
                    receipt_counts: HashMap::new(),
                    subscribers: HashMap::new(),
                    message: None,
                };
                for (i, ev) in batch.iter().enumerate() {
                    if ev.seq <= checkpoint {
                        continue;
                    }
                    let at = ev.envelope.occurred_at;
                    let mut effects = Effects {
                        live: opts.live_since.is_some_and(|since| at >= since),
                        dispatch: opts.dispatch_since.is_some_and(|since| at >= since),
                        topic_tasks: opts.topic_tasks,
                        trace: ev.trace,
                    };
                    if planned == Some(ev.seq) {
                        // Its tasks were committed ahead of it.
                        effects.dispatch = false;
                    } else if let Some(tasks) =
                        crate::fold::plan_ahead(&mut target, &ev.envelope, effects)?
                    {
                        // Commit the tasks with the events before this one; the caller relays
                        // them, then applies the rest of the batch.
                        for task in &tasks {
                            target.enqueue_task(task)?;
                        }
                        target.exec(
                            "INSERT OR REPLACE INTO meta (key, value) VALUES ('planned', ?1)",
                            params![ev.seq.to_string()],
                        )?;
                        rest = Some(i);
                        break;
                    }
                    apply_event(&mut target, ev.seq, &ev.envelope, effects, &mut out.notices)?;
                    target.write_message()?;
                    checkpoint = ev.seq;
                    out.applied += 1;
                }
                target.finish()?;
                target.exec(
                    "UPDATE meta SET value = ?1 WHERE key = 'checkpoint'",
                    params![checkpoint.to_string()],
                )?;
            }
            tx.commit().map_err(backend)?;
            out.checkpoint = checkpoint;
            if let Some(i) = rest {
                let mut batch = batch;
                out.rest = batch.split_off(i);
            }
            Ok(out)
        })
        .await
        .map_err(backend)?
    }

    async fn thread(&self, tid: Uuid) -> StoreResult<Option<Thread>> {
        self.read(move |c| thread_by_tid(c, &tid.to_string())).await
    }

    async fn thread_by_alias(&self, alias: &str) -> StoreResult<Option<Thread>> {
        let alias = alias.to_owned();
        self.read(move |c| {
            let tid: Option<String> = c
                .prepare_cached("SELECT tid FROM aliases WHERE alias = ?1")
                .and_then(|mut s| s.query_row(params![alias], |r| r.get(0)).optional())
                .map_err(backend)?;
            match tid {
                Some(t) => thread_by_tid(c, &t),
                None => Ok(None),
            }
        })
        .await
    }

    async fn is_subscribed(&self, tid: Uuid, uid: &str) -> StoreResult<bool> {
        let uid = uid.to_owned();
        self.read(move |c| {
            c.query_row(
                "SELECT 1 FROM thread_subscribers WHERE tid = ?1 AND uid = ?2",
                params![tid.to_string(), uid],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(backend)
        })
        .await
    }

    async fn user_threads(&self, uid: &str) -> StoreResult<Vec<Uuid>> {
        let uid = uid.to_owned();
        self.read(move |c| {
            let mut s = c
                .prepare_cached("SELECT tid FROM thread_subscribers WHERE uid = ?1")
                .map_err(backend)?;
            let rows = s
                .query_map(params![uid], |r| r.get::<_, String>(0))
                .map_err(backend)?;
            let mut out = Vec::new();
            for tid in rows {
                out.push(parse_uuid(&tid.map_err(backend)?)?);
            }
            Ok(out)
        })
        .await
    }

    async fn user_exists(&self, uid: &str) -> StoreResult<bool> {
        let uid = uid.to_owned();
        self.read(move |c| {
            c.query_row("SELECT 1 FROM users WHERE uid = ?1", params![uid], |_| {
                Ok(())
            })
            .optional()
            .map(|r| r.is_some())
            .map_err(backend)
        })
        .await
    }

    async fn thread_messages(
        &self,
        tid: Uuid,
        q: &HistoryQuery,
    ) -> StoreResult<Page<ThreadMessage>> {
        let q = q.clone();
        self.read(move |c| {
            let tid_s = tid.to_string();
            let filtered = q.sender.is_some() || q.since.is_some() || q.before.is_some();
            let (l, o) = limit_offset(q.limit, q.offset);
            let cond =
                "t.tid = ?1 AND (?2 IS NULL OR t.sender = ?2) AND (?3 IS NULL OR t.created_at >= ?3)
                        AND (?4 IS NULL OR t.created_at < ?4)";
            let (sender, since, before) = (q.sender.clone(), q.since.map(ts), q.before.map(ts));
            let total = if filtered {
                let n: i64 = c
                    .query_row(
                        &format!("SELECT COUNT(*) FROM thread_messages t WHERE {cond}"),
                        params![tid_s, sender, since, before],
                        |r| r.get(0),
                    )
                    .map_err(backend)?;
                n.max(0) as u64
            } else {
                counter(c, "SELECT messages FROM threads WHERE tid = ?1", &tid_s)?
            };
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT t.mid, t.sender, m.msg, m.opts, t.created_at FROM thread_messages t
                     JOIN messages m ON m.mid = t.mid
                     WHERE {cond} ORDER BY t.mid DESC LIMIT ?5 OFFSET ?6"
                ))
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![tid_s, sender, since, before, l, o], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                })
                .map_err(backend)?;
            let items = collect(rows, |r| {
                Ok(ThreadMessage {
                    mid: parse_uuid(&r.0)?,
                    tid,
                    sender: r.1,
                    msg: r.2,
                    opts: parse_json(&r.3)?,
                    created_at: parse_ts(&r.4)?,
                })
            })?;
            Ok(Page { items, total })
        })
        .await
    }

    async fn devices(&self, uid: &str) -> StoreResult<Vec<Device>> {
        let uid = uid.to_owned();
        self.read(move |c| devices_of(c, &uid)).await
    }

    async fn devices_per_channel(&self) -> StoreResult<Vec<(String, u64)>> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached("SELECT channel, n FROM device_counts WHERE n > 0 ORDER BY channel")
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(backend)?;
            collect(rows, |(c, n)| Ok((c, u64::try_from(n).unwrap_or(0))))
        })
        .await
    }

    async fn inbox(&self, uid: &str, query: &InboxQuery) -> StoreResult<Page<Notification>> {
        let (uid, query) = (uid.to_owned(), query.clone());
        self.read(move |c| inbox::query(c, &uid, &query)).await
    }

    async fn inbox_snapshot(
        &self,
        uid: &str,
        query: &InboxQuery,
    ) -> StoreResult<(Page<Notification>, u64)> {
        let (uid, query) = (uid.to_owned(), query.clone());
        self.read(move |c| {
            // One read transaction: WAL gives both queries the same snapshot.
            let tx = c.unchecked_transaction().map_err(backend)?;
            let position = inbox::last_position(&tx, &uid)?;
            let page = inbox::query(&tx, &uid, &query)?;
            tx.finish().map_err(backend)?;
            Ok((page, position))
        })
        .await
    }

    async fn notifications(&self, uid: &str, ids: &[Uuid]) -> StoreResult<Vec<Notification>> {
        let (uid, ids) = (uid.to_owned(), ids.to_vec());
        self.read(move |c| inbox::by_ids(c, &uid, &ids)).await
    }

    async fn inbox_counts(&self, uid: &str) -> StoreResult<InboxCounts> {
        let uid = uid.to_owned();
        self.read(move |c| inbox::counts(c, &uid)).await
    }

    async fn changes_after(
        &self,
        uid: &str,
        after: crate::fold::Position,
        limit: u32,
    ) -> StoreResult<Vec<(crate::fold::Position, String)>> {
        let uid = uid.to_owned();
        self.read(move |c| inbox::changes_after(c, &uid, after, limit))
            .await
    }

    async fn blocks(&self, uid: &str) -> StoreResult<Vec<String>> {
        let uid = uid.to_owned();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT blocked FROM blocks WHERE uid = ?1 ORDER BY blocked")
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![uid], |r| r.get::<_, String>(0))
                .map_err(backend)?;
            collect(rows, Ok)
        })
        .await
    }

    async fn is_blocked(&self, uid: &str, sender: &str) -> StoreResult<bool> {
        let (uid, sender) = (uid.to_owned(), sender.to_owned());
        self.read(move |c| {
            c.prepare_cached("SELECT 1 FROM blocks WHERE uid = ?1 AND blocked = ?2")
                .and_then(|mut s| s.query_row(params![uid, sender], |_| Ok(())).optional())
                .map(|r| r.is_some())
                .map_err(backend)
        })
        .await
    }

    async fn inbox_stats(&self, uid: &str) -> StoreResult<InboxStats> {
        let uid = uid.to_owned();
        self.read(move |c| inbox::stats(c, &uid)).await
    }

    async fn types(&self) -> StoreResult<Vec<NotificationType>> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT name, title, description, registered_at FROM types ORDER BY name",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })
                .map_err(backend)?;
            collect(rows, |r| {
                Ok(NotificationType {
                    name: r.0,
                    title: r.1,
                    description: r.2,
                    registered_at: parse_ts(&r.3)?,
                })
            })
        })
        .await
    }

    async fn outbox(&self, limit: usize) -> StoreResult<Vec<(i64, DispatchTask)>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT id, task FROM outbox ORDER BY id LIMIT ?1")
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![limit], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(backend)?;
            collect(rows, |(id, t)| Ok((id, parse_json::<DispatchTask>(&t)?)))
        })
        .await
    }

    async fn outbox_done(&self, ids: Vec<i64>) -> StoreResult<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner
                .writer
                .lock()
                .map_err(|_| StoreError::Backend("writer lock poisoned".into()))?;
            let tx = conn.transaction().map_err(backend)?;
            {
                let mut stmt = tx
                    .prepare_cached("DELETE FROM outbox WHERE id = ?1")
                    .map_err(backend)?;
                for id in ids {
                    stmt.execute(params![id]).map_err(backend)?;
                }
            }
            tx.commit().map_err(backend)
        })
        .await
        .map_err(backend)?
    }

    async fn message(&self, mid: Uuid) -> StoreResult<Option<StoredMessage>> {
        self.read(move |c| message_by_id(c, mid)).await
    }

    async fn receipts(&self, mid: Uuid, limit: u32, offset: u64) -> StoreResult<Page<Receipt>> {
        self.read(move |c| {
            let mid_s = mid.to_string();
            let total = counter(
                c,
                "SELECT COALESCE(SUM(n), 0) FROM receipt_counts WHERE mid = ?1",
                &mid_s,
            )?;
            let (l, o) = limit_offset(limit, offset);
            let mut stmt = c
                .prepare_cached(
                    "SELECT uid, device_id, channel, status, attempts, reason, updated_at
                     FROM receipts WHERE mid = ?1 ORDER BY uid, device_id LIMIT ?2 OFFSET ?3",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![mid_s, l, o], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, Option<String>>(5)?,
                        r.get::<_, String>(6)?,
                    ))
                })
                .map_err(backend)?;
            let items = collect(rows, |r| {
                Ok(Receipt {
                    mid,
                    uid: r.0,
                    device_id: r.1,
                    channel: r.2,
                    status: ReceiptStatus::parse(&r.3)
                        .ok_or_else(|| StoreError::Corrupt(format!("receipt status {}", r.3)))?,
                    attempts: r.4.max(0) as u32,
                    reason: r.5,
                    updated_at: parse_ts(&r.6)?,
                })
            })?;
            Ok(Page { items, total })
        })
        .await
    }

    async fn receipt_counts(&self, mid: Uuid) -> StoreResult<ReceiptCounts> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT channel, status, n FROM receipt_counts WHERE mid = ?1 AND n > 0
                     ORDER BY channel, status",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![mid.to_string()], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(backend)?;
            collect(rows, |(c, s, n)| Ok((c, s, n.max(0) as u64)))
        })
        .await
    }

    async fn failed_deliveries(
        &self,
        limit: u32,
        offset: u64,
    ) -> StoreResult<Page<FailedDelivery>> {
        self.read(move |c| {
            let total: i64 = c
                .query_row("SELECT COUNT(*) FROM failed_deliveries", [], |r| r.get(0))
                .map_err(backend)?;
            let (l, o) = limit_offset(limit, offset);
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {FAILED_COLS} FROM failed_deliveries
                     ORDER BY failed_at DESC, id LIMIT ?1 OFFSET ?2"
                ))
                .map_err(backend)?;
            let rows = stmt.query_map(params![l, o], failed_row).map_err(backend)?;
            Ok(Page {
                items: collect(rows, failed_from)?,
                total: total.max(0) as u64,
            })
        })
        .await
    }

    async fn failed_delivery(&self, id: &str) -> StoreResult<Option<FailedDelivery>> {
        let id = id.to_owned();
        self.read(move |c| failed_by_id(c, &id)).await
    }

    async fn preferences(&self, uid: &str) -> StoreResult<exchange::events::Preferences> {
        let uid = uid.to_owned();
        self.read(move |c| preferences_of(c, &uid)).await
    }

    async fn scheduled_message(&self, mid: Uuid) -> StoreResult<Option<ScheduledMessage>> {
        self.read(move |c| scheduled_by_mid(c, mid)).await
    }

    async fn stage_doc(&self, kind: &str, id: &str) -> StoreResult<Option<StageDoc>> {
        let (kind, id) = (kind.to_owned(), id.to_owned());
        self.read(move |c| stage_doc_of(c, &kind, &id)).await
    }

    async fn stage_docs(
        &self,
        kind: &str,
        limit: u32,
        offset: u32,
    ) -> StoreResult<(u64, Vec<StageDoc>)> {
        let kind = kind.to_owned();
        self.read(move |c| {
            let total: i64 = c
                .prepare_cached("SELECT count(*) FROM stage_docs WHERE kind = ?1")
                .and_then(|mut st| st.query_row(params![kind], |r| r.get(0)))
                .map_err(backend)?;
            let page = stage_docs_page(c, &kind, limit.max(1), offset)?;
            Ok((total.max(0) as u64, page))
        })
        .await
    }

    async fn experiment(&self, id: &str) -> StoreResult<Option<ExperimentRecord>> {
        let id = id.to_owned();
        self.read(move |c| experiment_by_id(c, &id)).await
    }

    async fn online(&self, uid: &str) -> StoreResult<Option<OnlineRecord>> {
        let uid = uid.to_owned();
        self.read(move |c| online_of(c, &uid)).await
    }

    async fn online_days(&self, uid: &str, limit: u32) -> StoreResult<Vec<(i32, u64)>> {
        let uid = uid.to_owned();
        self.read(move |c| online_days_of(c, &uid, limit)).await
    }

    async fn experiment_arms(&self, id: &str) -> StoreResult<Vec<ArmCounts>> {
        let id = id.to_owned();
        self.read(move |c| experiment_arm_totals(c, &id)).await
    }

    async fn funnel_message(&self, mid: Uuid) -> StoreResult<Option<FunnelMessage>> {
        self.read(move |c| funnel_message_of(c, mid)).await
    }

    async fn funnel_messages(&self, scope: &FunnelScope) -> StoreResult<Vec<FunnelMessage>> {
        let scope = scope.clone();
        self.read(move |c| funnel_messages_in(c, &scope)).await
    }

    async fn funnel_entries(&self, mid: Uuid) -> StoreResult<Vec<FunnelEntry>> {
        self.read(move |c| funnel_entries_of(c, mid)).await
    }

    async fn scheduled_messages(
        &self,
        sender: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<ScheduledMessage>> {
        let sender = sender.map(str::to_owned);
        self.read(move |c| {
            let (sql, who) = match &sender {
                Some(s) => (
                    "SELECT record, schedule_seq FROM scheduled
                     WHERE sender = ?1 AND status = 'pending'
                     ORDER BY deliver_at, mid LIMIT ?2",
                    s.as_str(),
                ),
                None => (
                    "SELECT record, schedule_seq FROM scheduled
                     WHERE status = 'pending' AND ?1 = ?1
                     ORDER BY deliver_at, mid LIMIT ?2",
                    "",
                ),
            };
            let mut stmt = c.prepare_cached(sql).map_err(backend)?;
            let rows = stmt
                .query_map(params![who, i64::from(limit)], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })
                .map_err(backend)?;
            collect(rows, |(record, seq)| scheduled_of(&record, seq))
        })
        .await
    }
}

#[async_trait]
impl Directory for SqliteStore {
    async fn devices(
        &self,
        uid: &str,
    ) -> Result<Vec<(String, exchange::events::DeviceAddress)>, String> {
        crate::store::directory::devices(self, uid).await
    }

    async fn preferences(&self, uid: &str) -> Result<exchange::events::Preferences, String> {
        crate::store::directory::preferences(self, uid).await
    }

    /// A batch's recipients in one visit to a reader connection.
    async fn recipients(
        &self,
        uids: &[String],
    ) -> Result<Vec<exchange::dispatch::Recipient>, String> {
        let uids = uids.to_vec();
        self.read(move |c| {
            uids.into_iter()
                .map(|uid| {
                    Ok(exchange::dispatch::Recipient {
                        devices: devices_of(c, &uid)?
                            .into_iter()
                            .map(|d| (d.id, d.address))
                            .collect(),
                        preferences: preferences_of(c, &uid)?,
                        uid,
                    })
                })
                .collect()
        })
        .await
        .map_err(|e| e.to_string())
    }

    async fn seen_live(&self, mid: Uuid, uid: &str) -> Result<bool, String> {
        let uid = uid.to_owned();
        self.read(move |c| {
            c.prepare_cached(
                "SELECT 1 FROM receipts WHERE mid = ?1 AND uid = ?2 AND device_id = 'websocket'
                 AND status IN ('delivered', 'opened')",
            )
            .and_then(|mut s| {
                s.query_row(params![mid.to_string(), uid], |_| Ok(()))
                    .optional()
            })
            .map(|r| r.is_some())
            .map_err(backend)
        })
        .await
        .map_err(|e| e.to_string())
    }

    async fn is_read(&self, mid: Uuid, uid: &str) -> Result<bool, String> {
        crate::store::directory::is_read(self, mid, uid).await
    }
}

#[cfg(test)]
mod ts_tests {
    use super::*;

    #[test]
    fn stored_times_sort_as_text_as_they_do_as_times() {
        let base = time::macros::datetime!(2026-12-01 10:00:57.5 UTC);
        let times = [
            base - time::Duration::seconds(1),
            base,
            base + time::Duration::nanoseconds(1),
            base + time::Duration::milliseconds(1),
            time::macros::datetime!(2026-12-01 12:00:58 +02:00),
        ];
        let mut sorted = times.to_vec();
        sorted.sort();
        let mut texts: Vec<String> = times.iter().map(|t| ts(*t)).collect();
        texts.sort();
        let back: Vec<OffsetDateTime> = texts.iter().map(|t| parse_ts(t).unwrap()).collect();
        assert_eq!(back, sorted);
        assert_eq!(ts(base), "2026-12-01T10:00:57.500000000Z");
    }

    /// The digit-by-digit text is what `time`'s formatter writes, for any time.
    #[test]
    fn stored_times_are_what_the_formatter_writes() {
        let mut t = time::macros::datetime!(0000-01-01 00:00:00 UTC);
        let step = time::Duration::new(86_400 * 97 + 3_671, 123_456_789);
        loop {
            assert_eq!(ts(t), t.format(STORED_TIME).unwrap(), "{t}");
            let Some(next) = t.checked_add(step) else {
                break;
            };
            t = next;
        }
        for t in [
            time::macros::datetime!(-0001-12-31 23:59:59.999999999 UTC),
            time::macros::datetime!(9999-12-31 23:59:59.999999999 UTC),
            time::macros::datetime!(2026-03-01 00:30:00 +01:00),
        ] {
            assert_eq!(
                ts(t),
                t.to_offset(time::UtcOffset::UTC)
                    .format(STORED_TIME)
                    .unwrap()
            );
        }
    }
}
