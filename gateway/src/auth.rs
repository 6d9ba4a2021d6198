//! JWT authentication. The algorithm is pinned by configuration (HS256 with a shared secret,
//! RS256/ES256 with a public key, or each key's own algorithm in a JWKS, see [`crate::jwks`]),
//! `exp` is required, `iss`/`aud` are checked when configured.
//! uid = `sub`; admin = the `roles` claim contains `"admin"`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::request::Parts;
use exchange::Actor;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::jwks::Jwks;
use crate::state::AppState;

/// Where tokens are verified against.
#[derive(Clone)]
pub enum JwtKey {
    /// HS256 shared secret.
    Secret(Vec<u8>),
    /// PEM public key; the algorithm is RS256 or ES256.
    PublicPem { pem: Vec<u8>, algorithm: Algorithm },
    /// A key set read (and read again) from an issuer; a token names its key by `kid`.
    Jwks(Arc<Jwks>),
}

/// The keys a verifier checks signatures with.
#[derive(Clone)]
enum Keys {
    Fixed(DecodingKey),
    Set(Arc<Jwks>),
}

#[derive(Clone)]
pub struct JwtVerifier {
    keys: Keys,
    validation: Validation,
    /// Longest lifetime (`exp` - `iat`) accepted, in seconds, when set.
    max_lifetime: Option<u64>,
    /// Tokens verified already, with their principal and expiry: an app sends the same token
    /// with every request until it expires, and checking its signature and parsing its claims
    /// again each time was about a tenth of the gateway's CPU per publish. A hit still checks
    /// the expiry; failures are never cached.
    verified: Arc<Mutex<HashMap<Box<str>, Verified>>>,
}

#[derive(Clone)]
struct Verified {
    actor: Actor,
    exp: u64,
}

/// Clock leeway in seconds for `exp`, `nbf` and `iat` unless configured.
pub const DEFAULT_LEEWAY: u64 = 30;

/// Tokens remembered at most; the whole cache is dropped when it is full (a token verified
/// again costs one signature check).
const VERIFIED_CAPACITY: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("invalid JWT key: {0}")]
    Invalid(String),
    #[error("unsupported JWT algorithm {0}; use HS256, RS256 or ES256")]
    Algorithm(String),
}

/// Parses an algorithm name accepted by the configuration.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, KeyError> {
    match name.to_ascii_uppercase().as_str() {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        other => Err(KeyError::Algorithm(other.to_owned())),
    }
}

/// Picks RS256 or ES256 for a PEM public key by trying to load it as each.
pub fn detect_pem_algorithm(pem: &[u8]) -> Result<Algorithm, KeyError> {
    if DecodingKey::from_rsa_pem(pem).is_ok() {
        Ok(Algorithm::RS256)
    } else if DecodingKey::from_ec_pem(pem).is_ok() {
        Ok(Algorithm::ES256)
    } else {
        Err(KeyError::Invalid(
            "the PEM file holds neither an RSA nor an EC (P-256) public key".into(),
        ))
    }
}

