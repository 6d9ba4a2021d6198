//! SMS through a Twilio-compatible REST API: `POST {base}/2010-04-01/Accounts/{sid}/Messages.json`
//! with HTTP basic auth (account SID, auth token) and a form body (From, To, Body).

use async_trait::async_trait;

use crate::channels::{common_http_outcome, http_client, text_of, transport_error, truncate};
use crate::dispatch::{Channel, Delivery, Outcome};
use crate::events::DeviceAddress;

#[derive(Debug, Clone)]
pub struct SmsConfig {
    pub account_sid: String,
    pub auth_token: String,
    /// Sender number (E.164) or messaging service id.
    pub from: String,
    /// Default `https://api.twilio.com`.
    pub base_url: String,
}

pub struct SmsChannel {
    config: SmsConfig,
    http: reqwest::Client,
    links: Option<crate::links::LinkSigner>,
}

impl SmsChannel {
    pub fn new(config: SmsConfig, links: Option<crate::links::LinkSigner>) -> Result<Self, String> {
        let http = http_client(&config.base_url, false)?;
        Ok(Self {
            config,
            http,
            links,
        })
    }
}

/// Twilio error codes that mean the number cannot receive messages from us.
const DEAD_NUMBER_CODES: [i64; 4] = [21211, 21214, 21610, 21614];

#[async_trait]
impl Channel for SmsChannel {
    fn name(&self) -> &'static str {
        "sms"
    }

    async fn send(&self, d: &Delivery<'_>) -> Outcome {
        let DeviceAddress::Sms { phone } = d.address else {
            return Outcome::Rejected {
                reason: "not an SMS address".into(),
            };
        };
        let (title, body) = text_of(d);
        // The body's links become tracked links (their index is their place in the body).
        let body = match &self.links {
            Some(l) if l.wraps() => std::borrow::Cow::Owned(l.wrap(body, d.task.mid, d.uid)),
            _ => std::borrow::Cow::Borrowed(body),
        };
        let text = match title {
            Some(t) if !t.is_empty() => format!("{t}: {body}"),
            _ => body.into_owned(),
        };
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.config.base_url.trim_end_matches('/'),
            self.config.account_sid
        );
        let resp = self
            .http
            .post(url)
            .basic_auth(&self.config.account_sid, Some(&self.config.auth_token))
            .form(&[
                ("From", self.config.from.as_str()),
                ("To", phone.as_str()),
                ("Body", text.as_str()),
            ])
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return transport_error(&e),
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if status.is_success() {
            return Outcome::Accepted {
                provider_id: json["sid"].as_str().map(str::to_owned),
            };
        }
        if let Some(o) = common_http_outcome(status, &headers, &body) {
            return o;
        }
        let code = json["code"].as_i64().unwrap_or_default();
        let reason = format!(
            "HTTP {} code {code}: {}",
            status.as_u16(),
            json["message"].as_str().unwrap_or(truncate(&body, 200))
        );
        if DEAD_NUMBER_CODES.contains(&code) {
            Outcome::DeviceGone { reason }
        } else {
            Outcome::Rejected { reason }
        }
    }
}
