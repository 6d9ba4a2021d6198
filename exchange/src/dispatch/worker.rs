//! The dispatcher: one pull consumer per lane, each with its own concurrency budget.
//!
//! Per task: resolve the recipient's devices, skip those already delivered (JetStream KV
//! `MSGXC_DELIVERIES`, key `<mid>.<device>`), call each device's channel, and record every
//! outcome as an event. Transient failures are retried by NAK-with-delay (exponential backoff
//! with jitter, honouring Retry-After) up to `max_attempts`; the last failure is a dead letter.
//!
//! At-least-once, with one gap: a crash after a provider accepted a message but before the KV
//! entry is written re-sends to that device on redelivery. APNs (`apns-id`), Web Push (`Topic`)
//! and FCM (collapse keys) receive a per-(message, device) id so the duplicate is recognisable;
//! SMS, e-mail and MQTT have no such guard.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, pull},
    kv,
    stream::StorageType,
};
use futures::StreamExt;

use crate::dispatch::{Channels, Delivery, Directory, DispatchTask, Lane, Outcome, TaskQueue};
use crate::events::{Actor, DeliveryFailed, DeliverySent, DeviceDisabled, Envelope, Event};
use crate::log::{EventLog, LogError};
use crate::presence::Presence;

pub const DELIVERIES_BUCKET: &str = "MSGXC_DELIVERIES";

/// The receipt "device" of a recipient's MQTT user-topic copy.
pub const MQTT_DEVICE: &str = "mqtt";

/// Whether any target of a task needs a retry, and the longest Retry-After among them.
#[derive(Default)]
struct RetryAfter(Option<Option<Duration>>);

impl RetryAfter {
    fn note(&mut self, after: Option<Duration>) {
        let prev = self.0.flatten();
        self.0 = Some(match (prev, after) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        });
    }
}

#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// Attempts per device before a delivery is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay; doubled per attempt, with jitter, capped at `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Longest a single provider call may take before it counts as a transient failure.
    pub send_timeout: Duration,
    /// Tasks in flight per lane: high, normal, low, very-low, fallback.
    pub concurrency: [usize; 5],
    /// How long delivered-markers are kept (bounds the redelivery guard).
    pub marker_ttl: Duration,
    /// Skip-if-seen: a normal, low or very-low message for a user with a live connection waits
    /// this long and is not pushed when the user acknowledged it on the WebSocket meanwhile.
    /// Zero turns it off.
    pub skip_if_seen: Duration,
    /// Replicas of the delivered-markers bucket (the event stream's, in a cluster).
    pub replicas: usize,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            send_timeout: Duration::from_secs(30),
            concurrency: [64, 32, 16, 8, 16],
            marker_ttl: Duration::from_secs(7 * 24 * 3600),
            skip_if_seen: Duration::from_secs(3),
            replicas: 1,
        }
    }
}

/// The system actor recorded on dispatcher events.
pub fn system_actor() -> Actor {
    Actor {
        uid: "msgxc".into(),
        roles: vec!["system".into()],
    }
}

/// Retry delay for `attempt` (1-based): base * 2^(attempt-1), capped, with +-20 % jitter,
/// and never shorter than the provider's Retry-After.
pub fn backoff(
    settings: &DispatchSettings,
    attempt: u32,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = settings
        .backoff_base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(settings.backoff_max);
    let jitter = 0.8 + fastrand::f64() * 0.4;
    let d = exp.mul_f64(jitter);
    retry_after.map_or(d, |r| d.max(r))
}

#[derive(Clone)]
pub struct Dispatcher {
    log: EventLog,
    js: jetstream::Context,
    channels: Channels,
    directory: Arc<dyn Directory>,
    queue: TaskQueue,
    markers: kv::Store,
    presence: Option<Presence>,
    settings: Arc<DispatchSettings>,
}

