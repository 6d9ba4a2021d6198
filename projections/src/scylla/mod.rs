//! ScyllaDB / Cassandra backend of [`Store`]: the read models in the tables of `schema/cql/`,
//! for read sides that outgrow one machine (`MSGXC_STORE=scylla://h1:9042,h2:9042/keyspace`).
//!
//! Cassandra has no multi-partition transactions, so a batch is made replay-safe instead of
//! atomic: every write is an idempotent upsert keyed by the event (stream position, ids), each
//! row and the counts it moves go in one logged batch, counts are absolute values (read, then
//! written) so only the lease-holding projector writes, and the checkpoint moves after the
//! batch with a compare-and-set. A crash mid-batch re-applies those events onto rows that
//! already hold them, which the fold's "already there" checks turn into no-ops.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::frame::types::{Consistency, SerialConsistency};
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::policies::timestamp_generator::MonotonicTimestampGenerator;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;
use time::OffsetDateTime;
use uuid::Uuid;

use exchange::dispatch::{Directory, DispatchTask};

mod exec;
#[cfg(feature = "cql-memory")]
pub mod memory;
mod reads;
mod statements;
mod target;

use exec::FromRow;
pub use exec::{Cql, Row, Values};

use statements::{Bound, Prepared};
pub use statements::{MIGRATION_GET, MIGRATION_PUT, STATEMENTS, StatementSpec, Stmt};

use crate::fold::{Effects, apply_event};
use crate::model::{
    ArmCounts, Device, ExperimentRecord, FailedDelivery, FunnelEntry, FunnelMessage, FunnelScope,
    HistoryQuery, InboxCounts, InboxQuery, InboxStats, Notification, NotificationType,
    OnlineRecord, Page, Receipt, ScheduledMessage, StageDoc, StoredMessage, Thread, ThreadMessage,
};
use crate::store::{
    Applied, ApplyOptions, ReceiptCounts, SequencedEvent, Store, StoreError, StoreResult,
};

/// The files of `schema/cql/`, in order, with the schema version each brings. A change to the
/// tables is a new file here (idempotent statements), never an edit of an applied one.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../../schema/cql/0001_tables.cql")),
    (2, include_str!("../../../schema/cql/0002_user_threads.cql")),
    (3, include_str!("../../../schema/cql/0003_scheduled.cql")),
    (4, include_str!("../../../schema/cql/0004_experiments.cql")),
    (5, include_str!("../../../schema/cql/0005_online.cql")),
    (6, include_str!("../../../schema/cql/0006_funnel.cql")),
    (7, include_str!("../../../schema/cql/0007_stage.cql")),
    (
        8,
        include_str!("../../../schema/cql/0008_device_counts.cql"),
    ),
];

/// The schema version this build needs: the last of [`MIGRATIONS`].
pub const SCHEMA_VERSION: i32 = 8;

/// The `projection_state` row of this store.
const STATE: &str = "main";

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Where the cluster is and how to talk to it, from
/// `scylla://[user:password@]host[:port][,host[:port]...]/keyspace[?option=value&...]`.
/// Options: `consistency` (default `local_quorum`), `datacenter` (prefer this DC's nodes),
/// `replication_factor` (for `msgxc migrate`; default the number of nodes, at most 3), `tls`
/// (`true`: TLS, nodes verified against the system's CA certificates) and `ca` (a PEM file of
/// the CA that signed the nodes' certificates; implies `tls`), `page_size` (rows per page of a
/// multi-row read; default the driver's 5,000).
#[derive(Clone)]
pub struct ScyllaConfig {
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub credentials: Option<(String, String)>,
    pub consistency: Consistency,
    pub datacenter: Option<String>,
    pub replication_factor: Option<u32>,
    pub tls: Option<Tls>,
    pub page_size: Option<i32>,
}

/// How connections to the nodes are encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// Verify the nodes against the system's CA certificates.
    SystemRoots,
    /// Verify the nodes against this CA certificate (PEM).
    Ca(std::path::PathBuf),
}

impl Tls {
    /// The OpenSSL context the driver wraps each connection in. Node certificates are verified
    /// against the CA; host names are not (nodes are addressed by the IPs the cluster
    /// advertises, as with every CQL driver).
    pub fn context(&self) -> Result<openssl::ssl::SslContext, String> {
        use openssl::ssl::{SslContextBuilder, SslMethod, SslVerifyMode};
        let mut b =
            SslContextBuilder::new(SslMethod::tls_client()).map_err(|e| format!("TLS: {e}"))?;
        match self {
            Tls::SystemRoots => b
                .set_default_verify_paths()
                .map_err(|e| format!("TLS: system CA certificates: {e}"))?,
            Tls::Ca(path) => {
                if !path.is_file() {
                    return Err(format!("TLS: no CA file {}", path.display()));
                }
                b.set_ca_file(path)
                    .map_err(|e| format!("TLS: CA file {}: {e}", path.display()))?
            }
        }
        b.set_verify(SslVerifyMode::PEER);
        Ok(b.build())
    }
}

impl std::fmt::Debug for ScyllaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaConfig")
            .field("nodes", &self.nodes)
            .field("keyspace", &self.keyspace)
            .field("user", &self.credentials.as_ref().map(|c| &c.0))
            .field("consistency", &self.consistency)
            .field("datacenter", &self.datacenter)
            .field("replication_factor", &self.replication_factor)
            .field("tls", &self.tls)
            .field("page_size", &self.page_size)
            .finish()
    }
}

