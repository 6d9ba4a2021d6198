//! `msgxc`: run the exchange (`serve`), mint tokens, replay the event log, rebuild projections.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use gateway::GatewayConfig;
use msgxc::config::{
    ChannelArgs, CommonArgs, JwtArgs, StoreLocation, parse_duration, store_location,
};
use msgxc::{ExchangeOptions, Role, nats};
use projections::{ProjectorSettings, SqliteStore, Store};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// mimalloc: per-thread free lists without glibc's arena locks. The exchange allocates many
/// short-lived buffers per request and frame on a few threads; profiles of `msgxc bench
/// ingest` spent about a seventh of the server's CPU in glibc's malloc and free.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "msgxc",
    version,
    about = "An event-sourced message exchange on NATS JetStream"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. info or msgxc=debug [default: info for
    /// serve, warn for the other commands].
    #[arg(long, env = "MSGXC_LOG", global = true)]
    log: Option<String>,
    /// Log lines as `text` (for people) or `json` (one object per line, for log pipelines).
    #[arg(
        long,
        env = "MSGXC_LOG_FORMAT",
        global = true,
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the exchange: HTTP/WebSocket gateway, projector and live hub (all in one by default).
    Serve(Box<ServeArgs>),
    /// Print a signed JWT for a user, for trying the API.
    Token(Box<TokenArgs>),
    /// Write events from the log to stdout as NDJSON.
    Replay(ReplayArgs),
    /// Rebuild all read models from the log into a fresh store. Sends nothing to anyone.
    Rebuild(RebuildArgs),
    /// Write the event log to a directory for analysts: Parquet (zstd) or NDJSON, partitioned
    /// by event type and UTC day; a second run continues where the first ended.
    Export(ExportArgs),
    /// Create or upgrade the store's schema: the keyspace and tables of a scylla:// store
    /// (idempotent, records the schema version), or the tables of a SQLite file.
    Migrate(MigrateArgs),
    /// Exit 0 when the gateway at --url answers its ping (container health checks).
    Health(HealthArgs),
    /// Create the Web Push VAPID key in the data dir (kept if it exists) and print its public key.
    Vapid(VapidArgs),
    /// Measure msgxc beside raw JetStream and a bare HTTP handler, in the same run; prints a
    /// Markdown table. Starts its own nats-server; loopback only.
    Bench(BenchArgs),
    /// Our fault suite: the roles as separate processes, killed -9 in turn (gateway, projector,
    /// dispatcher, nats-server) under load; prints what was lost or duplicated. Loopback only;
    /// exits 1 when a guarantee does not hold.
    Fault(FaultArgs),
    /// The live benchmark's baseline server (bare axum WebSocket broadcast); used by `bench`.
    #[command(hide = true)]
    BenchWsBaseline(BenchWsBaselineArgs),
}

/// A parsed `per_second[/burst]` rate (`None`: no limit).
#[derive(Debug, Clone, Copy)]
struct RateArg(Option<gateway::rate::Rate>);

fn parse_compat(s: &str) -> Result<gateway::compat::Compat, String> {
    gateway::compat::Compat::parse(s)
}

fn parse_rate(s: &str) -> Result<RateArg, String> {
    gateway::rate::Rate::parse(s).map(RateArg)
}

#[derive(clap::Args)]
struct HealthArgs {
    /// The gateway's ping URL.
    #[arg(long, default_value = "http://127.0.0.1:8080/api/v1/ping")]
    url: String,
    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(clap::Args)]
struct MigrateArgs {
    /// Directory holding the default SQLite store.
    #[arg(long, env = "MSGXC_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// The store: scylla://host:9042[,host...]/keyspace[?replication_factor=N] (the keyspace
    /// is created with NetworkTopologyStrategy, replication_factor default: the number of
    /// nodes, at most 3), or sqlite://PATH.
    #[arg(long, env = "MSGXC_STORE")]
    store: Option<String>,
}

#[derive(clap::Args)]
struct FaultArgs {
    /// Three rounds of faults with longer gaps (the default is one round, about 30 s).
    #[arg(long)]
    long: bool,
    /// Users, each with an SMS device.
    #[arg(long, default_value_t = 20)]
    users: usize,
    /// nats-server binary (default: MSGXC_NATS_SERVER_BIN, .tools/, then PATH).
    #[arg(long, env = "MSGXC_NATS_SERVER_BIN")]
    nats_server_bin: Option<PathBuf>,
}

