//! APNs over HTTP/2 with token-based auth: an ES256 provider token (from the .p8 key, `kid` =
//! key id, `iss` = team id) cached and renewed well before its one-hour limit.
//!
//! Urgency maps onto `apns-priority` (10 for normal and high, 5 for low and very-low) and
//! `apns-push-type` (alert, or background for very-low messages without a title). `apns-id` is
//! derived from (message, device), so a retried send is recognisable.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::json;

use crate::channels::{
    HttpPool, PUSH_CONNECTIONS, retry_after, text_of, transport_error, truncate,
};
use crate::dispatch::{Channel, Delivery, Outcome};
use crate::events::{DeviceAddress, Urgency};

#[derive(Clone)]
pub struct ApnsConfig {
    /// Contents of the AuthKey_XXXX.p8 file (PKCS#8 PEM, P-256).
    pub key_pem: Vec<u8>,
    pub key_id: String,
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// `https://api.push.apple.com` (default), `https://api.sandbox.push.apple.com`, or a test server.
    pub base_url: String,
}

/// Provider tokens are renewed after this long (Apple accepts them for an hour and rejects
/// renewals more often than every 20 minutes).
const TOKEN_LIFETIME: Duration = Duration::from_secs(45 * 60);

pub struct ApnsChannel {
    config: ApnsConfig,
    /// `base_url` parsed once; each request appends `/3/device/{token}` to its path.
    base: reqwest::Url,
    topic: HeaderValue,
    key: EncodingKey,
    http: HttpPool,
    /// The `authorization` header (`bearer <provider token>`) and when it was minted.
    token: Mutex<Option<(HeaderValue, Instant)>>,
}

const APNS_TOPIC: HeaderName = HeaderName::from_static("apns-topic");
const APNS_PUSH_TYPE: HeaderName = HeaderName::from_static("apns-push-type");
const APNS_PRIORITY: HeaderName = HeaderName::from_static("apns-priority");
const APNS_EXPIRATION: HeaderName = HeaderName::from_static("apns-expiration");
const APNS_ID: HeaderName = HeaderName::from_static("apns-id");
const APNS_COLLAPSE_ID: HeaderName = HeaderName::from_static("apns-collapse-id");

impl ApnsChannel {
    pub fn new(config: ApnsConfig) -> Result<Self, String> {
        let key = EncodingKey::from_ec_pem(&config.key_pem)
            .map_err(|e| format!("APNs key is not a P-256 PKCS#8 PEM: {e}"))?;
        let http = HttpPool::new(&config.base_url, true, PUSH_CONNECTIONS)?;
        let base = reqwest::Url::parse(&config.base_url)
            .map_err(|e| format!("APNs base URL {:?}: {e}", config.base_url))?;
        if base.cannot_be_a_base() {
            return Err(format!(
                "APNs base URL {:?} cannot take a path",
                config.base_url
            ));
        }
        let topic = HeaderValue::try_from(config.topic.as_str())
            .map_err(|e| format!("APNs topic {:?}: {e}", config.topic))?;
        Ok(Self {
            base,
            topic,
            config,
            key,
            http,
            token: Mutex::new(None),
        })
    }

    /// The cached provider token, minted anew when missing or old.
    fn provider_token(&self) -> Result<HeaderValue, String> {
        let mut guard = self
            .token
            .lock()
            .map_err(|_| "token cache poisoned".to_string())?;
        if let Some((t, at)) = guard.as_ref()
            && at.elapsed() < TOKEN_LIFETIME
        {
            return Ok(t.clone());
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.config.key_id.clone());
        let claims =
            json!({ "iss": self.config.team_id, "iat": jsonwebtoken::get_current_timestamp() });
        let t = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| e.to_string())?;
        let mut t = HeaderValue::try_from(format!("bearer {t}")).map_err(|e| e.to_string())?;
        t.set_sensitive(true);
        *guard = Some((t.clone(), Instant::now()));
        Ok(t)
    }

    fn forget_token(&self) {
        if let Ok(mut g) = self.token.lock() {
            *g = None;
        }
    }
}

