//! The `msgxc` binary's wiring: configuration, NATS connection (or a supervised nats-server),
//! and starting the gateway, projector and live hub together or as separate roles.
//!
//! - `bench`: `msgxc bench`, every scenario beside its baseline measured in the same run
//! - `config`: flags and environment, store locations, generated secrets
//! - `export`: `msgxc export`, the event log as Hive-partitioned Parquet or NDJSON
//! - `fault`: `msgxc fault`, the fault suite (roles as processes killed -9 under load)
//! - `nats`: the NATS connection of a command (a managed nats-server or a given URL)
//! - `otel`: OpenTelemetry export of the exchange's spans over OTLP/HTTP (off unless configured)

pub mod bench;
pub mod config;
pub mod export;
pub mod fault;
pub mod nats;
pub mod otel;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use exchange::channels::ChannelSettings;
use exchange::dispatch::Directory;
use exchange::dispatch::{DispatchSettings, Dispatcher, TaskQueue};
use exchange::{EventLog, LogSettings};
use gateway::auth::{JwtKey, JwtVerifier};
use gateway::hub::Hub;
use gateway::{AppState, GatewayConfig};
use projections::{Projector, ProjectorSettings, ScyllaStore, SqliteStore, Store};

pub use config::StoreLocation;
use tokio::task::JoinHandle;

/// Which parts of the exchange this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Gateway, projector and live hub in one process (the default).
    All,
    /// HTTP/WebSocket gateway and live hub only; a projector must run elsewhere on the same store.
    Gateway,
    /// Projector only (it also queues delivery tasks).
    Projector,
    /// Dispatcher only: sends queued delivery tasks through the configured channels.
    Dispatcher,
}

/// Everything needed to start an exchange process.
#[derive(Clone)]
pub struct ExchangeOptions {
    pub role: Role,
    pub listen: SocketAddr,
    /// Roles without the gateway: where to answer GET /api/v1/ping.
    pub health_listen: Option<SocketAddr>,
    pub nats_url: String,
    pub store: StoreLocation,
    pub jwt_key: JwtKey,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub log: LogSettings,
    pub gateway: GatewayConfig,
    pub projector: ProjectorSettings,
    pub channels: ChannelSettings,
    pub dispatch: DispatchSettings,
    /// The stage scheduler (seed 002's schedules), run with the dispatcher.
    pub stage: exchange::stage::SchedulerSettings,
}

/// A started exchange. Dropping it (or calling [`Running::shutdown`]) stops its tasks.
pub struct Running {
    /// The bound HTTP address (useful with port 0), when the gateway runs.
    pub addr: Option<SocketAddr>,
    pub store: Arc<dyn Store>,
    /// The same store when it is SQLite (dumps and comparisons in tests and tools).
    pub sqlite: Option<Arc<SqliteStore>>,
    pub log: EventLog,
    pub hub: Hub,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
    server: Option<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting requests, lets in-flight ones finish, then stops the workers.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        // Aborting dropped the projector's lease, which hands it back in a spawned task; give
        // that a moment so a standby takes over at once instead of after the lease expires.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    /// Resolves when the HTTP server stops (after a shutdown signal).
    pub async fn wait(&mut self) {
        if let Some(server) = self.server.as_mut() {
            let _ = server.await;
            self.server = None;
        } else {
            std::future::pending::<()>().await;
        }
    }

    /// Sends the shutdown signal without waiting.
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(s) = &self.server {
            s.abort();
        }
    }
}

/// The schedules of stage-based messaging, as the scheduler reads them from the store.
struct StageSchedules(Arc<dyn Store>);

#[async_trait::async_trait]
impl exchange::stage::ScheduleSource for StageSchedules {
    async fn stage_schedules(&self) -> Result<Vec<exchange::stage::ScheduleRecord>, String> {
        let (_, docs) = self
            .0
            .stage_docs("schedule", u32::MAX, 0)
            .await
            .map_err(|e| e.to_string())?;
        Ok(docs
            .iter()
            .filter_map(|d| serde_json::from_str(&d.body).ok())
            .collect())
    }
}

