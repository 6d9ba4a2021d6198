//! Firebase Cloud Messaging, HTTP v1 API: `POST {base}/v1/projects/{project}/messages:send`
//! with an OAuth2 access token that `gcp_auth` obtains from the service-account key (JWT bearer
//! grant against the key's own `token_uri`) and caches until it expires.
//!
//! Urgency maps onto `android.priority` (HIGH for high, NORMAL otherwise) and, for iOS devices
//! reached through FCM, the APNs headers; `ttl` and `collapse_key` onto their FCM fields.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use gcp_auth::{CustomServiceAccount, TokenProvider};
use serde_json::{Value, json};

use crate::channels::{
    HttpPool, PUSH_CONNECTIONS, apns, retry_after, text_of, transport_error, truncate,
};
use crate::dispatch::{Channel, Delivery, Outcome};
use crate::events::{DeviceAddress, Urgency};

pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

#[derive(Clone)]
pub struct FcmConfig {
    /// The service-account key JSON (client_email, private_key, token_uri, project_id).
    pub service_account_json: String,
    /// Overrides the key's `project_id`.
    pub project_id: Option<String>,
    /// `https://fcm.googleapis.com` by default.
    pub base_url: String,
}

pub struct FcmChannel {
    auth: Arc<CustomServiceAccount>,
    /// `{base}/v1/projects/{project}/messages:send`, parsed once.
    send_url: reqwest::Url,
    http: HttpPool,
}

impl FcmChannel {
    pub fn new(config: &FcmConfig) -> Result<Self, String> {
        let auth = CustomServiceAccount::from_json(&config.service_account_json)
            .map_err(|e| format!("FCM service account: {e}"))?;
        let project = config
            .project_id
            .clone()
            .or_else(|| auth.project_id().map(str::to_owned))
            .ok_or("FCM: no project id in the key; set MSGXC_FCM_PROJECT_ID")?;
        let send_url = format!(
            "{}/v1/projects/{project}/messages:send",
            config.base_url.trim_end_matches('/')
        );
        let send_url = reqwest::Url::parse(&send_url)
            .map_err(|e| format!("FCM base URL {:?}: {e}", config.base_url))?;
        Ok(Self {
            auth: Arc::new(auth),
            send_url,
            // FCM's v1 API speaks HTTP/2 (ALPN over TLS; prior knowledge on a plain-http test URL).
            http: HttpPool::new(&config.base_url, true, PUSH_CONNECTIONS)?,
        })
    }
}

/// The v1 `message` object for one registration token.
pub fn message(d: &Delivery<'_>, token: &str) -> Value {
    let (title, body) = text_of(d);
    let t = d.task;
    // FCM data values must be strings.
    let mut data: BTreeMap<String, String> = BTreeMap::new();
    if let Some(map) = &t.opts.data {
        for (k, v) in map {
            let s = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            data.insert(k.clone(), s);
        }
    }
    data.insert("mid".into(), t.mid.to_string());
    if let Some(tid) = t.tid {
        data.insert("tid".into(), tid.to_string());
    }
    if let Some(url) = &t.opts.url {
        data.insert("url".into(), url.clone());
    }
    let urgency = t.urgency();
    let mut android =
        json!({ "priority": if urgency == Urgency::High { "HIGH" } else { "NORMAL" } });
    if let Some(ttl) = t.opts.ttl {
        android["ttl"] = format!("{ttl}s").into();
    }
    let mut apns_headers = json!({ "apns-priority": apns::priority(urgency) });
    if let Some(k) = &t.opts.collapse_key {
        android["collapse_key"] = k.as_str().into();
        apns_headers["apns-collapse-id"] = truncate(k, 64).into();
    }
    let mut notification = json!({ "body": body });
    if let Some(title) = title {
        notification["title"] = title.into();
    }
    json!({
        "token": token,
        "notification": notification,
        "data": data,
        "android": android,
        "apns": { "headers": apns_headers },
    })
}