impl JwtVerifier {
    pub fn new(
        key: &JwtKey,
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Result<Self, KeyError> {
        let (keys, algorithm) = match key {
            JwtKey::Secret(s) => {
                if s.len() < 16 {
                    return Err(KeyError::Invalid(
                        "the HS256 secret must be at least 16 bytes".into(),
                    ));
                }
                (Keys::Fixed(DecodingKey::from_secret(s)), Algorithm::HS256)
            }
            JwtKey::PublicPem { pem, algorithm } => {
                let k = match algorithm {
                    Algorithm::RS256 => DecodingKey::from_rsa_pem(pem),
                    Algorithm::ES256 => DecodingKey::from_ec_pem(pem),
                    other => return Err(KeyError::Algorithm(format!("{other:?}"))),
                }
                .map_err(|e| KeyError::Invalid(e.to_string()))?;
                (Keys::Fixed(k), *algorithm)
            }
            // Each token's algorithm is its key's (`verify_uncached` narrows this per token).
            JwtKey::Jwks(set) => (Keys::Set(set.clone()), Algorithm::RS256),
        };
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = DEFAULT_LEEWAY;
        validation.validate_nbf = true;
        match issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if matches!(keys, Keys::Set(_)) {
            validation.algorithms = vec![Algorithm::RS256, Algorithm::ES256];
        }
        Ok(Self {
            keys,
            validation,
            max_lifetime: None,
            verified: Arc::default(),
        })
    }

    /// Sets the clock leeway (seconds) for `exp`, `nbf` and `iat`, and the longest lifetime a
    /// token may have (`exp` minus `iat`, or minus now without `iat`), if any.
    pub fn with_rules(mut self, leeway: u64, max_lifetime: Option<u64>) -> Self {
        self.validation.leeway = leeway;
        self.max_lifetime = max_lifetime;
        self
    }

    /// Verifies a token and returns its principal: from the cache of verified tokens while it
    /// has not expired, otherwise checked in full (and remembered when valid).
    pub async fn verify(&self, token: &str) -> Result<Actor, ApiError> {
        let now = jsonwebtoken::get_current_timestamp();
        let leeway = self.validation.leeway;
        if let Ok(mut cache) = self.verified.lock()
            && let Some(hit) = cache.get(token)
        {
            // Expired the way the full check judges it; the full check then words the error.
            if hit.exp.saturating_add(leeway) >= now {
                return Ok(hit.actor.clone());
            }
            cache.remove(token);
        }
        let (actor, exp) = self.verify_uncached(token).await?;
        if let Ok(mut cache) = self.verified.lock() {
            if cache.len() >= VERIFIED_CAPACITY {
                cache.clear();
            }
            cache.insert(
                token.into(),
                Verified {
                    actor: actor.clone(),
                    exp,
                },
            );
        }
        Ok(actor)
    }

    /// Checks a token's signature and claims without the cache: its principal and expiry.
    pub async fn verify_uncached(&self, token: &str) -> Result<(Actor, u64), ApiError> {
        let data = match &self.keys {
            Keys::Fixed(key) => jsonwebtoken::decode::<Claims>(token, key, &self.validation),
            Keys::Set(set) => {
                let header = jsonwebtoken::decode_header(token)
                    .map_err(|e| ApiError::unauthorized(describe(&e)))?;
                let kid = header.kid.ok_or_else(|| {
                    ApiError::unauthorized("token names no key (kid) of this server's key set")
                })?;
                let (key, algorithm) = set.key(&kid).await.ok_or_else(|| {
                    ApiError::unauthorized(
                        "token is signed with a key (kid) not in the issuer's key set",
                    )
                })?;
                // The key's algorithm, not the one the token claims (no RS256/HS256 confusion).
                let mut validation = self.validation.clone();
                validation.algorithms = vec![algorithm];
                jsonwebtoken::decode::<Claims>(token, &key, &validation)
            }
        }
        .map_err(|e| ApiError::unauthorized(describe(&e)))?;
        let c = data.claims;
        let now = jsonwebtoken::get_current_timestamp();
        let leeway = self.validation.leeway;
        // `nbf` is checked by the library; a token issued in the future is refused here.
        if c.iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
            return Err(ApiError::unauthorized(
                "token is issued in the future (iat)",
            ));
        }
        if let Some(max) = self.max_lifetime {
            let lifetime = c.exp.saturating_sub(c.iat.unwrap_or(now));
            if lifetime > max {
                return Err(ApiError::unauthorized(format!(
                    "token lifetime {lifetime} s is over the {max} s this server accepts"
                )));
            }
        }
        if c.sub.is_empty() || c.sub.len() > 256 || c.sub.chars().any(char::is_control) {
            return Err(ApiError::unauthorized(
                "token subject must be 1-256 printable characters",
            ));
        }
        Ok((
            Actor {
                uid: c.sub,
                roles: c.roles.into_vec(),
            },
            c.exp,
        ))
    }
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "token expired".into(),
        K::InvalidSignature => "token signature is invalid".into(),
        K::InvalidAlgorithm => "token algorithm is not the one this server accepts".into(),
        K::InvalidIssuer => "token issuer is not accepted".into(),
        K::InvalidAudience => "token audience is not accepted".into(),
        K::MissingRequiredClaim(c) => format!("token lacks the required claim {c}"),
        K::ImmatureSignature => "token is not valid yet".into(),
        _ => format!("token is invalid: {e}"),
    }
}