impl ScyllaConfig {
    /// Parses a `scylla://` (or `cassandra://`) store URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("scylla://")
            .or_else(|| url.strip_prefix("cassandra://"))
            .ok_or_else(|| format!("{url:?}: expected scylla://host:9042/keyspace"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, keyspace) = rest.split_once('/').ok_or_else(|| {
            "the store URL needs a keyspace: scylla://host:9042/keyspace".to_owned()
        })?;
        let (credentials, hosts) = match authority.rsplit_once('@') {
            Some((cred, hosts)) => {
                let (user, pass) = cred.split_once(':').ok_or_else(|| {
                    "credentials in the store URL must be user:password@".to_owned()
                })?;
                (Some((user.to_owned(), pass.to_owned())), hosts)
            }
            None => (None, authority),
        };
        let nodes: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| {
                if h.rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                {
                    h.to_owned()
                } else {
                    format!("{h}:9042")
                }
            })
            .collect();
        if nodes.is_empty() {
            return Err("the store URL names no host: scylla://host:9042/keyspace".into());
        }
        let valid = !keyspace.is_empty()
            && keyspace.len() <= 48
            && keyspace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && keyspace.starts_with(|c: char| c.is_ascii_alphabetic());
        if !valid {
            return Err(format!(
                "keyspace {keyspace:?}: letters, digits and _, starting with a letter, at most 48"
            ));
        }
        let mut config = Self {
            nodes,
            keyspace: keyspace.to_owned(),
            credentials,
            consistency: Consistency::LocalQuorum,
            datacenter: None,
            replication_factor: None,
            tls: None,
            page_size: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "consistency" => config.consistency = parse_consistency(v)?,
                "datacenter" | "dc" if !v.is_empty() => config.datacenter = Some(v.to_owned()),
                "tls" => match v {
                    "true" | "1" => config.tls = config.tls.take().or(Some(Tls::SystemRoots)),
                    "false" | "0" => config.tls = None,
                    _ => return Err(format!("tls={v}: true or false")),
                },
                "ca" if !v.is_empty() => config.tls = Some(Tls::Ca(v.into())),
                "replication_factor" => {
                    let n: u32 = v
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("replication_factor={v}: a positive number"))?;
                    config.replication_factor = Some(n);
                }
                "page_size" => {
                    let n: i32 = v
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("page_size={v}: a positive number"))?;
                    config.page_size = Some(n);
                }
                _ => return Err(format!("unknown store URL option {k:?}")),
            }
        }
        Ok(config)
    }
}

fn parse_consistency(v: &str) -> Result<Consistency, String> {
    Ok(match v.to_ascii_lowercase().as_str() {
        "one" => Consistency::One,
        "two" => Consistency::Two,
        "three" => Consistency::Three,
        "quorum" => Consistency::Quorum,
        "all" => Consistency::All,
        "local_quorum" => Consistency::LocalQuorum,
        "each_quorum" => Consistency::EachQuorum,
        "local_one" => Consistency::LocalOne,
        _ => {
            return Err(format!(
                "consistency={v}: one of one, two, three, quorum, all, local_quorum, each_quorum, local_one"
            ));
        }
    })
}

async fn connect(config: &ScyllaConfig, keyspace: bool) -> Result<Session, String> {
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &config.datacenter {
        policy = policy
            .prefer_datacenter(dc.clone())
            .permit_dc_failover(false);
    }
    let profile = ExecutionProfile::builder()
        .consistency(config.consistency)
        .serial_consistency(Some(SerialConsistency::LocalSerial))
        .load_balancing_policy(policy.build())
        .request_timeout(Some(Duration::from_secs(15)))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&config.nodes)
        .default_execution_profile_handle(profile.into_handle())
        // Client-side, monotonic write timestamps: a delete issued after an insert of the same
        // row always wins, whichever coordinators the two went through.
        .timestamp_generator(Arc::new(MonotonicTimestampGenerator::new()))
        .connection_timeout(Duration::from_secs(10));
    if let Some((user, pass)) = &config.credentials {
        builder = builder.user(user, pass);
    }
    if let Some(tls) = &config.tls {
        builder = builder.tls_context(Some(tls.context()?));
    }
    if keyspace {
        builder = builder.use_keyspace(&config.keyspace, false);
    }
    builder.build().await.map_err(|e| {
        format!(
            "connecting to Scylla/Cassandra at {}: {e}",
            config.nodes.join(",")
        )
    })
}

/// The statements of a CQL file, comments dropped (none of ours has a `;` inside a literal).
pub fn schema_statements(cql: &str) -> Vec<String> {
    let text: String = cql
        .lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .collect()
}