#[derive(clap::Args)]
struct BenchWsBaselineArgs {
    #[arg(long)]
    listen: SocketAddr,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Scenarios to run: ingest, fanout, live, room, project (default: all).
    scenarios: Vec<String>,
    /// fanout: devices the broadcast reaches [default: 100000, --quick 20000].
    #[arg(long)]
    devices: Option<u64>,
    /// live: connected WebSocket clients [default: 10000, --quick 2000].
    #[arg(long)]
    sockets: Option<u64>,
    /// live: thread messages per second in total, each to 100 members [default: 200, --quick 40].
    #[arg(long)]
    rate: Option<u64>,
    /// Smaller loads (under two minutes on two cores).
    #[arg(long)]
    quick: bool,
    /// project: also fold into Cassandra/Scylla, in a fresh keyspace `<keyspace>_bench_<id>` on
    /// this node (cassandra://host:9042/keyspace?replication_factor=1), dropped afterwards.
    #[arg(long)]
    store: Option<String>,
    /// nats-server binary (default: the project's .tools dir, then PATH).
    #[arg(long, env = "MSGXC_NATS_SERVER_BIN")]
    nats_server_bin: Option<PathBuf>,
}

#[derive(clap::Args)]
struct VapidArgs {
    /// Directory holding vapid.key.
    #[arg(long, env = "MSGXC_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    jwt: JwtArgs,
    #[command(flatten)]
    channels: ChannelArgs,
    /// HTTP listen address.
    #[arg(long, env = "MSGXC_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Read-model store: sqlite://PATH (default: msgxc.sqlite3 in the data dir) or
    /// scylla://host:9042[,host...]/keyspace[?consistency=..&datacenter=..] (run `msgxc migrate`
    /// first).
    #[arg(long, env = "MSGXC_STORE")]
    store: Option<String>,
    /// Which parts to run in this process.
    #[arg(long, env = "MSGXC_ROLE", value_enum, default_value = "all")]
    role: Role,
    /// Projector and dispatcher roles: answer GET /api/v1/ping on this address (for health
    /// checks; the gateway answers it on --listen).
    #[arg(long, env = "MSGXC_HEALTH_LISTEN")]
    health_listen: Option<SocketAddr>,
    /// Largest request body in bytes (413 above).
    #[arg(long, env = "MSGXC_BODY_LIMIT", default_value_t = 64 * 1024)]
    body_limit: usize,
    /// Largest upload of seed 002's binary content, in bytes (16 MiB).
    #[arg(long, env = "MSGXC_MAX_CONTENT_BYTES", default_value_t = 16 * 1024 * 1024)]
    max_content_bytes: usize,
    /// Most recipients of one multicast (400 above).
    #[arg(long, env = "MSGXC_MAX_RECIPIENTS", default_value_t = 1000)]
    max_recipients: usize,
    /// Private messages one user may send per minute (per gateway process; 0 = unlimited).
    #[arg(long, env = "MSGXC_PRIVATE_MESSAGES_PER_MINUTE", default_value_t = 30)]
    private_messages_per_minute: u32,
    /// Writes (POST, PUT, PATCH, DELETE) one user may make per second on this gateway, as
    /// per_second[/burst] (0 = no limit); admins are not limited.
    #[arg(long, env = "MSGXC_WRITE_RATE", default_value = "50/500", value_parser = parse_rate)]
    write_rate: RateArg,
    /// Writes one client address may make per second on this gateway, per_second[/burst]
    /// (0 = no limit; behind a reverse proxy every client has the proxy's address).
    #[arg(long, env = "MSGXC_IP_WRITE_RATE", default_value = "1000/5000", value_parser = parse_rate)]
    ip_write_rate: RateArg,
    /// Comma-separated origins (scheme://host[:port]) whose pages may call the API across
    /// origins (CORS), or `*` for any. None by default.
    #[arg(long, env = "MSGXC_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Vec<String>,
    /// Frames one WebSocket client may send per second (pings, acks), per_second[/burst];
    /// over it the connection is closed with 1008 (0 = no limit).
    #[arg(long, env = "MSGXC_SOCKET_FRAME_RATE", default_value = "50/200", value_parser = parse_rate)]
    socket_frame_rate: RateArg,
    /// Live connections (WebSocket and SSE) one user may hold open on this gateway.
    #[arg(long, env = "MSGXC_MAX_SOCKETS_PER_USER", default_value_t = 32)]
    max_sockets_per_user: usize,
    /// How long after a message (or an experiment's exposure) a tracked event without a mid
    /// is attributed to it.
    #[arg(long, env = "MSGXC_ATTRIBUTION_WINDOW", default_value = "3d", value_parser = parse_duration)]
    attribution_window: Duration,
    /// Comma-separated origins (scheme://host[:port]) whose pages may open /connect and /stream
    /// with the xsajwt cookie; the gateway's own origin always may. None by default.
    #[arg(long, env = "MSGXC_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,
    /// Longest message text, in characters.
    #[arg(long, env = "MSGXC_MAX_MESSAGE_CHARS", default_value_t = 16 * 1024)]
    max_message_chars: usize,
    /// How long a structural write waits for its projection so the caller reads its own write.
    #[arg(long, env = "MSGXC_READ_YOUR_WRITES", default_value = "5s", value_parser = parse_duration)]
    read_your_writes: Duration,
    /// Longest wait for a request head: a new connection's first bytes, a request's headers,
    /// and an idle kept-alive connection's next request (then the connection is closed).
    #[arg(long, env = "MSGXC_HTTP_HEADER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    http_header_timeout: Duration,
    /// Longest a request body may take to arrive after its headers (408 after that).
    #[arg(long, env = "MSGXC_HTTP_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    http_body_timeout: Duration,
    /// Answer shapes of the seed systems, a comma list: `msgxc` (seed 001's literal `true`,
    /// `Msgxc-Id` and `{"code","msg"}` errors on its routes). Off by default.
    #[arg(long, env = "MSGXC_COMPAT", default_value = "", value_parser = parse_compat)]
    compat: gateway::compat::Compat,
    /// Live frames buffered per WebSocket before a slow client is disconnected.
    #[arg(long, env = "MSGXC_SOCKET_BUFFER", default_value_t = 256)]
    socket_buffer: usize,
    /// WebSocket ping interval; a client silent for three intervals is dropped.
    #[arg(long, env = "MSGXC_PING_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    ping_interval: Duration,
    /// With several projectors on one store one is active; the others take over within this.
    #[arg(long, env = "MSGXC_PROJECTOR_LEASE", default_value = "10s", value_parser = parse_duration)]
    projector_lease: Duration,
    /// Events committed per projector transaction at most.
    #[arg(long, env = "MSGXC_PROJECTOR_BATCH", default_value_t = 512)]
    projector_batch: usize,
    /// Under load, how long a projector batch waits for more events (group commit; 0 = never).
    #[arg(long, env = "MSGXC_PROJECTOR_LINGER", default_value = "10ms", value_parser = parse_duration)]
    projector_linger: Duration,
    /// Events older than this when projected push no live frames (catch-up after downtime).
    #[arg(long, env = "MSGXC_LIVE_HORIZON", default_value = "5m", value_parser = parse_duration)]
    live_horizon: Duration,
    /// Messages older than this when projected are not delivered to devices (a re-projected
    /// store does not re-send history). Keep it below MSGXC_DEDUP_WINDOW.
    #[arg(long, env = "MSGXC_DISPATCH_HORIZON", default_value = "12h", value_parser = parse_duration)]
    dispatch_horizon: Duration,
}

