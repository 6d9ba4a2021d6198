//! Shared gateway state and the one way requests change anything: appending an event.

use std::sync::Arc;
use std::time::Duration;

use exchange::{Actor, Appended, Envelope, Event, EventLog};
use projections::Store;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::auth::JwtVerifier;
use crate::error::{ApiError, ApiResult};
use crate::hub::Hub;

/// Gateway settings (each has a CLI flag and an `MSGXC_` variable in the binary).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Largest accepted request body in bytes (413 above).
    pub body_limit: usize,
    /// Largest upload of seed 002's binary content (bytes).
    pub max_content_bytes: usize,
    /// Most recipients of one multicast (400 above).
    pub max_recipients: usize,
    /// Longest message text in characters.
    pub max_message_chars: usize,
    /// How long a structural write (thread, subscription, device, read mark) waits for its
    /// projection before answering, so the caller can read its own write.
    pub read_your_writes: Duration,
    /// Per-connection buffer of outgoing live frames; a client that falls this far behind is
    /// disconnected instead of slowing anyone else.
    pub socket_buffer: usize,
    /// Interval of WebSocket pings; a client silent for three intervals is dropped.
    pub ping_interval: Duration,
    /// Delivery channels configured in this deployment (reported by `/ping`); `websocket` is
    /// always on.
    pub channels: Vec<String>,
    /// Hosts Web Push endpoints may point at (enlisting others is refused).
    pub webpush_allowed_hosts: Vec<String>,
    /// The VAPID public key browsers subscribe with, when Web Push is configured.
    pub vapid_public_key: Option<String>,
    /// Private messages one user may send per minute (per gateway process).
    pub private_messages_per_minute: u32,
    /// Origins (`https://app.example.com`) whose pages may open `/connect` and `/stream`
    /// authenticated by the `xsajwt` cookie, beside the gateway's own origin (see
    /// [`crate::auth::StreamCaller`]).
    pub allowed_origins: Vec<String>,
    /// Clock leeway for a token's `exp`, `nbf` and `iat`.
    pub jwt_leeway: Duration,
    /// Longest token lifetime (`exp` minus `iat`) accepted, when set.
    pub jwt_max_lifetime: Option<Duration>,
    /// Writes (POST, PUT, PATCH, DELETE) one user may make, per gateway process; admins are
    /// not limited. `None`: no limit.
    pub user_write_rate: Option<crate::rate::Rate>,
    /// Writes one client address may make, per gateway process (every caller, admins too, and
    /// requests without a valid token). `None`: no limit.
    pub ip_write_rate: Option<crate::rate::Rate>,
    /// Live connections (WebSocket and SSE) one user may hold open on one gateway process.
    pub max_sockets_per_user: usize,
    /// Frames a WebSocket client may send (pings, acks), per connection; a client over it is
    /// closed with 1008. `None`: no limit.
    pub socket_frame_rate: Option<crate::rate::Rate>,
    /// Origins (`https://app.example.com`) whose pages may call the API across origins
    /// (CORS), or `*` for any; empty: none (no CORS headers, preflights get 405).
    pub cors_origins: Vec<String>,
    /// How long after a message a tracked event without a `mid` is attributed to it (and to
    /// the experiments the user was exposed to), fixed into each `tracked` event.
    pub attribution_window: Duration,
    /// Verifies the tokens of tracked links (`GET /r/{token}`); `None`: that route answers 404.
    pub links: Option<exchange::links::LinkSigner>,
    /// Longest wait for a request head (first bytes, headers, an idle kept-alive connection's
    /// next request); see `serve`.
    pub header_timeout: Duration,
    /// Longest a request body may take to arrive once its headers have (408 after that).
    pub body_timeout: Duration,
    /// Answer shapes of the seed systems (`MSGXC_COMPAT`; see `compat`).
    pub compat: crate::compat::Compat,
}

/// Default write limits and live connections per user (`docs/configuration.md` states them).
pub const DEFAULT_USER_WRITES_PER_SECOND: u32 = 50;
pub const DEFAULT_USER_WRITE_BURST: u32 = 500;
pub const DEFAULT_IP_WRITES_PER_SECOND: u32 = 1000;
pub const DEFAULT_IP_WRITE_BURST: u32 = 5000;
pub const DEFAULT_MAX_SOCKETS_PER_USER: usize = 32;
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            body_limit: 64 * 1024,
            max_content_bytes: 16 * 1024 * 1024,
            max_recipients: 1000,
            max_message_chars: 16 * 1024,
            read_your_writes: Duration::from_secs(5),
            socket_buffer: 256,
            ping_interval: Duration::from_secs(30),
            channels: vec!["websocket".into()],
            webpush_allowed_hosts: exchange::channels::webpush::DEFAULT_ALLOWED_HOSTS
                .iter()
                .map(|h| (*h).to_owned())
                .collect(),
            vapid_public_key: None,
            allowed_origins: Vec::new(),
            jwt_leeway: Duration::from_secs(crate::auth::DEFAULT_LEEWAY),
            jwt_max_lifetime: None,
            private_messages_per_minute: 30,
            user_write_rate: Some(crate::rate::Rate {
                per_second: DEFAULT_USER_WRITES_PER_SECOND,
                burst: DEFAULT_USER_WRITE_BURST,
            }),
            ip_write_rate: Some(crate::rate::Rate {
                per_second: DEFAULT_IP_WRITES_PER_SECOND,
                burst: DEFAULT_IP_WRITE_BURST,
            }),
            max_sockets_per_user: DEFAULT_MAX_SOCKETS_PER_USER,
            cors_origins: Vec::new(),
            attribution_window: Duration::from_secs(3 * 86_400),
            links: None,
            header_timeout: crate::serve::DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            compat: Default::default(),
            socket_frame_rate: Some(crate::rate::Rate {
                per_second: 50,
                burst: 200,
            }),
        }
    }
}

