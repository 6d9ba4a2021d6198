//! The inbox in SQLite: entries partitioned by user (each a small row; the text and options
//! stay in the message's row), their counters (kept on write, once per user and transaction,
//! so counts are exact under concurrent delivery and marking: the projector is the only
//! writer), the change feed (`new` changes derived from the entries), and the listing queries
//! (filters, limit/offset newest first, cursor sync oldest first).

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Row, params};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    backend, collect, has_column, limit_offset, parse_json, parse_ts, parse_uuid, ts, tuple,
};
use crate::model::{
    InboxCounts, InboxQuery, InboxStats, Notification, NotificationStatus, Page, StatusFilter,
};
use crate::store::{StoreError, StoreResult};

pub(super) const SCHEMA: &str = r#"
-- GET /notifications: partition uid, clustered by id (UUIDv7); seq orders cursor sync. The
-- message's text and options are read from `messages` (one copy per message, not per entry).
CREATE TABLE IF NOT EXISTS inbox (
  uid TEXT NOT NULL, id TEXT NOT NULL, tid TEXT, sender TEXT NOT NULL,
  created_at TEXT NOT NULL, read_at TEXT, ntype TEXT,
  level INTEGER NOT NULL DEFAULT 0, archived_at TEXT, seq INTEGER NOT NULL,
  PRIMARY KEY (uid, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inbox_by_position ON inbox (uid, seq);
-- inbox counters, kept on write; seen_seq/seen_at: the unseen watermark (seed 003's mlast);
-- feed_floor: the user's change feed starts there (retention), `new` changes included
CREATE TABLE IF NOT EXISTS inbox_counts (
  uid TEXT PRIMARY KEY, total INTEGER NOT NULL, unread INTEGER NOT NULL,
  unseen INTEGER NOT NULL DEFAULT 0, seen_seq INTEGER NOT NULL DEFAULT 0, seen_at TEXT,
  feed_floor INTEGER NOT NULL DEFAULT 0)
  WITHOUT ROWID;
-- GET /stream resume: each user's inbox changes in feed order, kept CHANGE_RETENTION. A `new`
-- change is not stored while its entry exists: it is derived from the entry (see
-- `changes_after`); deleting an entry stores its `new` change first.
CREATE TABLE IF NOT EXISTS inbox_changes (
  uid TEXT NOT NULL, seq INTEGER NOT NULL, sub INTEGER NOT NULL, frame TEXT NOT NULL,
  at TEXT NOT NULL, PRIMARY KEY (uid, seq, sub)) WITHOUT ROWID;
-- pruned by stream position, not by a time index (one less index write per change)
DROP INDEX IF EXISTS inbox_changes_by_time;
-- the first stream position with an inbox change on each UTC day (unix day number)
CREATE TABLE IF NOT EXISTS feed_days (day INTEGER PRIMARY KEY, first_seq INTEGER NOT NULL)
  WITHOUT ROWID;
-- GET /notifications/stats: unread per type ('type') and per level ('level')
CREATE TABLE IF NOT EXISTS inbox_unread_by (
  uid TEXT NOT NULL, dim TEXT NOT NULL, key TEXT NOT NULL, n INTEGER NOT NULL,
  PRIMARY KEY (uid, dim, key)) WITHOUT ROWID;
"#;

/// Migrates the inbox tables of a store written before entries shared their message's row
/// (version 1: every entry held the text and options, every `new` change its frame). Runs in
/// the store's opening transaction, after `messages` has its `deleted` column. Idempotent.
pub(super) fn migrate(c: &Connection) -> StoreResult<()> {
    if !has_column(c, "inbox_counts", "feed_floor")? {
        // Where each user's feed starts: below the oldest change kept (retention pruned what
        // is under it), or, with none kept, after their newest entry.
        c.execute_batch(
            "ALTER TABLE inbox_counts ADD COLUMN feed_floor INTEGER NOT NULL DEFAULT 0;
             UPDATE inbox_counts SET feed_floor = COALESCE(
               (SELECT MIN(seq) FROM inbox_changes c WHERE c.uid = inbox_counts.uid),
               (SELECT MAX(seq) + 1 FROM inbox i WHERE i.uid = inbox_counts.uid), 0);",
        )
        .map_err(backend)?;
    }
    if has_column(c, "inbox", "msg")? {
        c.execute_batch(
            "-- entries of messages deleted before version 2 keep their text in `messages`
             INSERT OR IGNORE INTO messages (mid, tid, sender, msg, opts, created_at, deleted)
               SELECT id, tid, sender, msg, opts, created_at, 1 FROM inbox GROUP BY id;
             -- level 0's unread count is derived from the others
             DELETE FROM inbox_unread_by WHERE dim = 'level' AND key = '0';
             -- `new` changes of existing entries are derived from them now
             DELETE FROM inbox_changes WHERE seq = sub AND EXISTS (
               SELECT 1 FROM inbox i WHERE i.uid = inbox_changes.uid AND i.seq = inbox_changes.seq);
             CREATE TABLE inbox_v2 (
               uid TEXT NOT NULL, id TEXT NOT NULL, tid TEXT, sender TEXT NOT NULL,
               created_at TEXT NOT NULL, read_at TEXT, ntype TEXT,
               level INTEGER NOT NULL DEFAULT 0, archived_at TEXT, seq INTEGER NOT NULL,
               PRIMARY KEY (uid, id)) WITHOUT ROWID;
             INSERT INTO inbox_v2 SELECT uid, id, tid, sender, created_at, read_at, ntype, level,
               archived_at, seq FROM inbox;
             DROP TABLE inbox;
             ALTER TABLE inbox_v2 RENAME TO inbox;
             CREATE INDEX IF NOT EXISTS inbox_by_position ON inbox (uid, seq);",
        )
        .map_err(backend)?;
    }
    Ok(())
}

/// The entry's columns (`i`: inbox) and its message's text and options (`m`: messages).
const COLS: &str = "i.uid, i.id, i.tid, i.sender, m.msg, m.opts, i.created_at, i.read_at, \
     i.ntype, i.level, i.archived_at, i.seq, m.experiment";
const FROM: &str = "inbox i JOIN messages m ON m.mid = i.id";

type RawRow = (
    String,
    String,
    Option<String>,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
    Option<String>,
    i64,
    Option<String>,
);

fn raw(r: &Row<'_>) -> rusqlite::Result<RawRow> {
    tuple(r)
}

fn parse(r: RawRow) -> StoreResult<Notification> {
    let mut opts: exchange::events::MessageOpts = parse_json(&r.5)?;
    let mut msg = r.4;
    let read_at = r.7.as_deref().map(parse_ts).transpose()?;
    let archived_at = r.10.as_deref().map(parse_ts).transpose()?;
    // An experiment's entry shows the user's variant (the one their arm gives, as the fold
    // and the live frame did).
    let (mut experiment, mut variant) = (None, None);
    if let Some(spec) = r.12.as_deref() {
        let e: exchange::experiment::Experiment = parse_json(spec)?;
        if let exchange::experiment::Arm::Variant(i) = e.assign(&r.0) {
            (msg, opts) = e.content(i, &msg, &opts);
            variant = Some(e.arm_name(exchange::experiment::Arm::Variant(i)).to_owned());
            experiment = Some(e.id);
        }
    }
    Ok(Notification {
        uid: r.0,
        id: parse_uuid(&r.1)?,
        tid: r.2.as_deref().map(parse_uuid).transpose()?,
        sender: r.3,
        msg,
        ntype: r.8,
        level: u8::try_from(r.9).unwrap_or(0),
        title: opts.title.clone(),
        data: opts.data.clone(),
        opts,
        status: Notification::status_of(read_at, archived_at),
        created_at: parse_ts(&r.6)?,
        read_at,
        archived_at,
        experiment,
        variant,
        seq: r.11.max(0) as u64,
    })
}

/// Inbox writes deferred to the end of the fold's transaction: a batch moves the same users'
/// counters many times (one statement per user instead of two or three per entry), and each
/// user's change feed is pruned once.
#[derive(Default)]
pub(super) struct Pending {
    counts: HashMap<String, CountDelta>,
    unread_by: HashMap<(String, &'static str, String), i64>,
    /// Users with inbox changes in this transaction, with the latest day of one.
    feed: HashMap<String, i64>,
    /// The change-feed day already recorded in `feed_days` by this transaction.
    feed_day: Option<i64>,
}

#[derive(Default, Clone, Copy)]
struct CountDelta {
    total: i64,
    unread: i64,
    unseen: i64,
    /// An entry was inserted: the user's row is created if missing.
    inserted: bool,
}

impl Pending {
    /// Moves the unread counters of an entry (and of its type and level) by `delta`.
    fn unread(&mut self, n: &Notification, delta: i64) {
        self.counts.entry(n.uid.clone()).or_default().unread += delta;
        self.unread_by_of(n, delta);
    }

    fn unread_by_of(&mut self, n: &Notification, delta: i64) {
        // Level 0 (most entries) is not counted apart: it is what the other levels leave of
        // the unread count (see `stats`).
        if n.level != 0 {
            *self
                .unread_by
                .entry((n.uid.clone(), "level", n.level.to_string()))
                .or_default() += delta;
        }
        if let Some(t) = &n.ntype {
            *self
                .unread_by
                .entry((n.uid.clone(), "type", t.clone()))
                .or_default() += delta;
        }
    }

    /// Records a change of `uid`'s feed at stream position `seq` on the day of `at`.
    pub(super) fn changed(
        &mut self,
        c: &Connection,
        uid: &str,
        seq: u64,
        at: OffsetDateTime,
    ) -> StoreResult<()> {
        let day = at.unix_timestamp().div_euclid(86_400);
        if self.feed_day != Some(day) {
            exec(
                c,
                "INSERT OR IGNORE INTO feed_days (day, first_seq) VALUES (?1, ?2)",
                params![day, seq as i64],
            )?;
            self.feed_day = Some(day);
        }
        match self.feed.get_mut(uid) {
            Some(latest) => *latest = (*latest).max(day),
            None => {
                self.feed.insert(uid.to_owned(), day);
            }
        }
        Ok(())
    }

    /// Writes `uid`'s counter changes now (before a statement that reads or resets them).
    fn flush_user(&mut self, c: &Connection, uid: &str) -> StoreResult<()> {
        match self.counts.remove(uid) {
            Some(d) => write_counts(c, uid, d).map(drop),
            None => Ok(()),
        }
    }

    /// Writes everything deferred.
    pub(super) fn finish(&mut self, c: &Connection) -> StoreResult<()> {
        let mut floors: HashMap<String, i64> = HashMap::new();
        for (uid, d) in std::mem::take(&mut self.counts) {
            if let Some(floor) = write_counts(c, &uid, d)? {
                floors.insert(uid, floor);
            }
        }
        // Also a zero change: the row exists whichever way the events were batched.
        for ((uid, dim, key), n) in std::mem::take(&mut self.unread_by) {
            exec(
                c,
                "INSERT INTO inbox_unread_by (uid, dim, key, n) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (uid, dim, key) DO UPDATE SET n = n + ?4",
                params![uid, dim, key, n],
            )?;
        }
        let mut cutoffs: HashMap<i64, Option<i64>> = HashMap::new();
        for (uid, day) in std::mem::take(&mut self.feed) {
            let cutoff = match cutoffs.get(&day) {
                Some(c) => *c,
                None => {
                    let cut = cutoff_of(c, day)?;
                    cutoffs.insert(day, cut);
                    cut
                }
            };
            let Some(cutoff) = cutoff else { continue };
            let floor = match floors.get(&uid) {
                Some(f) => *f,
                None => feed_floor(c, &uid)?,
            };
            if cutoff > floor {
                prune_changes(c, &uid, cutoff)?;
            }
        }
        Ok(())
    }
}

/// Applies one user's counter changes; answers their feed floor (when the row exists).
fn write_counts(c: &Connection, uid: &str, d: CountDelta) -> StoreResult<Option<i64>> {
    let sql = if d.inserted {
        "INSERT INTO inbox_counts (uid, total, unread, unseen) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (uid) DO UPDATE SET total = total + ?2, unread = unread + ?3,
           unseen = unseen + ?4
         RETURNING feed_floor"
    } else {
        "UPDATE inbox_counts SET total = total + ?2, unread = unread + ?3, unseen = unseen + ?4
         WHERE uid = ?1 RETURNING feed_floor"
    };
    c.prepare_cached(sql)
        .and_then(|mut s| {
            s.query_row(params![uid, d.total, d.unread, d.unseen], |r| r.get(0))
                .optional()
        })
        .map_err(backend)
}

fn feed_floor(c: &Connection, uid: &str) -> StoreResult<i64> {
    c.prepare_cached("SELECT feed_floor FROM inbox_counts WHERE uid = ?1")
        .and_then(|mut s| s.query_row(params![uid], |r| r.get(0)).optional())
        .map(|f: Option<i64>| f.unwrap_or(0))
        .map_err(backend)
}

/// The first stream position kept by a prune on `day`: the first change on the day
/// CHANGE_RETENTION before it or later (so at least that much is kept).
fn cutoff_of(c: &Connection, day: i64) -> StoreResult<Option<i64>> {
    let cutoff_day = day - crate::fold::CHANGE_RETENTION.whole_days();
    c.prepare_cached("SELECT first_seq FROM feed_days WHERE day >= ?1 ORDER BY day LIMIT 1")
        .and_then(|mut s| s.query_row(params![cutoff_day], |r| r.get(0)).optional())
        .map_err(backend)
}

/// Drops a user's stored changes below `cutoff` and moves their feed's floor there (the
/// derived `new` changes start there too).
fn prune_changes(c: &Connection, uid: &str, cutoff: i64) -> StoreResult<()> {
    exec(
        c,
        "DELETE FROM inbox_changes WHERE uid = ?1 AND seq < ?2",
        params![uid, cutoff],
    )?;
    exec(
        c,
        "UPDATE inbox_counts SET feed_floor = MAX(feed_floor, ?2) WHERE uid = ?1",
        params![uid, cutoff],
    )
    .map(drop)
}

/// One entry of a user.
pub(super) fn get(c: &Connection, uid: &str, id: Uuid) -> StoreResult<Option<Notification>> {
    let row = c
        .prepare_cached(&format!(
            "SELECT {COLS} FROM {FROM} WHERE i.uid = ?1 AND i.id = ?2"
        ))
        .and_then(|mut s| s.query_row(params![uid, id.to_string()], raw).optional())
        .map_err(backend)?;
    row.map(parse).transpose()
}

/// A user's newest entry (the highest stream position), whatever its state.
pub(super) fn newest(c: &Connection, uid: &str) -> StoreResult<Option<Notification>> {
    let row = c
        .prepare_cached(&format!(
            "SELECT {COLS} FROM {FROM} WHERE i.uid = ?1 ORDER BY i.seq DESC LIMIT 1"
        ))
        .and_then(|mut s| s.query_row(params![uid], raw).optional())
        .map_err(backend)?;
    row.map(parse).transpose()
}

pub(super) fn by_ids(c: &Connection, uid: &str, ids: &[Uuid]) -> StoreResult<Vec<Notification>> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(n) = get(c, uid, *id)? {
            out.push(n);
        }
    }
    Ok(out)
}

fn exec(c: &Connection, sql: &str, p: impl rusqlite::Params) -> StoreResult<usize> {
    c.prepare_cached(sql)
        .and_then(|mut s| s.execute(p))
        .map_err(backend)
}

/// Inserts a new entry (its message's row is written already); counters and the feed's `new`
/// change follow from `pending`.
pub(super) fn insert(c: &Connection, pending: &mut Pending, n: &Notification) -> StoreResult<bool> {
    let inserted = exec(
        c,
        "INSERT OR IGNORE INTO inbox (uid, id, tid, sender, created_at, read_at, ntype, level,
           archived_at, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            n.uid,
            n.id.to_string(),
            n.tid.map(|t| t.to_string()),
            n.sender,
            ts(n.created_at),
            n.read_at.map(ts),
            n.ntype,
            i64::from(n.level),
            n.archived_at.map(ts),
            n.seq as i64
        ],
    )? > 0;
    if inserted {
        let unread = n.status == NotificationStatus::Unread;
        let d = pending.counts.entry(n.uid.clone()).or_default();
        d.total += 1;
        d.unseen += 1;
        d.inserted = true;
        if unread {
            d.unread += 1;
            pending.unread_by_of(n, 1);
        }
    }
    Ok(inserted)
}

pub(super) fn mark_read(
    c: &Connection,
    pending: &mut Pending,
    uid: &str,
    id: Uuid,
    at: OffsetDateTime,
) -> StoreResult<Option<Notification>> {
    let Some(n) = get(c, uid, id)? else {
        return Ok(None);
    };
    if n.read_at.is_some() {
        return Ok(None);
    }
    exec(
        c,
        "UPDATE inbox SET read_at = ?3 WHERE uid = ?1 AND id = ?2",
        params![uid, id.to_string(), ts(at)],
    )?;
    if n.archived_at.is_none() {
        pending.unread(&n, -1);
    }
    get(c, uid, id)
}

pub(super) fn archive(
    c: &Connection,
    pending: &mut Pending,
    uid: &str,
    id: Uuid,
    at: OffsetDateTime,
) -> StoreResult<Option<Notification>> {
    let Some(n) = get(c, uid, id)? else {
        return Ok(None);
    };
    if n.archived_at.is_some() {
        return Ok(None);
    }
    exec(
        c,
        "UPDATE inbox SET archived_at = ?3, read_at = COALESCE(read_at, ?3)
         WHERE uid = ?1 AND id = ?2",
        params![uid, id.to_string(), ts(at)],
    )?;
    if n.status == NotificationStatus::Unread {
        pending.unread(&n, -1);
    }
    get(c, uid, id)
}

/// Removes an entry. Its `new` change, derived from the entry until now, is stored first when
/// it is still inside the user's feed, so the feed keeps it.
pub(super) fn delete(
    c: &Connection,
    pending: &mut Pending,
    uid: &str,
    id: Uuid,
) -> StoreResult<Option<Notification>> {
    let Some(n) = get(c, uid, id)? else {
        return Ok(None);
    };
    // The unseen count below reads the watermark: this user's deferred counts go first.
    pending.flush_user(c, uid)?;
    if n.seq as i64 >= feed_floor(c, uid)? {
        let position = crate::fold::Position {
            seq: n.seq,
            sub: n.seq,
        };
        let frame = crate::fold::new_frame(&n);
        store_change(c, uid, position, &frame, n.created_at)?;
    }
    exec(
        c,
        "DELETE FROM inbox WHERE uid = ?1 AND id = ?2",
        params![uid, id.to_string()],
    )?;
    exec(
        c,
        "UPDATE inbox_counts SET total = total - 1,
           unseen = unseen - (CASE WHEN ?2 > seen_seq THEN 1 ELSE 0 END)
         WHERE uid = ?1",
        params![uid, n.seq as i64],
    )?;
    if n.status == NotificationStatus::Unread {
        pending.unread(&n, -1);
    }
    Ok(Some(n))
}

pub(super) fn unread_ids(
    c: &Connection,
    uid: &str,
    ntype: Option<&str>,
    tid: Option<Uuid>,
) -> StoreResult<Vec<Uuid>> {
    let mut stmt = c
        .prepare_cached(
            "SELECT id FROM inbox WHERE uid = ?1 AND read_at IS NULL AND archived_at IS NULL
             AND (?2 IS NULL OR ntype = ?2) AND (?3 IS NULL OR tid = ?3) ORDER BY id",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![uid, ntype, tid.map(|t| t.to_string())], |r| {
            r.get::<_, String>(0)
        })
        .map_err(backend)?;
    collect(rows, |s| parse_uuid(&s))
}

