//! The scenarios. Each starts its own nats-server in a temporary directory, runs msgxc and its
//! baselines against it in the same run, and reports rows for the table.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, message::PublishMessage};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use exchange::events::{Envelope, Event, MessagePublished, Subscribed, ThreadCreated};
use exchange::natsd::NatsServer;
use exchange::{Actor, EventLog, LogSettings};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use gateway::auth::{JwtKey, JwtVerifier, sign};
use hdrhistogram::Histogram;
use jsonwebtoken::{Algorithm, EncodingKey};
use projections::{SqliteStore, Store};
use serde_json::json;

use super::measure::{cpu_of, cpu_self, histogram, ms, peak_rss_mib, record, reset_peak_rss};
use super::{BenchOptions, Row};
use crate::{ExchangeOptions, Role};

pub(super) const SECRET: &str = "bench-secret-0123456789abcdef-0123456789";
const CONNECTIONS: usize = 64;

/// About 200 bytes of message text.
pub(super) fn text() -> String {
    "benchmark message ".repeat(11)
}

pub(super) struct Server {
    pub(super) nats: NatsServer,
    _dir: tempfile::TempDir,
}

impl Server {
    pub(super) fn start(opts: &BenchOptions) -> anyhow::Result<Self> {
        let bin = exchange::natsd::find_binary(opts.nats_server_bin.as_deref())?;
        let dir = tempfile::tempdir()?;
        let nats = NatsServer::start(&bin, &dir.path().join("js"), None)?;
        Ok(Self { nats, _dir: dir })
    }

    pub(super) fn nats_cpu(&self) -> f64 {
        self.nats.pid().map_or(0.0, cpu_of)
    }
}

/// CPU and memory accounting around one measured run.
pub(super) struct Meter {
    cpu: f64,
    nats_cpu: f64,
}

impl Meter {
    pub(super) fn start(server: &Server) -> Self {
        reset_peak_rss();
        Self {
            cpu: cpu_self(),
            nats_cpu: server.nats_cpu(),
        }
    }

    pub(super) fn row(
        &self,
        server: &Server,
        scenario: &str,
        subject: &str,
        rate: f64,
        h: Option<&Histogram<u64>>,
    ) -> Row {
        Row {
            scenario: scenario.into(),
            subject: subject.into(),
            rate,
            p50_ms: h.map(|h| ms(h, 0.5)),
            p99_ms: h.map(|h| ms(h, 0.99)),
            p999_ms: h.map(|h| ms(h, 0.999)),
            cpu_s: cpu_self() - self.cpu,
            nats_cpu_s: server.nats_cpu() - self.nats_cpu,
            peak_rss_mib: peak_rss_mib(),
            notes: Vec::new(),
        }
    }
}

/// The whole exchange in this process on `server`'s NATS with a SQLite store at `store`, the
/// write limits off (throughput is what is measured).
pub(super) async fn in_process(
    server: &Server,
    store: &std::path::Path,
) -> anyhow::Result<crate::Running> {
    crate::start(ExchangeOptions {
        role: Role::All,
        listen: "127.0.0.1:0".parse()?,
        health_listen: None,
        nats_url: server.nats.url(),
        store: crate::StoreLocation::Sqlite(store.to_path_buf()),
        jwt_key: JwtKey::Secret(SECRET.as_bytes().to_vec()),
        jwt_issuer: None,
        jwt_audience: None,
        log: LogSettings::default(),
        gateway: gateway::GatewayConfig {
            user_write_rate: None,
            ip_write_rate: None,
            socket_frame_rate: None,
            ..Default::default()
        },
        projector: Default::default(),
        channels: Default::default(),
        dispatch: Default::default(),
        stage: Default::default(),
    })
    .await
}

pub(super) fn token() -> anyhow::Result<String> {
    user_token("bench", &["admin".to_owned()])
}

/// An HS256 token for `uid` with `roles`, valid for an hour.
pub(super) fn user_token(uid: &str, roles: &[String]) -> anyhow::Result<String> {
    Ok(sign(
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
        uid,
        roles,
        3600,
        None,
        None,
    )?)
}

/// What an HTTP load measured.
struct LoadResult {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    /// Which generator ran it.
    generator: &'static str,
}