/// Creates the keyspace (if missing) and applies the [`MIGRATIONS`] it lacks; idempotent.
/// Returns the schema version now recorded.
pub async fn migrate(config: &ScyllaConfig) -> StoreResult<i32> {
    let session = connect(config, false).await.map_err(StoreError::Backend)?;
    let rf = match config.replication_factor {
        Some(n) => n,
        None => {
            let nodes = session.get_cluster_state().get_nodes_info().len();
            u32::try_from(nodes.clamp(1, 3)).unwrap_or(3)
        }
    };
    let create = format!(
        "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = \
         {{'class': 'NetworkTopologyStrategy', 'replication_factor': {rf}}}",
        config.keyspace
    );
    // ScyllaDB: lightweight transactions (alias uniqueness, the checkpoint fence) are not
    // supported in keyspaces with tablets, which recent versions enable by default. Cassandra
    // does not know the option and refuses it: then the plain statement.
    let without_tablets = format!("{create} AND tablets = {{'enabled': false}}");
    if let Err(scylla_form) = session.query_unpaged(without_tablets, ()).await {
        session.query_unpaged(create, ()).await.map_err(|e| {
            backend(format!(
                "creating keyspace {}: {e} (with tablets disabled: {scylla_form})",
                config.keyspace
            ))
        })?;
    }
    session
        .use_keyspace(&config.keyspace, false)
        .await
        .map_err(backend)?;
    for (version, cql) in MIGRATIONS {
        // The first file creates schema_migrations itself, so it is always (re)applied.
        if *version > 1 && applied(&session, *version).await? {
            continue;
        }
        for statement in schema_statements(cql) {
            session
                .query_unpaged(statement.clone(), ())
                .await
                .map_err(|e| backend(format!("applying `{statement}`: {e}")))?;
        }
        session.await_schema_agreement().await.map_err(backend)?;
        if *version == 8 {
            count_devices(&session).await?;
        }
        session
            .query_unpaged(
                statements::MIGRATION_PUT.cql,
                (*version, ns(OffsetDateTime::now_utc())),
            )
            .await
            .map_err(backend)?;
    }
    tracing::info!(keyspace = %config.keyspace, replication_factor = rf, version = SCHEMA_VERSION, "schema applied");
    Ok(SCHEMA_VERSION)
}

/// Version 8: counts the devices a keyspace holds per channel (one pass over `devices`, paged;
/// run by `msgxc migrate` with the projectors stopped). The counts are written whole, so a
/// migration interrupted and run again writes the same.
async fn count_devices(session: &scylla::client::session::Session) -> StoreResult<()> {
    use futures::TryStreamExt;
    let mut counts: std::collections::BTreeMap<String, i64> = Default::default();
    let mut rows = session
        .query_iter("SELECT address FROM devices", ())
        .await
        .map_err(backend)?
        .rows_stream::<(String,)>()
        .map_err(backend)?;
    while let Some((address,)) = rows.try_next().await.map_err(backend)? {
        let address: exchange::events::DeviceAddress = serde_json::from_str(&address)
            .map_err(|e| StoreError::Corrupt(format!("device address: {e}")))?;
        *counts.entry(address.channel().to_owned()).or_default() += 1;
    }
    for (channel, n) in counts {
        session
            .query_unpaged(
                "INSERT INTO device_counts (bucket, channel, n) VALUES (0, ?, ?)",
                (channel, n),
            )
            .await
            .map_err(backend)?;
    }
    Ok(())
}

/// The schema versions recorded in a keyspace (`msgxc migrate` prints them), oldest first.
pub async fn recorded_versions(config: &ScyllaConfig) -> StoreResult<Vec<i32>> {
    let session = connect(config, false).await.map_err(StoreError::Backend)?;
    session
        .use_keyspace(&config.keyspace, false)
        .await
        .map_err(backend)?;
    let mut out = Vec::new();
    for (version, _) in MIGRATIONS {
        if applied(&session, *version).await? {
            out.push(*version);
        }
    }
    Ok(out)
}

/// Whether a schema version is recorded in the session's keyspace.
async fn applied(session: &Session, version: i32) -> StoreResult<bool> {
    Ok(session
        .query_unpaged(statements::MIGRATION_GET.cql, (version,))
        .await
        .map_err(backend)?
        .into_rows_result()
        .map_err(backend)?
        .rows_num()
        > 0)
}

/// Drops the keyspace and everything in it (test clean-up; no command exposes it).
pub async fn drop_keyspace(config: &ScyllaConfig) -> StoreResult<()> {
    let session = connect(config, false).await.map_err(StoreError::Backend)?;
    session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", config.keyspace), ())
        .await
        .map(drop)
        .map_err(backend)
}

/// Prepares one statement; a failure names it, since it means the schema is not what this
/// build expects.
pub(crate) async fn prepare(
    session: &Session,
    name: &str,
    cql: &str,
    page_size: Option<i32>,
) -> StoreResult<PreparedStatement> {
    let mut p = session.prepare(cql).await.map_err(|e| {
        StoreError::Backend(format!(
            "preparing statement {name} failed ({e}); is the keyspace's schema current? run `msgxc migrate`"
        ))
    })?;
    // Everything but the compare-and-set statements is an upsert or delete of fixed values:
    // safe for the driver to retry.
    p.set_is_idempotent(!cql.contains(" IF "));
    if let Some(n) = page_size {
        p.set_page_size(n);
    }
    Ok(p)
}

/// Scylla store. Cheap to clone.
#[derive(Clone)]
pub struct ScyllaStore {
    inner: Arc<Inner>,
}

struct Inner {
    cql: Arc<dyn Cql>,
    q: Prepared,
    keyspace: String,
    /// One batch at a time from this process (the lease keeps other processes out).
    apply_lock: tokio::sync::Mutex<()>,
    /// Users the keyspace is known to hold (users are never removed), so the fold need not
    /// read the users table for every event of the same actor.
    pub(crate) known_users: KnownKeys,
    /// `(uid, month)` rows of `inbox_months` known to be written (never removed), so the fold
    /// writes each once rather than with every entry; remembered only once the batch that
    /// wrote them succeeded.
    pub(crate) known_months: KnownKeys,
    /// Where the driver's connections run (none over the in-process stand-in).
    io: Option<IoRuntime>,
}