/// The claims msgxc reads. `roles` may be an array or a space-separated string.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Roles::is_empty")]
    pub roles: Roles,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Roles {
    #[default]
    None,
    List(Vec<String>),
    Spaced(String),
}

impl Roles {
    fn is_empty(&self) -> bool {
        matches!(self, Roles::None)
    }

    fn into_vec(self) -> Vec<String> {
        let mut seen = HashSet::new();
        let list = match self {
            Roles::None => Vec::new(),
            Roles::List(l) => l,
            Roles::Spaced(s) => s.split_whitespace().map(str::to_owned).collect(),
        };
        list.into_iter()
            .filter(|r| seen.insert(r.clone()))
            .collect()
    }
}

/// Signs a token (for `msgxc token` and tests).
pub fn sign(
    key: &EncodingKey,
    algorithm: Algorithm,
    sub: &str,
    roles: &[String],
    ttl_secs: u64,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = Claims {
        sub: sub.to_owned(),
        exp: now + ttl_secs,
        roles: if roles.is_empty() {
            Roles::None
        } else {
            Roles::List(roles.to_vec())
        },
        iss: issuer.map(str::to_owned),
        aud: audience.map(str::to_owned),
        iat: Some(now),
    };
    jsonwebtoken::encode(&Header::new(algorithm), &claims, key)
}

/// The caller of a request whose `Authorization: Bearer` token a middleware (the write
/// limiter) verified already; [`Caller`] takes it instead of checking the token again.
#[derive(Clone)]
pub struct VerifiedCaller(pub Actor);

/// The authenticated caller of a request (from `Authorization: Bearer`).
pub struct Caller(pub Actor);

impl Caller {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.0.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden("this call needs the admin role"))
        }
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    bearer_of(&parts.headers)
}

/// The token of an `Authorization: Bearer` header, or of `Authorization: Token` (the Django
/// REST scheme seeds 002 and 003 document; the token is the same JWT).
pub fn bearer_of(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?;
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
        .then_some(token.trim())
}

/// Token from `?token=` (browsers cannot set headers on WebSockets).
fn query_token(parts: &Parts) -> Option<String> {
    let q = parts.uri.query()?;
    q.split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .map(percent_decode)
}

/// Token from the `xsajwt` cookie.
fn cookie_token(parts: &Parts) -> Option<String> {
    for cookies in parts.headers.get_all(axum::http::header::COOKIE) {
        let Ok(cookies) = cookies.to_str() else {
            continue;
        };
        for c in cookies.split(';') {
            if let Some(v) = c.trim().strip_prefix("xsajwt=") {
                return Some(v.to_owned());
            }
        }
    }
    None
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(VerifiedCaller(actor)) = parts.extensions.remove::<VerifiedCaller>() {
            return Ok(Caller(actor));
        }
        let token = bearer(parts).ok_or_else(|| {
            ApiError::unauthorized("missing Authorization: Bearer <token> header")
        })?;
        state.verifier.verify(token).await.map(Caller)
    }
}

/// The caller of a WebSocket/SSE request: header, `?token=` or cookie `xsajwt`.
///
/// A browser sends the cookie with any page's WebSocket handshake (no CORS rule guards a
/// WebSocket), so a hostile page could read a signed-in user's frames: a cookie is accepted
/// only without an `Origin` (not a browser, or a same-origin `EventSource`), from the
/// gateway's own origin (the `Origin`'s host is the request's `Host`), or from an origin on
/// `MSGXC_ALLOWED_ORIGINS`. A token in the header or the query string was put there by the
/// page itself and is not affected.
pub struct StreamCaller(pub Actor);

