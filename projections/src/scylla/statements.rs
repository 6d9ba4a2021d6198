//! Every CQL statement the Scylla backend runs, with the Rust types of its bound values and of
//! its result rows. They are prepared once at start-up (a schema mismatch fails there, with the
//! statement's name), and `STATEMENTS` lets a test check each against `schema/cql/`.

use std::marker::PhantomData;

use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;
use uuid::Uuid;

/// One statement as the schema test sees it: names of the bound and returned Rust types.
#[derive(Debug, Clone, Copy)]
pub struct StatementSpec {
    pub name: &'static str,
    pub cql: &'static str,
    /// The Rust type of each `?`, in order (`Option<T>` binds null when `None`).
    pub binds: &'static [&'static str],
    /// The Rust type of a result row: a tuple in `SELECT` column order, `()` for writes.
    pub returns: &'static str,
}

/// Statements run before the others can be prepared (by `msgxc migrate` and at start-up),
/// unprepared; checked against the schema like the rest.
pub const MIGRATION_GET: StatementSpec = StatementSpec {
    name: "migration_get",
    cql: "SELECT version FROM schema_migrations WHERE version = ?",
    binds: &["i32"],
    returns: "(i32,)",
};
pub const MIGRATION_PUT: StatementSpec = StatementSpec {
    name: "migration_put",
    cql: "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
    binds: &["i32", "i64"],
    returns: "()",
};

/// A value bindable to a statement.
pub(crate) trait ToCql {
    fn to_cql(self) -> Option<CqlValue>;
}

impl ToCql for Uuid {
    fn to_cql(self) -> Option<CqlValue> {
        Some(CqlValue::Uuid(self))
    }
}
impl ToCql for String {
    fn to_cql(self) -> Option<CqlValue> {
        Some(CqlValue::Text(self))
    }
}
impl ToCql for &str {
    fn to_cql(self) -> Option<CqlValue> {
        Some(CqlValue::Text(self.to_owned()))
    }
}
impl ToCql for i64 {
    fn to_cql(self) -> Option<CqlValue> {
        Some(CqlValue::BigInt(self))
    }
}
impl ToCql for i32 {
    fn to_cql(self) -> Option<CqlValue> {
        Some(CqlValue::Int(self))
    }
}
impl ToCql for bool {
    fn to_cql(self) -> Option<CqlValue> {
        Some(CqlValue::Boolean(self))
    }
}
impl<T: ToCql> ToCql for Option<T> {
    fn to_cql(self) -> Option<CqlValue> {
        self.and_then(ToCql::to_cql)
    }
}

/// A statement of the backend: its text, the table it reads or writes, and (against a real
/// node) its prepared form.
pub struct Stmt {
    pub name: &'static str,
    pub cql: &'static str,
    pub table: &'static str,
    pub(crate) prepared: Option<PreparedStatement>,
}

impl Stmt {
    pub(crate) fn new(
        name: &'static str,
        cql: &'static str,
        prepared: Option<PreparedStatement>,
    ) -> Self {
        Self {
            name,
            cql,
            table: table_of(cql),
            prepared,
        }
    }

    pub fn is_select(&self) -> bool {
        self.cql.starts_with("SELECT ")
    }
}

/// The table a statement names (after `FROM`, `INTO` or `UPDATE`).
fn table_of(cql: &'static str) -> &'static str {
    let mut words = cql.split_whitespace();
    while let Some(w) = words.next() {
        if matches!(w, "FROM" | "INTO" | "UPDATE") {
            return words.next().unwrap_or_default();
        }
    }
    ""
}

/// A statement with its values bound; `R` is the type of its result rows.
pub(crate) struct Bound<'a, R> {
    pub(crate) statement: &'a Stmt,
    pub(crate) values: Vec<Option<CqlValue>>,
    _row: PhantomData<fn() -> R>,
}

impl<'a, R> Bound<'a, R> {
    fn new(statement: &'a Stmt, values: Vec<Option<CqlValue>>) -> Self {
        Self {
            statement,
            values,
            _row: PhantomData,
        }
    }
}