/// A bounded set of keys known to be written (rows the fold never removes).
#[derive(Default)]
pub(crate) struct KnownKeys(std::sync::Mutex<std::collections::HashSet<String>>);

impl KnownKeys {
    /// Keys kept before the set starts over (a miss only costs one read or write).
    const CAPACITY: usize = 1 << 20;

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.0.lock().is_ok_and(|s| s.contains(key))
    }

    pub(crate) fn remember(&self, key: &str) {
        if let Ok(mut s) = self.0.lock() {
            if s.len() >= Self::CAPACITY {
                s.clear();
            }
            s.insert(key.to_owned());
        }
    }
}

/// Bytes of bound values above which a group's logged batch is split: Cassandra refuses a
/// batch spanning partitions above `batch_size_fail_threshold` (50 KiB by default), and a
/// recipient's batch carries the message up to three times (entry, change frame, task).
const BATCH_BUDGET: usize = 24 * 1024;

/// Tables whose rows carry a message's payload. They may land ahead of the rest of their
/// group: each is an idempotent upsert keyed by the event that a replay rewrites identically,
/// and whether the group happened is decided by the rows that stay in the logged batch (the
/// entry's by-id row, the counts), so a crash in between only makes the replay write them
/// again. A reader may see such an entry in a listing a moment before the counts include it.
const PAYLOAD_TABLES: [&str; 3] = ["inbox", "inbox_changes", "outbox"];

/// `(sent ahead, logged batch)` of a group's writes: all in the batch unless it is over
/// [`BATCH_BUDGET`].
fn split_large_batch<'a>(
    writes: Vec<statements::Bound<'a, ()>>,
) -> (
    Vec<statements::Bound<'a, ()>>,
    Vec<statements::Bound<'a, ()>>,
) {
    let size: usize = writes.iter().map(|w| values_size(&w.values)).sum();
    if size <= BATCH_BUDGET {
        return (Vec::new(), writes);
    }
    writes
        .into_iter()
        .partition(|w| PAYLOAD_TABLES.contains(&w.statement.table))
}

/// Bytes of bound values up to which independent groups (the recipients of one message) share
/// a logged batch: one request instead of one per recipient, under the size at which
/// Cassandra logs a warning per batch (`batch_size_warn_threshold`, 5 KiB by default).
const COALESCE_BUDGET: usize = 4 * 1024;

/// Independent groups of writes, as fewer batches: consecutive groups joined while their
/// values stay within [`COALESCE_BUDGET`] (a group is never split; one larger than the budget
/// stays alone). Each group's writes stay in one logged batch, so it still lands whole.
fn coalesce<'a>(
    groups: Vec<Vec<statements::Bound<'a, ()>>>,
) -> Vec<Vec<statements::Bound<'a, ()>>> {
    let mut out: Vec<Vec<statements::Bound<'a, ()>>> = Vec::new();
    let mut size = 0;
    for g in groups {
        let n: usize = g.iter().map(|w| values_size(&w.values)).sum();
        match out.last_mut() {
            Some(last) if size + n <= COALESCE_BUDGET => {
                last.extend(g);
                size += n;
            }
            _ => {
                out.push(g);
                size = n;
            }
        }
    }
    out
}

/// About how many bytes a statement's values take on the wire.
fn values_size(values: &[Option<CqlValue>]) -> usize {
    values
        .iter()
        .map(|v| match v {
            Some(CqlValue::Text(t)) | Some(CqlValue::Ascii(t)) => t.len(),
            Some(CqlValue::Blob(b)) => b.len(),
            _ => 16,
        })
        .sum()
}

/// The runtime that owns a store's driver connections, on a thread of its own.
///
/// The fold is synchronous and waits on each statement from a blocking thread. Were the
/// connections' tasks on the caller's runtime, a runtime shutting down (end of `serve`, end
/// of a test) would wait for that blocking fold while no longer driving the I/O it waits on:
/// a hang. On this runtime the fold in progress completes whatever the caller's runtime does.
struct IoRuntime {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl IoRuntime {
    fn start() -> StoreResult<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| backend(format!("CQL I/O runtime: {e}")))?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("msgxc-cql-io".into())
            .spawn(move || {
                // Drives the connections until the store is dropped (the sender goes).
                rt.block_on(async {
                    let _ = stopped.await;
                });
                rt.shutdown_background();
            })
            .map_err(|e| backend(format!("CQL I/O thread: {e}")))?;
        Ok(Self {
            handle,
            _stop: stop,
        })
    }
}

impl ScyllaStore {
    /// Connects to the keyspace, checks its schema version and prepares every statement.
    pub async fn open(config: &ScyllaConfig) -> StoreResult<Self> {
        let io = IoRuntime::start()?;
        let session = {
            let config = config.clone();
            io.handle
                .spawn(async move { connect(&config, true).await })
                .await
                .map_err(backend)?
        }
        .map_err(|e| {
            StoreError::Backend(format!(
                "{e} (keyspace {}: `msgxc migrate` creates it)",
                config.keyspace
            ))
        })?;
        let current = applied(&session, SCHEMA_VERSION).await.map_err(|e| {
            backend(format!(
                "reading the schema version of keyspace {}: {e}; run `msgxc migrate`",
                config.keyspace
            ))
        })?;
        if !current {
            return Err(StoreError::Backend(format!(
                "keyspace {} lacks schema version {SCHEMA_VERSION}: run `msgxc migrate`",
                config.keyspace
            )));
        }
        let q = Prepared::prepare(&session, config.page_size).await?;
        Self::start(
            Arc::new(exec::Driver(session)),
            q,
            &config.keyspace,
            Some(io),
        )
        .await
    }

