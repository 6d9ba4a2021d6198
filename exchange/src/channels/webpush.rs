//! Web Push (RFC 8030) with VAPID (RFC 8292) and aes128gcm payload encryption (RFC 8291).
//! The `web-push` crate signs the VAPID JWT; the payload is encrypted here with `ring` (one
//! ephemeral P-256 key pair, ECDH, HKDF and AES-128-GCM per message, as RFC 8291 spells it:
//! through `ece`'s OpenSSL backend the same steps cost about 170 µs a message, most of a
//! broadcast's CPU); reqwest sends it.
//!
//! Endpoints are user-supplied URLs, so they are only contacted when their host is on the
//! allow-list (the browsers' push services by default): the exchange must not be usable to
//! POST to arbitrary internal addresses.

use async_trait::async_trait;
use base64::Engine;
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::agreement::{ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey, agree_ephemeral};
use ring::hkdf::{HKDF_SHA256, KeyType, Salt};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::json;
use web_push::{PartialVapidSignatureBuilder, SubscriptionInfo, VapidSignatureBuilder};

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
    reqwest::Url::parse(endpoint).is_ok_and(|url| url_allowed(&url, allowed))
}

/// [`host_allowed`] for an endpoint already parsed.
fn url_allowed(url: &reqwest::Url, allowed: &[String]) -> bool {
    if !matches!(url.scheme(), "https" | "http") {
        return false;
    }
    // The URL parser lowercases hosts.
    let Some(host) = url.host_str() else {
        return false;
    };
    allowed.iter().any(|a| {
        let a = a.trim();
        if a.is_empty() || host.len() < a.len() {
            return false;
        }
        let (head, tail) = host
            .split_at_checked(host.len() - a.len())
            .unwrap_or((host, ""));
        tail.eq_ignore_ascii_case(a) && (head.is_empty() || head.ends_with('.'))
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
    /// Signed VAPID `Authorization` headers by origin (`aud`), with when they were signed.
    signatures: std::sync::Mutex<
        std::collections::HashMap<String, (reqwest::header::HeaderValue, std::time::Instant)>,
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

    /// The VAPID `Authorization` header for a push service origin, signed anew when missing
    /// or old.
    fn authorization(
        &self,
        endpoint: &str,
        origin: &str,
        d: &Delivery<'_>,
    ) -> Result<reqwest::header::HeaderValue, String> {
        if let Ok(cache) = self.signatures.lock()
            && let Some((header, at)) = cache.get(origin)
            && at.elapsed() < VAPID_REUSE
        {
            return Ok(header.clone());
        }
        let DeviceAddress::Webpush { p256dh, auth, .. } = d.address else {
            return Err("not a Web Push subscription".into());
        };
        let info = SubscriptionInfo::new(endpoint, p256dh.as_str(), auth.as_str());
        let mut builder = self.vapid.clone().add_sub_info(&info);
        builder.add_claim("sub", self.config.subject.as_str());
        builder.add_claim("aud", origin);
        let sig = builder.build().map_err(|e| format!("VAPID: {e}"))?;
        let mut header = reqwest::header::HeaderValue::try_from(format!(
            "vapid t={}, k={}",
            sig.auth_t,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&sig.auth_k)
        ))
        .map_err(|e| format!("VAPID header: {e}"))?;
        header.set_sensitive(true);
        if let Ok(mut cache) = self.signatures.lock() {
            // Push services are few; an unbounded map of origins would mean abuse, so start over.
            if cache.len() > 1024 {
                cache.clear();
            }
            cache.insert(
                origin.to_owned(),
                (header.clone(), std::time::Instant::now()),
            );
        }
        Ok(header)
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

const TTL: reqwest::header::HeaderName = reqwest::header::HeaderName::from_static("ttl");
const URGENCY: reqwest::header::HeaderName = reqwest::header::HeaderName::from_static("urgency");
const TOPIC: reqwest::header::HeaderName = reqwest::header::HeaderName::from_static("topic");

/// RFC 8030 `Urgency`.
fn urgency(u: Urgency) -> &'static str {
    match u {
        Urgency::VeryLow => "very-low",
        Urgency::Low => "low",
        Urgency::Normal => "normal",
        Urgency::High => "high",
    }
}

/// A push service must accept a body of 4096 bytes (RFC 8030 §7.2); the aes128gcm header
/// (salt, record size, key id length, our 65-byte public key), the padding delimiter and the
/// AEAD tag leave this much for the payload.
pub const MAX_PLAINTEXT: usize = 4096 - HEADER_LEN - 1 - TAG_LEN;
const HEADER_LEN: usize = 16 + 4 + 1 + 65;
const TAG_LEN: usize = 16;
/// The record size written in the header: the body is one record of at most this.
const RECORD_SIZE: u32 = 4096;

/// Why a payload could not be encrypted for a subscription.
#[derive(Debug, PartialEq, Eq)]
pub enum EncryptError {
    /// `p256dh` is not an uncompressed P-256 point or `auth` not 16 bytes (base64url).
    Keys,
    TooLarge,
    /// This process could not draw randomness or run the cipher (not the subscription's fault).
    Crypto,
}

/// A length for HKDF-Expand's output.
struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// Decodes a subscription key: base64url, padded or not (browsers and libraries differ).
fn subscription_key(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim().trim_end_matches('='))
        .ok()
}

/// RFC 8291 (with RFC 8188's aes128gcm): the request body that only the subscription's
/// browser can read, in one record.
pub fn encrypt(p256dh: &str, auth: &str, plaintext: &[u8]) -> Result<Vec<u8>, EncryptError> {
    let ua_public = subscription_key(p256dh)
        .filter(|k| k.len() == 65 && k[0] == 4)
        .ok_or(EncryptError::Keys)?;
    let auth = subscription_key(auth)
        .filter(|a| a.len() == 16)
        .ok_or(EncryptError::Keys)?;
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(EncryptError::TooLarge);
    }
    let rng = SystemRandom::new();
    let private =
        EphemeralPrivateKey::generate(&ECDH_P256, &rng).map_err(|_| EncryptError::Crypto)?;
    let as_public = private
        .compute_public_key()
        .map_err(|_| EncryptError::Crypto)?;
    let mut salt = [0u8; 16];
    rng.fill(&mut salt).map_err(|_| EncryptError::Crypto)?;
    let peer = UnparsedPublicKey::new(&ECDH_P256, &ua_public);
    // An unusable peer point fails here (ring validates it).
    let (cek, nonce) = agree_ephemeral(private, &peer, |ecdh_secret| {
        let expand = |prk: &ring::hkdf::Prk, info: &[&[u8]], out: &mut [u8]| {
            prk.expand(info, Len(out.len()))
                .and_then(|okm| okm.fill(out))
        };
        // §3.3: the input keying material, from the shared secret and the auth secret.
        let mut ikm = [0u8; 32];
        let prk = Salt::new(HKDF_SHA256, &auth).extract(ecdh_secret);
        expand(
            &prk,
            &[b"WebPush: info\0", &ua_public, as_public.as_ref()],
            &mut ikm,
        )?;
        // RFC 8188 §2.2-2.3: the content-encryption key and the nonce.
        let prk = Salt::new(HKDF_SHA256, &salt).extract(&ikm);
        let (mut cek, mut nonce) = ([0u8; 16], [0u8; 12]);
        expand(&prk, &[b"Content-Encoding: aes128gcm\0"], &mut cek)?;
        expand(&prk, &[b"Content-Encoding: nonce\0"], &mut nonce)?;
        Ok::<_, ring::error::Unspecified>((cek, nonce))
    })
    .map_err(|_| EncryptError::Keys)?
    .map_err(|_| EncryptError::Crypto)?;
    let key = UnboundKey::new(&AES_128_GCM, &cek).map_err(|_| EncryptError::Crypto)?;
    // The record: the payload and the last record's delimiter (no padding), sealed.
    let mut record = Vec::with_capacity(plaintext.len() + 1 + TAG_LEN);
    record.extend_from_slice(plaintext);
    record.push(2);
    LessSafeKey::new(key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            &mut record,
        )
        .map_err(|_| EncryptError::Crypto)?;
    let mut body = Vec::with_capacity(HEADER_LEN + record.len());
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(65);
    body.extend_from_slice(as_public.as_ref());
    body.extend_from_slice(&record);
    Ok(body)
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
        // Parsed once: the allow-list, the VAPID audience and the request all use it.
        let url = match reqwest::Url::parse(endpoint) {
            Ok(u) if url_allowed(&u, &self.config.allowed_hosts) => u,
            _ => {
                return Outcome::Rejected {
                    reason: "endpoint host is not on MSGXC_WEBPUSH_ALLOWED_HOSTS".into(),
                };
            }
        };
        // RFC 8292: `aud` is the push resource's origin, port included (web-push would drop
        // a non-default port).
        let origin = url.origin().ascii_serialization();
        let authorization = match self.authorization(endpoint, &origin, d) {
            Ok(h) => h,
            Err(reason) => return Outcome::Rejected { reason },
        };
        let content = d
            .prepared
            .get_or("webpush", || payload(d).to_string().into_bytes());
        let body = match encrypt(p256dh, auth, &content) {
            Ok(b) => b,
            // Keys that cannot be used for encryption make the subscription useless.
            Err(EncryptError::Keys) => {
                return Outcome::DeviceGone {
                    reason: "subscription keys are invalid".into(),
                };
            }
            Err(EncryptError::Crypto) => {
                return Outcome::Retry {
                    reason: "Web Push encryption failed in this process".into(),
                    after: None,
                };
            }
            Err(EncryptError::TooLarge) => {
                return Outcome::Rejected {
                    reason: format!(
                        "the push payload is {} bytes, over the {MAX_PLAINTEXT} a push service must take",
                        content.len()
                    ),
                };
            }
        };
        let ttl = d
            .task
            .opts
            .ttl
            .map_or(86_400, |t| t.min(u64::from(u32::MAX)) as u32);
        let mut req = self
            .http
            .post(url)
            .header(TTL, ttl)
            .header(URGENCY, urgency(d.task.urgency()))
            .header(reqwest::header::CONTENT_ENCODING, "aes128gcm")
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::AUTHORIZATION, authorization);
        if let Some(k) = &d.task.opts.collapse_key {
            let t = topic(k);
            if !t.is_empty() {
                req = req.header(TOPIC, t);
            }
        }
        let resp = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) => return transport_error(&e),
        };
        let status = resp.status();
        if status.is_success() {
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            return Outcome::Accepted {
                provider_id: location,
            };
        }
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap_or_default();
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
    fn payloads_are_encrypted_as_rfc_8291_says_and_ece_decrypts_them() {
        let (keypair, auth) = ece::generate_keypair_and_auth_secret().unwrap();
        let components = keypair.raw_components().unwrap();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let p256dh = b64(components.public_key());
        for plaintext in [&b""[..], b"{\"title\":\"hi\"}", &[7u8; MAX_PLAINTEXT]] {
            let body = encrypt(&p256dh, &b64(&auth), plaintext).unwrap();
            assert!(body.len() <= 4096);
            assert_eq!(&body[16..21], &[0, 0, 16, 0, 65]);
            assert_eq!(ece::decrypt(&components, &auth, &body).unwrap(), plaintext);
        }
        // Every message has its own salt and key pair.
        let a = encrypt(&p256dh, &b64(&auth), b"x").unwrap();
        let b = encrypt(&p256dh, &b64(&auth), b"x").unwrap();
        assert_ne!(a[..16], b[..16]);
        assert_ne!(a[21..86], b[21..86]);
        // Padded keys are accepted; wrong ones are the subscription's fault; too much is ours.
        let padded = format!("{}=", b64(&auth[..]));
        assert!(encrypt(&format!("{p256dh}="), &padded, b"x").is_ok());
        assert_eq!(encrypt("AAAA", &b64(&auth), b"x"), Err(EncryptError::Keys));
        let mut off_curve = components.public_key().to_vec();
        off_curve[64] ^= 1;
        assert_eq!(
            encrypt(&b64(&off_curve), &b64(&auth), b"x"),
            Err(EncryptError::Keys)
        );
        assert_eq!(
            encrypt(&p256dh, &b64(&auth[..8]), b"x"),
            Err(EncryptError::Keys)
        );
        assert_eq!(
            encrypt(&p256dh, &b64(&auth), &[0; MAX_PLAINTEXT + 1]),
            Err(EncryptError::TooLarge)
        );
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
