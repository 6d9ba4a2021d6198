//! Scenario 2, fanout: one broadcast to N devices spread over APNs, FCM and Web Push, whose
//! base URLs point at a local sink that accepts every request at once.
//!
//! The exchange runs as its own process (`msgxc serve`), so the sink and the load generator do
//! not count against its CPU and memory. The baseline is the rate at which the same sink
//! accepts the same number of requests from a plain reqwest HTTP/2 client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use exchange::events::{DeviceAddress, DeviceEnlisted, Envelope, Event};
use exchange::{Actor, EventLog, LogSettings};
use futures::StreamExt;
use serde_json::json;

use super::child::ServeProcess;
use super::measure::histogram;
use super::scenarios::{SECRET, Server, append_all, text, token, user_token};
use super::{BenchOptions, Row};

/// Receiver key and auth secret of RFC 8291's worked example: every Web Push device of the
/// benchmark uses them, so each request is still encrypted anew (fresh ephemeral key).
const WEBPUSH_P256DH: &str =
    "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
const WEBPUSH_AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";

/// Counts provider requests and remembers when the last one arrived.
struct SinkState {
    base: Instant,
    requests: AtomicU64,
    first_us: AtomicU64,
    last_us: AtomicU64,
}

impl SinkState {
    fn hit(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let now = self.base.elapsed().as_micros() as u64;
        self.first_us.fetch_min(now, Ordering::Relaxed);
        self.last_us.fetch_max(now, Ordering::Relaxed);
    }
}

/// APNs: 200 with an `apns-id`.
async fn apns(State(s): State<Arc<SinkState>>, _body: Bytes) -> impl IntoResponse {
    s.hit();
    (
        StatusCode::OK,
        [("apns-id", uuid::Uuid::now_v7().to_string())],
    )
}

/// FCM HTTP v1 `messages:send`: 200 with the message name.
async fn fcm(State(s): State<Arc<SinkState>>, _body: Bytes) -> impl IntoResponse {
    s.hit();
    let name = format!("projects/bench/messages/{}", uuid::Uuid::now_v7());
    (StatusCode::OK, axum::Json(json!({ "name": name })))
}

/// Google's OAuth token endpoint (the service-account JWT grant); not a provider request.
async fn oauth_token(_body: Bytes) -> impl IntoResponse {
    axum::Json(
        json!({ "access_token": "bench-access-token", "token_type": "Bearer", "expires_in": 3600 }),
    )
}

/// A push service (RFC 8030): 201 with the message's location.
async fn webpush(State(s): State<Arc<SinkState>>, _body: Bytes) -> impl IntoResponse {
    s.hit();
    (
        StatusCode::CREATED,
        [(header::LOCATION, "http://127.0.0.1/m/1".to_owned())],
    )
}