    /// The store over an endpoint whose schema is current.
    async fn start(
        cql: Arc<dyn Cql>,
        q: Prepared,
        keyspace: &str,
        io: Option<IoRuntime>,
    ) -> StoreResult<Self> {
        let store = Self {
            inner: Arc::new(Inner {
                cql,
                q,
                keyspace: keyspace.to_owned(),
                apply_lock: tokio::sync::Mutex::new(()),
                known_users: KnownKeys::default(),
                known_months: KnownKeys::default(),
                io,
            }),
        };
        store
            .lwt(store.q().state_init(STATE, Uuid::now_v7(), 0))
            .await?;
        Ok(store)
    }

    /// A store over [`memory::MemoryCql`], an in-process stand-in for a CQL node with the
    /// tables of `schema/cql/`: runs the backend's own statements and logic where no node is
    /// reachable (the conformance suite), never the driver or the wire protocol.
    #[cfg(feature = "cql-memory")]
    pub async fn in_memory() -> StoreResult<Self> {
        Self::on_memory(Arc::new(memory::MemoryCql::new(
            MIGRATIONS.iter().map(|m| m.1),
        )?))
        .await
    }

    /// A store over a given [`memory::MemoryCql`] (a test keeps it to inject failures).
    #[cfg(feature = "cql-memory")]
    pub async fn on_memory(cql: Arc<memory::MemoryCql>) -> StoreResult<Self> {
        Self::start(cql, Prepared::unprepared(), "memory", None).await
    }

    pub fn keyspace(&self) -> &str {
        &self.inner.keyspace
    }

    fn q(&self) -> &Prepared {
        &self.inner.q
    }

    async fn exec(&self, b: Bound<'_, ()>) -> StoreResult<()> {
        self.inner.cql.run(b.statement, b.values).await.map(drop)
    }

    /// Writes that must land together (a row and the counts it moves): one logged batch.
    async fn write_all(&self, writes: Vec<Bound<'_, ()>>) -> StoreResult<()> {
        match writes.len() {
            0 => Ok(()),
            1 => {
                let mut writes = writes;
                match writes.pop() {
                    Some(w) => self.exec(w).await,
                    None => Ok(()),
                }
            }
            _ => {
                let (ahead, writes) = split_large_batch(writes);
                futures::future::try_join_all(ahead.into_iter().map(|w| self.exec(w))).await?;
                if writes.is_empty() {
                    return Ok(());
                }
                let writes = writes
                    .into_iter()
                    .map(|w| (w.statement, w.values))
                    .collect();
                self.inner.cql.batch(writes).await
            }
        }
    }

    /// A compare-and-set; true when it applied.
    async fn lwt(&self, b: Bound<'_, ()>) -> StoreResult<bool> {
        let rows = self.inner.cql.run(b.statement, b.values).await?;
        match rows.first().and_then(|r| r.first()) {
            Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
            other => Err(StoreError::Backend(format!(
                "conditional write: unexpected [applied] {other:?}"
            ))),
        }
    }

    /// The first row, if any.
    async fn one<R: FromRow>(&self, b: Bound<'_, R>) -> StoreResult<Option<R>> {
        let mut first = None;
        self.inner
            .cql
            .scan(b.statement, b.values, &mut |r| {
                first = Some(r);
                Ok(false)
            })
            .await?;
        first.map(R::from_row).transpose()
    }

    /// Every row, fetched page by page (the driver's paging state), handed to `keep` until it
    /// returns false or an error (which the scan returns).
    async fn scan<R: FromRow>(
        &self,
        b: Bound<'_, R>,
        mut keep: impl FnMut(R) -> StoreResult<bool> + Send,
    ) -> StoreResult<()> {
        self.inner
            .cql
            .scan(b.statement, b.values, &mut |r| keep(R::from_row(r)?))
            .await
    }

    async fn all<R: FromRow>(&self, b: Bound<'_, R>) -> StoreResult<Vec<R>> {
        let rows = self.inner.cql.run(b.statement, b.values).await?;
        rows.into_iter().map(R::from_row).collect()
    }

    async fn state(&self) -> StoreResult<(Uuid, u64)> {
        match self.one(self.q().state_get(STATE)).await? {
            Some((Some(id), checkpoint)) => Ok((id, checkpoint.unwrap_or(0).max(0) as u64)),
            _ => Err(StoreError::Corrupt(
                "projection_state has no row: reopen the store".into(),
            )),
        }
    }
}

/// Nanoseconds since the epoch (see the schema's header).
pub(crate) fn ns(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

pub(crate) fn from_ns(n: i64) -> StoreResult<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(n))
        .map_err(|e| StoreError::Corrupt(format!("time {n}: {e}")))
}

/// The month bucket of an instant: yyyymm.
pub(crate) fn month(t: OffsetDateTime) -> i32 {
    t.year() * 100 + i32::from(u8::from(t.month()))
}

pub(crate) fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

pub(crate) fn count(n: Option<i64>) -> u64 {
    n.unwrap_or(0).max(0) as u64
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(s: &str) -> StoreResult<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("json {s}: {e}")))
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(backend)
}

#[async_trait]
impl Store for ScyllaStore {
    async fn store_id(&self) -> StoreResult<String> {
        Ok(self.state().await?.0.to_string())
    }