/// The gateway's state, shared by every request: one pointer to clone per request (axum
/// clones the state into each handler and extractor).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub log: EventLog,
    pub store: Arc<dyn Store>,
    pub verifier: Arc<JwtVerifier>,
    pub hub: Hub,
    pub config: Arc<GatewayConfig>,
    /// The in-process projector's checkpoint, when it runs in this process.
    pub applied: Option<watch::Receiver<u64>>,
    /// Presence stamps for skip-if-seen, refreshed while sockets are open.
    pub presence: Option<exchange::presence::Presence>,
    /// Per-sender limits on private messages.
    pub rate: crate::rate::RateLimiter,
    /// Write buckets per user and per client address (`user_write_rate`, `ip_write_rate`).
    pub writes: crate::rate::Buckets,
    /// Live connections open per user (`max_sockets_per_user`).
    pub sockets: crate::rate::SocketCounts,
    /// What `GET /metrics` reports.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Threads read for permission checks (their rules never change).
    pub thread_rules: ThreadRules,
}

/// A bounded cache of threads by id for permission checks: owner and open flags are fixed
/// when a thread is created, so an entry never goes stale in what it is used for. A full
/// cache starts over (a read refills each entry).
#[derive(Clone, Default)]
pub struct ThreadRules {
    threads: Arc<
        std::sync::Mutex<std::collections::HashMap<uuid::Uuid, Arc<projections::model::Thread>>>,
    >,
}

impl ThreadRules {
    const CAPACITY: usize = 100_000;

    pub fn get(&self, tid: uuid::Uuid) -> Option<Arc<projections::model::Thread>> {
        self.threads.lock().ok()?.get(&tid).cloned()
    }

    pub fn put(&self, thread: Arc<projections::model::Thread>) {
        if let Ok(mut map) = self.threads.lock() {
            if map.len() >= Self::CAPACITY {
                map.clear();
            }
            map.insert(thread.tid, thread);
        }
    }
}

/// The outcome of an append: the stored event (the original one when the idempotency key was
/// seen before) and where it is.
pub struct Recorded {
    pub envelope: Envelope,
    pub appended: Appended,
}

impl AppState {
    /// Appends an event caused by `actor`. With an idempotency key the JetStream message id is
    /// derived from (caller, key), so a retried request stores nothing new and gets the
    /// original event back.
    pub async fn append(
        &self,
        actor: &Actor,
        event: Event,
        idempotency_key: Option<&str>,
    ) -> ApiResult<Recorded> {
        let envelope = Envelope::new(actor.clone(), event);
        let msg_id = idempotency_key.map(|k| message_id(&actor.uid, k));
        let started = std::time::Instant::now();
        let appended = self.log.append(&envelope, msg_id.as_deref()).await?;
        self.metrics.append(started.elapsed());
        if !appended.duplicate {
            return Ok(Recorded { envelope, appended });
        }
        let original = self.log.get(appended.seq).await?.envelope;
        if original.actor.uid != actor.uid || original.event.kind() != envelope.event.kind() {
            return Err(ApiError::conflict(
                "idempotency_key_reused",
                "this Idempotency-Key was already used for a different request",
            ));
        }
        Ok(Recorded {
            envelope: original,
            appended,
        })
    }

    /// Waits (bounded) until the projection has applied `seq`. A timeout is not an error: the
    /// event is durable and will be projected.
    pub async fn wait_projected(&self, seq: u64) {
        let limit = self.config.read_your_writes;
        let wait = async {
            if let Some(rx) = &self.applied {
                let mut rx = rx.clone();
                let _ = rx.wait_for(|applied| *applied >= seq).await;
            } else {
                // Projector in another process: poll the store's checkpoint.
                loop {
                    match self.store.checkpoint().await {
                        Ok(c) if c >= seq => break,
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }
        };
        if tokio::time::timeout(limit, wait).await.is_err() {
            tracing::warn!(
                seq,
                ?limit,
                "projection lagging; answering before it caught up"
            );
        }
    }

    /// The caller's inbox entries among `ids`. When some are missing, waits (bounded) for the
    /// fold to reach what this gateway's hub has already sent live, then reads again: a live
    /// frame leaves before its entry is folded, and a client may act on it at once.
    pub async fn notifications_seen_live(
        &self,
        uid: &str,
        ids: &[uuid::Uuid],
    ) -> ApiResult<Vec<projections::model::Notification>> {
        let found = self.store.notifications(uid, ids).await?;
        if found.len() >= ids.len() {
            return Ok(found);
        }
        let routed = self.hub.marks().borrow().routed;
        self.wait_projected(routed).await;
        Ok(self.store.notifications(uid, ids).await?)
    }

    /// Appends and waits for the projection (structural writes).
    pub async fn append_consistent(
        &self,
        actor: &Actor,
        event: Event,
        idempotency_key: Option<&str>,
    ) -> ApiResult<Recorded> {
        let recorded = self.append(actor, event, idempotency_key).await?;
        self.wait_projected(recorded.appended.seq).await;
        Ok(recorded)
    }
}

/// `sha256(uid \n key)` in hex: keys of different callers never collide.
pub(crate) fn message_id(uid: &str, key: &str) -> String {
    let digest = Sha256::new()
        .chain_update(uid.as_bytes())
        .chain_update(b"\n")
        .chain_update(key.as_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
