//! Channel clients. Each speaks its provider's real protocol against a configurable base URL
//! (production by default), so tests drive the same code against local servers.

pub mod apns;
pub mod email;
pub mod fcm;
pub mod mqtt;
pub mod sms;
pub mod webpush;

use std::time::Duration;

use crate::dispatch::{Delivery, Outcome};

/// The text a message shows: its title (if any) and body.
pub fn text_of<'a>(d: &Delivery<'a>) -> (Option<&'a str>, &'a str) {
    (d.task.opts.title.as_deref(), d.task.msg.as_str())
}

/// `Retry-After` in seconds (the HTTP-date form is treated as "soon").
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    Some(
        v.trim()
            .parse::<u64>()
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(1)),
    )
}

/// Outcome for statuses every HTTP provider treats alike: 2xx accepted, 429 throttled,
/// 408/5xx retry.
/// `None` leaves the status to the provider-specific rules.
pub fn common_http_outcome(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &str,
) -> Option<Outcome> {
    let code = status.as_u16();
    if status.is_success() {
        return Some(Outcome::Accepted { provider_id: None });
    }
    if code == 429 {
        return Some(Outcome::Throttled {
            reason: format!("HTTP 429: {}", truncate(body, 200)),
            after: retry_after(headers),
        });
    }
    if code == 408 || status.is_server_error() {
        return Some(Outcome::Retry {
            reason: format!("HTTP {code}: {}", truncate(body, 200)),
            after: retry_after(headers),
        });
    }
    None
}

/// Connection-level failures are transient.
pub fn transport_error(e: &reqwest::Error) -> Outcome {
    Outcome::Retry {
        reason: format!("transport: {e}"),
        after: None,
    }
}

pub fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A reqwest client for providers: HTTP/2 over TLS (ALPN) for https URLs; for plain-http test
/// URLs, HTTP/2 with prior knowledge when the provider requires HTTP/2 (APNs). Redirects are
/// not followed: no provider API redirects, and a Web Push endpoint on an allowed host must
/// not lead the dispatcher anywhere else.
pub fn http_client(base_url: &str, require_h2: bool) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(300))
        .user_agent(concat!("msgxc/", env!("CARGO_PKG_VERSION")));
    if require_h2 && base_url.starts_with("http://") {
        b = b.http2_prior_knowledge();
    }
    b.build().map_err(|e| e.to_string())
}

/// A few long-lived clients to one provider, used in turn: each keeps its own connection
/// (HTTP/2 multiplexes a connection's streams, but providers cap the streams per connection
/// and one connection is one TCP flow), so sends spread over `n` connections.
pub struct HttpPool {
    clients: Vec<reqwest::Client>,
    next: std::sync::atomic::AtomicUsize,
}

impl HttpPool {
    pub fn new(base_url: &str, require_h2: bool, n: usize) -> Result<Self, String> {
        let clients = (0..n.max(1))
            .map(|_| http_client(base_url, require_h2))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            clients,
            next: Default::default(),
        })
    }

    /// The next client in turn.
    pub fn client(&self) -> &reqwest::Client {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.clients[i % self.clients.len()]
    }
}

/// Connections per provider for the HTTP/2 push services (APNs, FCM).
pub const PUSH_CONNECTIONS: usize = 4;

/// Which channels to run, each `None` when not configured.
#[derive(Clone, Default)]
pub struct ChannelSettings {
    pub sms: Option<sms::SmsConfig>,
    pub apns: Option<apns::ApnsConfig>,
    pub email: Option<email::EmailConfig>,
    pub webpush: Option<webpush::WebPushConfig>,
    pub fcm: Option<fcm::FcmConfig>,
    pub mqtt: Option<mqtt::MqttConfig>,
    /// Tracked links in e-mail and SMS bodies (`crate::links`); `None`: left as they are.
    pub links: Option<crate::links::LinkSigner>,
}

impl ChannelSettings {
    /// Builds the configured channel clients.
    pub fn build(&self) -> Result<crate::dispatch::Channels, String> {
        use std::sync::Arc;
        let mut channels = crate::dispatch::Channels::default();
        if let Some(c) = &self.sms {
            channels.add(Arc::new(sms::SmsChannel::new(
                c.clone(),
                self.links.clone(),
            )?));
        }
        if let Some(c) = &self.apns {
            channels.add(Arc::new(apns::ApnsChannel::new(c.clone())?));
        }
        if let Some(c) = &self.email {
            channels.add(Arc::new(email::EmailChannel::new(c, self.links.clone())?));
        }
        if let Some(c) = &self.mqtt {
            channels.set_mqtt(Arc::new(mqtt::MqttChannel::new(c)?));
        }
        if let Some(c) = &self.fcm {
            channels.add(Arc::new(fcm::FcmChannel::new(c)?));
        }
        if let Some(c) = &self.webpush {
            channels.add(Arc::new(webpush::WebPushChannel::new(c.clone())?));
        }
        Ok(channels)
    }
}
