//! The HTTP API under `/api/v1`, and the seed systems' faces beside it (`/compat/datahub/`,
//! `/compat/drf/`).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, patch, post, put};

use crate::error::ApiError;
use crate::state::AppState;

pub(crate) mod console;
mod datahub;
pub(crate) mod deliveries;
pub(crate) mod devices;
mod drf;
pub(crate) mod experiments;
pub mod fuzzing;
pub(crate) mod messages;
pub(crate) mod messaging;
pub(crate) mod notifications;
pub(crate) mod preferences;
mod presence;
pub(crate) mod private;
mod reports;
pub(crate) mod scheduled;
pub(crate) mod schemas;
pub(crate) mod stage;
mod stream;
pub(crate) mod threads;
pub(crate) mod types;
mod validate;
mod ws;

/// Seed 002's stage-based messaging (its paths end in a slash: every path is served with and
/// without one, see [`router`]).
fn stage_routes() -> Router<AppState> {
    Router::new()
        .route(
            "/schedule",
            get(stage::list::<stage::Schedules>).post(stage::create::<stage::Schedules>),
        )
        .route(
            "/schedule/{id}",
            get(stage::one::<stage::Schedules>)
                .put(stage::update::<stage::Schedules>)
                .delete(stage::delete::<stage::Schedules>),
        )
        .route(
            "/messageset",
            get(stage::list::<stage::MessageSets>).post(stage::create::<stage::MessageSets>),
        )
        .route(
            "/messageset/{id}",
            get(stage::one::<stage::MessageSets>)
                .put(stage::update::<stage::MessageSets>)
                .delete(stage::delete::<stage::MessageSets>),
        )
        .route("/messageset/{id}/messages", get(stage::messageset_messages))
        .route(
            "/message",
            get(stage::list::<stage::Messages>).post(stage::create::<stage::Messages>),
        )
        .route(
            "/message/{id}",
            get(stage::one::<stage::Messages>)
                .put(stage::update::<stage::Messages>)
                .delete(stage::delete::<stage::Messages>),
        )
        .route("/message/{id}/content", get(stage::message_content))
        .route(
            "/binarycontent",
            get(stage::binarycontents).post(stage::create_binarycontent),
        )
        .route(
            "/binarycontent/{id}",
            get(stage::binarycontent)
                .put(stage::update_binarycontent)
                .delete(stage::delete_binarycontent),
        )
        .route(
            "/subscriptions",
            get(stage::subscriptions).post(stage::create_subscription),
        )
        .route("/subscriptions/request", post(stage::request_subscription))
        .route(
            "/subscriptions/{id}",
            get(stage::subscription)
                .put(stage::update_subscription)
                .delete(stage::delete_subscription),
        )
        .route("/subscriptions/{id}/send", post(stage::send_subscription))
}

pub fn router(state: AppState) -> Router {
    let limits = state.clone();
    let api = Router::new()
        .route("/ping", get(ping))
        .route("/health", get(ping))
        .route("/openapi.json", get(crate::openapi::json))
        .route("/docs", get(crate::openapi::page))
        .route("/enlist", post(devices::enlist))
        .route("/devices", get(devices::list))
        .route("/devices/channels", get(devices::per_channel))
        .route("/devices/{id}", delete(devices::remove))
        .route("/webpush/vapid-public-key", get(devices::vapid_public_key))
        .route("/threads", post(threads::create))
        .route("/threads/{tid}", get(threads::get))
        .route("/threads/{tid}/messages", get(threads::messages))
        .route("/subscribe", post(threads::subscribe))
        .route("/unsubscribe", post(threads::unsubscribe))
        .route("/publish", post(messages::publish))
        .route("/broadcast", post(messages::broadcast))
        .route("/multicast", post(messages::multicast))
        .route("/send", post(messages::send))
        .route(
            "/notifications",
            get(notifications::list).patch(notifications::mark_read),
        )
        .route(
            "/notifications/stats",
            get(notifications::stats).delete(notifications::clear_stats),
        )
        .route("/notifications/read-all", post(notifications::read_all))
        .route(
            "/notifications/filter",
            get(preferences::get_filter).patch(preferences::patch_filter),
        )
        .route(
            "/notifications/{id}",
            patch(notifications::read_one).delete(notifications::delete),
        )
        .route("/notifications/{id}/archive", post(notifications::archive))
        .route("/types", get(types::list).post(types::register))
        .route("/messages", post(private::send))
        .route("/messaging", get(messaging::list).post(messaging::post))
        .route("/stats/messaging", get(messaging::stats))
        .route(
            "/messaging/{id}",
            get(messaging::get).delete(messaging::delete),
        )
        .route("/threads/by-alias/{alias}", get(threads::by_alias))
        .route("/blocks", get(private::list))
        .route(
            "/blocks/{uid}",
            put(private::block).delete(private::unblock),
        )
        .route("/connect", get(ws::connect))
        .route("/stream", get(stream::stream))
        .route("/ack", post(deliveries::ack))
        .route("/preferences", get(preferences::get).put(preferences::put))
        .route("/messages/{mid}/receipts", get(deliveries::receipts))
        .route("/messages/scheduled", get(scheduled::list))
        .route("/messages/{mid}/schedule", delete(scheduled::cancel))
        .route("/cancel", post(scheduled::cancel_posted))
        .route("/track", post(experiments::track))
        .route("/presence", get(presence::presence))
        .route("/experiments/{id}", get(experiments::report))
        .route("/experiments/{id}/promote", post(experiments::promote))
        .route("/reports/funnel", get(reports::funnel))
        .route("/deliveries/failed", get(deliveries::failed))
        .route("/deliveries/{id}/retry", post(deliveries::retry))
        .merge(stage_routes());
    let cors = cors_layer(&state.config.cors_origins);
    let seed_001 = state.config.compat.msgxc;
    let mut app = Router::new()
        .route("/metrics", get(metrics))
        .route("/r/{token}", get(experiments::redirect))
        .route("/console", get(console::index))
        .route("/console/app.js", get(console::script))
        .route("/console/docs.js", get(console::docs_script))
        .nest("/api/v1", guarded(api, &limits))
        .nest("/compat/datahub", guarded(datahub::routes(), &limits))
        .nest("/compat/drf", guarded(drf::routes(), &limits));
    // At most one face owns the root's `/notifications` (`Compat::parse` refuses both).
    if state.config.compat.datahub_root {
        app = app.merge(guarded(datahub::routes(), &limits));
    } else if state.config.compat.drf_root {
        app = app.merge(guarded(drf::routes(), &limits));
    }
    let mut app = app.fallback(not_found).with_state(state);
    if seed_001 {
        app = app.layer(axum::middleware::from_fn(crate::compat::seed_001));
    }
    let app = match cors {
        Some(layer) => app.layer(layer),
        None => app,
    };
    // Seed 002's paths end in a slash: every route answers with and without one (the slash
    // is trimmed before routing).
    Router::new()
        .fallback_service(tower_http::normalize_path::NormalizePath::trim_trailing_slash(app))
}