/// The JSON payload: `aps` for the system, `mid` and `data` for the app.
pub fn payload(d: &Delivery<'_>) -> serde_json::Value {
    let (title, body) = text_of(d);
    let task = d.task;
    let mut aps = serde_json::Map::new();
    if background(d) {
        aps.insert("content-available".into(), 1.into());
    } else {
        let mut alert = serde_json::Map::new();
        if let Some(t) = title {
            alert.insert("title".into(), t.into());
        }
        alert.insert("body".into(), body.into());
        aps.insert("alert".into(), alert.into());
        aps.insert("sound".into(), "default".into());
    }
    let mut p = json!({ "aps": aps, "mid": task.mid });
    if let Some(data) = &task.opts.data {
        p["data"] = serde_json::Value::Object(data.clone());
    }
    if let Some(url) = &task.opts.url {
        p["url"] = url.as_str().into();
    }
    if let Some(tid) = task.tid {
        p["tid"] = tid.to_string().into();
    }
    p
}

fn background(d: &Delivery<'_>) -> bool {
    d.task.urgency() == Urgency::VeryLow && d.task.opts.title.is_none()
}

/// `apns-priority`: 10 delivers immediately, 5 lets the device batch (power-friendly).
pub fn priority(u: Urgency) -> &'static str {
    match u {
        Urgency::High | Urgency::Normal => "10",
        Urgency::Low | Urgency::VeryLow => "5",
    }
}

#[async_trait]
impl Channel for ApnsChannel {
    fn name(&self) -> &'static str {
        "apns"
    }

    async fn send(&self, d: &Delivery<'_>) -> Outcome {
        let DeviceAddress::Apns { token } = d.address else {
            return Outcome::Rejected {
                reason: "not an APNs address".into(),
            };
        };
        let provider_token = match self.provider_token() {
            Ok(t) => t,
            Err(e) => return Outcome::Rejected { reason: e },
        };
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["3", "device", token.as_str()]);
        }
        let opts = &d.task.opts;
        let expiration = opts
            .ttl
            .map_or(0, |t| jsonwebtoken::get_current_timestamp() + t);
        let (push_type, apns_priority) = if background(d) {
            ("background", "5")
        } else {
            ("alert", priority(d.task.urgency()))
        };
        let mut req = self
            .http
            .client()
            .post(url)
            .header(reqwest::header::AUTHORIZATION, provider_token)
            .header(APNS_TOPIC, self.topic.clone())
            .header(APNS_PUSH_TYPE, push_type)
            .header(APNS_PRIORITY, apns_priority)
            .header(APNS_EXPIRATION, expiration)
            .header(APNS_ID, d.delivery_uuid().to_string())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(
                d.prepared
                    .get_or("apns", || payload(d).to_string().into_bytes()),
            );
        if let Some(c) = &opts.collapse_key {
            req = req.header(APNS_COLLAPSE_ID, truncate(c, 64));
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return transport_error(&e),
        };
        let status = resp.status().as_u16();
        if status == 200 {
            // Apple answers a success with an empty body.
            let apns_id = resp
                .headers()
                .get(APNS_ID)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            return Outcome::Accepted {
                provider_id: apns_id,
            };
        }
        let after = retry_after(resp.headers());
        let body = resp.text().await.unwrap_or_default();
        let reason_code = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|j| j["reason"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let reason = format!("APNs {status} {reason_code}");
        match (status, reason_code.as_str()) {
            (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => {
                Outcome::DeviceGone { reason }
            }
            (403, "ExpiredProviderToken" | "InvalidProviderToken") => {
                // Mint a fresh token for the retry.
                self.forget_token();
                Outcome::Retry {
                    reason,
                    after: None,
                }
            }
            (429, _) => Outcome::Throttled { reason, after },
            (500 | 503, _) => Outcome::Retry { reason, after },
            _ => Outcome::Rejected { reason },
        }
    }
}