    async fn checkpoint(&self) -> StoreResult<u64> {
        Ok(self.state().await?.1)
    }

    async fn apply(&self, batch: Vec<SequencedEvent>, opts: ApplyOptions) -> StoreResult<Applied> {
        let _one_at_a_time = self.inner.apply_lock.lock().await;
        let start = self.checkpoint().await?;
        let store = self.clone();
        let rt = match &self.inner.io {
            Some(io) => io.handle.clone(),
            None => tokio::runtime::Handle::current(),
        };
        // The fold is synchronous; it runs on a blocking thread and waits on each statement.
        let out = tokio::task::spawn_blocking(move || {
            let mut tx = target::ScyllaTx::new(&store, &rt);
            let mut out = Applied {
                checkpoint: start,
                ..Applied::default()
            };
            for ev in &batch {
                if ev.seq <= out.checkpoint {
                    continue;
                }
                let at = ev.envelope.occurred_at;
                let effects = Effects {
                    live: opts.live_since.is_some_and(|since| at >= since),
                    dispatch: opts.dispatch_since.is_some_and(|since| at >= since),
                    topic_tasks: opts.topic_tasks,
                    trace: ev.trace,
                };
                tx.begin_event(ev.seq);
                apply_event(&mut tx, ev.seq, &ev.envelope, effects, &mut out.notices)?;
                tx.end_event()?;
                out.checkpoint = ev.seq;
                out.applied += 1;
            }
            Ok::<_, StoreError>((out, tx.months_written()))
        })
        .await
        .map_err(backend)??;
        let (mut out, months) = out;
        if out.checkpoint != start {
            let moved = self
                .lwt(
                    self.q()
                        .state_advance(seq_i64(out.checkpoint), STATE, seq_i64(start)),
                )
                .await?;
            if !moved {
                out.notices.clear();
                return Err(StoreError::Backend(format!(
                    "the checkpoint moved from {start} while this batch was applied: \
                     another projector writes this keyspace"
                )));
            }
        }
        for key in months {
            self.inner.known_months.remember(&key);
        }
        Ok(out)
    }

    async fn thread(&self, tid: Uuid) -> StoreResult<Option<Thread>> {
        self.thread_by_id(tid).await
    }

    async fn is_subscribed(&self, tid: Uuid, uid: &str) -> StoreResult<bool> {
        Ok(self.one(self.q().subscriber_get(tid, uid)).await?.is_some())
    }

    async fn user_threads(&self, uid: &str) -> StoreResult<Vec<Uuid>> {
        Ok(self
            .all(self.q().user_threads_of(uid))
            .await?
            .into_iter()
            .map(|(tid,)| tid)
            .collect())
    }

    async fn user_exists(&self, uid: &str) -> StoreResult<bool> {
        Ok(self
            .one(self.q().user_get(target::user_bucket(uid), uid))
            .await?
            .is_some())
    }

    async fn thread_messages(
        &self,
        tid: Uuid,
        query: &HistoryQuery,
    ) -> StoreResult<Page<ThreadMessage>> {
        self.history(tid, query).await
    }

    async fn thread_by_alias(&self, alias: &str) -> StoreResult<Option<Thread>> {
        match self.one(self.q().alias_get(alias)).await? {
            Some((tid,)) => self.thread_by_id(tid).await,
            None => Ok(None),
        }
    }

    async fn devices(&self, uid: &str) -> StoreResult<Vec<Device>> {
        self.devices_of(uid).await
    }

