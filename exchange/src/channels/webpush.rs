//! Web Push (RFC 8030) with VAPID (RFC 8292) and aes128gcm payload encryption (RFC 8291).
//! The `web-push` crate builds the encrypted request; reqwest sends it.
//!
//! Endpoints are user-supplied URLs, so they are only contacted when their host is on the
//! allow-list (the browsers' push services by default): the exchange must not be usable to
//! POST to arbitrary internal addresses.

use async_trait::async_trait;
use base64::Engine;
use serde_json::json;
use web_push::{
    ContentEncoding, PartialVapidSignatureBuilder, SubscriptionInfo, VapidSignatureBuilder,
    WebPushMessageBuilder,
};

use crate::channels::{common_http_outcome, http_client, text_of, transport_error, truncate};
use crate::dispatch::{Channel, Delivery, Outcome};
use crate::events::{DeviceAddress, Urgency};

/// Push services of the major browsers; a host matches an entry or is a subdomain of it.
pub const DEFAULT_ALLOWED_HOSTS: [&str; 5] = [
    "fcm.googleapis.com",
    "updates.push.services.mozilla.com",
    "push.services.mozilla.com",
    "push.apple.com",
    "notify.windows.com",
];

#[derive(Debug, Clone)]
pub struct WebPushConfig {
    /// VAPID private key: the raw P-256 scalar, base64url without padding (`msgxc vapid`).
    pub vapid_private_key: String,
    /// VAPID `sub` claim: `mailto:` or `https:` contact of the sender.
    pub subject: String,
    pub allowed_hosts: Vec<String>,
}

/// Whether `endpoint` is an http(s) URL whose host is on the allow-list.
pub fn host_allowed(endpoint: &str, allowed: &[String]) -> bool {
    let Ok(url) = reqwest::Url::parse(endpoint) else {
        return false;
    };
    if !matches!(url.scheme(), "https" | "http") {
        return false;
    }
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    allowed.iter().any(|a| {
        let a = a.trim().to_ascii_lowercase();
        !a.is_empty() && (host == a || host.ends_with(&format!(".{a}")))
    })
}

/// A new VAPID private key (base64url, 32 bytes), checked by the web-push crate.
pub fn generate_vapid_key() -> Result<String, String> {
    for _ in 0..8 {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| e.to_string())?;
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        if VapidSignatureBuilder::from_base64_no_sub(&key).is_ok() {
            return Ok(key);
        }
    }
    Err("could not generate a valid P-256 key".into())
}

