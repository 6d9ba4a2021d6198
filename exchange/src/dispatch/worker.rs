//! The dispatcher: one pull consumer per lane, each with its own concurrency budget.
//!
//! A task is a batch of recipients. Per task: read what earlier runs settled (progress records
//! in JetStream KV `MSGXC_DELIVERIES`), resolve the recipients' devices and preferences in one
//! read, apply their rules (quiet hours hold a recipient's deliveries in a waiting task until
//! the window ends, frequency caps suppress what is over; both settle with their reason), call
//! each device's channel (paced per provider by its [`Throttle`], the payload built once per
//! channel), and record the outcomes in parts of [`PART`] devices: one
//! `deliveries_settled` event, then one progress record, per part. Transient failures are
//! retried by NAK-with-delay (exponential backoff with jitter, honouring Retry-After) up to
//! `max_attempts`; the last failure is a dead letter. A 429 pauses the provider's sends and is
//! tried again within the task.
//!
//! At-least-once, with one gap: a crash after a provider accepted a message but before its
//! part's progress record is written re-sends to the devices of that part (at most [`PART`]
//! plus the sends in flight) on redelivery. APNs (`apns-id`), Web Push (`Topic`) and FCM
//! (collapse keys) receive a per-(message, device) id so the duplicate is recognisable; SMS,
//! e-mail and MQTT have no such guard.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, pull},
    kv,
    stream::StorageType,
};
use futures::StreamExt;
use tracing::Instrument;

use crate::dispatch::caps::{CapSettings, Caps};
use crate::dispatch::throttle::{Limits, Throttle};
use crate::dispatch::{
    Channel, Channels, Delivery, Directory, DispatchTask, Lane, Outcome, Prepared, Recipient,
    TaskQueue,
};
use crate::events::{
    Actor, DeliveriesSettled, DeviceAddress, Envelope, Event, SettledDelivery, SettledStatus,
};
use crate::log::{EventLog, LogError};
use crate::presence::{Presence, PresenceView};

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
    /// Pacing per channel name (`apns`, `fcm`, `webpush`, `sms`, `email`, `mqtt`); a channel
    /// not listed gets [`Limits::default`] (no rate, 256 in flight) except FCM, whose default
    /// rate is its default project quota.
    pub limits: HashMap<String, Limits>,
    /// Frequency caps per user and channel (none by default).
    pub caps: CapSettings,
}

impl DispatchSettings {
    /// The limits of one channel.
    pub fn limits_of(&self, channel: &str) -> Limits {
        self.limits.get(channel).copied().unwrap_or(match channel {
            "fcm" => Limits {
                rate: Some(Limits::FCM_DEFAULT_RATE),
                ..Limits::default()
            },
            _ => Limits::default(),
        })
    }
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
            limits: HashMap::new(),
            caps: CapSettings::default(),
        }
    }
}