pub(super) fn mark_seen(
    c: &Connection,
    pending: &mut Pending,
    uid: &str,
    at: OffsetDateTime,
    seq: u64,
) -> StoreResult<()> {
    pending.flush_user(c, uid)?;
    exec(
        c,
        "INSERT INTO inbox_counts (uid, total, unread, unseen, seen_seq, seen_at)
         VALUES (?1, 0, 0, 0, ?2, ?3)
         ON CONFLICT (uid) DO UPDATE SET unseen = 0, seen_seq = ?2, seen_at = ?3",
        params![uid, seq as i64, ts(at)],
    )
    .map(drop)
}

/// `WHERE` clause and parameters for a filter (all bound, never interpolated).
fn filter_sql(q: &InboxQuery) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value as V;
    let f = &q.filter;
    let mut sql = String::from("i.uid = ?1");
    let mut p: Vec<V> = Vec::new();
    let mut bind = |sql: &mut String, clause: &str, v: V| {
        p.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", p.len() + 1)));
    };
    match f.status {
        None => sql.push_str(" AND i.archived_at IS NULL"),
        Some(StatusFilter::Unread) => {
            sql.push_str(" AND i.read_at IS NULL AND i.archived_at IS NULL")
        }
        Some(StatusFilter::Read) => {
            sql.push_str(" AND i.read_at IS NOT NULL AND i.archived_at IS NULL")
        }
        Some(StatusFilter::Archived) => sql.push_str(" AND i.archived_at IS NOT NULL"),
        Some(StatusFilter::All) => {}
    }
    if let Some(t) = &f.ntype {
        bind(&mut sql, " AND i.ntype = ?", V::Text(t.clone()));
    }
    if let Some(s) = &f.sender {
        bind(&mut sql, " AND i.sender = ?", V::Text(s.clone()));
    }
    if let Some(l) = f.level {
        bind(&mut sql, " AND i.level = ?", V::Integer(i64::from(l)));
    }
    if let Some(t) = f.tid {
        bind(&mut sql, " AND i.tid = ?", V::Text(t.to_string()));
    }
    if let Some(t) = f.since {
        bind(&mut sql, " AND i.created_at >= ?", V::Text(ts(t)));
    }
    if let Some(t) = f.before {
        bind(&mut sql, " AND i.created_at < ?", V::Text(ts(t)));
    }
    if f.direct {
        sql.push_str(" AND i.tid IS NULL");
    }
    // Seed 003's `forclient`, on the message's options (the count joins the messages then).
    match f.forclient {
        None => {}
        Some(true) => sql.push_str(" AND json_extract(m.opts, '$.forclient') = 1"),
        Some(false) => sql.push_str(" AND IFNULL(json_extract(m.opts, '$.forclient'), 0) != 1"),
    }
    if let Some(after) = q.after {
        bind(&mut sql, " AND i.seq > ?", V::Integer(after as i64));
    }
    (sql, p)
}

