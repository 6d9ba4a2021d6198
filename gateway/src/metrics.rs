//! Prometheus metrics (`GET /metrics`, OpenMetrics text): HTTP requests by route, method and
//! status with latency histograms, JetStream append latency, projector lag, open live
//! connections, and the dispatcher's provider calls when it runs in the same process. Counters live here and are updated as requests pass; lag and connections are
//! read when scraped.

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
    sockets: Gauge,
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
        let sockets = Gauge::default();
        registry.register(
            "open_sockets",
            "Live connections (WebSocket and SSE) open on this gateway",
            sockets.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            appends,
            lag_events,
            checkpoint,
            sockets,
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
    pub fn render(&self, last_seq: Option<u64>, checkpoint: Option<u64>, sockets: usize) -> String {
        if let Some(cp) = checkpoint {
            self.checkpoint.set(cp);
            if let Some(last) = last_seq {
                self.lag_events
                    .set(i64::try_from(last.saturating_sub(cp)).unwrap_or(i64::MAX));
            }
        }
        self.sockets.set(i64::try_from(sockets).unwrap_or(i64::MAX));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