macro_rules! statements {
    ($(
        $(#[$doc:meta])*
        $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $cql:literal;
    )*) => {
        /// Every statement of the backend (see [`StatementSpec`]).
        pub const STATEMENTS: &[StatementSpec] = &[$(
            StatementSpec {
                name: stringify!($name),
                cql: $cql,
                binds: &[$(stringify!($ty)),*],
                returns: stringify!($ret),
            },
        )*];

        /// The statements, prepared.
        pub(crate) struct Prepared {
            $($name: Stmt,)*
        }

        impl Prepared {
            pub(crate) async fn prepare(
                session: &scylla::client::session::Session,
                page_size: Option<i32>,
            ) -> Result<Self, crate::store::StoreError> {
                Ok(Self {
                    $($name: Stmt::new(
                        stringify!($name),
                        $cql,
                        Some(super::prepare(session, stringify!($name), $cql, page_size).await?),
                    ),)*
                })
            }

            /// The statements as text, for an endpoint that needs no preparing.
            #[cfg_attr(not(feature = "cql-memory"), allow(dead_code))]
            pub(crate) fn unprepared() -> Self {
                Self {
                    $($name: Stmt::new(stringify!($name), $cql, None),)*
                }
            }

            $(
                $(#[$doc])*
                #[allow(clippy::too_many_arguments)]
                pub(crate) fn $name(&self, $($arg: $ty),*) -> Bound<'_, $ret> {
                    Bound::new(&self.$name, vec![$(ToCql::to_cql($arg)),*])
                }
            )*
        }
    };
}

pub(crate) type InboxRow = (
    Uuid,
    Option<Uuid>,
    String,
    String,
    String,
    Option<String>,
    i32,
    i64,
    Option<i64>,
    Option<i64>,
);

/// total, unread, unseen, seen_seq, seen_at, archived.
pub(crate) type CountsRow = (
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);
pub(crate) type FailedRow = (String, Uuid, String, String, String, String, bool, i32, i64);

pub(crate) type MessageRow = (
    Option<Uuid>,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
);

statements! {
    // Projector bookkeeping and schema version.
    state_get(name: &str) -> (Option<Uuid>, Option<i64>) =
        "SELECT store_id, checkpoint FROM projection_state WHERE name = ?";
    /// Lightweight transaction: two processes opening a new keyspace agree on one identity.
    state_init(name: &str, store_id: Uuid, checkpoint: i64) -> () =
        "INSERT INTO projection_state (name, store_id, checkpoint) VALUES (?, ?, ?) IF NOT EXISTS";
    /// Lightweight transaction: a projector that lost its lease cannot move the checkpoint.
    state_advance(checkpoint: i64, name: &str, expected: i64) -> () =
        "UPDATE projection_state SET checkpoint = ? WHERE name = ? IF checkpoint = ?";

    // Users (broadcast audience).
    user_get(bucket: i32, uid: &str) -> (String,) =
        "SELECT uid FROM users WHERE bucket = ? AND uid = ?";
    user_put(bucket: i32, uid: &str, first_seen: i64) -> () =
        "INSERT INTO users (bucket, uid, first_seen) VALUES (?, ?, ?)";
    users_in_bucket(bucket: i32) -> (String,) =
        "SELECT uid FROM users WHERE bucket = ?";

    // Devices.
    device_put(uid: &str, device_id: &str, address: String, enlisted_at: i64) -> () =
        "INSERT INTO devices (uid, device_id, address, enlisted_at) VALUES (?, ?, ?, ?)";
    device_get(uid: &str, device_id: &str) -> (String,) =
        "SELECT device_id FROM devices WHERE uid = ? AND device_id = ?";
    device_delete(uid: &str, device_id: &str) -> () =
        "DELETE FROM devices WHERE uid = ? AND device_id = ?";
    devices_of(uid: &str) -> (String, String, i64) =
        "SELECT device_id, address, enlisted_at FROM devices WHERE uid = ?";
    device_address_get(uid: &str, device_id: &str) -> (String,) =
        "SELECT address FROM devices WHERE uid = ? AND device_id = ?";
    // Devices per channel: one partition (bucket 0).
    device_count_get(bucket: i32, channel: &str) -> (Option<i64>,) =
        "SELECT n FROM device_counts WHERE bucket = ? AND channel = ?";
    device_count_put(bucket: i32, channel: &str, n: i64) -> () =
        "INSERT INTO device_counts (bucket, channel, n) VALUES (?, ?, ?)";
    device_counts_all(bucket: i32) -> (String, Option<i64>) =
        "SELECT channel, n FROM device_counts WHERE bucket = ?";
    any_device_of(uid: &str) -> (String,) =
        "SELECT device_id FROM devices WHERE uid = ? LIMIT 1";
    device_owner_get(device_id: &str) -> (String,) =
        "SELECT uid FROM device_owners WHERE device_id = ?";
    device_owner_put(device_id: &str, uid: &str) -> () =
        "INSERT INTO device_owners (device_id, uid) VALUES (?, ?)";
    device_owner_delete(device_id: &str) -> () =
        "DELETE FROM device_owners WHERE device_id = ?";

    // Threads, aliases, subscribers, history.
    thread_get(tid: Uuid) -> (String, String, bool, bool, i64, Option<i64>, Option<i64>, Option<String>,) =
        "SELECT name, owner, open_subscribe, open_publish, created_at, subscribers, messages, alias FROM threads WHERE tid = ?";
    thread_put(tid: Uuid, name: &str, owner: &str, open_subscribe: bool, open_publish: bool,
        created_at: i64, subscribers: i64, messages: i64, alias: Option<String>) -> () =
        "INSERT INTO threads (tid, name, owner, open_subscribe, open_publish, created_at, subscribers, messages, alias) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)";
    thread_counts_get(tid: Uuid) -> (Option<i64>, Option<i64>) =
        "SELECT subscribers, messages FROM threads WHERE tid = ?";
    thread_subscribers_put(subscribers: i64, tid: Uuid) -> () =
        "UPDATE threads SET subscribers = ? WHERE tid = ?";
    thread_messages_count_put(messages: i64, tid: Uuid) -> () =
        "UPDATE threads SET messages = ? WHERE tid = ?";
    /// The one lightweight transaction uniqueness demands: an alias names one thread.
    alias_claim(alias: &str, tid: Uuid) -> () =
        "INSERT INTO thread_aliases (alias, tid) VALUES (?, ?) IF NOT EXISTS";
    alias_get(alias: &str) -> (Uuid,) =
        "SELECT tid FROM thread_aliases WHERE alias = ?";
    subscriber_get(tid: Uuid, uid: &str) -> (String,) =
        "SELECT uid FROM thread_subscribers WHERE tid = ? AND uid = ?";
    subscriber_put(tid: Uuid, uid: &str, since: i64) -> () =
        "INSERT INTO thread_subscribers (tid, uid, since) VALUES (?, ?, ?)";
    subscriber_delete(tid: Uuid, uid: &str) -> () =
        "DELETE FROM thread_subscribers WHERE tid = ? AND uid = ?";
    subscribers_of(tid: Uuid) -> (String,) =
        "SELECT uid FROM thread_subscribers WHERE tid = ?";
    user_thread_put(uid: &str, tid: Uuid, since: i64) -> () =
        "INSERT INTO user_threads (uid, tid, since) VALUES (?, ?, ?)";
    user_thread_delete(uid: &str, tid: Uuid) -> () =
        "DELETE FROM user_threads WHERE uid = ? AND tid = ?";
    user_threads_of(uid: &str) -> (Uuid,) =
        "SELECT tid FROM user_threads WHERE uid = ?";
    thread_month_put(tid: Uuid, month: i32) -> () =
        "INSERT INTO thread_months (tid, month) VALUES (?, ?)";
    thread_months_of(tid: Uuid) -> (i32,) =
        "SELECT month FROM thread_months WHERE tid = ?";
    thread_message_get(tid: Uuid, month: i32, seq: i64) -> (Uuid,) =
        "SELECT mid FROM thread_messages WHERE tid = ? AND month = ? AND seq = ?";
    thread_message_put(tid: Uuid, month: i32, seq: i64, mid: Uuid, sender: &str, msg: &str,
        opts: String, created_at: i64) -> () =
        "INSERT INTO thread_messages (tid, month, seq, mid, sender, msg, opts, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)";
    thread_message_delete(tid: Uuid, month: i32, seq: i64) -> () =
        "DELETE FROM thread_messages WHERE tid = ? AND month = ? AND seq = ?";
    thread_messages_in(tid: Uuid, month: i32) -> (i64, Uuid, String, String, String, i64) =
        "SELECT seq, mid, sender, msg, opts, created_at FROM thread_messages WHERE tid = ? AND month = ?";

    // Messages of any kind.
    message_get(mid: Uuid) -> (Option<Uuid>, String, String, String, i64, Option<i64>, Option<i64>,) =
        "SELECT tid, sender, msg, opts, created_at, recipients, seq FROM messages WHERE mid = ?";
    message_put(mid: Uuid, tid: Option<Uuid>, sender: &str, msg: &str, opts: String,
        created_at: i64, recipients: i64, seq: i64) -> () =
        "INSERT INTO messages (mid, tid, sender, msg, opts, created_at, recipients, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)";
    message_recipients_put(recipients: i64, mid: Uuid) -> () =
        "UPDATE messages SET recipients = ? WHERE mid = ?";
    message_delete(mid: Uuid) -> () =
        "DELETE FROM messages WHERE mid = ?";

    // Inboxes.
    inbox_get(uid: &str, month: i32, seq: i64) -> (Uuid, Option<Uuid>, String, String, String, Option<String>, i32, i64, Option<i64>, Option<i64>,) =
        "SELECT id, tid, sender, msg, opts, ntype, level, created_at, read_at, archived_at FROM inbox WHERE uid = ? AND month = ? AND seq = ?";
    inbox_in_month(uid: &str, month: i32) -> (i64, Uuid, Option<Uuid>, String, String, String, Option<String>, i32, i64, Option<i64>, Option<i64>,) =
        "SELECT seq, id, tid, sender, msg, opts, ntype, level, created_at, read_at, archived_at FROM inbox WHERE uid = ? AND month = ?";
    inbox_after_in_month(uid: &str, month: i32, after: i64) -> (i64, Uuid, Option<Uuid>, String, String, String, Option<String>, i32, i64, Option<i64>, Option<i64>,) =
        "SELECT seq, id, tid, sender, msg, opts, ntype, level, created_at, read_at, archived_at FROM inbox WHERE uid = ? AND month = ? AND seq > ?";
    inbox_newest_in_month(uid: &str, month: i32) -> (i64, i64) =
        "SELECT seq, created_at FROM inbox WHERE uid = ? AND month = ? LIMIT 1";
    inbox_put(uid: &str, month: i32, seq: i64, id: Uuid, tid: Option<Uuid>, sender: &str,
        msg: &str, opts: String, ntype: Option<String>, level: i32, created_at: i64,
        read_at: Option<i64>, archived_at: Option<i64>) -> () =
        "INSERT INTO inbox (uid, month, seq, id, tid, sender, msg, opts, ntype, level, created_at, read_at, archived_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    inbox_state_put(read_at: Option<i64>, archived_at: Option<i64>, uid: &str, month: i32,
        seq: i64) -> () =
        "UPDATE inbox SET read_at = ?, archived_at = ? WHERE uid = ? AND month = ? AND seq = ?";
    inbox_delete(uid: &str, month: i32, seq: i64) -> () =
        "DELETE FROM inbox WHERE uid = ? AND month = ? AND seq = ?";
    inbox_month_put(uid: &str, month: i32) -> () =
        "INSERT INTO inbox_months (uid, month) VALUES (?, ?)";
    inbox_months_of(uid: &str) -> (i32,) =
        "SELECT month FROM inbox_months WHERE uid = ?";
    inbox_id_get(uid: &str, id: Uuid) -> (i32, i64) =
        "SELECT month, seq FROM inbox_by_id WHERE uid = ? AND id = ?";
    inbox_id_put(uid: &str, id: Uuid, month: i32, seq: i64) -> () =
        "INSERT INTO inbox_by_id (uid, id, month, seq) VALUES (?, ?, ?, ?)";
    inbox_id_delete(uid: &str, id: Uuid) -> () =
        "DELETE FROM inbox_by_id WHERE uid = ? AND id = ?";
    counts_get(uid: &str) -> (Option<i64>, Option<i64>, Option<i64>, Option<i64>, Option<i64>, Option<i64>) =
        "SELECT total, unread, unseen, seen_seq, seen_at, archived FROM inbox_counts WHERE uid = ?";
    counts_put(total: i64, unread: i64, unseen: i64, archived: i64, uid: &str) -> () =
        "UPDATE inbox_counts SET total = ?, unread = ?, unseen = ?, archived = ? WHERE uid = ?";
    counts_seen_put(unseen: i64, seen_seq: i64, seen_at: i64, uid: &str) -> () =
        "UPDATE inbox_counts SET unseen = ?, seen_seq = ?, seen_at = ? WHERE uid = ?";
    unread_by_of(uid: &str) -> (String, String, i64) =
        "SELECT dim, key, n FROM inbox_unread_by WHERE uid = ?";
    unread_by_get(uid: &str, dim: &str, key: &str) -> (i64,) =
        "SELECT n FROM inbox_unread_by WHERE uid = ? AND dim = ? AND key = ?";
    unread_by_put(n: i64, uid: &str, dim: &str, key: &str) -> () =
        "UPDATE inbox_unread_by SET n = ? WHERE uid = ? AND dim = ? AND key = ?";

    // Change feed (SSE resume).
    change_put(uid: &str, seq: i64, sub: i64, frame: String) -> () =
        "INSERT INTO inbox_changes (uid, seq, sub, frame) VALUES (?, ?, ?, ?)";
    changes_after(uid: &str, seq: i64, sub: i64, limit: i32) -> (i64, i64, String) =
        "SELECT seq, sub, frame FROM inbox_changes WHERE uid = ? AND (seq, sub) > (?, ?) LIMIT ?";
    change_before(uid: &str, seq: i64) -> (i64,) =
        "SELECT seq FROM inbox_changes WHERE uid = ? AND seq < ? LIMIT 1";
    changes_prune(uid: &str, seq: i64) -> () =
        "DELETE FROM inbox_changes WHERE uid = ? AND seq < ?";
    feed_day_get(scope: i32, day: i32) -> (i64,) =
        "SELECT first_seq FROM feed_days WHERE scope = ? AND day = ?";
    feed_day_put(scope: i32, day: i32, first_seq: i64) -> () =
        "INSERT INTO feed_days (scope, day, first_seq) VALUES (?, ?, ?)";
    feed_day_from(scope: i32, day: i32) -> (i32, i64) =
        "SELECT day, first_seq FROM feed_days WHERE scope = ? AND day >= ? LIMIT 1";

    // Blocks, types, preferences.
    block_get(uid: &str, blocked: &str) -> (String,) =
        "SELECT blocked FROM blocks WHERE uid = ? AND blocked = ?";
    block_put(uid: &str, blocked: &str, since: i64) -> () =
        "INSERT INTO blocks (uid, blocked, since) VALUES (?, ?, ?)";
    block_delete(uid: &str, blocked: &str) -> () =
        "DELETE FROM blocks WHERE uid = ? AND blocked = ?";
    blocks_of(uid: &str) -> (String,) =
        "SELECT blocked FROM blocks WHERE uid = ?";
    type_put(scope: &str, name: &str, title: &str, description: &str, registered_at: i64) -> () =
        "INSERT INTO notification_types (scope, name, title, description, registered_at) VALUES (?, ?, ?, ?, ?)";
    types_of(scope: &str) -> (String, String, String, i64) =
        "SELECT name, title, description, registered_at FROM notification_types WHERE scope = ?";
    prefs_get(uid: &str) -> (String,) =
        "SELECT prefs FROM preferences WHERE uid = ?";
    prefs_put(uid: &str, prefs: String) -> () =
        "INSERT INTO preferences (uid, prefs) VALUES (?, ?)";

    // Receipts and dead letters.
    receipt_get(mid: Uuid, uid: &str, device_id: &str) -> (String, String, Option<i32>) =
        "SELECT status, channel, attempts FROM receipts WHERE mid = ? AND uid = ? AND device_id = ?";
    receipt_put(mid: Uuid, uid: &str, device_id: &str, channel: &str, status: &str,
        attempts: i32, reason: Option<String>, updated_at: i64) -> () =
        "INSERT INTO receipts (mid, uid, device_id, channel, status, attempts, reason, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)";
    receipt_attempts_put(attempts: i32, mid: Uuid, uid: &str, device_id: &str) -> () =
        "UPDATE receipts SET attempts = ? WHERE mid = ? AND uid = ? AND device_id = ?";
    receipts_of(mid: Uuid) -> (String, String, String, String, Option<i32>, Option<String>, i64,) =
        "SELECT uid, device_id, channel, status, attempts, reason, updated_at FROM receipts WHERE mid = ?";
    receipt_count_get(mid: Uuid, channel: &str, status: &str) -> (i64,) =
        "SELECT n FROM receipt_counts WHERE mid = ? AND channel = ? AND status = ?";
    receipt_count_put(n: i64, mid: Uuid, channel: &str, status: &str) -> () =
        "UPDATE receipt_counts SET n = ? WHERE mid = ? AND channel = ? AND status = ?";
    receipt_counts_of(mid: Uuid) -> (String, String, i64) =
        "SELECT channel, status, n FROM receipt_counts WHERE mid = ?";
    failed_put(month: i32, seq: i64, id: &str, mid: Uuid, uid: &str, device_id: &str,
        channel: &str, reason: &str, permanent: bool, attempts: i32, failed_at: i64) -> () =
        "INSERT INTO failed_deliveries (month, seq, id, mid, uid, device_id, channel, reason, permanent, attempts, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    failed_get(month: i32, seq: i64) -> (String, Uuid, String, String, String, String, bool, i32, i64) =
        "SELECT id, mid, uid, device_id, channel, reason, permanent, attempts, failed_at FROM failed_deliveries WHERE month = ? AND seq = ?";
    failed_in_month(month: i32) -> (i64, String, Uuid, String, String, String, String, bool, i32, i64,) =
        "SELECT seq, id, mid, uid, device_id, channel, reason, permanent, attempts, failed_at FROM failed_deliveries WHERE month = ?";
    failed_delete(month: i32, seq: i64) -> () =
        "DELETE FROM failed_deliveries WHERE month = ? AND seq = ?";
    failed_month_put(scope: i32, month: i32) -> () =
        "INSERT INTO failed_months (scope, month) VALUES (?, ?)";
    failed_months_of(scope: i32) -> (i32,) =
        "SELECT month FROM failed_months WHERE scope = ?";
    failed_id_get(id: &str) -> (i32, i64) =
        "SELECT month, seq FROM failed_by_id WHERE id = ?";
    failed_id_put(id: &str, month: i32, seq: i64) -> () =
        "INSERT INTO failed_by_id (id, month, seq) VALUES (?, ?, ?)";
    failed_id_delete(id: &str) -> () =
        "DELETE FROM failed_by_id WHERE id = ?";

    // Online time.
    online_get(uid: &str) -> (String,) =
        "SELECT record FROM online WHERE uid = ?";
    online_put(uid: &str, record: String) -> () =
        "INSERT INTO online (uid, record) VALUES (?, ?)";
    online_day_get(uid: &str, day: i32) -> (i64,) =
        "SELECT seconds FROM online_days WHERE uid = ? AND day = ?";
    online_day_put(uid: &str, day: i32, seconds: i64) -> () =
        "INSERT INTO online_days (uid, day, seconds) VALUES (?, ?, ?)";
    online_days_of(uid: &str, limit: i32) -> (i32, i64) =
        "SELECT day, seconds FROM online_days WHERE uid = ? LIMIT ?";

    // Experiments.
    experiment_get(id: &str) -> (String,) =
        "SELECT record FROM experiments WHERE id = ?";
    experiment_put(id: &str, record: String) -> () =
        "INSERT INTO experiments (id, record) VALUES (?, ?)";
    experiment_user_get(uid: &str, experiment: &str) -> (String,) =
        "SELECT record FROM experiment_users WHERE uid = ? AND experiment = ?";
    experiment_users_of(uid: &str) -> (String,) =
        "SELECT record FROM experiment_users WHERE uid = ?";
    experiment_user_put(uid: &str, experiment: &str, record: String) -> () =
        "INSERT INTO experiment_users (uid, experiment, record) VALUES (?, ?, ?)";
    experiment_arm_get(experiment: &str, mid: Uuid, arm: &str) -> (String,) =
        "SELECT record FROM experiment_arms WHERE experiment = ? AND mid = ? AND arm = ?";
    experiment_arms_of(experiment: &str) -> (String,) =
        "SELECT record FROM experiment_arms WHERE experiment = ?";
    experiment_arm_put(experiment: &str, mid: Uuid, arm: &str, record: String) -> () =
        "INSERT INTO experiment_arms (experiment, mid, arm, record) VALUES (?, ?, ?, ?)";

    // The funnel report.
    funnel_message_get(mid: Uuid) -> (String,) =
        "SELECT record FROM funnel_messages WHERE mid = ?";
    funnel_message_put(mid: Uuid, record: String) -> () =
        "INSERT INTO funnel_messages (mid, record) VALUES (?, ?)";
    funnel_day_put(day: i32, mid: Uuid) -> () =
        "INSERT INTO funnel_days (day, mid) VALUES (?, ?)";
    funnel_day_of(day: i32) -> (Uuid,) =
        "SELECT mid FROM funnel_days WHERE day = ?";
    funnel_experiment_put(experiment: &str, mid: Uuid) -> () =
        "INSERT INTO funnel_by_experiment (experiment, mid) VALUES (?, ?)";
    funnel_experiment_of(experiment: &str) -> (Uuid,) =
        "SELECT mid FROM funnel_by_experiment WHERE experiment = ?";
    funnel_entry_get(mid: Uuid, uid: &str) -> (String,) =
        "SELECT record FROM funnel_entries WHERE mid = ? AND uid = ?";
    funnel_entry_put(mid: Uuid, uid: &str, record: String) -> () =
        "INSERT INTO funnel_entries (mid, uid, record) VALUES (?, ?, ?)";
    funnel_entries_of(mid: Uuid) -> (String,) =
        "SELECT record FROM funnel_entries WHERE mid = ?";
    funnel_channel_put(mid: Uuid, uid: &str, channel: &str, accepted: bool, variant: Option<&str>) -> () =
        "INSERT INTO funnel_channels (mid, uid, channel, accepted, variant) VALUES (?, ?, ?, ?, ?)";
    funnel_channels_of(mid: Uuid) -> (String, String, bool, Option<String>) =
        "SELECT uid, channel, accepted, variant FROM funnel_channels WHERE mid = ?";

    // Scheduled sends.
    stage_doc_get(kind: &str, id: &str) -> (i64, String) =
        "SELECT ord, body FROM stage_docs WHERE kind = ? AND id = ?";
    stage_docs_of(kind: &str) -> (String, i64, String) =
        "SELECT id, ord, body FROM stage_docs WHERE kind = ?";
    stage_doc_put(kind: &str, id: &str, ord: i64, body: String) -> () =
        "INSERT INTO stage_docs (kind, id, ord, body) VALUES (?, ?, ?, ?)";
    stage_doc_delete(kind: &str, id: &str) -> () =
        "DELETE FROM stage_docs WHERE kind = ? AND id = ?";
    scheduled_get(mid: Uuid) -> (String, i64) =
        "SELECT record, schedule_seq FROM scheduled WHERE mid = ?";
    scheduled_put(mid: Uuid, status: &str, deliver_at: i64, schedule_seq: i64, record: String) -> () =
        "INSERT INTO scheduled (mid, status, deliver_at, schedule_seq, record) VALUES (?, ?, ?, ?, ?)";
    scheduled_pending_put(scope: i32, deliver_at: i64, mid: Uuid, schedule_seq: i64, record: String) -> () =
        "INSERT INTO scheduled_pending (scope, deliver_at, mid, schedule_seq, record) VALUES (?, ?, ?, ?, ?)";
    scheduled_pending_delete(scope: i32, deliver_at: i64, mid: Uuid) -> () =
        "DELETE FROM scheduled_pending WHERE scope = ? AND deliver_at = ? AND mid = ?";
    scheduled_pending_of(scope: i32, limit: i32) -> (String, i64) =
        "SELECT record, schedule_seq FROM scheduled_pending WHERE scope = ? LIMIT ?";
    scheduled_sender_put(sender: &str, deliver_at: i64, mid: Uuid, schedule_seq: i64, record: String) -> () =
        "INSERT INTO scheduled_by_sender (sender, deliver_at, mid, schedule_seq, record) VALUES (?, ?, ?, ?, ?)";
    scheduled_sender_delete(sender: &str, deliver_at: i64, mid: Uuid) -> () =
        "DELETE FROM scheduled_by_sender WHERE sender = ? AND deliver_at = ? AND mid = ?";
    scheduled_of_sender(sender: &str, limit: i32) -> (String, i64) =
        "SELECT record, schedule_seq FROM scheduled_by_sender WHERE sender = ? LIMIT ?";

    // Dispatch outbox.
    outbox_put(shard: i32, seq: i64, n: i32, task: String) -> () =
        "INSERT INTO outbox (shard, seq, n, task) VALUES (?, ?, ?, ?)";
    outbox_in_shard(shard: i32, limit: i32) -> (i64, i32, String) =
        "SELECT seq, n, task FROM outbox WHERE shard = ? LIMIT ?";
    outbox_delete(shard: i32, seq: i64, n: i32) -> () =
        "DELETE FROM outbox WHERE shard = ? AND seq = ? AND n = ?";
}
