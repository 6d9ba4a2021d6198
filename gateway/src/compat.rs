//! Compatibility faces for clients written against the seed systems (`MSGXC_COMPAT`, a comma
//! list; off by default). Each rewrites answers only: the requests go through the same
//! handlers, events and read models.
//!
//! `msgxc` (seed 001, the original msgxc): on its routes (`enlist`, `publish`, `subscribe`,
//! `unsubscribe`, `broadcast`, `multicast`, `send`, and the original server's `cancel`) a
//! success answers 200 with the literal JSON
//! `true`, the id of what was made (message, thread, device) in the `Msgxc-Id` header, and an
//! error answers `{"code": <HTTP status>, "msg"}` with its status, as the seed's server did. A
//! request carrying `Msgxc-Api: 2` gets this exchange's own answers.
//!
//! `datahub-root` (seed 003): its routes (`routes::datahub`, always served under
//! `/compat/datahub/`) also at the root paths, `/notifications` and `/notification_stat`.
//! `drf-root` (seed 004): its routes (`routes::drf`, always under `/compat/drf/`) also at the
//! root paths. Only one of the two may own `/notifications`: naming both is refused.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Which compatibility faces are on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compat {
    /// Seed 001's answers on its routes.
    pub msgxc: bool,
    /// Seed 003's routes at the root paths too.
    pub datahub_root: bool,
    /// Seed 004's routes at the root paths too.
    pub drf_root: bool,
}

/// The names `MSGXC_COMPAT` accepts.
pub const NAMES: [&str; 3] = ["msgxc", "datahub-root", "drf-root"];

impl Compat {
    /// Parses a comma list (`msgxc`, `datahub-root`, `drf-root`); an unknown name is an error
    /// naming the known ones, and so is naming both root faces.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut c = Compat::default();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name.to_ascii_lowercase().as_str() {
                "msgxc" => c.msgxc = true,
                "datahub-root" => c.datahub_root = true,
                "drf-root" => c.drf_root = true,
                other => {
                    return Err(format!(
                        "MSGXC_COMPAT: unknown face {other:?} (known: {})",
                        NAMES.join(", ")
                    ));
                }
            }
        }
        if c.datahub_root && c.drf_root {
            return Err(
                "MSGXC_COMPAT: datahub-root and drf-root both want /notifications at \
                 the root; name one (the other stays under /compat/)"
                    .into(),
            );
        }
        Ok(c)
    }
}

/// The header naming what a seed-001 write made.
pub const ID_HEADER: HeaderName = HeaderName::from_static("msgxc-id");
/// The request header that asks for this exchange's own answer shape.
pub const API_HEADER: HeaderName = HeaderName::from_static("msgxc-api");

/// Seed 001's write routes (under `/api/v1`).
const SEED_001_ROUTES: [&str; 8] = [
    "/api/v1/enlist",
    "/api/v1/publish",
    "/api/v1/subscribe",
    "/api/v1/unsubscribe",
    "/api/v1/broadcast",
    "/api/v1/multicast",
    "/api/v1/send",
    "/api/v1/cancel",
];

/// Largest answer body rewritten (the routes' answers are a few hundred bytes).
const MAX_ANSWER: usize = 64 * 1024;

/// Middleware: seed 001's answer shapes on its routes (see the module docs).
pub async fn seed_001(req: Request, next: Next) -> Response {
    let path = req.uri().path().trim_end_matches('/');
    let applies = req.method() == axum::http::Method::POST
        && SEED_001_ROUTES.contains(&path)
        && req.headers().get(&API_HEADER).is_none_or(|v| v != "2");
    let resp = next.run(req).await;
    if !applies {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_ANSWER).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "answer too large").into_response();
    };
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if parts.status.is_success() {
        let id = ["mid", "tid", "id"]
            .iter()
            .find_map(|k| answer[*k].as_str())
            .and_then(|id| HeaderValue::from_str(id).ok());
        if let Some(id) = id {
            parts.headers.insert(ID_HEADER, id);
        }
        parts.status = StatusCode::OK;
        return Response::from_parts(parts, Body::from("true"));
    }
    let msg = answer["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| {
            parts
                .status
                .canonical_reason()
                .unwrap_or("error")
                .to_owned()
        });
    let body = json!({"code": parts.status.as_u16(), "msg": msg}).to_string();
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_unknown_ones_are_refused() {
        assert_eq!(Compat::parse("").unwrap(), Compat::default());
        assert!(Compat::parse(" msgxc ,").unwrap().msgxc);
        let both = Compat::parse("msgxc, DataHub-Root").unwrap();
        assert!(both.msgxc && both.datahub_root);
        assert!(Compat::parse("drf-root").unwrap().drf_root);
        let err = Compat::parse("datahub-root,drf-root").unwrap_err();
        assert!(err.contains("name one"), "{err}");
        let err = Compat::parse("msgxc,datahub").unwrap_err();
        assert!(
            err.contains("\"datahub\"") && err.contains("datahub-root"),
            "{err}"
        );
    }
}
