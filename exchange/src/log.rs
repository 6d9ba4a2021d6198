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
use crate::subject::EVENTS_WILDCARD;

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
        let js = jetstream::ContextBuilder::new()
            .timeout(settings.timeout)
            .build(client);
        let config = StreamConfig {
            name: settings.stream.clone(),
            description: Some("msgxc events: the source of truth".into()),
            subjects: vec![EVENTS_WILDCARD.into()],
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
        let publish = PublishMessage::build()
            .payload(payload.into())
            .message_id(id);
        let ack_future = self
            .js
            .send_publish(env.subject(), publish)
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
    /// including `until_seq`. Used by replay and rebuild; it never modifies anything.
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
            .map(|m| {
                let raw = raw_of(m)?;
                Ok(Stored {
                    seq: raw.seq,
                    envelope: decode(raw.seq, &raw.payload)?,
                })
            })
            // Stop after the last wanted sequence (inclusive) instead of waiting for more.
            .scan(false, move |done, item: Result<Stored, LogError>| {
                if *done {
                    return futures::future::ready(None);
                }
                let seq = match &item {
                    Ok(s) => Some(s.seq),
                    Err(LogError::Decode { seq, .. }) => Some(*seq),
                    Err(_) => None,
                };
                *done = seq.is_some_and(|s| s >= until_seq);
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
        Ok(messages.map(raw_of))
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
                filter_subject: filter.unwrap_or_default(),
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

/// A delivered message of an ordered consumer as a stored event.
fn raw_of<E: std::fmt::Display>(m: Result<jetstream::Message, E>) -> Result<Raw, LogError> {
    let m = m.map_err(|e| LogError::Unavailable(format!("reading: {e}")))?;
    let seq = m
        .info()
        .map_err(|e| LogError::Unavailable(format!("message info: {e}")))?
        .stream_sequence;
    Ok(Raw {
        seq,
        subject: m.subject.to_string(),
        payload: m.payload.clone(),
    })
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
        _ => LogError::Rejected(e.to_string()),
    }
}
