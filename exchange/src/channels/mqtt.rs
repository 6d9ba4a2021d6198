//! MQTT, the messaging backend of the Ona seed: every recipient's message is published to
//! `/{base}/user/{uid}/messages/publish`, every thread message once to
//! `/{base}/thread/{tid}/messages/publish`, with the seed's payload:
//! `{"payload": {"message", "context": {"type", "metadata": {"id", "name"}}, "author":
//! {"username", "real_name"}}, "id", "time"}`.
//!
//! Ids that are not plain `[A-Za-z0-9_-]` are encoded like subject tokens, so a uid can never
//! add topic levels or wildcards. "Accepted" means handed to the MQTT client, which retransmits
//! unacknowledged QoS 1/2 messages after a reconnect.

use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, QoS, Transport};
use serde_json::json;
use time::format_description::well_known::Rfc3339;

use crate::dispatch::{DispatchTask, Outcome};
use crate::subject::token;

#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// `mqtt://[user:pass@]host:port` or `mqtts://...` (TLS with the system's roots).
    pub url: String,
    pub topic_base: String,
    /// 0, 1 or 2.
    pub qos: u8,
    pub retain: bool,
}

pub struct MqttChannel {
    client: AsyncClient,
    base: String,
    qos: QoS,
    retain: bool,
    poller: tokio::task::JoinHandle<()>,
}

impl Drop for MqttChannel {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

/// Parses the broker URL into client options.
pub fn options(url: &str, client_id: &str) -> Result<MqttOptions, String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("MSGXC_MQTT_URL {url}: {e}"))?;
    let tls = match u.scheme() {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => return Err(format!("MSGXC_MQTT_URL: unsupported scheme {other}")),
    };
    let host = u.host_str().ok_or("MSGXC_MQTT_URL has no host")?.to_owned();
    let port = u.port().unwrap_or(if tls { 8883 } else { 1883 });
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_keep_alive(Duration::from_secs(30));
    if !u.username().is_empty() {
        o.set_credentials(u.username(), u.password().unwrap_or(""));
    }
    if tls {
        o.set_transport(Transport::tls_with_default_config());
    }
    Ok(o)
}

impl MqttChannel {
    /// Connects in the background (must run inside the tokio runtime).
    pub fn new(config: &MqttConfig) -> Result<Self, String> {
        let qos = match config.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            q => return Err(format!("MSGXC_MQTT_QOS must be 0, 1 or 2, not {q}")),
        };
        let client_id = format!("msgxc-{}", uuid::Uuid::now_v7().simple());
        let (client, mut events) = AsyncClient::new(options(&config.url, &client_id)?, 1024);
        let poller = tokio::spawn(async move {
            loop {
                if let Err(e) = events.poll().await {
                    tracing::warn!(error = %e, "MQTT connection; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
        Ok(Self {
            client,
            base: config.topic_base.trim_matches('/').to_owned(),
            qos,
            retain: config.retain,
            poller,
        })
    }

    pub fn user_topic(&self, uid: &str) -> String {
        format!("/{}/user/{}/messages/publish", self.base, token(uid))
    }

    pub fn thread_topic(&self, tid: uuid::Uuid) -> String {
        format!("/{}/thread/{tid}/messages/publish", self.base)
    }

    /// A recipient's copy on their user topic.
    pub async fn publish_user(&self, task: &DispatchTask, uid: &str) -> Outcome {
        let body = payload(task, "user", uid);
        self.publish(self.user_topic(uid), body).await
    }

    /// A thread message, once, on the thread topic.
    pub async fn publish_thread(&self, task: &DispatchTask, tid: uuid::Uuid) -> Outcome {
        let body = payload(task, "thread", &tid.to_string());
        self.publish(self.thread_topic(tid), body).await
    }

    async fn publish(&self, topic: String, body: serde_json::Value) -> Outcome {
        match self
            .client
            .publish(topic, self.qos, self.retain, body.to_string().into_bytes())
            .await
        {
            Ok(()) => Outcome::Accepted { provider_id: None },
            Err(e) => Outcome::Retry {
                reason: format!("MQTT: {e}"),
                after: None,
            },
        }
    }
}

/// The seed's MQTT payload.
pub fn payload(task: &DispatchTask, context_type: &str, context_id: &str) -> serde_json::Value {
    let name = task.opts.title.clone().unwrap_or_default();
    json!({
        "payload": {
            "message": task.msg,
            "context": { "type": context_type, "metadata": { "id": context_id, "name": name } },
            "author": { "username": task.sender, "real_name": task.sender },
        },
        "id": task.mid,
        "time": task.created_at.format(&Rfc3339).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(options("mqtt://127.0.0.1:1883", "c").is_ok());
        assert!(options("mqtt://u:p@broker", "c").is_ok());
        assert!(options("mqtts://broker", "c").is_ok());
        assert!(options("http://broker", "c").is_err());
        assert!(options("nonsense", "c").is_err());
    }
}
