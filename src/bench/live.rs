//! Scenario 3, live: W WebSocket clients, each a user in one of W/100 threads of 100 members;
//! thread messages published at a fixed total rate; end-to-end latency from the publish
//! request to the frame, frames per second, server CPU per frame and server memory per idle
//! connection. Scenario `room` is the same with one thread of 1,000 members at 20 msg/s.
//!
//! Both servers run in their own process (this binary): `msgxc serve`, and the baseline, a bare
//! axum WebSocket broadcast endpoint with no auth and no persistence (`msgxc
//! bench-ws-baseline`, hidden). Clients and the publisher run here, the same for both.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use exchange::events::{Envelope, Event, Subscribed, ThreadCreated};
use exchange::{Actor, EventLog, LogSettings};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite;

use super::child::ServeProcess;
use super::measure::{histogram, ms};
use super::scenarios::{SECRET, Server, append_all, user_token};
use super::{BenchOptions, Row};

/// Members per thread in `live`.
const MEMBERS: u64 = 100;
/// Members of the one thread in `room`, and its messages per second.
const ROOM_MEMBERS: u64 = 1_000;
const ROOM_RATE: u64 = 20;
/// Marker in the message text before the publish time (µs since the run's base instant).
const STAMP: &str = "lat:";

/// What the clients measured.
struct Received {
    base: Instant,
    frames: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

impl Received {
    fn new(base: Instant) -> Arc<Self> {
        Arc::new(Self {
            base,
            frames: AtomicU64::new(0),
            latency: Mutex::new(histogram()),
        })
    }

    /// Records a frame carrying a publish stamp (frames without one, such as hello, are ignored).
    fn frame(&self, text: &str) {
        let Some(at) = text.find(STAMP) else { return };
        let digits: String = text[at + STAMP.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let Ok(sent_us) = digits.parse::<u64>() else {
            return;
        };
        let now_us = self.base.elapsed().as_micros() as u64;
        self.frames.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut h) = self.latency.lock() {
            let _ = h.record(now_us.saturating_sub(sent_us).clamp(1, 60_000_000));
        }
    }
}

/// A message text of about 200 bytes stamped with the current time.
fn stamped(base: Instant) -> String {
    let mut s = format!("{STAMP}{} ", base.elapsed().as_micros());
    s.push_str(&"live benchmark ".repeat(12));
    s
}

/// Opens `urls.len()` WebSocket clients (100 handshakes at a time); each counts stamped frames
/// until the returned tasks are aborted.
async fn connect_all(
    urls: Vec<String>,
    received: Arc<Received>,
) -> anyhow::Result<tokio::task::JoinSet<()>> {
    let mut set = tokio::task::JoinSet::new();
    let mut handshakes = futures::stream::iter(urls)
        .map(|url| async move { tokio_tungstenite::connect_async(url).await })
        .buffer_unordered(100);
    while let Some(result) = handshakes.next().await {
        let (mut ws, _) = result.context("WebSocket handshake")?;
        let received = received.clone();
        set.spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if let tungstenite::Message::Text(t) = m {
                    received.frame(t.as_str());
                }
            }
        });
    }
    Ok(set)
}

/// Publishes `total` stamped messages at `rate` per second, open loop (each request on its own
/// task so a slow answer does not delay the schedule); `post(i, text)` builds request `i`.
async fn publish_at_rate<F>(total: u64, rate: u64, base: Instant, post: F) -> anyhow::Result<u64>
where
    F: Fn(u64, String) -> reqwest::RequestBuilder,
{
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        tokio::time::sleep_until(started + Duration::from_micros(i * 1_000_000 / rate.max(1)))
            .await;
        let request = post(i, stamped(base));
        tasks
            .spawn(async move { matches!(request.send().await, Ok(r) if r.status().is_success()) });
    }
    let mut failed = 0;
    while let Some(ok) = tasks.join_next().await {
        if !matches!(ok, Ok(true)) {
            failed += 1;
        }
    }
    Ok(failed)
}

/// Waits until `expected` frames arrived or nothing arrived for five seconds.
async fn drain(received: &Received, expected: u64) {
    let mut last = received.frames.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while last < expected && quiet_since.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = received.frames.load(Ordering::Relaxed);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
}

/// Raises the open-file limit to its hard maximum (each client is a socket).
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

struct Load {
    scenario: &'static str,
    members: u64,
    sockets: u64,
    threads: u64,
    rate: u64,
    messages: u64,
}

