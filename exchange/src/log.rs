//! The event log: one JetStream stream holding every [`Envelope`], the single source of truth.
//!
//! Appends return only after JetStream acknowledged the event (it is durably stored), and each
//! append carries a `Nats-Msg-Id` so a retried append inside the duplicate window stores nothing
//! twice.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::OrderedConfig},
    context::PublishErrorKind,
    message::PublishMessage,
    stream::{Config as StreamConfig, DiscardPolicy, RetentionPolicy, StorageType},
};
use futures::{Stream, StreamExt};
use time::OffsetDateTime;

use crate::events::Envelope;
use crate::subject::{EVENTS_WILDCARD, SCHEDULES_WILDCARD, schedule_subject};

/// How the events stream is set up. Defaults suit a single node.
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub stream: String,
    /// How long JetStream remembers `Nats-Msg-Id`s to drop duplicates.
    pub duplicate_window: Duration,
    pub replicas: usize,
    /// Upper bound for one append (publish + ack) and for JetStream API calls.
    pub timeout: Duration,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            stream: "MSGXC_EVENTS".into(),
            duplicate_window: Duration::from_secs(24 * 3600),
            replicas: 1,
            timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// JetStream could not be reached or did not acknowledge in time; the event may or may not
    /// be stored (a retry with the same message id is safe).
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    /// JetStream answered with an error (misconfiguration, limits).
    #[error("event log rejected the request: {0}")]
    Rejected(String),
    /// A stored event that this build cannot decode.
    #[error("event at sequence {seq} cannot be decoded: {reason}")]
    Decode { seq: u64, reason: String },
    #[error("no event at sequence {0}")]
    NotFound(u64),
    /// A conditional append found the stream not as expected (a schedule that fired already).
    #[error("event log state changed: {0}")]
    Conflict(String),
}

/// The result of one append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Stream sequence of the stored event (of the original one for a duplicate).
    pub seq: u64,
    /// True when JetStream had already stored an event with the same message id.
    pub duplicate: bool,
}

/// One event read back from the stream.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    pub envelope: Envelope,
}

/// Where a read of the log starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    Beginning,
    Sequence(u64),
    Time(OffsetDateTime),
}

/// Handle to the events stream. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    js: jetstream::Context,
    settings: LogSettings,
}

impl EventLog {
    /// Connects to the stream, creating it (or updating its settings) as needed.
    pub async fn open(client: async_nats::Client, settings: LogSettings) -> Result<Self, LogError> {
        let version = client.server_info().version;
        if crate::natsd::parse_version(&format!("v{version}"))
            .is_some_and(|v| v < crate::natsd::MIN_VERSION)
        {
            return Err(LogError::Rejected(format!(
                "nats-server {version} is too old: msgxc needs {}.{} or newer (message schedules)",
                crate::natsd::MIN_VERSION.0,
                crate::natsd::MIN_VERSION.1
            )));
        }
        let js = jetstream::ContextBuilder::new()
            .timeout(settings.timeout)
            .build(client);
        let config = StreamConfig {
            name: settings.stream.clone(),
            description: Some("msgxc events: the source of truth".into()),
            subjects: vec![EVENTS_WILDCARD.into(), SCHEDULES_WILDCARD.into()],
            // Scheduled sends are JetStream message schedules (nats-server 2.12+), which need
            // roll-ups (each schedule is the one message of its subject).
            allow_message_schedules: true,
            allow_rollup: true,
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            duplicate_window: settings.duplicate_window,
            num_replicas: settings.replicas,
            allow_direct: true,
            ..Default::default()
        };
        js.create_or_update_stream(config)
            .await
            .map_err(|e| LogError::Unavailable(format!("creating stream: {e}")))?;
        Ok(Self { js, settings })
    }