/// Whether a cookie-authenticated request comes from a page allowed to use the cookie.
fn cookie_origin_allowed(parts: &Parts, allowed: &[String]) -> bool {
    let Some(origin) = parts.headers.get(axum::http::header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    if allowed.contains(&origin) {
        return true;
    }
    // Same origin: the page was served by this host (behind a proxy the Host header is the
    // public one).
    // (HTTP/2 carries it as the URI's authority.)
    let host = parts
        .headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .map(str::to_ascii_lowercase);
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    matches!((origin_host, host), (Some(o), Some(h)) if o == h)
}

impl FromRequestParts<AppState> for StreamCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = match bearer(parts)
            .map(str::to_owned)
            .or_else(|| query_token(parts))
        {
            Some(t) => t,
            None => {
                let t = cookie_token(parts).ok_or_else(|| {
                    ApiError::unauthorized(
                        "missing token: send Authorization: Bearer, ?token= or the xsajwt cookie",
                    )
                })?;
                if !cookie_origin_allowed(parts, &state.config.allowed_origins) {
                    return Err(ApiError::forbidden(
                        "the xsajwt cookie is accepted only from this gateway's origin or one on MSGXC_ALLOWED_ORIGINS",
                    ));
                }
                t
            }
        };
        state.verifier.verify(&token).await.map(StreamCaller)
    }
}

impl OptionalFromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, ApiError> {
        match bearer(parts) {
            None => Ok(None),
            Some(t) => state.verifier.verify(t).await.map(|a| Some(Caller(a))),
        }
    }
}