/// One measured run against a server process: connect, settle, measure idle memory, publish,
/// drain. `url(i)` is client i's WebSocket URL, `post(i, text)` message i's request.
async fn measure<U, P>(
    server: &ServeProcess,
    nats: Option<&Server>,
    load: &Load,
    subject: &str,
    url: U,
    post: P,
) -> anyhow::Result<Row>
where
    U: Fn(u64) -> String,
    P: Fn(u64, String) -> reqwest::RequestBuilder,
{
    let base = Instant::now();
    let received = Received::new(base);
    let rss_before = server.rss_mib();
    let clients = connect_all((0..load.sockets).map(url).collect(), received.clone()).await?;
    // Settle: handshake-time helpers (blocking-pool threads, idle for 2 s in `serve`) wind
    // down first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_idle = server.rss_mib();
    let per_socket_kib = (rss_idle - rss_before) * 1024.0 / load.sockets as f64;

    let cpu0 = server.cpu();
    let nats0 = nats.map_or(0.0, Server::nats_cpu);
    let started = Instant::now();
    let failed = publish_at_rate(load.messages, load.rate, base, post).await?;
    let expected = (load.messages - failed) * load.members.min(load.sockets);
    drain(&received, expected).await;
    let elapsed = started.elapsed();
    let frames = received.frames.load(Ordering::Relaxed);
    let h = received
        .latency
        .lock()
        .map_err(|_| anyhow::anyhow!("latency histogram poisoned"))?
        .clone();
    let cpu_s = server.cpu() - cpu0;
    let mut row = Row {
        scenario: load.scenario.into(),
        subject: subject.into(),
        rate: frames as f64 / elapsed.as_secs_f64(),
        p50_ms: Some(ms(&h, 0.5)),
        p99_ms: Some(ms(&h, 0.99)),
        p999_ms: Some(ms(&h, 0.999)),
        cpu_s,
        nats_cpu_s: nats.map_or(0.0, |n| n.nats_cpu() - nats0),
        peak_rss_mib: server.peak_rss_mib(),
        notes: Vec::new(),
    };
    row.notes.push(format!(
        "{} sockets, {} threads of {}, {} msg/s; {frames} of {expected} frames",
        load.sockets, load.threads, load.members, load.rate
    ));
    if frames > 0 {
        row.notes.push(format!(
            "{:.1} µs server CPU per frame",
            cpu_s * 1e6 / frames as f64
        ));
    }
    if failed > 0 {
        row.notes.push(format!("{failed} publishes failed"));
    }
    row.notes
        .push(format!("{per_socket_kib:.1} KiB RSS per idle socket"));
    drop(clients);
    Ok(row)
}

pub async fn live(opts: &BenchOptions) -> anyhow::Result<Vec<Row>> {
    let sockets = opts
        .sockets
        .unwrap_or(if opts.quick { 2_000 } else { 10_000 })
        .max(1);
    let rate = opts
        .rate
        .unwrap_or(if opts.quick { 40 } else { 200 })
        .max(1);
    run(opts, "live", MEMBERS, sockets, rate).await
}

/// One thread of 1,000 members, each on a WebSocket, 20 messages/s (20,000 frames/s).
pub async fn room(opts: &BenchOptions) -> anyhow::Result<Vec<Row>> {
    run(opts, "room", ROOM_MEMBERS, ROOM_MEMBERS, ROOM_RATE).await
}

