//! OpenTelemetry export of the exchange's spans over OTLP/HTTP (protobuf), off unless an
//! endpoint is configured with the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`,
//! `OTEL_BSP_*` and `OTEL_EXPORTER_OTLP_HEADERS` as the SDK reads them).
//!
//! Spans: `request` (the gateway, continuing a caller's `traceparent`), `fold` (the projector,
//! per traced event) and `dispatch` (the dispatcher, per task); `exchange::trace` carries the
//! context between them through the event's header and the task.

use async_trait::async_trait;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::registry::LookupSpan;

/// Whether the environment configures an OTLP trace endpoint.
pub fn configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()))
}

/// The exporter's HTTP client: the exchange's reqwest, its requests run on the exchange's
/// runtime (the SDK's batch processor exports from a thread of its own).
#[derive(Debug, Clone)]
struct Client {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let http = self.http.clone();
        let (status, headers, body) = self
            .runtime
            .spawn(async move {
                let resp = http.execute(request).await?;
                let (status, headers) = (resp.status(), resp.headers().clone());
                let body = resp.bytes().await?;
                Ok::<_, reqwest::Error>((status, headers, body))
            })
            .await??;
        let mut resp = Response::builder().status(status).body(body)?;
        *resp.headers_mut() = headers;
        Ok(resp)
    }
}

/// The tracing layer that exports the exchange's spans, and the provider to shut down (it
/// sends what is still buffered) when the command ends. `Ok(None)` when not configured.
pub fn layer<S>(
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<Option<(impl Layer<S> + Send + Sync, SdkTracerProvider)>>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    if !configured() {
        return Ok(None);
    }
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Client { http, runtime })
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("msgxc");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("msgxc");
    // The exchange's own spans and the events inside them; the libraries' spans stay out.
    let targets = Targets::new()
        .with_target("gateway", LevelFilter::INFO)
        .with_target("projections", LevelFilter::INFO)
        .with_target("exchange", LevelFilter::INFO)
        .with_target("msgxc", LevelFilter::INFO);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(targets);
    exchange::trace::enable();
    Ok(Some((layer, provider)))
}
