//! Request extractors with precise 400/413 errors: JSON bodies (naming the offending field),
//! pagination parameters and path ids.

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON body of at most the configured size. Any content type is accepted (curl's `-d` sends
/// a form type); the body must be JSON.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.config.body_limit;
        let wait = state.config.body_timeout;
        let bytes = tokio::time::timeout(wait, axum::body::to_bytes(req.into_body(), limit))
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!("the request body did not arrive within {wait:?}"),
                )
            })?
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("request body is larger than {limit} bytes"),
                )
            })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses JSON, reporting the path of the first bad field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "invalid_json",
            "request body is empty; expected a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize::<_, T>(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        json_error(&path, &inner)
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid JSON: {e}")))?;
    Ok(value)
}

fn json_error(path: &str, e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::bad_request("invalid_json", format!("invalid JSON: {e}"))
        }
        Category::Data => {
            let text = e.to_string();
            // serde reports a missing field at its parent's path: name the field itself.
            if let Some(name) = text
                .strip_prefix("missing field `")
                .and_then(|r| r.split('`').next())
            {
                let field = if path == "." || path.is_empty() {
                    name.to_owned()
                } else {
                    format!("{path}.{name}")
                };
                let mut err = ApiError::field(field, "is required");
                err.code = "missing_field";
                return err;
            }
            let message = text.split(" at line ").next().unwrap_or(&text).to_owned();
            if path == "." || path.is_empty() {
                ApiError::bad_request("invalid_body", message)
            } else {
                ApiError::field(path, message)
            }
        }
    }
}

/// `limit`/`offset` query parameters (defaults 20 and 0, limit at most 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    pub limit: u32,
    pub offset: u64,
}

pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;

impl Paging {
    pub fn from_query(q: &std::collections::HashMap<String, String>) -> Result<Self, ApiError> {
        // Seed 003's `page` (1-based) and `size` are accepted as well.
        if !q.contains_key("limit")
            && !q.contains_key("offset")
            && (q.contains_key("page") || q.contains_key("size"))
        {
            return Self::by_page(q, "size", DEFAULT_LIMIT, MAX_LIMIT);
        }
        let limit = match q.get("limit") {
            None => DEFAULT_LIMIT,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ApiError::field(
                        "limit",
                        format!("must be an integer from 1 to {MAX_LIMIT}"),
                    ));
                }
            },
        };
        let offset = match q.get("offset") {
            None => 0,
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| ApiError::field("offset", "must be a non-negative integer"))?,
        };
        Ok(Self { limit, offset })
    }

    /// Page-number paging: `page` from 1 (default 1) and pages of `size_key` rows, from 1 to
    /// `max` (default `default`).
    pub fn by_page(
        q: &std::collections::HashMap<String, String>,
        size_key: &str,
        default: u32,
        max: u32,
    ) -> Result<Self, ApiError> {
        let size = match q.get(size_key) {
            None => default,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::field(size_key, format!("must be an integer from 1 to {max}"))
                })?,
        };
        let page = match q.get("page") {
            None => 1,
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| ApiError::field("page", "must be an integer from 1"))?,
        };
        Ok(Self {
            limit: size,
            offset: (page - 1).saturating_mul(u64::from(size)),
        })
    }

    /// DRF-style `next`/`previous` links for a listing at `path`.
    pub fn links(&self, path: &str, total: u64) -> (Option<String>, Option<String>) {
        let next_offset = self.offset.saturating_add(u64::from(self.limit));
        let next = (next_offset < total)
            .then(|| format!("{path}?limit={}&offset={next_offset}", self.limit));
        let previous = (self.offset > 0).then(|| {
            let prev = self.offset.saturating_sub(u64::from(self.limit));
            format!("{path}?limit={}&offset={prev}", self.limit)
        });
        (next, previous)
    }
}

/// An optional RFC 3339 query parameter, naming it on error.
pub fn time_param(
    q: &std::collections::HashMap<String, String>,
    key: &str,
) -> Result<Option<time::OffsetDateTime>, ApiError> {
    q.get(key)
        .map(|v| {
            time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                .map_err(|_| ApiError::field(key, "must be an RFC 3339 timestamp"))
        })
        .transpose()
}

/// Parses a UUID path or body parameter, naming it on error.
/// An optional integer query parameter within `range` (`default` when absent), refused in the
/// API's error shape with `message` otherwise.
pub fn bounded(
    q: &std::collections::HashMap<String, String>,
    name: &str,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
    message: &str,
) -> Result<u32, ApiError> {
    match q.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| ApiError::field(name, message)),
    }
}

pub fn parse_id(field: &str, raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::field(field, "must be a UUID"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Body {
        tid: String,
        opts: Option<Inner>,
    }
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        urgency: u8,
    }

    #[test]
    fn names_missing_and_mistyped_fields() {
        let e = parse_json::<Body>(b"{}").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("tid"));
        assert_eq!(e.code, "missing_field");
        let e = parse_json::<Body>(br#"{"tid": 5}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("tid"));
        let e = parse_json::<Body>(br#"{"tid":"x","opts":{"urgency":"x"}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("opts.urgency"));
        let e = parse_json::<Body>(b"{not json").unwrap_err();
        assert_eq!(e.code, "invalid_json");
        let e = parse_json::<Body>(br#"{"tid":"x"} trailing"#).unwrap_err();
        assert_eq!(e.code, "invalid_json");
        let e = parse_json::<Body>(b"").unwrap_err();
        assert_eq!(e.code, "invalid_json");
    }

    #[test]
    fn paging_links() {
        let p = Paging {
            limit: 10,
            offset: 10,
        };
        let (next, prev) = p.links("/x", 25);
        assert_eq!(next.as_deref(), Some("/x?limit=10&offset=20"));
        assert_eq!(prev.as_deref(), Some("/x?limit=10&offset=0"));
        let (next, _) = p.links("/x", 20);
        assert_eq!(next, None);
    }
}