async fn run(
    opts: &BenchOptions,
    scenario: &'static str,
    members: u64,
    sockets: u64,
    rate: u64,
) -> anyhow::Result<Vec<Row>> {
    raise_fd_limit();
    let seconds = if opts.quick { 10 } else { 30 };
    let load = Load {
        scenario,
        members,
        sockets,
        threads: sockets.div_ceil(members),
        rate,
        messages: rate * seconds,
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;

    // Baseline: bare axum WebSocket broadcast.
    let dir = tempfile::tempdir()?;
    let baseline = ServeProcess::spawn(&["bench-ws-baseline".into()], &[]).await?;
    let base_url = format!("http://{}", baseline.addr);
    let ws_base = format!("ws://{}", baseline.addr);
    let raw = measure(
        &baseline,
        None,
        &load,
        "bare axum WebSocket broadcast",
        |i| format!("{ws_base}/ws?group={}", i / members),
        |i, text| {
            http.post(format!("{base_url}/publish/{}", i % load.threads))
                .body(text)
        },
    )
    .await?;
    drop(baseline);

    // msgxc: threads and subscriptions written to the log, then the exchange.
    let server = Server::start(opts)?;
    let client = async_nats::connect(server.nats.url()).await?;
    let log = EventLog::open(client.clone(), LogSettings::default()).await?;
    let owner = Actor {
        uid: "owner".into(),
        roles: vec![],
    };
    let tids: Vec<uuid::Uuid> = (0..load.threads).map(|_| uuid::Uuid::now_v7()).collect();
    let creates = tids.iter().map(|tid| {
        Envelope::new(
            owner.clone(),
            Event::ThreadCreated(ThreadCreated {
                tid: *tid,
                name: "live".into(),
                owner: "owner".into(),
                open_subscribe: true,
                open_publish: false,
                alias: None,
            }),
        )
    });
    let subscriptions = (0..sockets).map(|i| {
        let uid = format!("u{i}");
        Envelope::new(
            Actor {
                uid: uid.clone(),
                roles: vec![],
            },
            Event::Subscribed(Subscribed {
                tid: tids[(i / members) as usize],
                uid,
            }),
        )
    });
    append_all(log.jetstream(), creates.chain(subscriptions)).await?;
    let exchange =
        ServeProcess::start(&server.nats.url(), &dir.path().join("data"), SECRET, &[]).await?;
    let owner_token = user_token("owner", &[])?;
    let last_tid = tids.last().context("no thread")?;
    let started = Instant::now();
    loop {
        let t: serde_json::Value = http
            .get(format!("{}/threads/{last_tid}", exchange.base_url()))
            .bearer_auth(&owner_token)
            .send()
            .await?
            .json()
            .await?;
        if t["subscribers"].as_u64() == Some(sockets - (load.threads - 1) * members) {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "subscriptions not projected within 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tokens: Vec<String> = (0..sockets)
        .map(|i| user_token(&format!("u{i}"), &[]))
        .collect::<anyhow::Result<_>>()?;
    let ws_base = format!("ws://{}/api/v1/connect", exchange.addr);
    let publish = format!("{}/publish", exchange.base_url());
    let row = measure(
        &exchange,
        Some(&server),
        &load,
        "msgxc /connect (JWT, event log, projector)",
        |i| format!("{ws_base}?token={}", tokens[i as usize]),
        |i, text| {
            http.post(&publish)
                .bearer_auth(&owner_token)
                .json(&json!({ "tid": tids[(i % load.threads) as usize], "msg": text }))
        },
    )
    .await?;
    Ok(vec![raw, row])
}

/// The baseline server: `GET /ws?group=G` joins a broadcast group, `POST /publish/G` sends the
/// body to every member as a text frame. Same WebSocket buffer settings as msgxc.
pub async fn serve_ws_baseline(listen: SocketAddr) -> anyhow::Result<()> {
    type Groups = Arc<Mutex<HashMap<u64, broadcast::Sender<Bytes>>>>;
    fn group(groups: &Groups, g: u64) -> broadcast::Sender<Bytes> {
        let mut map = groups.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(g)
            .or_insert_with(|| broadcast::channel(256).0)
            .clone()
    }
    #[derive(serde::Deserialize)]
    struct Join {
        group: u64,
    }
    async fn join(
        State(groups): State<Groups>,
        Query(q): Query<Join>,
        upgrade: WebSocketUpgrade,
    ) -> Response {
        let mut rx = group(&groups, q.group).subscribe();
        upgrade
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .on_upgrade(move |mut socket| async move {
                loop {
                    tokio::select! {
                        frame = rx.recv() => match frame {
                            Ok(bytes) => {
                                let Ok(text) = axum::extract::ws::Utf8Bytes::try_from(bytes) else { continue };
                                if socket.send(Message::Text(text)).await.is_err() {
                                    return;
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(_) => return,
                        },
                        incoming = socket.recv() => match incoming {
                            Some(Ok(_)) => {}
                            _ => return,
                        },
                    }
                }
            })
    }
    async fn publish(State(groups): State<Groups>, Path(g): Path<u64>, body: Bytes) -> StatusCode {
        let _ = group(&groups, g).send(body);
        StatusCode::ACCEPTED
    }
    let groups: Groups = Arc::default();
    let app = Router::new()
        .route("/ws", get(join))
        .route("/publish/{group}", post(publish))
        .route("/api/v1/health", get(|| async { StatusCode::OK }))
        .with_state(groups);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