/// POSTs `body` to `url` over 64 keep-alive connections: with `wrk` (a separate process, so
/// the generator does not share this process's runtime) for `seconds` when it is installed,
/// otherwise `total` requests from an in-process reqwest generator.
async fn http_load(
    url: &str,
    token: &str,
    body: Vec<u8>,
    total: usize,
    seconds: u64,
) -> anyhow::Result<LoadResult> {
    if let Some(r) = wrk_load(url, token, &body, seconds).await? {
        return Ok(r);
    }
    let (elapsed, h) = load(url, token, body, total, CONNECTIONS).await?;
    Ok(LoadResult {
        rate: total as f64 / elapsed.as_secs_f64(),
        p50_ms: ms(&h, 0.5),
        p99_ms: ms(&h, 0.99),
        p999_ms: ms(&h, 0.999),
        generator: "in-process reqwest",
    })
}

/// Runs `wrk` when it is on PATH; `None` when it is not.
async fn wrk_load(
    url: &str,
    token: &str,
    body: &[u8],
    seconds: u64,
) -> anyhow::Result<Option<LoadResult>> {
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("post.lua");
    let lua_string = |s: &str| serde_json::to_string(s).unwrap_or_default();
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\n\
             wrk.body = {}\n\
             wrk.headers[\"Content-Type\"] = \"application/json\"\n\
             wrk.headers[\"Authorization\"] = {}\n\
             done = function(summary, latency, requests)\n\
               local e = summary.errors\n\
               io.write(string.format(\"MSGXC-BENCH %d %d %d %d %d %d\\n\", summary.requests,\n\
                 summary.duration, latency:percentile(50), latency:percentile(99),\n\
                 latency:percentile(99.9), e.connect + e.read + e.write + e.status + e.timeout))\n\
             end\n",
            lua_string(&String::from_utf8_lossy(body)),
            lua_string(&format!("Bearer {token}")),
        ),
    )?;
    let output = match tokio::process::Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{seconds}s"),
            "-s",
        ])
        .arg(&script)
        .arg(url)
        .output()
        .await
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("running wrk"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("MSGXC-BENCH "))
        .with_context(|| format!("wrk printed no result: {stdout}"))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let [requests, duration_us, p50, p99, p999, errors] = v[..] else {
        anyhow::bail!("unexpected wrk result: {line}");
    };
    anyhow::ensure!(errors == 0.0, "wrk saw {errors} failed requests");
    Ok(Some(LoadResult {
        rate: requests / (duration_us / 1e6),
        p50_ms: p50 / 1000.0,
        p99_ms: p99 / 1000.0,
        p999_ms: p999 / 1000.0,
        generator: "wrk",
    }))
}

impl LoadResult {
    fn into_row(self, meter: &Meter, server: &Server, subject: &str) -> Row {
        let mut row = meter.row(
            server,
            "ingest",
            &format!("{subject} [{}]", self.generator),
            self.rate,
            None,
        );
        row.p50_ms = Some(self.p50_ms);
        row.p99_ms = Some(self.p99_ms);
        row.p999_ms = Some(self.p999_ms);
        row
    }
}

/// `total` POSTs of `body` to `url` over `conns` keep-alive connections.
async fn load(
    url: &str,
    token: &str,
    body: Vec<u8>,
    total: usize,
    conns: usize,
) -> anyhow::Result<(Duration, Histogram<u64>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(conns);
    for _ in 0..conns {
        let (next, failures) = (next.clone(), failures.clone());
        let (url, auth, body) = (url.to_owned(), format!("Bearer {token}"), body.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()?;
            let mut h = histogram();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let t0 = Instant::now();
                let resp = client
                    .post(&url)
                    .header("authorization", &auth)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        record(&mut h, t0.elapsed());
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            anyhow::Ok(h)
        }));
    }
    let mut all = histogram();
    for t in tasks {
        let h = t.await??;
        all.add(&h).ok();
    }
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        anyhow::bail!("{failed} of {total} requests failed");
    }
    Ok((started.elapsed(), all))
}