/// A page of a user's inbox: newest first, or oldest first after a cursor position.
pub(super) fn query(c: &Connection, uid: &str, q: &InboxQuery) -> StoreResult<Page<Notification>> {
    let (clause, mut params) = filter_sql(q);
    params.insert(0, rusqlite::types::Value::Text(uid.to_owned()));
    let total: i64 = c
        .query_row(
            &format!(
                "SELECT COUNT(*) FROM {} WHERE {clause}",
                if q.filter.forclient.is_some() {
                    FROM
                } else {
                    "inbox i"
                }
            ),
            rusqlite::params_from_iter(params.iter()),
            |r| r.get(0),
        )
        .map_err(backend)?;
    let (l, o) = limit_offset(q.limit, q.offset);
    // Newest first by stream position (the order the exchange received them, and the order
    // cursors follow); the Scylla backend lists the same way.
    let order = if q.after.is_some() {
        "i.seq ASC, i.id ASC"
    } else {
        "i.seq DESC"
    };
    let n = params.len();
    params.push(rusqlite::types::Value::Integer(l));
    params.push(rusqlite::types::Value::Integer(o));
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {COLS} FROM {FROM} WHERE {clause} ORDER BY {order} LIMIT ?{} OFFSET ?{}",
            n + 1,
            n + 2
        ))
        .map_err(backend)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(params.iter()), raw)
        .map_err(backend)?;
    Ok(Page {
        items: collect(rows, parse)?,
        total: total.max(0) as u64,
    })
}

