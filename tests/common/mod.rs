//! Shared fixtures for the integration tests: a real nats-server, a real store and the real
//! exchange started in-process on a free port.
//!
//! The store is a SQLite file in the test's temp dir, or with `MSGXC_TEST_STORE=cassandra` a
//! keyspace of the test's own on the test run's Cassandra node (`testkit::cassandra`), migrated
//! like `msgxc migrate` does and dropped when the test ends: the same tests, on either backend.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use gateway::GatewayConfig;
use gateway::auth::{JwtKey, sign};
use jsonwebtoken::{Algorithm, EncodingKey};
use msgxc::{ExchangeOptions, Role, Running};
use projections::ProjectorSettings;
use serde_json::Value;
use testkit::TestNats;
use tokio_tungstenite::tungstenite::Message;

pub const SECRET: &str = "test-secret-0123456789abcdef-0123456789";

pub struct Exchange {
    pub running: Option<Running>,
    /// The test's keyspace when it runs on Cassandra; dropped after `running` stops.
    pub keyspace: Option<Keyspace>,
    pub nats: TestNats,
    pub dir: tempfile::TempDir,
    pub base: String,
    pub http: reqwest::Client,
    pub opts: ExchangeOptions,
}

pub fn options(nats_url: String, store_path: PathBuf) -> ExchangeOptions {
    ExchangeOptions {
        role: Role::All,
        listen: "127.0.0.1:0".parse().unwrap(),
        health_listen: None,
        nats_url,
        store: msgxc::StoreLocation::Sqlite(store_path),
        jwt_key: JwtKey::Secret(SECRET.as_bytes().to_vec()),
        jwt_issuer: None,
        jwt_audience: None,
        log: exchange::LogSettings {
            timeout: Duration::from_secs(2),
            ..Default::default()
        },
        gateway: GatewayConfig {
            body_limit: 4096,
            max_recipients: 5,
            ..Default::default()
        },
        projector: ProjectorSettings::default(),
        channels: exchange::channels::ChannelSettings {
            links: Some(exchange::links::LinkSigner::new(
                b"test-link-secret",
                Some("https://links.test".into()),
            )),
            ..Default::default()
        },
        dispatch: Default::default(),
        stage: Default::default(),
    }
}

impl Exchange {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut ExchangeOptions)) -> Self {
        let nats = TestNats::start();
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(nats.url(), dir.path().join("store.sqlite3"));
        let keyspace = match TestStore::from_env() {
            TestStore::Sqlite => None,
            TestStore::Cassandra => {
                let ks = Keyspace::fresh().await;
                opts.store = msgxc::StoreLocation::Scylla(ks.config.clone());
                Some(ks)
            }
        };
        adjust(&mut opts);
        let running = msgxc::start(opts.clone()).await.expect("exchange starts");
        let base = format!("http://{}/api/v1", running.addr.unwrap());
        Self {
            running: Some(running),
            keyspace,
            nats,
            dir,
            base,
            http: reqwest::Client::new(),
            opts,
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!(
            "{}/connect{query}",
            self.base.replacen("http://", "ws://", 1)
        )
    }