/// The HTTP ceiling: verify the JWT and parse the body, store nothing. It checks every token in
/// full, as the baseline does (the gateway remembers verified tokens: part of what
/// msgxc is measured on).
async fn ceiling_handler(
    State(verifier): State<Arc<JwtVerifier>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if verifier.verify_uncached(token).await.is_err() {
        return (StatusCode::UNAUTHORIZED, String::new());
    }
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Publish {
        tid: String,
        msg: String,
    }
    match serde_json::from_slice::<Publish>(&body) {
        Ok(_) => (
            StatusCode::ACCEPTED,
            json!({ "mid": uuid::Uuid::now_v7() }).to_string(),
        ),
        Err(_) => (StatusCode::BAD_REQUEST, String::new()),
    }
}

/// Scenario 1: authenticated publish until acknowledged by JetStream, beside raw JetStream
/// publish-with-ack and a bare HTTP handler.
pub async fn ingest(opts: &BenchOptions) -> anyhow::Result<Vec<Row>> {
    let n = if opts.quick { 20_000 } else { 100_000 };
    // wrk runs by time: long enough for a steady state, short enough for the time budget.
    let seconds = if opts.quick { 4 } else { 15 };
    let server = Server::start(opts)?;
    let token = token()?;
    let msg = text();

    // Baseline 1: raw pipelined JetStream publish with ack (same payload size, message ids).
    let client = async_nats::connect(server.nats.url()).await?;
    let js = jetstream::new(client);
    js.create_stream(jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw".into()],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .context("creating the raw stream")?;
    let payload = Bytes::from(json!({ "tid": uuid::Uuid::now_v7(), "msg": msg }).to_string());
    let meter = Meter::start(&server);
    let started = Instant::now();
    let mut h = histogram();
    let mut inflight = FuturesUnordered::new();
    for _ in 0..n {
        let t0 = Instant::now();
        let ack = js
            .send_publish(
                "bench.raw",
                PublishMessage::build()
                    .payload(payload.clone())
                    .message_id(uuid::Uuid::now_v7().to_string()),
            )
            .await?;
        inflight.push(async move { ack.await.map(|_| t0.elapsed()) });
        if inflight.len() >= 256
            && let Some(r) = inflight.next().await
        {
            record(&mut h, r?);
        }
    }
    while let Some(r) = inflight.next().await {
        record(&mut h, r?);
    }
    let raw_rate = n as f64 / started.elapsed().as_secs_f64();
    let raw = meter.row(
        &server,
        "ingest",
        "raw JetStream publish+ack (pipelined)",
        raw_rate,
        Some(&h),
    );

    // Baseline 2: the HTTP ceiling.
    let verifier = Arc::new(JwtVerifier::new(
        &JwtKey::Secret(SECRET.as_bytes().to_vec()),
        None,
        None,
    )?);
    let app = axum::Router::new()
        .route("/api/v1/publish", axum::routing::post(ceiling_handler))
        .with_state(verifier);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let ceiling_url = format!("http://{}/api/v1/publish", listener.local_addr()?);
    let ceiling_server = tokio::spawn(async move { axum::serve(listener, app).await });
    let body = json!({ "tid": uuid::Uuid::now_v7(), "msg": msg })
        .to_string()
        .into_bytes();
    let meter = Meter::start(&server);
    let result = http_load(&ceiling_url, &token, body, n, seconds).await?;
    let http_rate = result.rate;
    let ceiling = result.into_row(&meter, &server, "bare axum + JWT + JSON (no store)");
    ceiling_server.abort();

    // msgxc: the real exchange (gateway, projector, dispatcher) on the same server.
    let dir = tempfile::tempdir()?;
    let exchange = in_process(&server, &dir.path().join("bench.sqlite3")).await?;
    let base = format!(
        "http://{}/api/v1",
        exchange.addr.context("gateway address")?
    );
    let thread: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/threads"))
        .bearer_auth(&token)
        .json(&json!({ "name": "bench" }))
        .send()
        .await?
        .json()
        .await?;
    let tid = thread["tid"].as_str().context("thread id")?.to_owned();
    let body = json!({ "tid": tid, "msg": msg }).to_string().into_bytes();
    let store = exchange.store.clone();
    let log = exchange.log.clone();
    let first_seq = log.last_seq().await?;
    // Projector lag while the load runs.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (store, log, sampling) = (store.clone(), log.clone(), sampling.clone());
        tokio::spawn(async move {
            let mut max_lag = 0u64;
            while sampling.load(Ordering::Relaxed) {
                if let (Ok(last), Ok(cp)) = (log.last_seq().await, store.checkpoint().await) {
                    max_lag = max_lag.max(last.saturating_sub(cp));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            max_lag
        })
    };
    let meter = Meter::start(&server);
    let started = Instant::now();
    let result = http_load(&format!("{base}/publish"), &token, body, n, seconds).await?;
    let rate = result.rate;
    let mut row = result.into_row(&meter, &server, "msgxc POST /publish (2xx = in JetStream)");
    sampling.store(false, Ordering::Relaxed);
    let max_lag = sampler.await.unwrap_or(0);
    let last = log.last_seq().await?;
    while store.checkpoint().await? < last {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let folded = (last - first_seq) as f64 / started.elapsed().as_secs_f64();
    row.notes
        .push(format!("{:.2} of raw JetStream", rate / raw_rate));
    row.notes
        .push(format!("{:.2} of the HTTP ceiling", rate / http_rate));
    let mut project = meter.row(
        &server,
        "project",
        "projector folding during ingest",
        folded,
        None,
    );
    project.notes.push(format!("max lag {max_lag} events"));
    exchange.shutdown().await;
    Ok(vec![raw, ceiling, row, project])
}

/// Scenario 4 (rebuild part): fold N stored events into a fresh SQLite store, beside the raw
/// rate of an ordered consumer reading the same stream.
pub async fn project(opts: &BenchOptions) -> anyhow::Result<Vec<Row>> {
    let n: u64 = if opts.quick { 100_000 } else { 1_000_000 };
    let server = Server::start(opts)?;
    let client = async_nats::connect(server.nats.url()).await?;
    let log = EventLog::open(client.clone(), LogSettings::default()).await?;
    // A thread with one subscriber and n-2 messages published to it.
    eprintln!("bench: writing {n} events");
    let js = log.jetstream().clone();
    append_all(
        &js,
        thread_events(vec!["reader".into()], n.saturating_sub(2)),
    )
    .await?;

    // Baseline: an ordered consumer reading every event (no decoding, no store).
    let meter = Meter::start(&server);
    let started = Instant::now();
    let stream = js.get_stream(log.stream_name()).await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await?;
    let mut messages = consumer.messages().await?;
    let mut read = 0u64;
    while read < n {
        match messages.next().await {
            Some(Ok(_)) => read += 1,
            Some(Err(e)) => anyhow::bail!("ordered consumer: {e}"),
            None => break,
        }
    }
    let raw_rate = read as f64 / started.elapsed().as_secs_f64();
    let raw = meter.row(
        &server,
        "project",
        "raw ordered consumer read",
        raw_rate,
        None,
    );
    drop(messages);

    // msgxc rebuild into a fresh store.
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(&dir.path().join("rebuild.sqlite3"))?;
    let meter = Meter::start(&server);
    let started = Instant::now();
    let report = projections::rebuild(&log, &store, 2000).await?;
    let rate = report.events as f64 / started.elapsed().as_secs_f64();
    let mut row = meter.row(&server, "project", "msgxc rebuild into SQLite", rate, None);
    row.notes.push(format!("{} events", report.events));
    row.notes
        .push(format!("{:.2} of the raw read", rate / raw_rate));
    anyhow::ensure!(store.checkpoint().await? == n, "rebuild stopped early");
    let mut rows = vec![raw, row];
    drop(server);
    rows.extend(project_fanout(opts).await?);
    Ok(rows)
}

/// Members of the thread in the fan-out projection rows (the fold's goal on Cassandra: 1,000
/// messages/s to 10 recipients each).
const FOLD_MEMBERS: usize = 10;

/// The fold of thread messages that each reach [`FOLD_MEMBERS`] inboxes, rebuilt into SQLite
/// and, with `--store`, into a fresh keyspace on that CQL node: messages/s of each, same stream.
async fn project_fanout(opts: &BenchOptions) -> anyhow::Result<Vec<Row>> {
    let messages: u64 = if opts.quick { 2_000 } else { 10_000 };
    // A stream of its own (on a server of its own: the subjects are the exchange's).
    let server = &Server::start(opts)?;
    let client = async_nats::connect(server.nats.url()).await?;
    let log = EventLog::open(client, LogSettings::default()).await?;
    let members = (0..FOLD_MEMBERS).map(|i| format!("member{i}")).collect();
    let events = 1 + FOLD_MEMBERS as u64 + messages;
    append_all(log.jetstream(), thread_events(members, messages)).await?;

    let mut rows = Vec::new();
    let dir = tempfile::tempdir()?;
    let sqlite = SqliteStore::open(&dir.path().join("fold.sqlite3"))?;
    let (row, sqlite_rate) = fold_row(server, &log, &sqlite, "SQLite", events, messages).await?;
    rows.push(row);
    if let Some(url) = &opts.store {
        let mut config = projections::ScyllaConfig::parse(url)
            .map_err(|e| anyhow::anyhow!("--store {url}: {e}"))?;
        config.keyspace = format!(
            "{}_bench_{}",
            config.keyspace,
            uuid::Uuid::now_v7().simple()
        );
        projections::scylla::migrate(&config).await?;
        let store = projections::ScyllaStore::open(&config).await?;
        let result = fold_row(server, &log, &store, "Cassandra", events, messages).await;
        projections::scylla::drop_keyspace(&config).await?;
        let (mut row, rate) = result?;
        row.notes
            .push(format!("{:.2} of the SQLite fold", rate / sqlite_rate));
        rows.push(row);
    }
    Ok(rows)
}

/// Rebuilds `log` into `store`: the row and its messages/s.
async fn fold_row(
    server: &Server,
    log: &EventLog,
    store: &dyn Store,
    backend: &str,
    events: u64,
    messages: u64,
) -> anyhow::Result<(Row, f64)> {
    let meter = Meter::start(server);
    let started = Instant::now();
    let report = projections::rebuild(log, store, 500).await?;
    let elapsed = started.elapsed().as_secs_f64();
    anyhow::ensure!(report.checkpoint == events, "{backend} fold stopped early");
    let rate = messages as f64 / elapsed;
    let mut row = meter.row(
        server,
        "project",
        &format!("msgxc fold into {backend}, messages to {FOLD_MEMBERS} members"),
        rate,
        None,
    );
    row.notes.push(format!(
        "{messages} messages, {:.0} inbox entries/s",
        rate * FOLD_MEMBERS as f64
    ));
    Ok((row, rate))
}

/// A bench thread's events: created by `owner`, these members subscribed, then `messages`
/// messages from the owner.
fn thread_events(members: Vec<String>, messages: u64) -> impl Iterator<Item = Envelope> {
    let tid = uuid::Uuid::now_v7();
    let owner = Actor {
        uid: "owner".into(),
        roles: vec![],
    };
    let created = Envelope::new(
        owner.clone(),
        Event::ThreadCreated(ThreadCreated {
            tid,
            name: "bench".into(),
            owner: "owner".into(),
            open_subscribe: true,
            open_publish: true,
            alias: None,
        }),
    );
    let subscribed = members.into_iter().map(move |uid| {
        Envelope::new(
            Actor {
                uid: uid.clone(),
                roles: vec![],
            },
            Event::Subscribed(Subscribed { tid, uid }),
        )
    });
    let msg = text();
    let published = (0..messages).map(move |_| {
        Envelope::new(
            owner.clone(),
            Event::MessagePublished(MessagePublished {
                tid,
                sender: "owner".into(),
                msg: msg.clone(),
                opts: Default::default(),
                experiment: None,
            }),
        )
    });
    std::iter::once(created).chain(subscribed).chain(published)
}

/// Appends events straight to the log, 1024 publishes in flight: how the scenarios set up
/// large populations (devices, subscriptions) quickly. Returns how many were written.
pub(super) async fn append_all(
    js: &jetstream::Context,
    events: impl IntoIterator<Item = Envelope>,
) -> anyhow::Result<u64> {
    let mut inflight = FuturesUnordered::new();
    let mut written = 0u64;
    for env in events {
        let ack = js
            .send_publish(
                env.subject(),
                PublishMessage::build()
                    .payload(serde_json::to_vec(&env)?.into())
                    .message_id(env.id.to_string()),
            )
            .await?;
        inflight.push(ack.into_future());
        written += 1;
        if inflight.len() >= 1024
            && let Some(r) = inflight.next().await
        {
            r?;
        }
    }
    while let Some(r) = inflight.next().await {
        r?;
    }
    Ok(written)
}
