//! Verification keys from a JSON Web Key Set (RFC 7517): an OIDC issuer's `jwks_uri` (Auth0,
//! Keycloak, ...) or a file. Tokens name their key by `kid`; the set is read at start, again
//! every [`REFRESH_EVERY`], and when a token names a key not in it (at most once per
//! [`MIN_REFETCH`], so tokens with made-up `kid`s cannot make the gateway hammer the issuer).
//! Only RSA keys (RS256) and P-256 keys (ES256) are taken: a symmetric key in a public set
//! would let anyone who can read the set sign tokens.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::auth::KeyError;

/// How often the set is read again while every `kid` is known.
pub const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// The shortest time between two reads (an unknown `kid` asks for one).
pub const MIN_REFETCH: Duration = Duration::from_secs(30);

pub struct Jwks {
    source: String,
    http: reqwest::Client,
    keys: RwLock<HashMap<String, (DecodingKey, Algorithm)>>,
    /// When the set was last read (or tried), so reads are rate-limited.
    last_read: tokio::sync::Mutex<Instant>,
    /// The shortest time between two reads an unknown `kid` asks for.
    min_refetch: Duration,
}

impl Jwks {
    /// A set to be read from `source` (an `http(s)://` URL or a file path); nothing is read
    /// until [`Jwks::load`].
    pub fn new(source: &str) -> Result<Arc<Self>, KeyError> {
        Self::with_min_refetch(source, MIN_REFETCH)
    }

    /// As [`Jwks::new`], with another shortest time between reads (tests rotate keys faster).
    pub fn with_min_refetch(source: &str, min_refetch: Duration) -> Result<Arc<Self>, KeyError> {
        if source.trim().is_empty() {
            return Err(KeyError::Invalid("the JWKS location is empty".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| KeyError::Invalid(format!("JWKS client: {e}")))?;
        Ok(Arc::new(Self {
            source: source.to_owned(),
            http,
            keys: RwLock::default(),
            last_read: tokio::sync::Mutex::new(Instant::now()),
            min_refetch,
        }))
    }

    /// Reads the set now; an error when it cannot be read or holds no usable key (a gateway
    /// configured with a set it cannot read does not start). The number of keys taken.
    pub async fn load(&self) -> Result<usize, KeyError> {
        let mut last = self.last_read.lock().await;
        *last = Instant::now();
        let keys = self.read().await.map_err(KeyError::Invalid)?;
        if keys.is_empty() {
            return Err(KeyError::Invalid(format!(
                "the JWKS at {} holds no RS256 or ES256 key with a kid",
                self.source
            )));
        }
        let n = keys.len();
        self.replace(keys);
        Ok(n)
    }

    /// The key a token's `kid` names, reading the set again first when it is unknown (and the
    /// last read is old enough).
    pub async fn key(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        if let Some(k) = self.known(kid) {
            return Some(k);
        }
        self.refresh(self.min_refetch).await;
        self.known(kid)
    }

    fn known(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        self.keys.read().ok()?.get(kid).cloned()
    }

    fn replace(&self, keys: HashMap<String, (DecodingKey, Algorithm)>) {
        if let Ok(mut k) = self.keys.write() {
            *k = keys;
        }
    }

    /// Reads the set again unless it was read less than `min_age` ago. A failed read keeps
    /// the keys known so far (an issuer's outage must not lock every user out).
    pub async fn refresh(&self, min_age: Duration) {
        let mut last = self.last_read.lock().await;
        if last.elapsed() < min_age {
            return;
        }
        *last = Instant::now();
        match self.read().await {
            Ok(keys) if !keys.is_empty() => {
                tracing::info!(source = %self.source, keys = keys.len(), "JWKS read");
                self.replace(keys);
            }
            Ok(_) => {
                tracing::warn!(source = %self.source, "JWKS holds no usable key; keeping the known ones")
            }
            Err(e) => {
                tracing::warn!(source = %self.source, error = %e, "JWKS unreadable; keeping the known keys")
            }
        }
    }

    /// Reads the set again every [`REFRESH_EVERY`] until the task is dropped.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let jwks = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REFRESH_EVERY).await;
                jwks.refresh(jwks.min_refetch).await;
            }
        })
    }

    async fn read(&self) -> Result<HashMap<String, (DecodingKey, Algorithm)>, String> {
        let body = if self.source.starts_with("http://") || self.source.starts_with("https://") {
            let resp = self
                .http
                .get(&self.source)
                .send()
                .await
                .map_err(|e| format!("fetching {}: {e}", self.source))?;
            if !resp.status().is_success() {
                return Err(format!("fetching {}: HTTP {}", self.source, resp.status()));
            }
            resp.bytes()
                .await
                .map_err(|e| format!("reading {}: {e}", self.source))?
                .to_vec()
        } else {
            tokio::fs::read(&self.source)
                .await
                .map_err(|e| format!("reading {}: {e}", self.source))?
        };
        let set: JwkSet = serde_json::from_slice(&body)
            .map_err(|e| format!("{} is not a JWKS: {e}", self.source))?;
        Ok(usable_keys(&set))
    }
}

/// The set's RS256 and ES256 keys by `kid`; others (no `kid`, symmetric, other curves or
/// algorithms) are left out.
fn usable_keys(set: &JwkSet) -> HashMap<String, (DecodingKey, Algorithm)> {
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = &jwk.common.key_id else {
            continue;
        };
        let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
                if p.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => continue,
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(kid.clone(), (key, algorithm));
            }
            Err(e) => tracing::warn!(kid, error = %e, "JWKS key unusable"),
        }
    }
    keys
}
