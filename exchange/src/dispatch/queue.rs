//! The dispatch work queue: stream `MSGXC_DISPATCH` (work-queue retention) with one subject and
//! one durable consumer per urgency lane, so a backlog in one lane never delays another.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    context::PublishErrorKind,
    message::PublishMessage,
    stream::{Config as StreamConfig, RetentionPolicy, StorageType},
};

use crate::dispatch::DispatchTask;
use crate::events::Urgency;
use crate::log::LogError;

pub const DISPATCH_STREAM: &str = "MSGXC_DISPATCH";
const SUBJECT_PREFIX: &str = "msgxc.dispatch";

/// An urgency lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    High,
    Normal,
    Low,
    VeryLow,
    /// Tasks waiting for their time, fallbacks and quiet-hours holds; they re-enter an
    /// urgency lane when due.
    Fallback,
}

impl Lane {
    pub const ALL: [Lane; 5] = [
        Lane::High,
        Lane::Normal,
        Lane::Low,
        Lane::VeryLow,
        Lane::Fallback,
    ];

    /// The lane a task goes to.
    pub fn of_task(t: &DispatchTask) -> Self {
        if t.fallback_due.is_some() || t.hold_until.is_some() {
            Lane::Fallback
        } else {
            Lane::of(t.urgency())
        }
    }

    pub fn of(u: Urgency) -> Self {
        match u {
            Urgency::High => Lane::High,
            Urgency::Normal => Lane::Normal,
            Urgency::Low => Lane::Low,
            Urgency::VeryLow => Lane::VeryLow,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Lane::High => "high",
            Lane::Normal => "normal",
            Lane::Low => "low",
            Lane::VeryLow => "very-low",
            Lane::Fallback => "fallback",
        }
    }

    pub fn subject(self) -> String {
        format!("{SUBJECT_PREFIX}.{}", self.name())
    }

    /// The durable pull consumer dispatchers share on this lane.
    pub fn consumer(self) -> String {
        format!("dispatch-{}", self.name())
    }
}

/// Tasks of one lane: waiting to be pulled, and pulled but not yet acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneDepth {
    pub lane: Lane,
    pub pending: u64,
    pub in_flight: u64,
}

/// The depth of every lane whose consumer exists (none before a dispatcher first ran), read
/// from JetStream (`GET /metrics`).
pub async fn depths(js: &jetstream::Context) -> Result<Vec<LaneDepth>, LogError> {
    let stream = match js.get_stream(DISPATCH_STREAM).await {
        Ok(s) => s,
        // No such stream yet: no dispatcher ever ran.
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(_)
            ) =>
        {
            return Ok(Vec::new());
        }
        Err(e) => return Err(LogError::Unavailable(format!("{DISPATCH_STREAM}: {e}"))),
    };
    let mut out = Vec::with_capacity(Lane::ALL.len());
    for lane in Lane::ALL {
        // A lane no dispatcher has opened yet has no consumer: nothing to report.
        if let Ok(info) = stream.consumer_info(lane.consumer()).await {
            out.push(LaneDepth {
                lane,
                pending: info.num_pending,
                in_flight: info.num_ack_pending as u64,
            });
        }
    }
    Ok(out)
}

/// Enqueues tasks. Cheap to clone.
#[derive(Clone)]
pub struct TaskQueue {
    js: jetstream::Context,
}

impl TaskQueue {
    /// Ensures the dispatch stream exists. `duplicate_window` bounds how long a re-enqueued
    /// task (same message id) is recognised.
    pub async fn open(
        js: jetstream::Context,
        duplicate_window: Duration,
        replicas: usize,
    ) -> Result<Self, LogError> {
        js.create_or_update_stream(StreamConfig {
            name: DISPATCH_STREAM.into(),
            description: Some("msgxc delivery tasks, one subject per urgency lane".into()),
            subjects: vec![format!("{SUBJECT_PREFIX}.>")],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            duplicate_window,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| LogError::Unavailable(format!("creating {DISPATCH_STREAM}: {e}")))?;
        Ok(Self { js })
    }

    /// A queue handle on a stream that already exists.
    pub fn from_context(js: jetstream::Context) -> Self {
        Self { js }
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Enqueues tasks with pipelined acks; returns once all are stored.
    pub async fn enqueue(&self, tasks: &[DispatchTask]) -> Result<(), LogError> {
        let mut acks = Vec::with_capacity(tasks.len());
        for t in tasks {
            let payload = serde_json::to_vec(t)
                .map_err(|e| LogError::Rejected(format!("encoding task: {e}")))?;
            let msg = PublishMessage::build()
                .payload(payload.into())
                .message_id(t.message_id());
            let subject = Lane::of_task(t).subject();
            acks.push(
                self.js
                    .send_publish(subject, msg)
                    .await
                    .map_err(unavailable)?,
            );
        }
        for ack in acks {
            ack.await.map_err(unavailable)?;
        }
        Ok(())
    }
}

fn unavailable(e: jetstream::context::PublishError) -> LogError {
    match e.kind() {
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
            LogError::Unavailable(e.to_string())
        }
        _ => LogError::Rejected(e.to_string()),
    }
}