/// The API's request counting and write limits around a group of routes (the API, and each
/// seed's face).
fn guarded(routes: Router<AppState>, limits: &AppState) -> Router<AppState> {
    routes
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(axum::middleware::from_fn_with_state(
            limits.clone(),
            count_requests,
        ))
        .layer(axum::middleware::from_fn_with_state(
            limits.clone(),
            limit_writes,
        ))
}

/// CORS for the configured origins (outermost, so refusals such as 401 and 429 carry the
/// headers a page needs to read them). Tokens travel in `Authorization`, never in cookies
/// across origins, so credentials are not allowed.
fn cors_layer(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("last-event-id"),
                crate::compat::API_HEADER,
            ])
            .expose_headers([header::RETRY_AFTER, crate::compat::ID_HEADER])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// Liveness, plus which delivery channels this deployment has configured.
async fn ping(State(state): State<AppState>) -> axum::Json<schemas::Ping> {
    axum::Json(schemas::Ping {
        ok: true,
        service: "msgxc",
        version: env!("CARGO_PKG_VERSION"),
        channels: state.config.channels.clone(),
    })
}

/// Write limits: each POST, PUT, PATCH or DELETE takes a token of its client address's bucket
/// and, for a verified non-admin caller, of the user's; an empty bucket answers 429 with
/// `Retry-After` before anything else is done. Reads are not limited.
async fn limit_writes(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::Method;
    use axum::response::IntoResponse;
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let refused = |what: &str, retry: std::time::Duration| {
        ApiError::too_many(
            format!("too many writes from this {what}; slow down"),
            retry.as_secs_f64().ceil().max(1.0) as u64,
        )
        .into_response()
    };
    if let Some(rate) = state.config.ip_write_rate
        && let Some(addr) = req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        && let Err(retry) = state.writes.take(&format!("ip {}", addr.0.ip()), rate)
    {
        return refused("address", retry);
    }
    let mut req = req;
    if let Some(rate) = state.config.user_write_rate
        && let Some(token) = crate::auth::bearer_of(req.headers())
        && let Ok(actor) = state.verifier.verify(token).await
    {
        if !actor.is_admin()
            && let Err(retry) = state.writes.take(&format!("user {}", actor.uid), rate)
        {
            return refused("user", retry);
        }
        // The handler's `Caller` takes it from here instead of checking the token again.
        req.extensions_mut()
            .insert(crate::auth::VerifiedCaller(actor));
    }
    next.run(req).await
}

/// Counts each request to a route (by its template) with its status and time.
async fn count_requests(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::Method;
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // The routes take these methods only (others are refused before a route matches).
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        _ => "OTHER",
    };
    let started = std::time::Instant::now();
    let resp = if exchange::trace::enabled() {
        traced(req, next, method, route.clone()).await
    } else {
        next.run(req).await
    };
    let (status, took) = (resp.status().as_u16(), started.elapsed());
    tracing::debug!(
        route = %route,
        method,
        status,
        ms = took.as_secs_f64() * 1e3,
        "request"
    );
    state.metrics.request(&route, method, status, took);
    resp
}

/// Runs a request in a `request` span (tracing on) that continues the caller's trace when it
/// sent a W3C `traceparent` header: the events the request appends carry the span's context.
async fn traced(
    req: axum::extract::Request,
    next: axum::middleware::Next,
    method: &'static str,
    route: String,
) -> axum::response::Response {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{method} {route}"),
        http.request.method = method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    if let Some(parent) = req
        .headers()
        .get(exchange::trace::HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(exchange::trace::TraceParent::parse)
    {
        parent.adopt(&span);
    }
    let resp = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", resp.status().as_u16());
    resp
}

/// `GET /metrics`: Prometheus (OpenMetrics) text. No user data: routes are templates.
async fn metrics(State(state): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let scraped =
        crate::metrics::scrape(&state.log, state.store.as_ref(), state.sockets.total()).await;
    let text = state.metrics.render(&scraped);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        text,
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

/// The `Idempotency-Key` header, if any (1-200 visible ASCII characters).
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 200 && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::field("Idempotency-Key", "must be 1-200 visible ASCII characters")
        })?;
    Ok(Some(key.to_owned()))
}
