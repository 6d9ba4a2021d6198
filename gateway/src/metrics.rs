//! Prometheus metrics (`GET /metrics`, OpenMetrics text): HTTP requests by route, method and
//! status with latency histograms, JetStream append latency, projector lag (events and
//! seconds), open live connections, the dispatch queue's depth per lane, and the dispatcher's
//! provider calls and dead letters when it runs in the same process. Counters live here and
//! are updated as requests pass; lag, depths and connections are read when scraped
//! ([`scrape`]).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LaneLabels {
    lane: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: &'static str,
}

/// Latency buckets from 0.25 ms to about 8 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    appends: Histogram,
    lag_events: Gauge,
    checkpoint: Gauge<u64, AtomicU64>,
    lag_seconds: Gauge<f64, AtomicU64>,
    sockets: Gauge,
    queue_pending: Family<LaneLabels, Gauge>,
    queue_in_flight: Family<LaneLabels, Gauge>,
}

/// What is read when `/metrics` is scraped (each part `None` when its source did not answer).
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub last_seq: Option<u64>,
    pub checkpoint: Option<u64>,
    /// Age of the oldest event the projection has not applied (0 when it has applied all).
    pub lag_seconds: Option<f64>,
    pub sockets: usize,
    pub lanes: Option<Vec<exchange::dispatch::LaneDepth>>,
}

/// Reads the stream's end, the projection's checkpoint, the age of the first event after it
/// and the dispatch lanes' depths.
pub async fn scrape(
    log: &exchange::EventLog,
    store: &dyn projections::Store,
    sockets: usize,
) -> Scrape {
    let last_seq = log.last_seq().await.ok();
    let checkpoint = store.checkpoint().await.ok();
    let lag_seconds = match (last_seq, checkpoint) {
        (Some(last), Some(cp)) if cp >= last => Some(0.0),
        (Some(_), Some(cp)) => match log.stored_at_or_after(cp + 1).await {
            Ok(Some(at)) => Some(
                (time::OffsetDateTime::now_utc() - at)
                    .as_seconds_f64()
                    .max(0.0),
            ),
            Ok(None) => Some(0.0),
            Err(_) => None,
        },
        _ => None,
    };
    let lanes = exchange::dispatch::depths(log.jetstream()).await.ok();
    Scrape {
        last_seq,
        checkpoint,
        lag_seconds,
        sockets,
        lanes,
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_dispatch(None)
    }

    /// As [`Metrics::new`], also reporting the dispatcher's provider calls when this process
    /// runs one.
    pub fn with_dispatch(dispatch: Option<&exchange::dispatch::metrics::DispatchMetrics>) -> Self {
        let mut registry = Registry::with_prefix("msgxc");
        if let Some(d) = dispatch {
            d.register(&mut registry);
        }
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        let latency: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by route and method",
            latency.clone(),
        );
        let appends = latency_histogram();
        registry.register(
            "jetstream_append_seconds",
            "Time for JetStream to acknowledge an event the gateway appended",
            appends.clone(),
        );
        let lag_events = Gauge::default();
        registry.register(
            "projector_lag_events",
            "Events in the stream not yet applied by the projection this process reads",
            lag_events.clone(),
        );
        let checkpoint = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "projector_checkpoint",
            "The last stream sequence the projection has applied",
            checkpoint.clone(),
        );
        let lag_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "projector_lag_seconds",
            "Age of the oldest event the projection this process reads has not applied",
            lag_seconds.clone(),
        );
        let sockets = Gauge::default();
        registry.register(
            "open_sockets",
            "Live connections (WebSocket and SSE) open on this gateway",
            sockets.clone(),
        );
        let queue_pending = Family::<LaneLabels, Gauge>::default();
        registry.register(
            "dispatch_queue_pending",
            "Delivery tasks waiting in each urgency lane",
            queue_pending.clone(),
        );
        let queue_in_flight = Family::<LaneLabels, Gauge>::default();
        registry.register(
            "dispatch_queue_in_flight",
            "Delivery tasks a dispatcher has pulled from each lane and not finished",
            queue_in_flight.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            appends,
            lag_events,
            checkpoint,
            lag_seconds,
            sockets,
            queue_pending,
            queue_in_flight,
        }
    }

    /// Counts one answered request; `route` is the matched route template (never the path,
    /// which holds ids).
    pub fn request(&self, route: &str, method: &'static str, status: u16, took: Duration) {
        let labels = RequestLabels {
            route: route.to_owned(),
            method,
            status,
        };
        self.requests.get_or_create(&labels).inc();
        let route = RouteLabels {
            route: labels.route,
            method,
        };
        self.latency
            .get_or_create(&route)
            .observe(took.as_secs_f64());
    }

    pub fn append(&self, took: Duration) {
        self.appends.observe(took.as_secs_f64());
    }

    /// The text exposition, with the values read at scrape time.
    pub fn render(&self, s: &Scrape) -> String {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        if let Some(cp) = s.checkpoint {
            self.checkpoint.set(cp);
            if let Some(last) = s.last_seq {
                self.lag_events.set(gauge(last.saturating_sub(cp)));
            }
        }
        if let Some(secs) = s.lag_seconds {
            self.lag_seconds.set(secs);
        }
        self.sockets.set(gauge(s.sockets as u64));
        for d in s.lanes.iter().flatten() {
            let lane = LaneLabels {
                lane: d.lane.name(),
            };
            self.queue_pending
                .get_or_create(&lane)
                .set(gauge(d.pending));
            self.queue_in_flight
                .get_or_create(&lane)
                .set(gauge(d.in_flight));
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