    async fn devices_per_channel(&self) -> StoreResult<Vec<(String, u64)>> {
        let mut out: Vec<(String, u64)> = self
            .all(self.q().device_counts_all(0))
            .await?
            .into_iter()
            .filter_map(|(channel, n)| {
                let n = u64::try_from(n.unwrap_or(0)).unwrap_or(0);
                (n > 0).then_some((channel, n))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    async fn inbox(&self, uid: &str, query: &InboxQuery) -> StoreResult<Page<Notification>> {
        Ok(self.inbox_page(uid, query).await?.0)
    }

    async fn inbox_snapshot(
        &self,
        uid: &str,
        query: &InboxQuery,
    ) -> StoreResult<(Page<Notification>, u64)> {
        self.inbox_page(uid, query).await
    }

    async fn inbox_stats(&self, uid: &str) -> StoreResult<InboxStats> {
        self.stats(uid).await
    }

    async fn blocks(&self, uid: &str) -> StoreResult<Vec<String>> {
        let mut out: Vec<String> = self
            .all(self.q().blocks_of(uid))
            .await?
            .into_iter()
            .map(|(b,)| b)
            .collect();
        out.sort();
        Ok(out)
    }

    async fn is_blocked(&self, uid: &str, sender: &str) -> StoreResult<bool> {
        Ok(self.one(self.q().block_get(uid, sender)).await?.is_some())
    }

    async fn changes_after(
        &self,
        uid: &str,
        after: crate::fold::Position,
        limit: u32,
    ) -> StoreResult<Vec<(crate::fold::Position, String)>> {
        self.feed_after(uid, after, limit).await
    }

    async fn types(&self) -> StoreResult<Vec<NotificationType>> {
        let rows = self.all(self.q().types_of(target::TYPES_SCOPE)).await?;
        let mut out = rows
            .into_iter()
            .map(|(name, title, description, at)| {
                Ok(NotificationType {
                    name,
                    title,
                    description,
                    registered_at: from_ns(at)?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn notifications(&self, uid: &str, ids: &[Uuid]) -> StoreResult<Vec<Notification>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(n) = self.notification(uid, *id).await? {
                out.push(n);
            }
        }
        Ok(out)
    }

    async fn inbox_counts(&self, uid: &str) -> StoreResult<InboxCounts> {
        let row = self.one(self.q().counts_get(uid)).await?;
        Ok(row.map_or_else(InboxCounts::default, |r| InboxCounts {
            total: count(r.0),
            unread: count(r.1),
        }))
    }

    async fn outbox(&self, limit: usize) -> StoreResult<Vec<(i64, DispatchTask)>> {
        self.outbox_page(limit).await
    }

    async fn outbox_done(&self, ids: Vec<i64>) -> StoreResult<()> {
        let deletes = ids.into_iter().map(|id| {
            let (shard, seq, n) = target::outbox_key(id);
            self.exec(self.q().outbox_delete(shard, seq, n))
        });
        futures::future::try_join_all(deletes).await.map(drop)
    }

    async fn message(&self, mid: Uuid) -> StoreResult<Option<StoredMessage>> {
        self.message_by_id(mid).await
    }

    async fn receipts(&self, mid: Uuid, limit: u32, offset: u64) -> StoreResult<Page<Receipt>> {
        self.receipts_page(mid, limit, offset).await
    }

    async fn receipt_counts(&self, mid: Uuid) -> StoreResult<ReceiptCounts> {
        let mut rows: ReceiptCounts = self
            .all(self.q().receipt_counts_of(mid))
            .await?
            .into_iter()
            .filter(|r| r.2 > 0)
            .map(|(c, s, n)| (c, s, n as u64))
            .collect();
        rows.sort();
        Ok(rows)
    }

    async fn failed_deliveries(
        &self,
        limit: u32,
        offset: u64,
    ) -> StoreResult<Page<FailedDelivery>> {
        self.failed_page(limit, offset).await
    }

    async fn failed_delivery(&self, id: &str) -> StoreResult<Option<FailedDelivery>> {
        self.failed_by_id(id).await
    }

    async fn preferences(&self, uid: &str) -> StoreResult<exchange::events::Preferences> {
        target::preferences_of(self.one(self.q().prefs_get(uid)).await?)
    }

    async fn online(&self, uid: &str) -> StoreResult<Option<OnlineRecord>> {
        self.one(self.q().online_get(uid))
            .await?
            .map(|(r,)| parse_json(&r))
            .transpose()
    }

    async fn online_days(&self, uid: &str, limit: u32) -> StoreResult<Vec<(i32, u64)>> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows: Vec<(i32, i64)> = self.all(self.q().online_days_of(uid, limit)).await?;
        Ok(rows
            .into_iter()
            .map(|(d, s)| (d, u64::try_from(s).unwrap_or(0)))
            .collect())
    }

    async fn experiment(&self, id: &str) -> StoreResult<Option<ExperimentRecord>> {
        self.one(self.q().experiment_get(id))
            .await?
            .map(|(r,)| parse_json(&r))
            .transpose()
    }

    async fn experiment_arms(&self, id: &str) -> StoreResult<Vec<ArmCounts>> {
        let rows: Vec<(String,)> = self.all(self.q().experiment_arms_of(id)).await?;
        let rows = rows
            .iter()
            .map(|(r,)| parse_json(r))
            .collect::<StoreResult<Vec<ArmCounts>>>()?;
        Ok(crate::model::sum_arms(rows))
    }

    async fn funnel_message(&self, mid: Uuid) -> StoreResult<Option<FunnelMessage>> {
        self.one(self.q().funnel_message_get(mid))
            .await?
            .map(|(r,)| parse_json(&r))
            .transpose()
    }

    async fn funnel_messages(&self, scope: &FunnelScope) -> StoreResult<Vec<FunnelMessage>> {
        let mids: Vec<Uuid> = match scope {
            FunnelScope::Experiment(id) => self
                .all(self.q().funnel_experiment_of(id))
                .await?
                .into_iter()
                .map(|(m,)| m)
                .collect(),
            FunnelScope::Days { first, last } => {
                let mut out = Vec::new();
                for day in *first..=*last {
                    let rows: Vec<(Uuid,)> = self.all(self.q().funnel_day_of(day)).await?;
                    out.extend(rows.into_iter().map(|(m,)| m));
                }
                out
            }
        };
        let mut out = Vec::with_capacity(mids.len());
        for mid in mids {
            if let Some(m) = self.funnel_message(mid).await? {
                out.push(m);
            }
        }
        Ok(out)
    }

    async fn funnel_entries(&self, mid: Uuid) -> StoreResult<Vec<FunnelEntry>> {
        let steps: Vec<(String,)> = self.all(self.q().funnel_entries_of(mid)).await?;
        let mut by_uid = std::collections::BTreeMap::new();
        for (r,) in &steps {
            let e: FunnelEntry = parse_json(r)?;
            by_uid.insert(e.uid.clone(), e);
        }
        let channels: Vec<(String, String, bool, Option<String>)> =
            self.all(self.q().funnel_channels_of(mid)).await?;
        for (uid, channel, accepted, variant) in channels {
            by_uid
                .entry(uid.clone())
                .or_insert_with(|| FunnelEntry::new(mid, &uid, variant))
                .dispatched(&channel, accepted);
        }
        Ok(by_uid.into_values().collect())
    }

    async fn stage_doc(&self, kind: &str, id: &str) -> StoreResult<Option<StageDoc>> {
        Ok(self
            .one(self.q().stage_doc_get(kind, id))
            .await?
            .map(|(ord, body)| StageDoc {
                kind: kind.to_owned(),
                id: id.to_owned(),
                ord,
                body,
            }))
    }

    async fn stage_docs(
        &self,
        kind: &str,
        limit: u32,
        offset: u32,
    ) -> StoreResult<(u64, Vec<StageDoc>)> {
        let rows = self.all(self.q().stage_docs_of(kind)).await?;
        let docs = target::stage_docs_sorted(kind, rows);
        let total = docs.len() as u64;
        let page = docs
            .into_iter()
            .skip(offset as usize)
            .take(limit.max(1) as usize)
            .collect();
        Ok((total, page))
    }

    async fn scheduled_message(&self, mid: Uuid) -> StoreResult<Option<ScheduledMessage>> {
        self.one(self.q().scheduled_get(mid))
            .await?
            .map(|(record, seq)| target::scheduled_of(&record, seq))
            .transpose()
    }

    async fn scheduled_messages(
        &self,
        sender: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<ScheduledMessage>> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows = match sender {
            Some(s) => self.all(self.q().scheduled_of_sender(s, limit)).await?,
            None => {
                self.all(
                    self.q()
                        .scheduled_pending_of(target::SCHEDULED_SCOPE, limit),
                )
                .await?
            }
        };
        rows.into_iter()
            .map(|(record, seq)| target::scheduled_of(&record, seq))
            .collect()
    }
}

#[async_trait]
impl Directory for ScyllaStore {
    async fn devices(
        &self,
        uid: &str,
    ) -> Result<Vec<(String, exchange::events::DeviceAddress)>, String> {
        crate::store::directory::devices(self, uid).await
    }

    async fn preferences(&self, uid: &str) -> Result<exchange::events::Preferences, String> {
        crate::store::directory::preferences(self, uid).await
    }

    async fn seen_live(&self, mid: Uuid, uid: &str) -> Result<bool, String> {
        let row = self
            .one(self.q().receipt_get(mid, uid, "websocket"))
            .await
            .map_err(|e| e.to_string())?;
        Ok(row.is_some_and(|(status, _, _)| matches!(status.as_str(), "delivered" | "opened")))
    }

    async fn is_read(&self, mid: Uuid, uid: &str) -> Result<bool, String> {
        crate::store::directory::is_read(self, mid, uid).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        let c = ScyllaConfig::parse("scylla://a:9042,b/msgxc").unwrap();
        assert_eq!(c.nodes, ["a:9042", "b:9042"]);
        assert_eq!(c.keyspace, "msgxc");
        assert_eq!(c.consistency, Consistency::LocalQuorum);
        let c = ScyllaConfig::parse(
            "cassandra://u:p@h:9000/ks_1?consistency=quorum&datacenter=eu&replication_factor=3",
        )
        .unwrap();
        assert_eq!(c.credentials, Some(("u".into(), "p".into())));
        assert_eq!(c.nodes, ["h:9000"]);
        assert_eq!(c.consistency, Consistency::Quorum);
        assert_eq!(c.datacenter.as_deref(), Some("eu"));
        assert_eq!(c.replication_factor, Some(3));
        assert!(!format!("{c:?}").contains(":p"), "no password in logs");
        assert_eq!(c.tls, None);
        let c = ScyllaConfig::parse("scylla://h/ks?tls=true").unwrap();
        assert_eq!(c.tls, Some(Tls::SystemRoots));
        let c = ScyllaConfig::parse("scylla://h/ks?ca=/etc/ca.pem").unwrap();
        assert_eq!(c.tls, Some(Tls::Ca("/etc/ca.pem".into())));
        for bad in [
            "scylla://h",
            "scylla:///ks",
            "scylla://h/1ks",
            "scylla://h/ks;drop",
            "scylla://h/ks?consistency=most",
            "scylla://h/ks?replication_factor=0",
            "scylla://h/ks?what=1",
            "scylla://h/ks?tls=maybe",
            "postgres://h/ks",
        ] {
            assert!(ScyllaConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn schema_statements_split() {
        let s = schema_statements(
            "-- a; comment\nCREATE TABLE x (\n a int -- note\n);\n\nCREATE TABLE y (b int);",
        );
        assert_eq!(s, ["CREATE TABLE x ( a int )", "CREATE TABLE y (b int)"]);
    }

    #[test]
    fn months_and_times() {
        let t = time::macros::datetime!(2026-11-22 10:00:00.123456789 UTC);
        assert_eq!(month(t), 202611);
        assert_eq!(from_ns(ns(t)).unwrap(), t);
    }
}

#[cfg(test)]
mod migration_tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_and_end_at_the_schema_version() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.0).collect();
        assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
        for (_, cql) in MIGRATIONS {
            for statement in schema_statements(cql) {
                assert!(
                    statement.contains("IF NOT EXISTS") || statement.contains("IF EXISTS"),
                    "not idempotent: {statement}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;

    #[test]
    fn tls_contexts_build_or_say_why_not() {
        assert!(Tls::SystemRoots.context().is_ok());
        let err = Tls::Ca("/nonexistent/ca.pem".into()).context().unwrap_err();
        assert!(err.contains("no CA file"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("ca.pem");
        std::fs::write(&bad, "not a certificate").unwrap();
        assert!(Tls::Ca(bad).context().is_err());
    }
}