/// Builds an encoding key for `msgxc token` from the same configuration.
pub fn encoding_key(
    key: &JwtKey,
    private_pem: Option<&[u8]>,
) -> Result<(EncodingKey, Algorithm), KeyError> {
    match key {
        JwtKey::Secret(s) => Ok((EncodingKey::from_secret(s), Algorithm::HS256)),
        JwtKey::Jwks(_) => Err(KeyError::Invalid(
            "with MSGXC_JWT_JWKS_URL tokens are signed by the issuer, not by msgxc".into(),
        )),
        JwtKey::PublicPem { algorithm, .. } => {
            let pem = private_pem.ok_or_else(|| {
                KeyError::Invalid(
                    "signing RS256/ES256 tokens needs the private key (MSGXC_JWT_PRIVATE_KEY)"
                        .into(),
                )
            })?;
            let k = match algorithm {
                Algorithm::RS256 => EncodingKey::from_rsa_pem(pem),
                _ => EncodingKey::from_ec_pem(pem),
            }
            .map_err(|e| KeyError::Invalid(e.to_string()))?;
            Ok((k, *algorithm))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(&JwtKey::Secret(SECRET.to_vec()), None, None).unwrap()
    }

    /// Verification on a fixed key, run to completion on a runtime of its own.
    trait Check {
        fn check(&self, token: &str) -> Result<Actor, ApiError>;
    }

    impl Check for JwtVerifier {
        fn check(&self, token: &str) -> Result<Actor, ApiError> {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(self.verify(token))
        }
    }

    #[test]
    fn accepts_a_valid_token_and_reads_roles() {
        let key = EncodingKey::from_secret(SECRET);
        let t = sign(
            &key,
            Algorithm::HS256,
            "alice",
            &["admin".into()],
            60,
            None,
            None,
        )
        .unwrap();
        let actor = verifier().check(&t).unwrap();
        assert_eq!(actor.uid, "alice");
        assert!(actor.is_admin());
    }

    #[test]
    fn a_remembered_token_is_answered_from_the_cache_until_it_expires() {
        let key = EncodingKey::from_secret(SECRET);
        let t = sign(&key, Algorithm::HS256, "alice", &[], 60, None, None).unwrap();
        let v = verifier();
        assert_eq!(v.check(&t).unwrap().uid, "alice");
        assert_eq!(v.verified.lock().unwrap().len(), 1);
        // The cache answers (its entry says bob, so this proves it was consulted)...
        v.verified
            .lock()
            .unwrap()
            .get_mut(t.as_str())
            .unwrap()
            .actor
            .uid = "bob".into();
        assert_eq!(v.check(&t).unwrap().uid, "bob");
        // ...but not past the expiry (and leeway): the full check runs and forgets nothing it
        // should not: this token really is valid, so it is alice again.
        let now = jsonwebtoken::get_current_timestamp();
        v.verified.lock().unwrap().get_mut(t.as_str()).unwrap().exp = now - 31;
        assert_eq!(v.check(&t).unwrap().uid, "alice");
        // A token that fails is never remembered.
        let other = EncodingKey::from_secret(b"another secret of 32 bytes......");
        let forged = sign(&other, Algorithm::HS256, "alice", &[], 60, None, None).unwrap();
        assert!(v.check(&forged).is_err());
        assert!(!v.verified.lock().unwrap().contains_key(forged.as_str()));
    }

    #[test]
    fn not_before_issued_at_and_the_longest_lifetime_are_checked() {
        let key = EncodingKey::from_secret(SECRET);
        let now = jsonwebtoken::get_current_timestamp();
        let token = |claims: serde_json::Value| {
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
        };
        let message = |v: &JwtVerifier, t: &str| match v.check(t) {
            Ok(a) => format!("ok {}", a.uid),
            Err(e) => e.message,
        };
        let v = verifier();
        let early = token(serde_json::json!({"sub": "a", "exp": now + 600, "nbf": now + 300}));
        assert_eq!(message(&v, &early), "token is not valid yet");
        // Within the leeway it is accepted (clocks differ a little).
        let nearly = token(serde_json::json!({"sub": "a", "exp": now + 600, "nbf": now + 10}));
        assert_eq!(message(&v, &nearly), "ok a");
        let future = token(serde_json::json!({"sub": "a", "exp": now + 600, "iat": now + 300}));
        assert_eq!(message(&v, &future), "token is issued in the future (iat)");
        // The longest lifetime, when configured: from iat, or from now without one.
        let v = verifier().with_rules(5, Some(3600));
        let day = token(serde_json::json!({"sub": "a", "exp": now + 86_400, "iat": now}));
        assert_eq!(
            message(&v, &day),
            "token lifetime 86400 s is over the 3600 s this server accepts"
        );
        let no_iat = token(serde_json::json!({"sub": "a", "exp": now + 7200}));
        assert!(message(&v, &no_iat).starts_with("token lifetime"));
        let hour = token(serde_json::json!({"sub": "a", "exp": now + 3000, "iat": now}));
        assert_eq!(message(&v, &hour), "ok a");
        // The leeway is the configured one: 10 s early is too early with 5 s.
        assert_eq!(message(&v, &nearly), "token is not valid yet");
    }

    #[test]
    fn the_cache_of_verified_tokens_stays_bounded() {
        let key = EncodingKey::from_secret(SECRET);
        let v = verifier();
        for i in 0..VERIFIED_CAPACITY + 5 {
            let t = sign(
                &key,
                Algorithm::HS256,
                &format!("u{i}"),
                &[],
                60,
                None,
                None,
            )
            .unwrap();
            v.check(&t).unwrap();
            assert!(v.verified.lock().unwrap().len() <= VERIFIED_CAPACITY);
        }
    }

    #[test]
    fn rejects_alg_none_and_other_algorithms() {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&format!(
                r#"{{"sub":"mallory","exp":{exp},"roles":["admin"]}}"#
            ))
        );
        assert_eq!(verifier().check(&none).unwrap_err().code, "unauthorized");
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &serde_json::json!({"sub":"mallory","exp":exp}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(verifier().check(&hs512).unwrap_err().code, "unauthorized");
    }

    #[test]
    fn spaced_roles_and_percent_decoding() {
        assert_eq!(
            Roles::Spaced("admin  user admin".into()).into_vec(),
            vec!["admin".to_string(), "user".to_string()]
        );
        assert_eq!(percent_decode("a%2Eb%zz"), "a.b%zz");
    }
}
