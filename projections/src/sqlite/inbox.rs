//! The inbox in SQLite: entries partitioned by user, their counters (kept on write, so counts
//! are exact under concurrent delivery and marking: the projector is the only writer), and the
//! listing queries (filters, limit/offset newest first, cursor sync oldest first).

use rusqlite::{Connection, OptionalExtension, Row, params};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{backend, collect, limit_offset, parse_json, parse_ts, parse_uuid, ts, tuple};
use crate::model::{
    InboxCounts, InboxQuery, InboxStats, Notification, NotificationStatus, Page, StatusFilter,
};
use crate::store::{StoreError, StoreResult};

pub(super) const SCHEMA: &str = r#"
-- GET /notifications: partition uid, clustered by id (UUIDv7); seq orders cursor sync
CREATE TABLE IF NOT EXISTS inbox (
  uid TEXT NOT NULL, id TEXT NOT NULL, tid TEXT, sender TEXT NOT NULL, msg TEXT NOT NULL,
  opts TEXT NOT NULL, created_at TEXT NOT NULL, read_at TEXT, ntype TEXT,
  level INTEGER NOT NULL DEFAULT 0, archived_at TEXT, seq INTEGER NOT NULL,
  PRIMARY KEY (uid, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inbox_by_position ON inbox (uid, seq);
-- inbox counters, kept on write; seen_seq/seen_at: the unseen watermark (seed 003's mlast)
CREATE TABLE IF NOT EXISTS inbox_counts (
  uid TEXT PRIMARY KEY, total INTEGER NOT NULL, unread INTEGER NOT NULL,
  unseen INTEGER NOT NULL DEFAULT 0, seen_seq INTEGER NOT NULL DEFAULT 0, seen_at TEXT)
  WITHOUT ROWID;
-- GET /stream resume: each user's inbox changes in feed order, kept CHANGE_RETENTION
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

const COLS: &str =
    "uid, id, tid, sender, msg, opts, created_at, read_at, ntype, level, archived_at, seq";

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
);

fn raw(r: &Row<'_>) -> rusqlite::Result<RawRow> {
    tuple(r)
}

fn parse(r: RawRow) -> StoreResult<Notification> {
    let opts: exchange::events::MessageOpts = parse_json(&r.5)?;
    let read_at = r.7.as_deref().map(parse_ts).transpose()?;
    let archived_at = r.10.as_deref().map(parse_ts).transpose()?;
    Ok(Notification {
        uid: r.0,
        id: parse_uuid(&r.1)?,
        tid: r.2.as_deref().map(parse_uuid).transpose()?,
        sender: r.3,
        msg: r.4,
        ntype: r.8,
        level: u8::try_from(r.9).unwrap_or(0),
        title: opts.title.clone(),
        data: opts.data.clone(),
        opts,
        status: Notification::status_of(read_at, archived_at),
        created_at: parse_ts(&r.6)?,
        read_at,
        archived_at,
        seq: r.11.max(0) as u64,
    })
}

/// One entry of a user.
pub(super) fn get(c: &Connection, uid: &str, id: Uuid) -> StoreResult<Option<Notification>> {
    let row = c
        .prepare_cached(&format!(
            "SELECT {COLS} FROM inbox WHERE uid = ?1 AND id = ?2"
        ))
        .and_then(|mut s| s.query_row(params![uid, id.to_string()], raw).optional())
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

/// Moves the unread counters of an entry's type and level by `delta`.
fn adjust_unread(c: &Connection, n: &Notification, delta: i64) -> StoreResult<()> {
    exec(
        c,
        "UPDATE inbox_counts SET unread = unread + ?2 WHERE uid = ?1",
        params![n.uid, delta],
    )?;
    adjust_unread_by(c, n, delta)
}

/// The per-level and per-type unread counts.
fn adjust_unread_by(c: &Connection, n: &Notification, delta: i64) -> StoreResult<()> {
    let mut dims = vec![("level", n.level.to_string())];
    if let Some(t) = &n.ntype {
        dims.push(("type", t.clone()));
    }
    for (dim, key) in dims {
        exec(
            c,
            "INSERT INTO inbox_unread_by (uid, dim, key, n) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (uid, dim, key) DO UPDATE SET n = n + ?4",
            params![n.uid, dim, key, delta],
        )?;
    }
    Ok(())
}

/// Inserts a new entry; `opts_json` is `n.opts` as JSON.
pub(super) fn insert(c: &Connection, n: &Notification, opts_json: &str) -> StoreResult<bool> {
    let inserted = exec(
        c,
        &format!(
            "INSERT OR IGNORE INTO inbox ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
        ),
        params![
            n.uid,
            n.id.to_string(),
            n.tid.map(|t| t.to_string()),
            n.sender,
            n.msg,
            opts_json,
            ts(n.created_at),
            n.read_at.map(ts),
            n.ntype,
            i64::from(n.level),
            n.archived_at.map(ts),
            n.seq as i64
        ],
    )? > 0;
    if inserted {
        let unread = i64::from(n.status == NotificationStatus::Unread);
        exec(
            c,
            "INSERT INTO inbox_counts (uid, total, unread, unseen) VALUES (?1, 1, ?2, 1)
             ON CONFLICT (uid) DO UPDATE SET total = total + 1, unseen = unseen + 1,
               unread = unread + ?2",
            params![n.uid, unread],
        )?;
        if unread == 1 {
            adjust_unread_by(c, n, 1)?;
        }
    }
    Ok(inserted)
}

pub(super) fn mark_read(
    c: &Connection,
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
        adjust_unread(c, &n, -1)?;
    }
    get(c, uid, id)
}

pub(super) fn archive(
    c: &Connection,
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
        adjust_unread(c, &n, -1)?;
    }
    get(c, uid, id)
}

pub(super) fn delete(c: &Connection, uid: &str, id: Uuid) -> StoreResult<Option<Notification>> {
    let Some(n) = get(c, uid, id)? else {
        return Ok(None);
    };
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
        adjust_unread(c, &n, -1)?;
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
    uid: &str,
    at: OffsetDateTime,
    seq: u64,
) -> StoreResult<()> {
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
    let mut sql = String::from("uid = ?1");
    let mut p: Vec<V> = Vec::new();
    let mut bind = |sql: &mut String, clause: &str, v: V| {
        p.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", p.len() + 1)));
    };
    match f.status {
        None => sql.push_str(" AND archived_at IS NULL"),
        Some(StatusFilter::Unread) => sql.push_str(" AND read_at IS NULL AND archived_at IS NULL"),
        Some(StatusFilter::Read) => {
            sql.push_str(" AND read_at IS NOT NULL AND archived_at IS NULL")
        }
        Some(StatusFilter::Archived) => sql.push_str(" AND archived_at IS NOT NULL"),
        Some(StatusFilter::All) => {}
    }
    if let Some(t) = &f.ntype {
        bind(&mut sql, " AND ntype = ?", V::Text(t.clone()));
    }
    if let Some(s) = &f.sender {
        bind(&mut sql, " AND sender = ?", V::Text(s.clone()));
    }
    if let Some(l) = f.level {
        bind(&mut sql, " AND level = ?", V::Integer(i64::from(l)));
    }
    if let Some(t) = f.tid {
        bind(&mut sql, " AND tid = ?", V::Text(t.to_string()));
    }
    if let Some(t) = f.since {
        bind(&mut sql, " AND created_at >= ?", V::Text(ts(t)));
    }
    if let Some(t) = f.before {
        bind(&mut sql, " AND created_at < ?", V::Text(ts(t)));
    }
    if f.direct {
        sql.push_str(" AND tid IS NULL");
    }
    if let Some(after) = q.after {
        bind(&mut sql, " AND seq > ?", V::Integer(after as i64));
    }
    (sql, p)
}

/// A page of a user's inbox: newest first, or oldest first after a cursor position.
pub(super) fn query(c: &Connection, uid: &str, q: &InboxQuery) -> StoreResult<Page<Notification>> {
    let (clause, mut params) = filter_sql(q);
    params.insert(0, rusqlite::types::Value::Text(uid.to_owned()));
    let total: i64 = c
        .query_row(
            &format!("SELECT COUNT(*) FROM inbox WHERE {clause}"),
            rusqlite::params_from_iter(params.iter()),
            |r| r.get(0),
        )
        .map_err(backend)?;
    let (l, o) = limit_offset(q.limit, q.offset);
    // Newest first by stream position (the order the exchange received them, and the order
    // cursors follow); the Scylla backend lists the same way.
    let order = if q.after.is_some() {
        "seq ASC, id ASC"
    } else {
        "seq DESC"
    };
    let n = params.len();
    params.push(rusqlite::types::Value::Integer(l));
    params.push(rusqlite::types::Value::Integer(o));
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {COLS} FROM inbox WHERE {clause} ORDER BY {order} LIMIT ?{} OFFSET ?{}",
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
        .prepare_cached("SELECT dim, key, n FROM inbox_unread_by WHERE uid = ?1 AND n > 0")
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
    for (dim, key, n) in collect(rows, Ok)? {
        let target = match dim.as_str() {
            "type" => &mut s.unread_by_type,
            "level" => &mut s.unread_by_level,
            other => return Err(StoreError::Corrupt(format!("counter dimension {other}"))),
        };
        target.insert(key, n.max(0) as u64);
    }
    Ok(s)
}

pub(super) fn put_change(
    c: &Connection,
    uid: &str,
    p: crate::fold::Position,
    frame: &[u8],
    at: OffsetDateTime,
    recorded_day: &mut Option<i64>,
) -> StoreResult<i64> {
    let day = at.unix_timestamp().div_euclid(86_400);
    if *recorded_day != Some(day) {
        exec(
            c,
            "INSERT OR IGNORE INTO feed_days (day, first_seq) VALUES (?1, ?2)",
            params![day, p.seq as i64],
        )?;
        *recorded_day = Some(day);
    }
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
    )?;
    Ok(day)
}