    pub fn stream_name(&self) -> &str {
        &self.settings.stream
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Appends one event and waits for JetStream's acknowledgement. `msg_id` defaults to the
    /// event id; pass a caller-supplied idempotency key to make client retries collapse.
    pub async fn append(&self, env: &Envelope, msg_id: Option<&str>) -> Result<Appended, LogError> {
        let payload = serde_json::to_vec(env)
            .map_err(|e| LogError::Rejected(format!("encoding event: {e}")))?;
        let id = msg_id.map_or_else(|| env.id.to_string(), str::to_owned);
        let publish = traced(
            PublishMessage::build()
                .payload(payload.into())
                .message_id(id),
        );
        self.publish(env.subject(), publish).await
    }

    /// Stores `env` (a message event) as a JetStream message schedule under
    /// `msgxc.sched.<id>`: nats-server stores it under its own subject at `at`, once, and
    /// removes the schedule in the same write. Returns the schedule's position.
    pub async fn schedule(
        &self,
        env: &Envelope,
        at: OffsetDateTime,
        msg_id: Option<&str>,
    ) -> Result<Appended, LogError> {
        let payload = serde_json::to_vec(env)
            .map_err(|e| LogError::Rejected(format!("encoding event: {e}")))?;
        let when = at
            .to_offset(time::UtcOffset::UTC)
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| LogError::Rejected(format!("schedule time: {e}")))?;
        let id = msg_id.map_or_else(|| format!("sched-{}", env.id), str::to_owned);
        let publish = traced(
            PublishMessage::build()
                .payload(payload.into())
                .message_id(id)
                .header("Nats-Schedule", format!("@at {when}").as_str())
                .header("Nats-Schedule-Target", env.subject().as_str()),
        );
        self.publish(schedule_subject(env.id), publish).await
    }

    /// Appends `env` (the cancel of message `mid`'s schedule) only while that schedule still
    /// waits at `schedule_seq`, and removes the schedule in the same write: a cancel either
    /// happens before the fire or is refused ([`LogError::Conflict`]), never both.
    pub async fn cancel_schedule(
        &self,
        env: &Envelope,
        mid: uuid::Uuid,
        schedule_seq: u64,
    ) -> Result<Appended, LogError> {
        let payload = serde_json::to_vec(env)
            .map_err(|e| LogError::Rejected(format!("encoding event: {e}")))?;
        let scheduler = schedule_subject(mid);
        let publish = PublishMessage::build()
            .payload(payload.into())
            .message_id(env.id.to_string())
            .header("Nats-Schedule-Next", "purge")
            .header("Nats-Scheduler", scheduler.as_str())
            .expected_last_subject_sequence(schedule_seq)
            .header(
                "Nats-Expected-Last-Subject-Sequence-Subject",
                scheduler.as_str(),
            );
        self.publish(env.subject(), publish).await
    }

