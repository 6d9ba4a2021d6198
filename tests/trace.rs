//! Trace context through the exchange (issue 17): with an OTLP endpoint configured, a
//! request's trace continues in the event's `traceparent` header, the projector's `fold` span
//! and the dispatcher's `dispatch` span, and the spans reach an OTLP/HTTP receiver (this test's,
//! decoding the protobuf the OpenTelemetry collector's receiver takes). Without one, nothing is
//! written.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde_json::{Value, json};
use testkit::providers::sms_sink;

use common::token;

/// One exported span, as the receiver decoded it.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    service: String,
    attributes: Vec<(String, String)>,
}

impl Span {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn value(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(V::StringValue(s)) => s.clone(),
        Some(V::IntValue(i)) => i.to_string(),
        Some(V::BoolValue(b)) => b.to_string(),
        Some(V::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// An OTLP/HTTP trace receiver (`POST /v1/traces`, protobuf) that keeps what it got.
async fn otlp_receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let kept = spans.clone();
    let router = Router::new().route(
        "/v1/traces",
        post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let kept = kept.clone();
            async move {
                assert_eq!(
                    headers.get("content-type").and_then(|v| v.to_str().ok()),
                    Some("application/x-protobuf")
                );
                let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut out = kept.lock().unwrap();
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|a| a.key == "service.name")
                        .map(|a| value(&a.value))
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            out.push(Span {
                                name: s.name,
                                trace_id: hex(&s.trace_id),
                                span_id: hex(&s.span_id),
                                parent: hex(&s.parent_span_id),
                                service: service.clone(),
                                attributes: s
                                    .attributes
                                    .iter()
                                    .map(|a| (a.key.clone(), value(&a.value)))
                                    .collect(),
                            });
                        }
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, spans)
}

/// Waits (20 s at most) for a span of `trace` named `name` whose parent is `parent`.
async fn span(spans: &Mutex<Vec<Span>>, trace: &str, name: &str, parent: &str) -> Span {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.trace_id == trace && s.name == name && s.parent == parent)
        {
            return s.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {name} span in trace {trace} under {parent}: {:#?}",
            spans.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `traceparent` header of the event with envelope id `id` (among the newest 50).
async fn event_traceparent(nats_url: &str, id: &str) -> Option<String> {
    let client = async_nats::connect(nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("MSGXC_EVENTS").await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    for seq in (last.saturating_sub(50).max(1)..=last).rev() {
        let Ok(m) = stream.direct_get(seq).await else {
            continue;
        };
        let env: Value = serde_json::from_slice(&m.payload).unwrap();
        if env["id"] == id {
            return m
                .headers
                .get(exchange::trace::HEADER)
                .map(|v| v.as_str().to_owned());
        }
    }
    panic!("no event {id} in the stream");
}

/// An admin's send to alice with a `traceparent` header: its mid.
async fn send(http: &reqwest::Client, base: &str, traceparent: &str, msg: &str) -> String {
    let r = http
        .post(format!("{base}/send"))
        .bearer_auth(token("root", true))
        .header("traceparent", traceparent)
        .json(&json!({"uid": "alice", "msg": msg}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["mid"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_requests_trace_continues_through_its_event_fold_and_dispatch() {
    const SID: &str = "AC0123456789abcdef0123456789abcdef";
    let nats = testkit::TestNats::start();
    let data = tempfile::tempdir().unwrap();
    let sms = sms_sink(SID, "sms-token").await;
    let (otlp, spans) = otlp_receiver().await;
    let listen = format!("127.0.0.1:{}", exchange::natsd::free_port().unwrap());
    let _serve = common::serve_process(
        &nats.url(),
        data.path(),
        &listen,
        &[
            ("MSGXC_SMS_ACCOUNT_SID", SID),
            ("MSGXC_SMS_AUTH_TOKEN", "sms-token"),
            ("MSGXC_SMS_FROM", "+15550001111"),
            ("MSGXC_SMS_BASE_URL", &sms.base_url),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let base = format!("http://{listen}/api/v1");
    let http = reqwest::Client::new();
    common::wait_until_up(&http, &base).await;

    // A request without trace context starts a trace of its own; its event's fold is in it.
    let r = http
        .post(format!("{base}/enlist"))
        .bearer_auth(token("alice", false))
        .json(&json!({"os": "sms", "phone": "+14155550100"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let enlist = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let found = spans
                .lock()
                .unwrap()
                .iter()
                .find(|s| s.name == "POST /api/v1/enlist")
                .cloned();
            if let Some(s) = found {
                break s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no enlist span: {:#?}",
                spans.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(enlist.parent, "", "a root span");
    assert_eq!(enlist.service, "msgxc");
    assert_eq!(enlist.attr("http.response.status_code"), Some("201"));
    let fold = span(&spans, &enlist.trace_id, "fold", &enlist.span_id).await;
    assert_eq!(fold.attr("event"), Some("device_enlisted"));

    // A caller's trace: the request continues it, the event carries the request span's
    // context, the fold continues from the event and the dispatch from the fold.
    let (trace, caller) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let mid = send(&http, &base, &format!("00-{trace}-{caller}-01"), "traced").await;
    assert_eq!(sms.wait_for(1).await.len(), 1);
    // Named as OpenTelemetry's HTTP conventions name server spans.
    let request = span(&spans, trace, "POST /api/v1/send", caller).await;
    assert_eq!(request.attr("http.route"), Some("/api/v1/send"));
    assert_eq!(request.attr("http.request.method"), Some("POST"));
    assert_eq!(
        event_traceparent(&nats.url(), &mid).await,
        Some(format!("00-{trace}-{}-01", request.span_id)),
        "the event's header is the request span's context"
    );
    let fold = span(&spans, trace, "fold", &request.span_id).await;
    assert_eq!(fold.attr("event"), Some("message_sent"));
    assert_eq!(fold.attr("id"), Some(mid.as_str()));
    let dispatch = span(&spans, trace, "dispatch", &fold.span_id).await;
    assert_eq!(dispatch.attr("mid"), Some(mid.as_str()));
    assert_eq!(dispatch.attr("recipients"), Some("1"));
    // The delivery's outcome event, appended by the dispatcher, continues from its span.
    let outcome = span(&spans, trace, "fold", &dispatch.span_id).await;
    assert_eq!(outcome.attr("event"), Some("deliveries_settled"));
    // A malformed traceparent is ignored (W3C): the request starts a trace of its own.
    let mid = send(&http, &base, "00-not-a-trace-01", "untraced caller").await;
    let tp = event_traceparent(&nats.url(), &mid)
        .await
        .expect("a header");
    let tp = exchange::trace::TraceParent::parse(&tp).expect("a W3C traceparent");
    assert_ne!(format!("{:032x}", tp.trace_id), trace);
    let request = span(
        &spans,
        &format!("{:032x}", tp.trace_id),
        "POST /api/v1/send",
        "",
    )
    .await;
    assert_eq!(request.span_id, format!("{:016x}", tp.span_id));
}

/// Tracing off (no endpoint): a caller's `traceparent` is not written into the event, so the
/// stream holds what it always held.
#[tokio::test]
async fn without_an_endpoint_no_trace_context_is_written() {
    let ex = common::Exchange::start().await;
    let r = reqwest::Client::new()
        .post(ex.url("/send"))
        .bearer_auth(token("root", true))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&json!({"uid": "alice", "msg": "hi"}))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    assert_eq!(s, 202);
    let stream_name = ex.running().log.stream_name().to_owned();
    let mut stream = ex
        .running()
        .log
        .jetstream()
        .get_stream(stream_name)
        .await
        .unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let m = stream.direct_get(last).await.unwrap();
    assert!(m.headers.get(exchange::trace::HEADER).is_none());
    assert_eq!(exchange::trace::TraceParent::current(), None);
}
