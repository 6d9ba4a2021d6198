//! Reaching NATS: connect to `MSGXC_NATS_URL`, reuse the server a running `msgxc serve`
//! recorded in the data dir, or start a supervised nats-server on the data dir.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use exchange::natsd::{self, NatsServer};
use exchange::{EventLog, LogSettings};

/// File in the data dir where `serve` records the URL of the nats-server it manages.
pub const URL_FILE: &str = "nats.url";

/// Connects (retrying for up to 30 s); after the first success the client reconnects on its
/// own, forever.
pub async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let options = async_nats::ConnectOptions::new()
            .name("msgxc")
            .connection_timeout(Duration::from_secs(5));
        // A comma-separated list names several servers of a cluster (any one is enough).
        let servers: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        match options.connect(servers.as_slice()).await {
            Ok(client) => return Ok(client),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(url, error = %e, "NATS not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to NATS at {url}")),
        }
    }
}

/// Opens the event log, retrying while JetStream is still starting.
pub async fn open_log(
    client: async_nats::Client,
    settings: LogSettings,
) -> anyhow::Result<EventLog> {
    let mut last = None;
    for _ in 0..50 {
        match EventLog::open(client.clone(), settings.clone()).await {
            Ok(log) => return Ok(log),
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    match last {
        Some(e) => Err(e).context("JetStream not available (is the server started with -js?)"),
        None => bail!("JetStream not available"),
    }
}

/// Where the supervised server keeps its JetStream data.
pub fn jetstream_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("jetstream")
}

/// Starts a supervised nats-server for `data_dir`. Must be called from the main thread: the
/// child is tied to the lifetime of the thread that spawns it.
pub fn start_managed(
    data_dir: &Path,
    bin: Option<&Path>,
    sync: Option<&str>,
) -> anyhow::Result<NatsServer> {
    let bin = natsd::find_binary(bin)?;
    let version = natsd::check_version(&bin)?;
    let options = natsd::ServerOptions {
        sync: sync.map(str::to_owned),
        monitor_port: None,
    };
    let server = NatsServer::start_with(&bin, &jetstream_dir(data_dir), None, &options)
        .with_context(|| format!("starting {}", bin.display()))?;
    tracing::info!(
        bin = %bin.display(),
        version = %format!("{}.{}.{}", version.0, version.1, version.2),
        url = %server.url(),
        "started nats-server"
    );
    Ok(server)
}

/// The URL recorded by a running `serve` for this data dir, if it still answers.
pub fn recorded_url(data_dir: &Path) -> Option<String> {
    let url = std::fs::read_to_string(data_dir.join(URL_FILE)).ok()?;
    let url = url.trim().to_owned();
    let addr = url.strip_prefix("nats://")?;
    std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    Some(url)
}

pub fn record_url(data_dir: &Path, url: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    std::fs::write(data_dir.join(URL_FILE), format!("{url}\n"))
        .with_context(|| format!("writing {}", data_dir.join(URL_FILE).display()))
}

pub fn forget_url(data_dir: &Path) {
    let _ = std::fs::remove_file(data_dir.join(URL_FILE));
}

/// NATS for a command: the configured URL, else the one `serve` recorded, else a private
/// supervised server on the data dir (returned so it lives as long as the command).
pub fn resolve(
    url: Option<&str>,
    data_dir: &Path,
    bin: Option<&Path>,
    sync: Option<&str>,
) -> anyhow::Result<(String, Option<NatsServer>)> {
    if let Some(u) = url {
        return Ok((u.to_owned(), None));
    }
    if let Some(u) = recorded_url(data_dir) {
        return Ok((u, None));
    }
    let server = start_managed(data_dir, bin, sync)?;
    Ok((server.url(), Some(server)))
}

/// The event log for a one-off command, resolved like [`resolve`]. The returned server (if
/// one had to be started) must live as long as the log is used.
pub async fn log_for_command(
    common: &crate::config::CommonArgs,
) -> anyhow::Result<(EventLog, Option<NatsServer>)> {
    let (url, server) = resolve(
        common.nats_url.as_deref(),
        &common.data_dir,
        common.nats_server_bin.as_deref(),
        common.nats_sync.as_deref(),
    )?;
    let client = connect(&url).await?;
    let log = open_log(client, common.log_settings()).await?;
    Ok((log, server))
}