/// The request body for one token: the message without its token is serialized once per
/// task, and each request puts its token in front of the other fields.
fn body_for(d: &Delivery<'_>, token: &str) -> Vec<u8> {
    let rest = d.prepared.get_or("fcm", || {
        let mut m = message(d, "");
        if let Some(o) = m.as_object_mut() {
            o.remove("token");
        }
        m.to_string().into_bytes()
    });
    let token = serde_json::to_string(token).unwrap_or_default();
    // `rest` is a non-empty JSON object: `{"android":...}`.
    let fields = rest.get(1..).unwrap_or_default();
    let mut body = Vec::with_capacity(rest.len() + token.len() + 24);
    body.extend_from_slice(b"{\"message\":{\"token\":");
    body.extend_from_slice(token.as_bytes());
    body.push(b',');
    body.extend_from_slice(fields);
    body.push(b'}');
    body
}

/// Reads `error.status` and the FCM `errorCode` detail of an error response.
fn error_codes(body: &str) -> (String, String) {
    let v: Value = serde_json::from_str(body).unwrap_or_default();
    let status = v["error"]["status"].as_str().unwrap_or_default().to_owned();
    let code = v["error"]["details"]
        .as_array()
        .and_then(|ds| ds.iter().find_map(|d| d["errorCode"].as_str()))
        .unwrap_or_default()
        .to_owned();
    (status, code)
}

#[async_trait]
impl Channel for FcmChannel {
    fn name(&self) -> &'static str {
        "fcm"
    }

    async fn send(&self, d: &Delivery<'_>) -> Outcome {
        let DeviceAddress::Fcm { token } = d.address else {
            return Outcome::Rejected {
                reason: "not an FCM address".into(),
            };
        };
        let access = match self.auth.token(&[SCOPE]).await {
            Ok(t) => t,
            Err(e) => {
                return Outcome::Retry {
                    reason: format!("FCM OAuth token: {e}"),
                    after: None,
                };
            }
        };
        let resp = self
            .http
            .client()
            .post(self.send_url.clone())
            .bearer_auth(access.as_str())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body_for(d, token))
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return transport_error(&e),
        };
        let status = resp.status().as_u16();
        let after = retry_after(resp.headers());
        let body = resp.text().await.unwrap_or_default();
        if (200..300).contains(&status) {
            /// The part of a send's answer kept: the message's name.
            #[derive(serde::Deserialize)]
            struct Sent {
                name: Option<String>,
            }
            let name = serde_json::from_str::<Sent>(&body)
                .ok()
                .and_then(|s| s.name);
            return Outcome::Accepted { provider_id: name };
        }
        let (err_status, code) = error_codes(&body);
        let reason = format!("FCM {status} {err_status} {code}")
            .trim()
            .to_owned();
        match (status, code.as_str()) {
            (_, "UNREGISTERED" | "SENDER_ID_MISMATCH") | (404, _) => Outcome::DeviceGone { reason },
            (400, "INVALID_ARGUMENT") if body.contains("registration token") => {
                Outcome::DeviceGone { reason }
            }
            (429, _) | (_, "QUOTA_EXCEEDED") => Outcome::Throttled { reason, after },
            (500 | 502 | 503 | 504, _) | (_, "UNAVAILABLE" | "INTERNAL") => {
                Outcome::Retry { reason, after }
            }
            // An expired or revoked access token: gcp_auth fetches a new one when it expires.
            (401, _) => Outcome::Retry {
                reason,
                after: None,
            },
            _ => Outcome::Rejected { reason },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::{DispatchTask, Prepared};
    use crate::events::MessageOpts;

    #[test]
    fn a_body_is_the_message_with_each_devices_token() {
        let task = DispatchTask {
            trace: None,
            mid: uuid::Uuid::now_v7(),
            uid: "u".into(),
            uids: Vec::new(),
            batch: None,
            tid: None,
            sender: "s".into(),
            msg: "say \"token\": {}".into(),
            opts: MessageOpts::default(),
            created_at: time::OffsetDateTime::now_utc(),
            only_devices: None,
            requeue: None,
            thread_topic: false,
            fallback_due: None,
            hold_until: None,
            released_from: None,
            only_channels: None,
        };
        let prepared = Prepared::default();
        let address = DeviceAddress::Fcm { token: "t1".into() };
        let d = Delivery {
            task: &task,
            uid: "u",
            prepared: &prepared,
            device_id: "d",
            address: &address,
            attempt: 1,
        };
        for token in ["t1", "t\"2"] {
            let body: Value = serde_json::from_slice(&body_for(&d, token)).unwrap();
            assert_eq!(body, json!({ "message": message(&d, token) }));
        }
    }
}
