//! `GET /console`: the admin console, two files embedded in the binary (no separate server, no
//! build step): a page and its module, which call the API with the admin's token. Served with
//! a Content-Security-Policy that allows only this origin's scripts and calls.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/app.js");
const DOCS_SCRIPT: &str = include_str!("../../console/docs.js");
/// Scripts and calls from this origin only; the page's own inline style.
pub(crate) const POLICY: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                      frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

pub async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
}

pub async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
}

/// The API reference page's script (`/api/v1/docs`).
pub async fn docs_script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DOCS_SCRIPT,
    )
}