type OpenedStore = (Arc<dyn Store>, Arc<dyn Directory>, Option<Arc<SqliteStore>>);

/// Opens the configured store: as the read models, as the dispatcher's directory, and as
/// itself when it is SQLite.
pub async fn open_store(location: &StoreLocation) -> anyhow::Result<OpenedStore> {
    Ok(match location {
        StoreLocation::Sqlite(path) => {
            let s = Arc::new(
                SqliteStore::open(path)
                    .with_context(|| format!("opening store {}", path.display()))?,
            );
            (s.clone(), s.clone(), Some(s))
        }
        StoreLocation::Scylla(config) => {
            let s = Arc::new(
                ScyllaStore::open(config)
                    .await
                    .with_context(|| format!("opening store {location}"))?,
            );
            (s.clone(), s, None)
        }
    })
}

/// Serves `app` until `stop` fires, then lets in-flight requests finish. Each request carries
/// the client's address (what the per-address write limit counts).
fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    timeouts: gateway::serve::HttpTimeouts,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let shutdown = async {
            let _ = stop.await;
        };
        gateway::serve::serve(listener, app, timeouts, shutdown).await;
    })
}

/// Connects to NATS and starts the configured role.
pub async fn start(opts: ExchangeOptions) -> anyhow::Result<Running> {
    let client = nats::connect(&opts.nats_url).await?;
    let log = nats::open_log(client.clone(), opts.log.clone()).await?;
    let (dyn_store, directory, sqlite) = open_store(&opts.store).await?;
    let hub = Hub::new(gateway::hub::HubSettings {
        horizon: opts.projector.live_horizon,
        ..Default::default()
    });
    let mut tasks = Vec::new();

    let channels = opts
        .channels
        .build()
        .map_err(|e| anyhow::anyhow!("channel configuration: {e}"))?;
    let queue = TaskQueue::open(
        log.jetstream().clone(),
        opts.log.duplicate_window,
        opts.log.replicas,
    )
    .await?;

    let mut applied = None;
    if matches!(opts.role, Role::All | Role::Projector) {
        let mut settings = opts.projector.clone();
        settings.topic_tasks = opts.channels.mqtt.is_some();
        settings.replicas = opts.log.replicas;
        let projector = Projector::new(
            log.clone(),
            client.clone(),
            dyn_store.clone(),
            settings,
            Some(queue.clone()),
        );
        applied = Some(projector.watch());
        tasks.push(tokio::spawn(projector.run()));
    }

    let presence = exchange::presence::Presence::open(
        log.jetstream(),
        opts.gateway.ping_interval,
        opts.log.replicas,
    )
    .await?;
    // Provider calls are counted when this process dispatches, and reported by its /metrics.
    let dispatch_metrics = exchange::dispatch::metrics::DispatchMetrics::default();
    let dispatching = matches!(opts.role, Role::All | Role::Dispatcher);
    if matches!(opts.role, Role::All | Role::Dispatcher) {
        let mut settings = opts.dispatch.clone();
        settings.replicas = opts.log.replicas;
        let dispatcher = Dispatcher::new(
            log.clone(),
            log.jetstream().clone(),
            channels.clone(),
            directory,
            Some(presence.clone()),
            settings,
        )
        .await?
        .with_metrics(dispatch_metrics.clone());
        tracing::info!(channels = ?channels.names(), "dispatcher starting");
        tasks.push(tokio::spawn(dispatcher.run()));
        let scheduler = exchange::stage::Scheduler::new(
            log.clone(),
            Arc::new(StageSchedules(dyn_store.clone())),
            opts.stage.clone(),
            opts.log.replicas,
        )
        .await?;
        tasks.push(tokio::spawn(scheduler.run()));
    }

    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut addr = None;
    let mut server = None;
    if matches!(opts.role, Role::All | Role::Gateway) {
        if let JwtKey::Jwks(set) = &opts.jwt_key {
            let n = set.load().await?;
            tracing::info!(keys = n, "JWKS read");
            tasks.push(set.spawn_refresher());
        }
        let verifier = JwtVerifier::new(
            &opts.jwt_key,
            opts.jwt_issuer.as_deref(),
            opts.jwt_audience.as_deref(),
        )?
        .with_rules(
            opts.gateway.jwt_leeway.as_secs(),
            opts.gateway.jwt_max_lifetime.map(|d| d.as_secs()),
        );
        let hub_task = hub.clone();
        let hub_client = client.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = hub_task.run(hub_client).await {
                tracing::error!(error = %e, "live hub stopped");
            }
        }));
        // Where the hub starts, read before the gateway listens: every event appended through
        // this gateway comes after it.
        let hub_after = log.last_seq().await?;
        tasks.push(tokio::spawn(hub.clone().follow(
            log.clone(),
            dyn_store.clone(),
            Some(hub_after),
        )));
        let mut gateway_config = opts.gateway.clone();
        if let Some(w) = &opts.channels.webpush {
            gateway_config.vapid_public_key = Some(
                exchange::channels::webpush::vapid_public_key(&w.vapid_private_key)
                    .map_err(|e| anyhow::anyhow!(e))?,
            );
        }
        gateway_config.links = opts.channels.links.clone();
        gateway_config.channels = std::iter::once("websocket")
            .chain(channels.names())
            .map(str::to_owned)
            .collect();
        let state = AppState::new(gateway::state::Shared {
            log: log.clone(),
            store: dyn_store.clone(),
            verifier: Arc::new(verifier),
            hub: hub.clone(),
            config: Arc::new(gateway_config),
            applied,
            presence: Some(presence.clone()),
            rate: Default::default(),
            writes: Default::default(),
            sockets: Default::default(),
            metrics: Arc::new(gateway::metrics::Metrics::with_dispatch(
                dispatching.then_some(&dispatch_metrics),
            )),
            thread_rules: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .with_context(|| format!("binding {}", opts.listen))?;
        let bound = listener.local_addr()?;
        addr = Some(bound);
        let timeouts = gateway::serve::HttpTimeouts {
            header: state.config.header_timeout,
        };
        server = Some(serve_http(listener, gateway::router(state), timeouts, rx));
        tracing::info!(%bound, "gateway listening");
    } else if let Some(listen) = opts.health_listen {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let bound = listener.local_addr()?;
        addr = Some(bound);
        let role = format!("{:?}", opts.role).to_lowercase();
        // Metrics of a role without the gateway: the projection's checkpoint and lag.
        let metrics = Arc::new(gateway::metrics::Metrics::with_dispatch(
            dispatching.then_some(&dispatch_metrics),
        ));
        let (m_log, m_store) = (log.clone(), dyn_store.clone());
        let app = axum::Router::new()
            .route(
                "/api/v1/ping",
                axum::routing::get(move || {
                    let role = role.clone();
                    async move {
                        axum::Json(
                            serde_json::json!({"ok": true, "service": "msgxc", "role": role}),
                        )
                    }
                }),
            )
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let (metrics, log, store) = (metrics.clone(), m_log.clone(), m_store.clone());
                    async move {
                        let scraped = gateway::metrics::scrape(&log, store.as_ref(), 0).await;
                        let text = metrics.render(&scraped);
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                gateway::metrics::CONTENT_TYPE,
                            )],
                            text,
                        )
                    }
                }),
            );
        let timeouts = gateway::serve::HttpTimeouts {
            header: opts.gateway.header_timeout,
        };
        server = Some(serve_http(listener, app, timeouts, rx));
        tracing::info!(%bound, "health endpoint listening");
    }
    Ok(Running {
        addr,
        store: dyn_store,
        sqlite,
        log,
        hub,
        shutdown: Some(tx),
        tasks,
        server,
    })
}