#[derive(clap::Args)]
struct TokenArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    jwt: JwtArgs,
    /// The user id (`sub` claim).
    #[arg(long)]
    sub: String,
    /// Add the admin role.
    #[arg(long)]
    admin: bool,
    /// Extra roles (repeatable).
    #[arg(long = "role")]
    roles: Vec<String>,
    /// Lifetime, e.g. 1h, 30m, 7d.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    ttl: Duration,
}

#[derive(clap::Args)]
struct ReplayArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Start at this stream sequence.
    #[arg(long, conflicts_with = "since")]
    from_seq: Option<u64>,
    /// Start at the first event stored at or after this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only events on this subject (wildcards allowed), e.g. 'msgxc.ev.thread.>'.
    #[arg(long)]
    subject: Option<String>,
}

#[derive(clap::Args)]
struct ExportArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// File format.
    #[arg(long, value_enum, default_value = "parquet")]
    format: msgxc::export::Format,
    /// Output directory (created; holds `_export.json`, where the next run continues).
    #[arg(long)]
    out: PathBuf,
    /// Start at this stream sequence instead of after the last exported one.
    #[arg(long, conflicts_with = "since")]
    from_seq: Option<u64>,
    /// Start at the first event stored at or after this RFC 3339 time (events the directory
    /// holds already are not written again).
    #[arg(long)]
    since: Option<String>,
    /// Only events on this subject (wildcards allowed), e.g. 'msgxc.ev.message.>'.
    #[arg(long)]
    subject: Option<String>,
}