/// Drops a user's changes from before the day CHANGE_RETENTION before `day` (so at least that
/// much is kept): a primary-key range below that day's first position, one seek when nothing
/// is due.
pub(super) fn prune_changes(c: &Connection, uid: &str, day: i64) -> StoreResult<()> {
    let cutoff_day = day - crate::fold::CHANGE_RETENTION.whole_days();
    exec(
        c,
        "DELETE FROM inbox_changes WHERE uid = ?1 AND seq < (
           SELECT first_seq FROM feed_days WHERE day >= ?2 ORDER BY day LIMIT 1)",
        params![uid, cutoff_day],
    )
    .map(drop)
}

/// A user's changes after `p`, in feed order.
pub(super) fn changes_after(
    c: &Connection,
    uid: &str,
    p: crate::fold::Position,
    limit: u32,
) -> StoreResult<Vec<(crate::fold::Position, String)>> {
    let mut stmt = c
        .prepare_cached(
            "SELECT seq, sub, frame FROM inbox_changes
             WHERE uid = ?1 AND (seq > ?2 OR (seq = ?2 AND sub > ?3))
             ORDER BY seq, sub LIMIT ?4",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(
            params![
                uid,
                p.seq as i64,
                i64::try_from(p.sub).unwrap_or(i64::MAX),
                i64::from(limit)
            ],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )
        .map_err(backend)?;
    collect(rows, |(seq, sub, frame)| {
        Ok((
            crate::fold::Position {
                seq: seq.max(0) as u64,
                sub: sub.max(0) as u64,
            },
            frame,
        ))
    })
}