    async fn publish(
        &self,
        subject: String,
        publish: PublishMessage,
    ) -> Result<Appended, LogError> {
        let ack_future = self
            .js
            .send_publish(subject, publish)
            .await
            .map_err(publish_error)?;
        let ack = ack_future.await.map_err(publish_error)?;
        Ok(Appended {
            seq: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// Reads the event stored at `seq`.
    pub async fn get(&self, seq: u64) -> Result<Stored, LogError> {
        let stream = self.stream().await?;
        let msg = stream.direct_get(seq).await.map_err(|e| {
            if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound {
                LogError::NotFound(seq)
            } else {
                LogError::Unavailable(format!("reading seq {seq}: {e}"))
            }
        })?;
        Ok(Stored {
            seq,
            envelope: decode(seq, &msg.payload)?,
        })
    }

    /// When the first event at or after `seq` was stored (`None`: there is none): the age of
    /// the oldest event a reader at `seq - 1` has not applied. Schedules waiting in the stream
    /// are not events and are skipped.
    pub async fn stored_at_or_after(&self, seq: u64) -> Result<Option<OffsetDateTime>, LogError> {
        let stream = self.stream().await?;
        match stream
            .direct_get_next_for_subject(EVENTS_WILDCARD, Some(seq.max(1)))
            .await
        {
            Ok(m) => Ok(Some(m.time)),
            Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(LogError::Unavailable(format!(
                "reading after seq {seq}: {e}"
            ))),
        }
    }

    /// The last stored sequence (0 for an empty stream).
    pub async fn last_seq(&self) -> Result<u64, LogError> {
        let mut stream = self.stream().await?;
        let info = stream
            .info()
            .await
            .map_err(|e| LogError::Unavailable(format!("stream info: {e}")))?;
        Ok(info.state.last_sequence)
    }

    pub async fn stream(&self) -> Result<jetstream::stream::Stream, LogError> {
        self.js
            .get_stream(&self.settings.stream)
            .await
            .map_err(|e| LogError::Unavailable(format!("stream {}: {e}", self.settings.stream)))
    }

    /// Reads the log in order with an ordered (ephemeral, flow-controlled) consumer, up to and
    /// including `until_seq` (or the last event when the stream ends before it with schedules,
    /// which are not events). Used by replay and rebuild; it never modifies anything.
    pub async fn read(
        &self,
        start: Start,
        filter: Option<String>,
        until_seq: u64,
    ) -> Result<impl Stream<Item = Result<Stored, LogError>> + use<>, LogError> {
        let deliver_policy = match start {
            Start::Beginning => DeliverPolicy::All,
            Start::Sequence(s) => DeliverPolicy::ByStartSequence {
                start_sequence: s.max(1),
            },
            Start::Time(t) => DeliverPolicy::ByStartTime { start_time: t },
        };
        let messages = self.ordered(deliver_policy, filter).await?;
        let events = messages
            .map(move |m| {
                let (raw, pending) = match raw_and_pending(m) {
                    Ok(r) => r,
                    Err(e) => return (false, Err(e)),
                };
                // The last wanted sequence, or nothing more for this filter before it (the
                // rest of the stream up to it is schedules, or other subjects).
                let last = raw.seq >= until_seq || pending == 0;
                let item = decode(raw.seq, &raw.payload).map(|envelope| Stored {
                    seq: raw.seq,
                    envelope,
                });
                (last, item)
            })
            // Stop after the last wanted event instead of waiting for more.
            .scan(false, |done, (last, item)| {
                if *done {
                    return futures::future::ready(None);
                }
                *done = last;
                futures::future::ready(Some(item))
            });
        Ok(events)
    }

    /// Follows the log with an ordered consumer from `after + 1`, or from events appended from
    /// now on when `after` is `None`, without end. Each item is the stream sequence, the
    /// subject (it names the kind) and the raw payload: a follower that only needs some kinds
    /// decodes only those. The live hubs use it.
    pub async fn follow(
        &self,
        after: Option<u64>,
    ) -> Result<impl Stream<Item = Result<Raw, LogError>> + use<>, LogError> {
        let deliver_policy = match after {
            None => DeliverPolicy::New,
            Some(s) => DeliverPolicy::ByStartSequence {
                start_sequence: s + 1,
            },
        };
        let messages = self.ordered(deliver_policy, None).await?;
        Ok(messages.map(|m| raw_and_pending(m).map(|(raw, _)| raw)))
    }

    async fn ordered(
        &self,
        deliver_policy: DeliverPolicy,
        filter: Option<String>,
    ) -> Result<async_nats::jetstream::consumer::pull::Ordered, LogError> {
        let stream = self.stream().await?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_policy,
                // Events only: the schedules waiting in the same stream are not events.
                filter_subject: filter.unwrap_or_else(|| EVENTS_WILDCARD.into()),
                ..Default::default()
            })
            .await
            .map_err(|e| LogError::Unavailable(format!("ordered consumer: {e}")))?;
        consumer
            .messages()
            .await
            .map_err(|e| LogError::Unavailable(format!("ordered consumer: {e}")))
    }
}

/// A delivered message of an ordered consumer as a stored event, and how many messages of
/// its filter follow it.
fn raw_and_pending<E: std::fmt::Display>(
    m: Result<jetstream::Message, E>,
) -> Result<(Raw, u64), LogError> {
    let m = m.map_err(|e| LogError::Unavailable(format!("reading: {e}")))?;
    let info = m
        .info()
        .map_err(|e| LogError::Unavailable(format!("message info: {e}")))?;
    let (seq, pending) = (info.stream_sequence, info.pending);
    Ok((
        Raw {
            seq,
            subject: m.subject.to_string(),
            payload: m.payload.clone(),
        },
        pending,
    ))
}

/// One stored event, not decoded.
#[derive(Debug, Clone)]
pub struct Raw {
    pub seq: u64,
    pub subject: String,
    pub payload: bytes::Bytes,
}

impl Raw {
    /// The event kind, from the subject's last token.
    pub fn kind(&self) -> &str {
        self.subject.rsplit('.').next().unwrap_or_default()
    }
}

/// Decodes a stored payload.
pub fn decode(seq: u64, payload: &[u8]) -> Result<Envelope, LogError> {
    Envelope::from_json(payload).map_err(|e| LogError::Decode {
        seq,
        reason: e.to_string(),
    })
}

fn publish_error(e: jetstream::context::PublishError) -> LogError {
    match e.kind() {
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::StreamNotFound
        | PublishErrorKind::MaxAckPending => LogError::Unavailable(e.to_string()),
        PublishErrorKind::WrongLastSequence => LogError::Conflict(e.to_string()),
        _ => LogError::Rejected(e.to_string()),
    }
}

/// Adds the current span's trace context as the event's `traceparent` header (tracing on).
fn traced(publish: PublishMessage) -> PublishMessage {
    match crate::trace::TraceParent::current() {
        Some(tp) => publish.header(crate::trace::HEADER, tp.to_string().as_str()),
        None => publish,
    }
}