#[derive(clap::Args)]
struct RebuildArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The new store: a SQLite file that must not exist, or scylla://host:9042/keyspace (a new
    /// or empty keyspace; created and migrated here). Default: rebuild-<time>.sqlite3 in the
    /// data dir.
    #[arg(long)]
    into: Option<String>,
    /// Events read per chunk; one transaction folds the chunks read by the time it starts, up
    /// to four.
    #[arg(long, default_value_t = 2000)]
    batch: usize,
}

/// glibc's malloc still serves the C libraries (SQLite, OpenSSL; Rust code uses mimalloc). It
/// gives every thread that allocates its own arena (up to 8 per core), and memory freed into an
/// idle arena stays resident. A server whose memory is mostly many small per-connection
/// buffers keeps far less resident with two (measured by `msgxc bench live`).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve(_)) {
        limit_malloc_arenas();
    }
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    // Blocking work is mostly SQLite reads on a handful of connections: more threads than that
    // only wait on locks, and each idle thread holds stack and allocator memory.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(32)
        .thread_keep_alive(Duration::from_secs(2))
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("msgxc: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let filter =
        tracing_subscriber::EnvFilter::try_new(cli.log.as_deref().unwrap_or(default_level))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // The log filter applies to the log lines only: spans are exported (when configured)
    // whatever the log level.
    let (text, json) = match cli.log_format {
        LogFormat::Text => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            ),
        ),
    };
    let otel = if matches!(cli.command, Command::Serve(_)) {
        match msgxc::otel::layer(runtime.handle().clone()) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("msgxc: OpenTelemetry export: {e:#}");
                return std::process::ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let (otel, provider) = otel.unzip();
    tracing_subscriber::registry()
        .with(text)
        .with(json)
        .with(otel)
        .init();
    // block_on keeps the command on the main thread, which the managed nats-server's lifetime
    // is tied to.
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(a) => serve(*a).await,
            Command::Token(a) => token(*a),
            Command::Replay(a) => replay(a).await,
            Command::Rebuild(a) => rebuild(a).await,
            Command::Export(a) => export(a).await,
            Command::Vapid(a) => vapid(a),
            Command::Migrate(a) => migrate(a).await,
            Command::Health(a) => health(a).await,
            Command::Bench(a) => {
                msgxc::bench::run(msgxc::bench::BenchOptions {
                    scenarios: a.scenarios,
                    quick: a.quick,
                    nats_server_bin: a.nats_server_bin,
                    devices: a.devices,
                    sockets: a.sockets,
                    rate: a.rate,
                    store: a.store,
                })
                .await
            }
            Command::Fault(a) => {
                let counts = msgxc::fault::run(msgxc::fault::FaultOptions {
                    long: a.long,
                    users: a.users.max(1),
                    nats_server_bin: a.nats_server_bin,
                })
                .await?;
                if !counts.holds() {
                    anyhow::bail!("a guarantee did not hold (see the table)");
                }
                Ok(())
            }
            Command::BenchWsBaseline(a) => msgxc::bench::serve_ws_baseline(a.listen).await,
        }
    });
    if let Some(provider) = provider
        && let Err(e) = provider.shutdown()
    {
        eprintln!("msgxc: OpenTelemetry export at exit: {e}");
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("msgxc: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let data_dir = a.common.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let jwt_key = a.jwt.key(&data_dir)?;
    let (nats_url, mut managed) = match &a.common.nats_url {
        Some(u) => (u.clone(), None),
        None => {
            let server = nats::start_managed(
                &data_dir,
                a.common.nats_server_bin.as_deref(),
                a.common.nats_sync.as_deref(),
            )?;
            nats::record_url(&data_dir, &server.url())?;
            (server.url(), Some(server))
        }
    };
    let opts = ExchangeOptions {
        role: a.role,
        listen: a.listen,
        health_listen: a.health_listen,
        nats_url,
        store: store_location(a.store.as_deref(), &data_dir)?,
        jwt_key,
        jwt_issuer: a.jwt.jwt_issuer.clone(),
        jwt_audience: a.jwt.jwt_audience.clone(),
        log: a.common.log_settings(),
        gateway: GatewayConfig {
            body_limit: a.body_limit,
            max_content_bytes: a.max_content_bytes,
            max_recipients: a.max_recipients,
            max_message_chars: a.max_message_chars,
            read_your_writes: a.read_your_writes,
            socket_buffer: a.socket_buffer,
            ping_interval: a.ping_interval,
            channels: Vec::new(),
            webpush_allowed_hosts: a.channels.webpush_allowed_hosts.clone(),
            vapid_public_key: None,
            private_messages_per_minute: a.private_messages_per_minute,
            user_write_rate: a.write_rate.0,
            ip_write_rate: a.ip_write_rate.0,
            max_sockets_per_user: a.max_sockets_per_user.max(1),
            socket_frame_rate: a.socket_frame_rate.0,
            attribution_window: a.attribution_window,
            links: None,
            header_timeout: a.http_header_timeout.max(Duration::from_millis(100)),
            body_timeout: a.http_body_timeout.max(Duration::from_millis(100)),
            compat: a.compat,
            cors_origins: a
                .cors_origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|o| !o.is_empty())
                .collect(),
            allowed_origins: a
                .allowed_origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|o| !o.is_empty())
                .collect(),
            jwt_leeway: a.jwt.jwt_leeway,
            jwt_max_lifetime: a.jwt.jwt_max_lifetime,
        },
        projector: ProjectorSettings {
            batch: a.projector_batch.max(1),
            live_horizon: a.live_horizon,
            live: true,
            dispatch_horizon: a.dispatch_horizon,
            lease_ttl: a.projector_lease,
            topic_tasks: false, // set from the channel configuration at start
            replicas: 1,        // set from the stream's at start
            linger: a.projector_linger,
        },
        channels: a.channels.settings(&data_dir)?,
        dispatch: a.channels.dispatch(),
        stage: Default::default(),
    };
    let store_display = opts.store.to_string();
    let mut running = msgxc::start(opts).await?;
    if let Some(addr) = running.addr {
        tracing::info!(api = %format!("http://{addr}/api/v1"), store = %store_display, "msgxc is up");
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.signal_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(10), running.wait()).await;
    running.shutdown().await;
    if let Some(server) = managed.as_mut() {
        server.stop();
        nats::forget_url(&data_dir);
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn token(a: TokenArgs) -> anyhow::Result<()> {
    let key = a.jwt.key(&a.common.data_dir)?;
    let private = a
        .jwt
        .jwt_private_key
        .as_ref()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    let (encoding, algorithm) = gateway::auth::encoding_key(&key, private.as_deref())?;
    let mut roles = a.roles.clone();
    if a.admin && !roles.iter().any(|r| r == "admin") {
        roles.push("admin".into());
    }
    if a.sub.is_empty() {
        bail!("--sub must not be empty");
    }
    let token = gateway::auth::sign(
        &encoding,
        algorithm,
        &a.sub,
        &roles,
        a.ttl.as_secs().max(1),
        a.jwt.jwt_issuer.as_deref(),
        a.jwt.jwt_audience.as_deref(),
    )?;
    println!("{token}");
    Ok(())
}

async fn replay(a: ReplayArgs) -> anyhow::Result<()> {
    let start = match (&a.from_seq, &a.since) {
        (Some(s), _) => exchange::Start::Sequence(*s),
        (None, Some(t)) => exchange::Start::Time(
            OffsetDateTime::parse(t, &Rfc3339)
                .with_context(|| format!("--since {t:?} is not an RFC 3339 time"))?,
        ),
        (None, None) => exchange::Start::Beginning,
    };
    let (log, _server) = nats::log_for_command(&a.common).await?;
    let last = log.last_seq().await?;
    if last == 0 || matches!(start, exchange::Start::Sequence(s) if s > last) {
        return Ok(());
    }
    // A time or subject filter may match nothing: bound the wait by the stream's pending count.
    let events = log.read(start, a.subject.clone(), last).await?;
    let mut events = std::pin::pin!(events);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let idle = Duration::from_secs(2);
    loop {
        match tokio::time::timeout(idle, events.next()).await {
            Ok(Some(Ok(stored))) => {
                let mut line = serde_json::to_value(&stored.envelope)?;
                line["seq"] = stored.seq.into();
                serde_json::to_writer(&mut out, &line)?;
                out.write_all(b"\n")?;
            }
            Ok(Some(Err(e))) => return Err(e.into()),
            // Nothing more within the idle window: a filtered read has reached the end.
            Ok(None) | Err(_) => break,
        }
    }
    out.flush()?;
    Ok(())
}

async fn export(a: ExportArgs) -> anyhow::Result<()> {
    let (log, _server) = nats::log_for_command(&a.common).await?;
    let summary = msgxc::export::export(
        &log,
        &msgxc::export::ExportOptions {
            format: a.format,
            out: a.out.clone(),
            from_seq: a.from_seq,
            since: a
                .since
                .as_deref()
                .map(|t| {
                    OffsetDateTime::parse(t, &Rfc3339)
                        .with_context(|| format!("--since {t:?} is not an RFC 3339 time"))
                })
                .transpose()?,
            subject: a.subject,
            progress: true,
        },
    )
    .await?;
    println!(
        "{} events in {} files into {}; exported up to sequence {}",
        summary.events,
        summary.files,
        a.out.display(),
        summary.last_seq
    );
    Ok(())
}

async fn rebuild(a: RebuildArgs) -> anyhow::Result<()> {
    let into = match a.into.as_deref() {
        Some(s) => store_location(Some(s), &a.common.data_dir)?,
        None => {
            let stamp = OffsetDateTime::now_utc().unix_timestamp();
            StoreLocation::Sqlite(a.common.data_dir.join(format!("rebuild-{stamp}.sqlite3")))
        }
    };
    let (log, _server) = nats::log_for_command(&a.common).await?;
    let store: Arc<dyn Store> = match &into {
        StoreLocation::Sqlite(path) => {
            if path.exists() {
                bail!("{} exists; rebuild writes a fresh store", path.display());
            }
            Arc::new(SqliteStore::open(path)?)
        }
        StoreLocation::Scylla(config) => {
            projections::scylla::migrate(config).await?;
            let store = projections::ScyllaStore::open(config).await?;
            let checkpoint = store.checkpoint().await?;
            if checkpoint > 0 {
                bail!(
                    "keyspace {} already holds a projection (checkpoint {checkpoint}); \
                     rebuild writes a fresh store",
                    config.keyspace
                );
            }
            Arc::new(store)
        }
    };
    let started = std::time::Instant::now();
    let report = projections::rebuild(&log, store.as_ref(), a.batch).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "rebuilt {} events into {into} (checkpoint {}) in {:.2}s ({:.0} events/s)",
        report.events,
        store.checkpoint().await?,
        secs,
        report.events as f64 / secs.max(1e-9)
    );
    println!("to use it: stop msgxc serve, then run it with MSGXC_STORE={into}");
    Ok(())
}