struct Sink {
    state: Arc<SinkState>,
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// Serves HTTP/1.1 and HTTP/2 (prior knowledge) on a free loopback port.
    async fn start() -> anyhow::Result<Self> {
        let state = Arc::new(SinkState {
            base: Instant::now(),
            requests: AtomicU64::new(0),
            first_us: AtomicU64::new(u64::MAX),
            last_us: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/3/device/{token}", post(apns))
            .route("/v1/projects/{project}/messages:send", post(fcm))
            .route("/token", post(oauth_token))
            .route("/push/{id}", post(webpush))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { state, port, task })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Forgets the first request seen so far (the next one counts as the first).
    fn reset_first(&self) {
        self.state.first_us.store(u64::MAX, Ordering::Relaxed);
    }

    /// When the first provider request (since the last reset) arrived.
    fn first(&self) -> Instant {
        self.state.base + Duration::from_micros(self.state.first_us.load(Ordering::Relaxed))
    }

    /// When the last provider request arrived.
    fn last(&self) -> Instant {
        self.state.base + Duration::from_micros(self.state.last_us.load(Ordering::Relaxed))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The device of user `i`: APNs, FCM and Web Push in turn.
fn address(i: u64, sink: &str) -> DeviceAddress {
    match i % 3 {
        0 => DeviceAddress::Apns {
            token: format!("{i:064x}"),
        },
        1 => DeviceAddress::Fcm {
            token: format!("bench-fcm-registration-token-{i}"),
        },
        _ => DeviceAddress::Webpush {
            endpoint: format!("{sink}/push/{i}"),
            expiration_time: None,
            p256dh: WEBPUSH_P256DH.into(),
            auth: WEBPUSH_AUTH.into(),
        },
    }
}

/// Fresh provider credentials in `dir`: an APNs P-256 key, an FCM service account (RSA) whose
/// token endpoint is the sink, and a VAPID key. Returns the `msgxc serve` flags using them.
fn credentials(dir: &std::path::Path, sink: &str) -> anyhow::Result<Vec<String>> {
    use p256::pkcs8::EncodePrivateKey as _;
    let mut rng = rand_core::OsRng;
    let apns_key = p256::SecretKey::random(&mut rng)
        .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the APNs key: {e}"))?;
    let apns_path = dir.join("apns.p8");
    std::fs::write(&apns_path, apns_key.as_bytes())?;
    let rsa_key = rsa::RsaPrivateKey::new(&mut rng, 2048)
        .map_err(|e| anyhow::anyhow!("generating the FCM key: {e}"))?
        .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the FCM key: {e}"))?;
    let account = json!({
        "type": "service_account",
        "project_id": "bench",
        "private_key_id": "bench-key",
        "private_key": rsa_key.as_str(),
        "client_email": "bench@bench.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": format!("{sink}/token"),
    });
    let fcm_path = dir.join("fcm.json");
    std::fs::write(&fcm_path, account.to_string())?;
    let vapid =
        exchange::channels::webpush::generate_vapid_key().map_err(|e| anyhow::anyhow!(e))?;
    let path = |p: &std::path::Path| p.display().to_string();
    Ok(vec![
        "--apns-key-file".into(),
        path(&apns_path),
        "--apns-key-id".into(),
        "BENCHKEY01".into(),
        "--apns-team-id".into(),
        "BENCHTEAM1".into(),
        "--apns-topic".into(),
        "com.example.bench".into(),
        "--apns-base-url".into(),
        sink.into(),
        "--fcm-service-account".into(),
        path(&fcm_path),
        "--fcm-base-url".into(),
        sink.into(),
        "--webpush-vapid-key".into(),
        vapid,
        "--webpush-subject".into(),
        "mailto:bench@example.com".into(),
        "--webpush-allowed-hosts".into(),
        "127.0.0.1".into(),
    ])
}

/// CPU time of one Web Push encryption (aes128gcm with a fresh ephemeral key, as the Web Push
/// channel encrypts) of a benchmark-sized payload, measured on this thread.
fn webpush_encryption() -> anyhow::Result<Duration> {
    let payload = json!({ "mid": uuid::Uuid::now_v7(), "title": null, "body": text() })
        .to_string()
        .into_bytes();
    const SAMPLES: u32 = 2_000;
    let cpu0 = super::measure::cpu_thread();
    for _ in 0..SAMPLES {
        exchange::channels::webpush::encrypt(WEBPUSH_P256DH, WEBPUSH_AUTH, &payload)
            .map_err(|e| anyhow::anyhow!("Web Push encryption: {e:?}"))?;
    }
    Ok(Duration::from_secs_f64(
        (super::measure::cpu_thread() - cpu0) / f64::from(SAMPLES),
    ))
}

/// The baseline: `n` provider-shaped requests (the same mix and sizes) from one reqwest
/// HTTP/2 client, 256 in flight.
async fn raw_requests(
    sink: &str,
    n: u64,
) -> anyhow::Result<(Duration, hdrhistogram::Histogram<u64>)> {
    let client = reqwest::Client::builder().http2_prior_knowledge().build()?;
    let body = Bytes::from(
        json!({ "aps": { "alert": { "body": text() } }, "mid": uuid::Uuid::now_v7() }).to_string(),
    );
    let started = Instant::now();
    let mut h = histogram();
    let requests = futures::stream::iter(0..n).map(|i| {
        let url = match i % 3 {
            0 => format!("{sink}/3/device/{i:064x}"),
            1 => format!("{sink}/v1/projects/bench/messages:send"),
            _ => format!("{sink}/push/{i}"),
        };
        let (client, body) = (client.clone(), body.clone());
        async move {
            let t0 = Instant::now();
            let r = client.post(url).body(body).send().await?;
            anyhow::ensure!(r.status().is_success(), "sink answered {}", r.status());
            anyhow::Ok(t0.elapsed())
        }
    });
    let mut results = requests.buffer_unordered(256);
    while let Some(r) = results.next().await {
        super::measure::record(&mut h, r?);
    }
    Ok((started.elapsed(), h))
}

pub async fn fanout(opts: &BenchOptions) -> anyhow::Result<Vec<Row>> {
    let n = opts
        .devices
        .unwrap_or(if opts.quick { 20_000 } else { 100_000 });
    let server = Server::start(opts)?;
    let sink = Sink::start().await?;
    let dir = tempfile::tempdir()?;
    let flags = credentials(dir.path(), &sink.url())?;

    // Baseline first, while nothing else runs.
    let cpu0 = super::measure::cpu_self();
    let (elapsed, h) = raw_requests(&sink.url(), n).await?;
    let raw_rate = n as f64 / elapsed.as_secs_f64();
    let mut raw = Row {
        scenario: "fanout".into(),
        subject: "raw reqwest HTTP/2 -> same sink".into(),
        rate: raw_rate,
        p50_ms: Some(super::measure::ms(&h, 0.5)),
        p99_ms: Some(super::measure::ms(&h, 0.99)),
        p999_ms: Some(super::measure::ms(&h, 0.999)),
        cpu_s: super::measure::cpu_self() - cpu0,
        ..Default::default()
    };
    raw.notes.push(format!(
        "{n} requests, 256 in flight; CPU s = client and sink; {:.1} µs CPU per request",
        raw.cpu_s * 1e6 / n as f64
    ));
    let webpush_share = n / 3;
    let encryption = webpush_encryption()?;

    // N users with one device each, written straight to the log.
    eprintln!("bench: enlisting {n} devices");
    let client = async_nats::connect(server.nats.url()).await?;
    let log = EventLog::open(client.clone(), LogSettings::default()).await?;
    let sink_url = sink.url();
    let events = (0..n).map(|i| {
        let uid = format!("u{i}");
        Envelope::new(
            Actor {
                uid: uid.clone(),
                roles: vec![],
            },
            Event::DeviceEnlisted(DeviceEnlisted {
                uid,
                device_id: format!("d{i}"),
                address: address(i, &sink_url),
            }),
        )
    });
    append_all(log.jetstream(), events).await?;
    let baseline_requests = sink.requests();
    sink.reset_first();

    let exchange =
        ServeProcess::start(&server.nats.url(), &dir.path().join("data"), SECRET, &flags).await?;
    // Wait until the projector has folded every device (the last user's is the last event).
    let http = reqwest::Client::new();
    let last_user = user_token(&format!("u{}", n - 1), &[])?;
    let started = Instant::now();
    loop {
        let devices: serde_json::Value = http
            .get(format!("{}/devices", exchange.base_url()))
            .bearer_auth(&last_user)
            .send()
            .await?
            .json()
            .await?;
        if devices["results"].as_array().is_some_and(|d| !d.is_empty()) {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the projector did not fold {n} devices within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "bench: {n} devices projected in {:.1} s; broadcasting",
        started.elapsed().as_secs_f64()
    );

    let cpu0 = exchange.cpu();
    let nats0 = server.nats_cpu();
    let sent = Instant::now();
    let resp = http
        .post(format!("{}/broadcast", exchange.base_url()))
        .bearer_auth(token()?)
        .json(&json!({ "msg": text() }))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "broadcast answered {}",
        resp.status()
    );
    let accepted = Instant::now();
    let target = baseline_requests + n;
    let deadline = accepted + Duration::from_secs(900);
    while sink.requests() < target {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {n} provider requests after 15 minutes",
            sink.requests() - baseline_requests
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let handed = sink.last().saturating_duration_since(accepted);
    let rate = n as f64 / handed.as_secs_f64().max(1e-6);
    let mut row = Row {
        scenario: "fanout".into(),
        subject: "msgxc broadcast -> APNs/FCM/Web Push sinks".into(),
        rate,
        cpu_s: exchange.cpu() - cpu0,
        nats_cpu_s: server.nats_cpu() - nats0,
        peak_rss_mib: exchange.peak_rss_mib(),
        ..Default::default()
    };
    row.notes.push(format!(
        "{n} devices handed over {:.2} s after the 202 (202 took {:.0} ms, first provider request {:.0} ms after it)",
        handed.as_secs_f64(),
        accepted.duration_since(sent).as_secs_f64() * 1000.0,
        sink.first().saturating_duration_since(accepted).as_secs_f64() * 1000.0
    ));
    row.notes
        .push(format!("{:.2} of the raw request rate", rate / raw_rate));
    let per_delivery = row.cpu_s * 1e6 / n as f64;
    let encrypting = encryption.as_secs_f64() * webpush_share as f64;
    row.notes.push(format!(
        "{per_delivery:.1} µs CPU per delivery; Web Push encryption (one ECDH and one key pair per device, RFC 8291) {:.0} µs per message in this process, {encrypting:.1} s of CPU for the {webpush_share} Web Push devices; without it {:.1} µs per delivery",
        encryption.as_secs_f64() * 1e6,
        (row.cpu_s - encrypting).max(0.0) * 1e6 / n as f64,
    ));
    row.notes
        .push("CPU s and RSS = the msgxc process only".into());
    drop(exchange);
    Ok(vec![raw, row])
}