impl Dispatcher {
    pub async fn new(
        log: EventLog,
        js: jetstream::Context,
        channels: Channels,
        directory: Arc<dyn Directory>,
        presence: Option<Presence>,
        settings: DispatchSettings,
    ) -> Result<Self, LogError> {
        let markers = match js.get_key_value(DELIVERIES_BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: DELIVERIES_BUCKET.into(),
                    description: "msgxc: deliveries a provider accepted, per message and device"
                        .into(),
                    history: 1,
                    max_age: settings.marker_ttl,
                    storage: StorageType::File,
                    num_replicas: settings.replicas.max(1),
                    ..Default::default()
                })
                .await
                .map_err(|e| LogError::Unavailable(format!("creating {DELIVERIES_BUCKET}: {e}")))?,
        };
        Ok(Self {
            log,
            queue: TaskQueue::from_context(js.clone()),
            js,
            channels,
            directory,
            markers,
            presence,
            settings: Arc::new(settings),
        })
    }

    /// Runs every lane until the task is dropped.
    pub async fn run(self) {
        let lanes = Lane::ALL.iter().enumerate().map(|(i, lane)| {
            let this = self.clone();
            let concurrency = self.settings.concurrency[i].max(1);
            tokio::spawn(this.run_lane(*lane, concurrency))
        });
        let handles: Vec<_> = lanes.collect();
        for h in handles {
            let _ = h.await;
        }
    }

    async fn run_lane(self, lane: Lane, concurrency: usize) {
        let mut backoff_delay = Duration::from_millis(100);
        loop {
            match self.follow_lane(lane, concurrency).await {
                Ok(()) => backoff_delay = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(lane = lane.name(), error = %e, "dispatch lane interrupted");
                    tokio::time::sleep(backoff_delay).await;
                    backoff_delay = (backoff_delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn follow_lane(&self, lane: Lane, concurrency: usize) -> Result<(), String> {
        let stream = self
            .js
            .get_stream(super::DISPATCH_STREAM)
            .await
            .map_err(|e| e.to_string())?;
        let name = format!("dispatch-{}", lane.name());
        let consumer: jetstream::consumer::Consumer<pull::Config> = stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: lane.subject(),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: self.settings.send_timeout * 4 + self.settings.skip_if_seen,
                    // Room for tasks held back by skip-if-seen, which wait outside the
                    // concurrency budget, and for fallbacks waiting for their time.
                    max_ack_pending: if lane == Lane::Fallback {
                        100_000
                    } else {
                        (concurrency * 4 + 10_000) as i64
                    },
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(concurrency)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(lane = lane.name(), concurrency, "dispatch lane running");
        messages
            .for_each_concurrent(concurrency, |m| async move {
                match m {
                    Ok(m) => self.handle(m).await,
                    Err(e) => tracing::debug!(lane = lane.name(), error = %e, "pull error"),
                }
            })
            .await;
        Err("message stream ended".into())
    }

    async fn handle(&self, m: jetstream::Message) {
        let attempt = m.info().map(|i| i.delivered.max(1) as u32).unwrap_or(1);
        let task: DispatchTask = match serde_json::from_slice(&m.payload) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "dropping an undecodable dispatch task");
                let _ = m.ack_with(AckKind::Term).await;
                return;
            }
        };
        if let Some(due) = task.fallback_due {
            self.fallback(m, task, due).await;
            return;
        }
        if attempt == 1 && self.should_wait_for_live_ack(&task).await {
            // Wait outside the lane's concurrency budget, then push only if still unseen.
            let this = self.clone();
            tokio::spawn(async move {
                let age = time::OffsetDateTime::now_utc() - task.created_at;
                let age = Duration::try_from(age).unwrap_or_default();
                tokio::time::sleep(this.settings.skip_if_seen.saturating_sub(age)).await;
                match this.directory.seen_live(task.mid, &task.uid).await {
                    Ok(true) => {
                        tracing::debug!(mid = %task.mid, uid = %task.uid, "seen live; push skipped");
                        let _ = m.ack().await;
                    }
                    _ => this.finish(m, &task, attempt).await,
                }
            });
            return;
        }
        self.finish(m, &task, attempt).await;
    }

    /// A waiting fallback: not due yet -> wait more; read meanwhile -> done; otherwise it
    /// becomes an ordinary task limited to the fallback channels (with the usual retries).
    async fn fallback(&self, m: jetstream::Message, task: DispatchTask, due: time::OffsetDateTime) {
        let wait = Duration::try_from(due - time::OffsetDateTime::now_utc()).unwrap_or_default();
        if !wait.is_zero() {
            // Long waits are re-checked hourly; JetStream keeps the task across restarts.
            let _ = m
                .ack_with(AckKind::Nak(Some(wait.min(Duration::from_secs(3600)))))
                .await;
            return;
        }
        match self.directory.is_read(task.mid, &task.uid).await {
            Ok(true) => {
                let _ = m.ack().await;
            }
            Ok(false) => {
                let channels = task.opts.fallback.as_ref().map(|f| f.channels.clone());
                let send = DispatchTask {
                    fallback_due: None,
                    only_channels: Some(channels.unwrap_or_default()),
                    ..task
                };
                match self.queue.enqueue(std::slice::from_ref(&send)).await {
                    Ok(()) => {
                        let _ = m.ack().await;
                    }
                    Err(e) => {
                        tracing::warn!(mid = %send.mid, error = %e, "fallback not queued; retrying");
                        let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "fallback read check failed; retrying");
                let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
        }
    }

    /// Skip-if-seen applies to non-urgent messages for users with a live connection.
    async fn should_wait_for_live_ack(&self, task: &DispatchTask) -> bool {
        let Some(presence) = &self.presence else {
            return false;
        };
        !self.settings.skip_if_seen.is_zero()
            && !task.thread_topic
            && task.requeue.is_none()
            && task.only_channels.is_none()
            && task.urgency() <= crate::events::Urgency::Normal
            && presence.is_present(&task.uid).await
    }

    /// Delivers and acks, naks for a retry, or naks after an infrastructure error.
    async fn finish(&self, m: jetstream::Message, task: &DispatchTask, attempt: u32) {
        match self.deliver(task, attempt).await {
            Ok(None) => {
                if let Err(e) = m.ack().await {
                    tracing::debug!(error = %e, "task ack failed; it will be redelivered and skipped");
                }
            }
            Ok(Some(delay)) => {
                let _ = m.ack_with(AckKind::Nak(Some(delay))).await;
            }
            Err(e) => {
                // Infrastructure trouble (store, log): retry the whole task soon.
                tracing::warn!(mid = %task.mid, error = %e, "dispatch failed; retrying");
                let _ = m
                    .ack_with(AckKind::Nak(Some(backoff(&self.settings, attempt, None))))
                    .await;
            }
        }
    }

    /// Delivers a task to every device not yet done. Returns the delay before the next try when
    /// some devices failed transiently, `None` when the task is finished.
    async fn deliver(&self, task: &DispatchTask, attempt: u32) -> Result<Option<Duration>, String> {
        if task.thread_topic {
            return Ok(self.deliver_thread_topic(task, attempt).await);
        }
        let devices = self.directory.devices(&task.uid).await?;
        let preferences = self.directory.preferences(&task.uid).await?;
        let wanted =
            |channel: &str| task.allows_channel(channel) && preferences.allows(channel, task.tid);
        let mut retry = RetryAfter::default();
        for (device_id, address) in &devices {
            if let Some(only) = &task.only_devices
                && !only.contains(device_id)
            {
                continue;
            }
            if !wanted(address.channel()) {
                continue; // restricted by the message or opted out by the user
            }
            let Some(channel) = self.channels.get(address.channel()) else {
                continue; // channel not configured here
            };
            let marker = format!("{}.{}", task.mid, device_id);
            if self.already_done(task, &marker).await {
                continue;
            }
            let delivery = Delivery {
                task,
                device_id,
                address,
                attempt,
            };
            let outcome = self.bounded(channel.send(&delivery)).await;
            self.settle(
                task,
                attempt,
                device_id,
                channel.name(),
                &marker,
                outcome,
                &mut retry,
            )
            .await?;
        }
        // MQTT carries every recipient's copy on their user topic, no enlistment needed.
        let only_devices_excludes_mqtt = task
            .only_devices
            .as_ref()
            .is_some_and(|only| !only.iter().any(|d| d == MQTT_DEVICE));
        if let Some(mqtt) = self.channels.mqtt()
            && wanted("mqtt")
            && !only_devices_excludes_mqtt
        {
            let marker = format!("{}.{MQTT_DEVICE}", task.mid);
            if !self.already_done(task, &marker).await {
                let outcome = self.bounded(mqtt.publish_user(task)).await;
                self.settle(
                    task,
                    attempt,
                    MQTT_DEVICE,
                    "mqtt",
                    &marker,
                    outcome,
                    &mut retry,
                )
                .await?;
            }
        }
        Ok(retry.0.map(|after| backoff(&self.settings, attempt, after)))
    }

    /// A thread message on its MQTT thread topic (no recipient, no receipt).
    async fn deliver_thread_topic(&self, task: &DispatchTask, attempt: u32) -> Option<Duration> {
        let (Some(mqtt), Some(tid)) = (self.channels.mqtt(), task.tid) else {
            return None;
        };
        if task
            .opts
            .channels
            .as_ref()
            .is_some_and(|c| !c.iter().any(|c| c == "mqtt"))
        {
            return None;
        }
        match self.bounded(mqtt.publish_thread(task, tid)).await {
            Outcome::Retry { after, .. } if attempt < self.settings.max_attempts => {
                Some(backoff(&self.settings, attempt, after))
            }
            Outcome::Accepted { .. } => None,
            other => {
                tracing::warn!(mid = %task.mid, outcome = ?other, "thread topic not published");
                None
            }
        }
    }

    /// A redelivered task skips targets a provider already accepted (requeues do not). The
    /// lookup is made on first deliveries too: a copy of a task can arrive as a new message
    /// (republished after the duplicate window), and JetStream's delivery count would not
    /// tell.
    async fn already_done(&self, task: &DispatchTask, marker: &str) -> bool {
        task.requeue.is_none() && matches!(self.markers.get(marker).await, Ok(Some(_)))
    }

    /// Runs one provider call with the send timeout.
    async fn bounded(&self, send: impl std::future::Future<Output = Outcome>) -> Outcome {
        match tokio::time::timeout(self.settings.send_timeout, send).await {
            Ok(o) => o,
            Err(_) => Outcome::Retry {
                reason: format!("no answer within {:?}", self.settings.send_timeout),
                after: None,
            },
        }
    }

    /// Records one target's outcome as events and notes whether a retry is due.
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        task: &DispatchTask,
        attempt: u32,
        device_id: &str,
        channel: &str,
        marker: &str,
        outcome: Outcome,
        retry: &mut RetryAfter,
    ) -> Result<(), String> {
        match outcome {
            Outcome::Accepted { provider_id } => {
                // Independent writes: the marker guards redelivery, the event is the receipt.
                let (_, recorded) = tokio::join!(
                    self.markers.put(marker, "sent".into()),
                    self.record(
                        Event::DeliverySent(DeliverySent {
                            mid: task.mid,
                            uid: task.uid.clone(),
                            device_id: device_id.to_owned(),
                            channel: channel.to_owned(),
                            attempt,
                            provider_id,
                        }),
                        format!("sent.{marker}"),
                    )
                );
                recorded
            }
            Outcome::Retry { reason, after } => {
                let dead = attempt >= self.settings.max_attempts;
                self.failed(task, device_id, channel, attempt, reason, false, dead)
                    .await?;
                if !dead {
                    retry.note(after);
                }
                Ok(())
            }
            Outcome::DeviceGone { reason } => {
                let _ = self.markers.put(marker, "gone".into()).await;
                self.record(
                    Event::DeviceDisabled(DeviceDisabled {
                        uid: task.uid.clone(),
                        device_id: device_id.to_owned(),
                        channel: channel.to_owned(),
                        reason: reason.clone(),
                    }),
                    format!("disabled.{marker}"),
                )
                .await?;
                self.failed(task, device_id, channel, attempt, reason, true, true)
                    .await
            }
            Outcome::Rejected { reason } => {
                let _ = self.markers.put(marker, "rejected".into()).await;
                self.failed(task, device_id, channel, attempt, reason, true, true)
                    .await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn failed(
        &self,
        task: &DispatchTask,
        device_id: &str,
        channel: &str,
        attempt: u32,
        reason: String,
        permanent: bool,
        dead: bool,
    ) -> Result<(), String> {
        tracing::info!(mid = %task.mid, device = device_id, channel, attempt, permanent, dead, %reason, "delivery failed");
        self.record(
            Event::DeliveryFailed(DeliveryFailed {
                mid: task.mid,
                uid: task.uid.clone(),
                device_id: device_id.to_owned(),
                channel: channel.to_owned(),
                attempt,
                reason,
                permanent,
                dead,
            }),
            format!(
                "failed.{}.{device_id}.{attempt}.{}",
                task.mid,
                task.requeue.map(|r| r.to_string()).unwrap_or_default()
            ),
        )
        .await
    }

    async fn record(&self, event: Event, msg_id: String) -> Result<(), String> {
        let env = Envelope::new(system_actor(), event);
        self.log
            .append(&env, Some(&msg_id))
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let s = DispatchSettings {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            ..Default::default()
        };
        let d1 = backoff(&s, 1, None);
        assert!(d1 >= Duration::from_millis(800) && d1 <= Duration::from_millis(1200));
        let d3 = backoff(&s, 3, None);
        assert!(d3 >= Duration::from_millis(3200) && d3 <= Duration::from_millis(4800));
        assert!(backoff(&s, 30, None) <= Duration::from_secs(12));
        assert!(backoff(&s, 1, Some(Duration::from_secs(7))) >= Duration::from_secs(7));
    }
}