    /// `(status, body)` of a request with an optional bearer token and JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    /// POST with an `Idempotency-Key` header.
    pub async fn post_keyed(
        &self,
        path: &str,
        token: &str,
        key: &str,
        body: Value,
    ) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .expect("request sent");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PATCH, path, Some(token), Some(body))
            .await
    }

    /// Creates a thread owned by `token`'s user and returns its tid.
    pub async fn thread(&self, token: &str, open_subscribe: bool, open_publish: bool) -> String {
        let (s, b) = self
            .post(
                "/threads",
                token,
                serde_json::json!({"name": "t", "open_subscribe": open_subscribe, "open_publish": open_publish}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        b["tid"].as_str().unwrap().to_owned()
    }

    /// Polls the inbox until it holds `n` entries (projection is asynchronous for messages).
    pub async fn inbox_until(&self, token: &str, n: u64) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (s, b) = self.get("/notifications?limit=100", token).await;
            assert_eq!(s, 200, "{b}");
            // Both the count and the entries: on Cassandra a logged batch is atomic but not
            // isolated, so a read may see the counts row before the entry's row.
            let listed = b["results"].as_array().map_or(0, Vec::len) as u64;
            if b["count"].as_u64() == Some(n) && listed == n.min(100) {
                return b;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "inbox never reached {n}: {b}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the store has applied everything in the stream.
    pub async fn caught_up(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let log = &self.running().log;
        loop {
            let last = log.last_seq().await.unwrap();
            let cp = projections::Store::checkpoint(self.running().store.as_ref())
                .await
                .unwrap();
            if cp >= last {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "projector stuck at {cp} < {last}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The backend the integration tests run on (`MSGXC_TEST_STORE`: `sqlite`, the default, or
/// `cassandra`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestStore {
    Sqlite,
    Cassandra,
}

impl TestStore {
    pub fn from_env() -> Self {
        match std::env::var("MSGXC_TEST_STORE").as_deref() {
            Ok("cassandra") | Ok("scylla") => Self::Cassandra,
            Ok("") | Ok("sqlite") | Err(_) => Self::Sqlite,
            Ok(other) => panic!("MSGXC_TEST_STORE={other}: expected sqlite or cassandra"),
        }
    }
}

/// A keyspace of one test on the test run's CQL node, migrated; dropped on drop.
pub struct Keyspace {
    pub config: projections::scylla::ScyllaConfig,
    /// Its store URL (`MSGXC_STORE`).
    pub url: String,
}

impl Keyspace {
    pub async fn fresh() -> Self {
        let node = testkit::cassandra::cql_node();
        let name = format!("msgxc_it_{}", uuid::Uuid::now_v7().simple());
        let url = format!("cassandra://{node}/{name}?replication_factor=1&consistency=one");
        let config = projections::scylla::ScyllaConfig::parse(&url).expect("store URL");
        projections::scylla::migrate(&config)
            .await
            .expect("migrate the test keyspace");
        Self { config, url }
    }
}

impl Drop for Keyspace {
    fn drop(&mut self) {
        let config = self.config.clone();
        // Drop may run inside a runtime: a thread with a runtime of its own does the drop.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(projections::scylla::drop_keyspace(&config))
                .map_err(|e| e.to_string())
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop keyspace {}: {e}", self.config.keyspace);
        }
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
/// A `msgxc serve` process of its own listening on `listen`, with its NATS, data dir and the
/// tests' JWT secret, and `env` beside them.
pub fn serve_process(
    nats_url: &str,
    data: &std::path::Path,
    listen: &str,
    env: &[(&str, &str)],
) -> Proc {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_msgxc"));
    cmd.args(["serve", "--listen", listen])
        .env("MSGXC_NATS_URL", nats_url)
        .env("MSGXC_DATA_DIR", data)
        .env("MSGXC_JWT_SECRET", SECRET)
        .env("MSGXC_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().unwrap())
}

/// Waits (30 s at most) until the gateway at `base` (`http://host:port/api/v1`) answers.
pub async fn wait_until_up(http: &reqwest::Client, base: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{base}/ping"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "msgxc serve did not come up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn token(sub: &str, admin: bool) -> String {
    let roles = if admin {
        vec!["admin".to_string()]
    } else {
        vec![]
    };
    sign(
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
        sub,
        &roles,
        600,
        None,
        None,
    )
    .unwrap()
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/connect` with the token in the query and consumes the hello frame.
pub async fn ws_connect(ex: &Exchange, token: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(ex.ws_url(&format!("?token={token}")))
        .await
        .expect("websocket connects");
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["action"], "hello", "{hello}");
    ws
}

/// The next JSON text frame (pings are skipped), within 10 s.
pub async fn next_json(ws: &mut Ws) -> Value {
    let deadline = Duration::from_secs(10);
    loop {
        let msg = tokio::time::timeout(deadline, ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("socket open")
            .expect("valid frame");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON frame"),
            Message::Ping(p) => {
                let _ = ws.send(Message::Pong(p)).await;
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// What a store answers, through the `Store` trait alone, about these users, threads and
/// messages: every read model the API serves. Two stores of any backends that folded the
/// same stream give equal snapshots.
pub async fn read_models(
    store: &dyn projections::Store,
    uids: &[&str],
    tids: &[uuid::Uuid],
    mids: &[uuid::Uuid],
) -> Value {
    use projections::model::{HistoryQuery, InboxQuery};
    let all = InboxQuery {
        limit: 1000,
        ..Default::default()
    };
    let mut users = serde_json::Map::new();
    for uid in uids {
        let mut threads = store.user_threads(uid).await.unwrap();
        threads.sort();
        let changes: Vec<(String, String)> = store
            .changes_after(uid, Default::default(), 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|(p, f)| (p.to_string(), f))
            .collect();
        let (page, newest) = store.inbox_snapshot(uid, &all).await.unwrap();
        users.insert(
            uid.to_string(),
            serde_json::json!({
                "exists": store.user_exists(uid).await.unwrap(),
                "threads": threads,
                "devices": store.devices(uid).await.unwrap(),
                "inbox": page,
                "newest": newest,
                "stats": store.inbox_stats(uid).await.unwrap(),
                "counts": store.inbox_counts(uid).await.unwrap(),
                "blocks": store.blocks(uid).await.unwrap(),
                "preferences": store.preferences(uid).await.unwrap(),
                "changes": changes,
            }),
        );
    }
    let mut threads = serde_json::Map::new();
    for tid in tids {
        let history = HistoryQuery {
            limit: 1000,
            ..Default::default()
        };
        threads.insert(
            tid.to_string(),
            serde_json::json!({
                "thread": store.thread(*tid).await.unwrap(),
                "history": store.thread_messages(*tid, &history).await.unwrap(),
                "members": futures::future::join_all(uids.iter().map(|u| store.is_subscribed(*tid, u)))
                    .await
                    .into_iter()
                    .map(Result::unwrap)
                    .collect::<Vec<bool>>(),
            }),
        );
    }
    let mut messages = serde_json::Map::new();
    for mid in mids {
        let mut counts = store.receipt_counts(*mid).await.unwrap();
        counts.sort();
        let experiment = match store
            .message(*mid)
            .await
            .unwrap()
            .and_then(|m| m.experiment)
        {
            Some(e) => serde_json::json!({
                "record": store.experiment(&e.id).await.unwrap(),
                "arms": store.experiment_arms(&e.id).await.unwrap(),
            }),
            None => Value::Null,
        };
        messages.insert(
            mid.to_string(),
            serde_json::json!({
                "message": store.message(*mid).await.unwrap(),
                "receipts": store.receipts(*mid, 1000, 0).await.unwrap(),
                "receipt_counts": counts,
                "scheduled": store.scheduled_message(*mid).await.unwrap(),
                "experiment": experiment,
            }),
        );
    }
    serde_json::json!({
        "checkpoint": store.checkpoint().await.unwrap(),
        "users": users,
        "threads": threads,
        "messages": messages,
        "types": store.types().await.unwrap(),
        "dead_letters": store.failed_deliveries(1000, 0).await.unwrap(),
        "scheduled": store.scheduled_messages(None, 1000).await.unwrap(),
    })
}

/// The `.route(...)` calls of one router's source, their paths under `prefix`.
pub fn routes_in(
    source: &str,
    prefix: &str,
    routes: &mut std::collections::BTreeSet<(String, String)>,
) {
    for call in source.split(".route(").skip(1) {
        let Some(path) = call.split('"').nth(1) else {
            continue;
        };
        // The handlers up to the end of this `.route(...)` call.
        let mut depth = 1;
        let mut end = call.len();
        for (i, c) in call.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        for method in ["get", "post", "put", "patch", "delete"] {
            let mut rest = &call[..end];
            while let Some(i) = rest.find(&format!("{method}(")) {
                let before = rest[..i].chars().last();
                if matches!(before, None | Some(' ' | '\n' | '.' | ',')) {
                    routes.insert((method.to_uppercase(), format!("{prefix}{path}")));
                }
                rest = &rest[i + method.len()..];
            }
        }
    }
}