/// The public key browsers need (`applicationServerKey`): uncompressed point, base64url.
pub fn vapid_public_key(private_key: &str) -> Result<String, String> {
    let builder = VapidSignatureBuilder::from_base64_no_sub(private_key.trim())
        .map_err(|e| format!("invalid VAPID private key: {e}"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(builder.get_public_key()))
}

/// A signed VAPID JWT is reused for one push service origin this long (it is valid for twelve
/// hours): signing is an ECDSA operation per request otherwise.
const VAPID_REUSE: std::time::Duration = std::time::Duration::from_secs(3600);

pub struct WebPushChannel {
    config: WebPushConfig,
    vapid: PartialVapidSignatureBuilder,
    http: reqwest::Client,
    /// Signed VAPID headers by origin (`aud`), with when they were signed.
    signatures: std::sync::Mutex<
        std::collections::HashMap<String, (web_push::VapidSignature, std::time::Instant)>,
    >,
}

impl WebPushChannel {
    pub fn new(config: WebPushConfig) -> Result<Self, String> {
        let vapid = VapidSignatureBuilder::from_base64_no_sub(config.vapid_private_key.trim())
            .map_err(|e| format!("invalid VAPID private key: {e}"))?;
        if !(config.subject.starts_with("mailto:") || config.subject.starts_with("https://")) {
            return Err("the VAPID subject must be a mailto: or https: URL".into());
        }
        // Push services speak HTTP/1.1 and HTTP/2; ALPN picks.
        let http = http_client("https://", false)?;
        Ok(Self {
            config,
            vapid,
            http,
            signatures: Default::default(),
        })
    }

    /// The VAPID signature for a push service origin, signed anew when missing or old.
    fn signature(
        &self,
        info: &SubscriptionInfo,
        origin: &str,
    ) -> Result<web_push::VapidSignature, String> {
        if let Ok(cache) = self.signatures.lock()
            && let Some((sig, at)) = cache.get(origin)
            && at.elapsed() < VAPID_REUSE
        {
            return Ok(sig.clone());
        }
        let mut builder = self.vapid.clone().add_sub_info(info);
        builder.add_claim("sub", self.config.subject.as_str());
        builder.add_claim("aud", origin);
        let sig = builder.build().map_err(|e| format!("VAPID: {e}"))?;
        if let Ok(mut cache) = self.signatures.lock() {
            // Push services are few; an unbounded map of origins would mean abuse, so start over.
            if cache.len() > 1024 {
                cache.clear();
            }
            cache.insert(origin.to_owned(), (sig.clone(), std::time::Instant::now()));
        }
        Ok(sig)
    }
}

/// The JSON the service worker receives (after decryption).
pub fn payload(d: &Delivery<'_>) -> serde_json::Value {
    let (title, body) = text_of(d);
    let t = d.task;
    json!({
        "mid": t.mid,
        "title": title,
        "body": body,
        "data": t.opts.data,
        "url": t.opts.url,
        "tid": t.tid,
        "sender": t.sender,
    })
}

fn urgency(u: Urgency) -> web_push::Urgency {
    match u {
        Urgency::VeryLow => web_push::Urgency::VeryLow,
        Urgency::Low => web_push::Urgency::Low,
        Urgency::Normal => web_push::Urgency::Normal,
        Urgency::High => web_push::Urgency::High,
    }
}

/// RFC 8030 `Topic`: at most 32 characters of the base64url alphabet.
fn topic(collapse_key: &str) -> String {
    let clean: String = collapse_key
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    truncate(&clean, 32).to_owned()
}

#[async_trait]
impl Channel for WebPushChannel {
    fn name(&self) -> &'static str {
        "webpush"
    }

    async fn send(&self, d: &Delivery<'_>) -> Outcome {
        let DeviceAddress::Webpush {
            endpoint,
            p256dh,
            auth,
            ..
        } = d.address
        else {
            return Outcome::Rejected {
                reason: "not a Web Push subscription".into(),
            };
        };
        if !host_allowed(endpoint, &self.config.allowed_hosts) {
            return Outcome::Rejected {
                reason: "endpoint host is not on MSGXC_WEBPUSH_ALLOWED_HOSTS".into(),
            };
        }
        let info = SubscriptionInfo::new(endpoint.as_str(), p256dh.as_str(), auth.as_str());
        // RFC 8292: `aud` is the push resource's origin, port included (web-push would drop
        // a non-default port).
        let origin = reqwest::Url::parse(endpoint)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        let signature = match self.signature(&info, &origin) {
            Ok(s) => s,
            Err(reason) => return Outcome::Rejected { reason },
        };
        let content = d
            .prepared
            .get_or("webpush", || payload(d).to_string().into_bytes());
        let mut builder = WebPushMessageBuilder::new(&info);
        builder.set_payload(ContentEncoding::Aes128Gcm, &content);
        builder.set_vapid_signature(signature);
        builder.set_ttl(
            d.task
                .opts
                .ttl
                .map_or(86_400, |t| t.min(u64::from(u32::MAX)) as u32),
        );
        builder.set_urgency(urgency(d.task.urgency()));
        if let Some(k) = &d.task.opts.collapse_key {
            let t = topic(k);
            if !t.is_empty() {
                builder.set_topic(t);
            }
        }
        let message = match builder.build() {
            Ok(m) => m,
            // Keys that cannot be used for encryption make the subscription useless.
            Err(
                web_push::WebPushError::InvalidCryptoKeys
                | web_push::WebPushError::MissingCryptoKeys,
            ) => {
                return Outcome::DeviceGone {
                    reason: "subscription keys are invalid".into(),
                };
            }
            Err(e) => {
                return Outcome::Rejected {
                    reason: format!("building the push: {e}"),
                };
            }
        };
        let request: http02::Request<Vec<u8>> = web_push::request_builder::build_request(message);
        let mut req = self.http.post(request.uri().to_string());
        for (name, value) in request.headers() {
            req = req.header(name.as_str(), value.as_bytes());
        }
        let resp = match req.body(request.into_body()).send().await {
            Ok(r) => r,
            Err(e) => return transport_error(&e),
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let location = headers
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.text().await.unwrap_or_default();
        if status.is_success() {
            return Outcome::Accepted {
                provider_id: location,
            };
        }
        if let Some(o) = common_http_outcome(status, &headers, &body) {
            return o;
        }
        let reason = format!("Web Push {}: {}", status.as_u16(), truncate(&body, 200));
        match status.as_u16() {
            404 | 410 => Outcome::DeviceGone { reason },
            _ => Outcome::Rejected { reason },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matches_hosts_and_subdomains_only() {
        let allowed: Vec<String> = DEFAULT_ALLOWED_HOSTS
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(host_allowed(
            "https://fcm.googleapis.com/fcm/send/x",
            &allowed
        ));
        assert!(host_allowed("https://web.push.apple.com/abc", &allowed));
        assert!(!host_allowed(
            "https://evilpush.apple.com.attacker.net/x",
            &allowed
        ));
        assert!(!host_allowed("http://169.254.169.254/latest", &allowed));
        assert!(!host_allowed("https://localhost/x", &allowed));
        assert!(!host_allowed("file:///etc/passwd", &allowed));
        assert!(!host_allowed("not a url", &allowed));
        assert!(host_allowed(
            "http://127.0.0.1:9/p",
            &["127.0.0.1".to_string()]
        ));
    }

    #[test]
    fn vapid_keys_round_trip() {
        let private = generate_vapid_key().unwrap();
        let public = vapid_public_key(&private).unwrap();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(public)
            .unwrap();
        assert_eq!(raw.len(), 65);
        assert_eq!(raw[0], 4, "uncompressed point");
        assert!(vapid_public_key("not-a-key").is_err());
    }

    #[test]
    fn topics_are_safe() {
        assert_eq!(topic("score update #7!"), "scoreupdate7");
        assert_eq!(topic(&"x".repeat(40)).len(), 32);
    }
}