/// The highest inbox position of a user (0 for an empty inbox): where a sync cursor starts.
pub(super) fn last_position(c: &Connection, uid: &str) -> StoreResult<u64> {
    let n: Option<i64> = c
        .query_row(
            "SELECT MAX(seq) FROM inbox WHERE uid = ?1",
            params![uid],
            |r| r.get(0),
        )
        .map_err(backend)?;
    Ok(n.unwrap_or(0).max(0) as u64)
}

pub(super) fn counts(c: &Connection, uid: &str) -> StoreResult<InboxCounts> {
    let row: Option<(i64, i64)> = c
        .query_row(
            "SELECT total, unread FROM inbox_counts WHERE uid = ?1",
            params![uid],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(backend)?;
    Ok(row.map_or_else(InboxCounts::default, |(t, u)| InboxCounts {
        total: t.max(0) as u64,
        unread: u.max(0) as u64,
    }))
}

pub(super) fn stats(c: &Connection, uid: &str) -> StoreResult<InboxStats> {
    let row: Option<(i64, i64, i64, Option<String>)> = c
        .query_row(
            "SELECT total, unread, unseen, seen_at FROM inbox_counts WHERE uid = ?1",
            params![uid],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
        .map_err(backend)?;
    let mut s = InboxStats::default();
    if let Some((total, unread, unseen, seen_at)) = row {
        s.total = total.max(0) as u64;
        s.unread = unread.max(0) as u64;
        s.unseen = unseen.max(0) as u64;
        s.seen_at = seen_at.as_deref().map(parse_ts).transpose()?;
    }
    let mut stmt = c
        .prepare_cached("SELECT dim, key, n FROM inbox_unread_by WHERE uid = ?1")
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![uid], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .map_err(backend)?;
    // Every unread entry has one level: level 0's count is the rest of the unread count.
    let mut other_levels = 0i64;
    for (dim, key, n) in collect(rows, Ok)? {
        let target = match dim.as_str() {
            "type" => &mut s.unread_by_type,
            "level" => {
                other_levels += n;
                &mut s.unread_by_level
            }
            other => return Err(StoreError::Corrupt(format!("counter dimension {other}"))),
        };
        if n > 0 {
            target.insert(key, n as u64);
        }
    }
    let level_0 = s.unread as i64 - other_levels;
    if level_0 > 0 {
        s.unread_by_level.insert("0".into(), level_0 as u64);
    }
    Ok(s)
}

/// Stores a change (not a `new` one while its entry exists: see `changes_after`).
pub(super) fn put_change(
    c: &Connection,
    pending: &mut Pending,
    uid: &str,
    p: crate::fold::Position,
    frame: &[u8],
    at: OffsetDateTime,
) -> StoreResult<()> {
    pending.changed(c, uid, p.seq, at)?;
    store_change(c, uid, p, frame, at)
}

fn store_change(
    c: &Connection,
    uid: &str,
    p: crate::fold::Position,
    frame: &[u8],
    at: OffsetDateTime,
) -> StoreResult<()> {
    exec(
        c,
        "INSERT OR REPLACE INTO inbox_changes (uid, seq, sub, frame, at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            uid,
            p.seq as i64,
            i64::try_from(p.sub).unwrap_or(i64::MAX),
            String::from_utf8_lossy(frame),
            ts(at)
        ],
    )
    .map(drop)
}

/// A user's changes after `p`, in feed order: the stored ones merged with the `new` changes of
/// the entries they hold from their feed's floor on (an entry's `new` change sits at its own
/// position, `<seq>.<seq>`, and its frame is rebuilt from its message as the fold made it).
pub(super) fn changes_after(
    c: &Connection,
    uid: &str,
    p: crate::fold::Position,
    limit: u32,
) -> StoreResult<Vec<(crate::fold::Position, String)>> {
    use crate::fold::Position;
    let (seq, sub) = (p.seq as i64, i64::try_from(p.sub).unwrap_or(i64::MAX));
    let mut stmt = c
        .prepare_cached(
            "SELECT seq, sub, frame FROM inbox_changes
             WHERE uid = ?1 AND (seq > ?2 OR (seq = ?2 AND sub > ?3))
             ORDER BY seq, sub LIMIT ?4",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![uid, seq, sub, i64::from(limit)], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(backend)?;
    let stored = collect(rows, |(seq, sub, frame)| {
        Ok((
            Position {
                seq: seq.max(0) as u64,
                sub: sub.max(0) as u64,
            },
            frame,
        ))
    })?;
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {COLS} FROM {FROM}
             WHERE i.uid = ?1 AND i.seq >= COALESCE(
                 (SELECT feed_floor FROM inbox_counts WHERE uid = ?1), 0)
               AND (i.seq > ?2 OR (i.seq = ?2 AND i.seq > ?3))
             ORDER BY i.seq LIMIT ?4"
        ))
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![uid, seq, sub, i64::from(limit)], raw)
        .map_err(backend)?;
    let derived = collect(rows, |r| {
        let n = parse(r)?;
        let frame = crate::fold::new_frame(&n);
        Ok((
            Position {
                seq: n.seq,
                sub: n.seq,
            },
            String::from_utf8_lossy(&frame).into_owned(),
        ))
    })?;
    // Merge the two ordered lists (a position is in at most one of them).
    let mut out = Vec::with_capacity(stored.len() + derived.len());
    let (mut a, mut b) = (
        stored.into_iter().peekable(),
        derived.into_iter().peekable(),
    );
    while out.len() < limit as usize {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                b.next();
                a.next()
            }
            (Some(x), Some(y)) if x.0 < y.0 => a.next(),
            (Some(_), Some(_)) | (None, Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, None) => None,
        };
        match next {
            Some(item) => out.push(item),
            None => break,
        }
    }
    Ok(out)
}