async fn health(a: HealthArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().timeout(a.timeout).build()?;
    let r = http
        .get(&a.url)
        .send()
        .await
        .with_context(|| format!("GET {}", a.url))?;
    if !r.status().is_success() {
        bail!("GET {}: {}", a.url, r.status());
    }
    Ok(())
}

async fn migrate(a: MigrateArgs) -> anyhow::Result<()> {
    match store_location(a.store.as_deref(), &a.data_dir)? {
        StoreLocation::Sqlite(path) => {
            SqliteStore::open(&path)
                .with_context(|| format!("opening store {}", path.display()))?;
            println!("sqlite://{}: schema is current", path.display());
        }
        StoreLocation::Scylla(config) => {
            let version = projections::scylla::migrate(&config).await?;
            let recorded = projections::scylla::recorded_versions(&config).await?;
            println!(
                "scylla://{}/{}: schema version {version} applied (recorded: {})",
                config.nodes.join(","),
                config.keyspace,
                recorded
                    .iter()
                    .map(i32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(())
}

fn vapid(a: VapidArgs) -> anyhow::Result<()> {
    let key = msgxc::config::vapid_key(&a.data_dir, true)?
        .ok_or_else(|| anyhow::anyhow!("no VAPID key"))?;
    let public =
        exchange::channels::webpush::vapid_public_key(&key).map_err(|e| anyhow::anyhow!(e))?;
    eprintln!(
        "VAPID key in {}; set MSGXC_WEBPUSH_SUBJECT (mailto: or https:) to turn Web Push on",
        a.data_dir.join(msgxc::config::VAPID_FILE).display()
    );
    println!("{public}");
    Ok(())
}