/// The lane a task was pulled from, as the metrics name it.
fn lane_of(task: &DispatchTask) -> &'static str {
    super::Lane::of_task(task).name()
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
    presence: Option<PresenceView>,
    /// Each configured channel with its throttle, by name.
    paced: Arc<HashMap<&'static str, Paced>>,
    mqtt_throttle: Arc<Throttle>,
    /// Frequency caps, when any is configured.
    caps: Option<Caps>,
    settings: Arc<DispatchSettings>,
    metrics: Option<super::metrics::DispatchMetrics>,
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
        let caps = Caps::open(&js, settings.caps.clone(), settings.replicas).await?;
        let paced = channels
            .all()
            .map(|c| {
                let throttle = Arc::new(Throttle::new(settings.limits_of(c.name())));
                (c.name(), (c.clone(), throttle))
            })
            .collect();
        Ok(Self {
            log,
            queue: TaskQueue::from_context(js.clone()),
            js,
            mqtt_throttle: Arc::new(Throttle::new(settings.limits_of("mqtt"))),
            paced: Arc::new(paced),
            channels,
            directory,
            markers,
            caps,
            presence: presence.as_ref().map(Presence::follow),
            settings: Arc::new(settings),
            metrics: None,
        })
    }

    /// Counts every provider call into `metrics` (see [`super::metrics`]).
    pub fn with_metrics(mut self, metrics: super::metrics::DispatchMetrics) -> Self {
        self.metrics = Some(metrics);
        self
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
        let name = lane.consumer();
        let consumer: jetstream::consumer::Consumer<pull::Config> = stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: lane.subject(),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: self.ack_wait(),
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

    /// How long JetStream waits for a task's ack (or a progress signal) before handing it to
    /// another dispatcher.
    fn ack_wait(&self) -> Duration {
        self.settings.send_timeout * 4 + self.settings.skip_if_seen
    }

    /// Runs `work` on task `m`, telling JetStream it is in progress every third of the ack
    /// wait: a large batch paced by a provider's rate limit may take longer than that.
    async fn working<F: std::future::Future>(&self, m: &jetstream::Message, work: F) -> F::Output {
        tokio::pin!(work);
        let every = self.ack_wait() / 3;
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = tokio::time::sleep(every) => {
                    if let Err(e) = m.ack_with(AckKind::Progress).await {
                        tracing::debug!(error = %e, "progress signal not sent");
                    }
                }
            }
        }
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
        // Tracing on: the task's handling continues the trace of the fold that queued it.
        match task.trace.filter(|_| crate::trace::enabled()) {
            Some(parent) => {
                let span = tracing::info_span!(
                    "dispatch",
                    mid = %task.mid,
                    recipients = task.recipients().len(),
                    attempt,
                    lane = ?task.urgency(),
                );
                parent.adopt(&span);
                self.handle_task(m, task, attempt).instrument(span).await;
            }
            None => self.handle_task(m, task, attempt).await,
        }
    }

    async fn handle_task(&self, m: jetstream::Message, task: DispatchTask, attempt: u32) {
        if let Some(due) = task.fallback_due {
            self.fallback(m, task, due).await;
            return;
        }
        if let Some(until) = task.hold_until {
            self.release(m, task, until).await;
            return;
        }
        let present = if attempt == 1 {
            self.waiting_for_live_ack(&task)
        } else {
            HashSet::new()
        };
        if present.is_empty() {
            let result = self
                .working(&m, self.deliver(&task, attempt, &HashSet::new()))
                .await;
            self.finish(m, &task, attempt, result).await;
            return;
        }
        // The recipients who are connected wait (outside the lane's concurrency budget) and
        // are pushed to only if still unseen; the others are sent to at once.
        let this = self.clone();
        tokio::spawn(
            async move {
                let first = this
                    .working(&m, this.deliver(&task, attempt, &present))
                    .await;
                let age = time::OffsetDateTime::now_utc() - task.created_at;
                let age = Duration::try_from(age).unwrap_or_default();
                tokio::time::sleep(this.settings.skip_if_seen.saturating_sub(age)).await;
                let mut skip: HashSet<String> = task
                    .recipients()
                    .iter()
                    .filter(|u| !present.contains(*u))
                    .cloned()
                    .collect();
                for uid in &present {
                    if let Ok(true) = this.directory.seen_live(task.mid, uid).await {
                        tracing::debug!(mid = %task.mid, uid = %uid, "seen live; push skipped");
                        skip.insert(uid.clone());
                    }
                }
                let second = if skip.len() < task.recipients().len() {
                    this.working(&m, this.deliver(&task, attempt, &skip)).await
                } else {
                    Ok(None)
                };
                let result = match (first, second) {
                    (Err(e), _) | (_, Err(e)) => Err(e),
                    (Ok(a), Ok(b)) => Ok(a.max(b)),
                };
                this.finish(m, &task, attempt, result).await;
            }
            .in_current_span(),
        );
    }

    /// A waiting fallback: not due yet -> wait more; read meanwhile -> done; otherwise it
    /// becomes an ordinary task for those who did not read, limited to the fallback channels
    /// (with the usual retries).
    async fn fallback(&self, m: jetstream::Message, task: DispatchTask, due: time::OffsetDateTime) {
        let wait = Duration::try_from(due - time::OffsetDateTime::now_utc()).unwrap_or_default();
        if !wait.is_zero() {
            // Long waits are re-checked hourly; JetStream keeps the task across restarts.
            let _ = m
                .ack_with(AckKind::Nak(Some(wait.min(Duration::from_secs(3600)))))
                .await;
            return;
        }
        let mut unread = Vec::new();
        for uid in task.recipients() {
            match self.directory.is_read(task.mid, uid).await {
                Ok(true) => {}
                Ok(false) => unread.push(uid.clone()),
                Err(e) => {
                    tracing::warn!(error = %e, "fallback read check failed; retrying");
                    let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                    return;
                }
            }
        }
        if unread.is_empty() {
            let _ = m.ack().await;
            return;
        }
        let channels = task.opts.fallback.as_ref().map(|f| f.channels.clone());
        let send = DispatchTask {
            trace: None,
            fallback_due: None,
            hold_until: None,
            released_from: None,
            only_channels: Some(channels.unwrap_or_default()),
            ..task.for_recipients(unread)
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

    /// A held task: not due yet -> wait more; due -> it becomes an ordinary task in its
    /// urgency lane, marked released so quiet hours do not hold it again.
    async fn release(
        &self,
        m: jetstream::Message,
        task: DispatchTask,
        until: time::OffsetDateTime,
    ) {
        let wait = Duration::try_from(until - time::OffsetDateTime::now_utc()).unwrap_or_default();
        if !wait.is_zero() {
            let _ = m
                .ack_with(AckKind::Nak(Some(wait.min(Duration::from_secs(3600)))))
                .await;
            return;
        }
        let send = DispatchTask {
            trace: None,
            hold_until: None,
            released_from: Some(until),
            ..task
        };
        match self.queue.enqueue(std::slice::from_ref(&send)).await {
            Ok(()) => {
                tracing::debug!(mid = %send.mid, recipients = send.recipients().len(), "quiet hours over; released");
                let _ = m.ack().await;
            }
            Err(e) => {
                tracing::warn!(mid = %send.mid, error = %e, "held task not released; retrying");
                let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
        }
    }

    /// Skip-if-seen applies to non-urgent messages for users with a live connection: the
    /// recipients of `task` it holds back.
    fn waiting_for_live_ack(&self, task: &DispatchTask) -> HashSet<String> {
        let Some(presence) = &self.presence else {
            return HashSet::new();
        };
        if self.settings.skip_if_seen.is_zero()
            || task.thread_topic
            || task.requeue.is_some()
            || task.only_channels.is_some()
            || task.urgency() > crate::events::Urgency::Normal
        {
            return HashSet::new();
        }
        task.recipients()
            .iter()
            .filter(|uid| presence.is_present(uid))
            .cloned()
            .collect()
    }

    /// Acks a finished task, naks it for a retry, or naks it after an infrastructure error.
    async fn finish(
        &self,
        m: jetstream::Message,
        task: &DispatchTask,
        attempt: u32,
        result: Result<Option<Duration>, String>,
    ) {
        match result {
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

    /// Delivers a task to every device of its recipients (but those in `skip`) not done yet.
    /// Returns the delay before the next try when some devices failed transiently, `None`
    /// when the task is finished.
    async fn deliver(
        &self,
        task: &DispatchTask,
        attempt: u32,
        skip: &HashSet<String>,
    ) -> Result<Option<Duration>, String> {
        if task.thread_topic {
            return Ok(self.deliver_thread_topic(task, attempt).await);
        }
        let uids: Vec<String> = task
            .recipients()
            .iter()
            .filter(|u| !u.is_empty() && !skip.contains(*u))
            .cloned()
            .collect();
        if uids.is_empty() {
            return Ok(None);
        }
        let mut progress = self.progress(task).await?;
        let recipients = self.directory.recipients(&uids).await?;
        let targets = self.targets(task, &recipients, &progress.done);
        if targets.is_empty() {
            return Ok(None);
        }
        let (targets, stopped) = self.rules(task, attempt, &recipients, targets).await?;
        for part in stopped.chunks(PART) {
            self.record_part(task, attempt, &mut progress, part.to_vec())
                .await?;
        }
        let prepared = Prepared::default();
        let mut retry = RetryAfter::default();
        let mut part = Vec::new();
        let mut queued = targets.iter();
        let mut sends = futures::stream::FuturesUnordered::new();
        loop {
            while sends.len() < SENDS_PER_TASK
                && let Some(t) = queued.next()
            {
                sends.push(self.send(task, t, attempt, &prepared));
            }
            let Some((target, outcome)) = sends.next().await else {
                break;
            };
            let mut settled = self.settlement(attempt, target, outcome, &mut retry);
            settled.0.held_until = task.released_from;
            part.push(settled);
            if part.len() >= PART {
                self.record_part(task, attempt, &mut progress, std::mem::take(&mut part))
                    .await?;
            }
        }
        drop(sends);
        if !part.is_empty() {
            self.record_part(task, attempt, &mut progress, part).await?;
        }
        Ok(retry.0.map(|after| backoff(&self.settings, attempt, after)))
    }

    /// The recipients' rules: quiet hours hold targets (queued again for when the window
    /// ends), frequency caps suppress them. Returns the targets to send now and the
    /// settlements of the others, which are final for this task.
    async fn rules<'r>(
        &self,
        task: &DispatchTask,
        attempt: u32,
        recipients: &'r [Recipient],
        mut targets: Vec<Target<'r>>,
    ) -> Result<(Vec<Target<'r>>, Vec<(SettledDelivery, bool)>), String> {
        let mut stopped = Vec::new();
        let now = time::OffsetDateTime::now_utc();
        if task.may_be_held() {
            let holds: HashMap<&str, time::OffsetDateTime> = recipients
                .iter()
                .filter_map(|r| r.preferences.quiet_until(now).map(|u| (r.uid.as_str(), u)))
                .collect();
            if !holds.is_empty() {
                let (held, rest): (Vec<_>, Vec<_>) =
                    targets.into_iter().partition(|t| holds.contains_key(t.uid));
                targets = rest;
                // One waiting task per end of window, for the held recipients.
                let mut by_end: std::collections::BTreeMap<time::OffsetDateTime, Vec<String>> =
                    Default::default();
                for t in &held {
                    let uids = by_end.entry(holds[t.uid]).or_default();
                    if uids.last().map(String::as_str) != Some(t.uid) {
                        uids.push(t.uid.to_owned());
                    }
                }
                let waiting: Vec<DispatchTask> = by_end
                    .into_iter()
                    .map(|(until, uids)| DispatchTask {
                        trace: None,
                        hold_until: Some(until),
                        ..task.for_recipients(uids)
                    })
                    .collect();
                // Queued before the holds are recorded: a crash between the two queues the
                // same tasks again (the same message ids, so stored once in the window).
                self.queue
                    .enqueue(&waiting)
                    .await
                    .map_err(|e| format!("queueing held deliveries: {e}"))?;
                for t in held {
                    if let Some(m) = &self.metrics {
                        m.stopped(t.channel, "quiet_hours");
                    }
                    let mut d = self.outcome_of(attempt, &t, SettledStatus::Held);
                    d.reason = Some("quiet hours".into());
                    d.held_until = Some(holds[t.uid]);
                    stopped.push((d, true));
                }
            }
        }
        if let Some(caps) = &self.caps
            && !task.opts.critical()
            && task.requeue.is_none()
        {
            // One check per (recipient, counter), however many devices share it.
            let mut checks: HashMap<(&str, &str), Option<bool>> = HashMap::new();
            for t in &targets {
                if let Some((counter, _)) = caps.settings().of(t.channel) {
                    checks.insert((t.uid, counter), None);
                }
            }
            let mut pending: Vec<(&str, &str)> = checks.keys().copied().collect();
            let mut running = futures::stream::FuturesUnordered::new();
            loop {
                while running.len() < 32
                    && let Some((uid, counter)) = pending.pop()
                {
                    let cap = caps.settings().by[counter];
                    running.push(async move {
                        let ok = caps.admit(uid, counter, cap, task.mid, now).await;
                        ((uid, counter), ok)
                    });
                }
                let Some((key, ok)) = running.next().await else {
                    break;
                };
                checks.insert(key, Some(ok?));
            }
            drop(running);
            let (capped, rest): (Vec<_>, Vec<_>) = targets.into_iter().partition(|t| {
                caps.settings()
                    .of(t.channel)
                    .is_some_and(|(c, _)| checks.get(&(t.uid, c)) == Some(&Some(false)))
            });
            targets = rest;
            for t in capped {
                if let Some(m) = &self.metrics {
                    m.stopped(t.channel, "frequency_cap");
                }
                let mut d = self.outcome_of(attempt, &t, SettledStatus::Suppressed);
                if let Some((counter, cap)) = caps.settings().of(t.channel) {
                    d.reason = Some(format!("frequency cap: {counter} {cap}"));
                }
                stopped.push((d, true));
            }
        }
        Ok((targets, stopped))
    }

    /// The devices of `recipients` this task goes to, minus those done.
    fn targets<'r>(
        &self,
        task: &DispatchTask,
        recipients: &'r [Recipient],
        done: &HashSet<(String, String)>,
    ) -> Vec<Target<'r>> {
        let mut targets = Vec::new();
        // Most tasks run once: no lookup (and no key built) when nothing was settled before.
        let done = |uid: &str, device: &str| {
            !done.is_empty() && done.contains(&(uid.to_owned(), device.to_owned()))
        };
        for r in recipients {
            let wanted = |channel: &str| {
                task.allows_channel(channel) && r.preferences.allows(channel, task.tid)
            };
            for (device_id, address) in &r.devices {
                if let Some(only) = &task.only_devices
                    && !only.contains(device_id)
                {
                    continue;
                }
                if !wanted(address.channel()) {
                    continue; // restricted by the message or opted out by the user
                }
                let Some((channel, throttle)) = self.paced.get(address.channel()) else {
                    continue; // channel not configured here
                };
                if done(&r.uid, device_id) {
                    continue;
                }
                targets.push(Target {
                    uid: &r.uid,
                    device_id,
                    address: Some(address),
                    channel: channel.name(),
                    throttle: throttle.clone(),
                    via: Via::Channel(channel.clone()),
                });
            }
            // MQTT carries every recipient's copy on their user topic, no enlistment needed.
            let only_devices_excludes_mqtt = task
                .only_devices
                .as_ref()
                .is_some_and(|only| !only.iter().any(|d| d == MQTT_DEVICE));
            if let Some(mqtt) = self.channels.mqtt()
                && wanted("mqtt")
                && !only_devices_excludes_mqtt
                && !done(&r.uid, MQTT_DEVICE)
            {
                targets.push(Target {
                    uid: &r.uid,
                    device_id: MQTT_DEVICE,
                    address: None,
                    channel: "mqtt",
                    throttle: self.mqtt_throttle.clone(),
                    via: Via::Mqtt(mqtt.clone()),
                });
            }
        }
        targets
    }

    /// One provider call, paced by the channel's throttle; a 429 pauses every send to that
    /// provider and is tried again after the pause (a few times, then it is a retry).
    async fn send<'t>(
        &self,
        task: &DispatchTask,
        target: &'t Target<'t>,
        attempt: u32,
        prepared: &Prepared,
    ) -> (&'t Target<'t>, Outcome) {
        let mut throttled = 0;
        loop {
            let permit = target.throttle.acquire().await;
            let started = std::time::Instant::now();
            let outcome = match &target.via {
                Via::Channel(channel) => {
                    let Some(address) = target.address else {
                        return (
                            target,
                            Outcome::Rejected {
                                reason: "no address".into(),
                            },
                        );
                    };
                    let delivery = Delivery {
                        task,
                        uid: target.uid,
                        prepared,
                        device_id: target.device_id,
                        address,
                        attempt,
                    };
                    self.bounded(channel.send(&delivery)).await
                }
                Via::Mqtt(mqtt) => self.bounded(mqtt.publish_user(task, target.uid)).await,
            };
            drop(permit);
            if let Some(m) = &self.metrics {
                m.send(target.channel, lane_of(task), &outcome, started.elapsed());
            }
            match outcome {
                Outcome::Throttled { reason, after } => {
                    let pause = after.unwrap_or(Duration::from_secs(1));
                    target.throttle.pause(pause);
                    throttled += 1;
                    tracing::info!(channel = target.channel, ?pause, throttled, %reason, "provider asks to slow down");
                    if throttled >= THROTTLED_RETRIES {
                        return (target, Outcome::Retry { reason, after });
                    }
                }
                other => return (target, other),
            }
        }
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
            Outcome::Retry { after, .. } | Outcome::Throttled { after, .. }
                if attempt < self.settings.max_attempts =>
            {
                Some(backoff(&self.settings, attempt, after))
            }
            Outcome::Accepted { .. } => None,
            other => {
                tracing::warn!(mid = %task.mid, outcome = ?other, "thread topic not published");
                None
            }
        }
    }

    /// What this task's earlier runs settled: its progress records `<key>.0`, `<key>.1`, ...
    /// (written in order, so the first missing one ends them). Read on first deliveries too:
    /// a copy of a task can arrive as a new message (republished after the duplicate window),
    /// and JetStream's delivery count would not tell.
    async fn progress(&self, task: &DispatchTask) -> Result<Progress, String> {
        let key = task.progress_key();
        let mut progress = Progress {
            key,
            next: 0,
            done: HashSet::new(),
        };
        loop {
            let record = self
                .markers
                .get(format!("{}.{}", progress.key, progress.next))
                .await
                .map_err(|e| format!("reading delivery progress: {e}"))?;
            let Some(record) = record else {
                return Ok(progress);
            };
            let pairs: Vec<(String, String)> = serde_json::from_slice(&record).unwrap_or_default();
            progress.done.extend(pairs);
            progress.next += 1;
        }
    }

    /// Records one part of a task's outcomes: the event first (receipts, dead letters and
    /// disabled devices fold from it), then the progress record that keeps a redelivered task
    /// from sending to these devices again. A crash between the two re-sends this part once.
    async fn record_part(
        &self,
        task: &DispatchTask,
        attempt: u32,
        progress: &mut Progress,
        part: Vec<(SettledDelivery, bool)>,
    ) -> Result<(), String> {
        let n = progress.next;
        progress.next += 1;
        let finals: Vec<(&str, &str)> = part
            .iter()
            .filter(|(_, last)| *last)
            .map(|(d, _)| (d.uid.as_str(), d.device_id.as_str()))
            .collect();
        let record = serde_json::to_vec(&finals).map_err(|e| e.to_string())?;
        let deliveries = part.iter().map(|(d, _)| d.clone()).collect();
        self.record(
            Event::DeliveriesSettled(DeliveriesSettled {
                mid: task.mid,
                deliveries,
            }),
            format!("settled.{}.{n}.{attempt}", progress.key),
        )
        .await?;
        if let Err(e) = self
            .markers
            .put(format!("{}.{n}", progress.key), record.into())
            .await
        {
            // The next records must not skip this number (the reader stops at a gap).
            tracing::warn!(mid = %task.mid, error = %e, "delivery progress not recorded");
            return Err(format!("recording delivery progress: {e}"));
        }
        for (d, _) in &part {
            if d.dead
                && let Some(m) = &self.metrics
            {
                m.dead_letter(&d.channel);
            }
            if d.status == SettledStatus::Failed {
                tracing::info!(mid = %task.mid, device = %d.device_id, channel = %d.channel, attempt, permanent = d.permanent, dead = d.dead, reason = d.reason.as_deref().unwrap_or(""), "delivery failed");
            }
        }
        Ok(())
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

    /// One target's outcome as it is recorded, and whether it is final (no retry follows).
    fn settlement(
        &self,
        attempt: u32,
        target: &Target<'_>,
        outcome: Outcome,
        retry: &mut RetryAfter,
    ) -> (SettledDelivery, bool) {
        let mut d = self.outcome_of(attempt, target, SettledStatus::Failed);
        match outcome {
            Outcome::Accepted { provider_id } => {
                d.status = SettledStatus::Sent;
                d.provider_id = provider_id;
                (d, true)
            }
            Outcome::Retry { reason, after } | Outcome::Throttled { reason, after } => {
                d.reason = Some(reason);
                d.dead = attempt >= self.settings.max_attempts;
                if !d.dead {
                    retry.note(after);
                }
                let last = d.dead;
                (d, last)
            }
            Outcome::DeviceGone { reason } => {
                d.reason = Some(reason);
                d.permanent = true;
                d.dead = true;
                d.disabled = true;
                (d, true)
            }
            Outcome::Rejected { reason } => {
                d.reason = Some(reason);
                d.permanent = true;
                d.dead = true;
                (d, true)
            }
        }
    }

    /// A target's settlement with `status` and nothing else said yet.
    fn outcome_of(
        &self,
        attempt: u32,
        target: &Target<'_>,
        status: SettledStatus,
    ) -> SettledDelivery {
        SettledDelivery {
            uid: target.uid.to_owned(),
            device_id: target.device_id.to_owned(),
            channel: target.channel.to_owned(),
            attempt,
            status,
            provider_id: None,
            reason: None,
            permanent: false,
            dead: false,
            disabled: false,
            held_until: None,
        }
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

/// Sends in flight per task (each also waits for its channel's throttle).
const SENDS_PER_TASK: usize = 64;

/// Outcomes per `deliveries_settled` event and progress record: at most this many devices
/// (plus the sends in flight) are sent again when a dispatcher dies mid-task.
const PART: usize = 64;

/// A 429 is tried again this many times within the task before it counts as an attempt.
const THROTTLED_RETRIES: u32 = 4;

/// A channel and the throttle its sends pass.
type Paced = (Arc<dyn Channel>, Arc<Throttle>);

/// What earlier runs of a task settled, and the number of its next progress record.
struct Progress {
    key: String,
    next: u64,
    done: HashSet<(String, String)>,
}

/// One device (or a user's MQTT topic) a task sends to.
struct Target<'r> {
    uid: &'r str,
    device_id: &'r str,
    address: Option<&'r DeviceAddress>,
    channel: &'static str,
    throttle: Arc<Throttle>,
    via: Via,
}

enum Via {
    Channel(Arc<dyn Channel>),
    Mqtt(Arc<crate::channels::mqtt::MqttChannel>),
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
