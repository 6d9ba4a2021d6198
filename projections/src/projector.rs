//! Projector workers: fold the event stream into a [`Store`].
//!
//! [`Projector`] follows the live stream with a durable pull consumer named after the store and
//! publishes live notices after each commit. [`rebuild`] folds history into a store with an
//! ordered consumer and sends nothing.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::kv;
use exchange::dispatch::TaskQueue;
use exchange::log::{EventLog, LogError, Start, decode};
use futures::StreamExt;
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};

use crate::store::{ApplyOptions, SequencedEvent, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("consumer: {0}")]
    Consumer(String),
}

#[derive(Debug, Clone)]
pub struct ProjectorSettings {
    /// Largest number of events committed in one store transaction.
    pub batch: usize,
    /// Events older than this when applied produce no live notices (catch-up after downtime
    /// does not replay old frames to connected clients).
    pub live_horizon: Duration,
    /// Whether to publish live notices at all.
    pub live: bool,
    /// Queue a thread-topic task per thread message: set when a topic channel (MQTT) is
    /// configured, useless work otherwise.
    pub topic_tasks: bool,
    /// How long the projector lease lasts without renewal: with several projectors on one
    /// store, one is active and the others take over within this time when it stops.
    pub lease_ttl: Duration,
    /// Messages older than this when projected queue no delivery (a store rebuilt by a live
    /// projector does not re-send history). Keep it within the dispatch stream's duplicate
    /// window, which catches re-queued recent tasks.
    pub dispatch_horizon: Duration,
    /// Replicas of the lease bucket (the event stream's, in a cluster).
    pub replicas: usize,
    /// How long a batch that found several events ready waits for more before it is applied
    /// (group commit); zero applies what is ready at once.
    pub linger: Duration,
}

impl Default for ProjectorSettings {
    fn default() -> Self {
        Self {
            batch: 512,
            live_horizon: Duration::from_secs(300),
            live: true,
            dispatch_horizon: Duration::from_secs(12 * 3600),
            lease_ttl: Duration::from_secs(10),
            topic_tasks: false,
            replicas: 1,
            linger: Duration::from_millis(10),
        }
    }
}

/// Follows the event stream and keeps a store current.
pub struct Projector {
    log: EventLog,
    nats: async_nats::Client,
    store: Arc<dyn Store>,
    settings: ProjectorSettings,
    applied: watch::Sender<u64>,
    /// Where delivery tasks go; `None` queues none.
    tasks: Option<TaskQueue>,
    /// This projector's identity in the lease, stable for its lifetime, so it can resume its
    /// own lease after a NATS outage instead of waiting for it to expire.
    owner: String,
}

impl Projector {
    pub fn new(
        log: EventLog,
        nats: async_nats::Client,
        store: Arc<dyn Store>,
        settings: ProjectorSettings,
        tasks: Option<TaskQueue>,
    ) -> Self {
        let (applied, _) = watch::channel(0);
        Self {
            log,
            nats,
            store,
            settings,
            applied,
            tasks,
            owner: uuid::Uuid::now_v7().to_string(),
        }
    }

    /// Relays committed dispatch tasks to the work queue, then forgets them.
    async fn relay_outbox(&self) -> Result<(), ProjectorError> {
        match &self.tasks {
            Some(queue) => relay(self.store.as_ref(), queue).await,
            None => Ok(()),
        }
    }

    /// A task relaying the outbox whenever `wake` is notified, so a slow work queue never
    /// holds up the fold (and the live frames that follow each commit).
    fn spawn_relay(&self, wake: Arc<Notify>) -> Option<AbortOnDrop> {
        let queue = self.tasks.clone()?;
        let store = self.store.clone();
        Some(AbortOnDrop(tokio::spawn(async move {
            loop {
                wake.notified().await;
                let mut backoff = Duration::from_millis(100);
                while let Err(e) = relay(store.as_ref(), &queue).await {
                    tracing::warn!(error = %e, retry_in = ?backoff, "outbox relay failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        })))
    }

    /// Receives the store's checkpoint after every commit (read-your-writes waits on it).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Runs until the task is dropped: waits for the store's projector lease, follows the
    /// stream while it holds the lease, and reconnects after errors.
    pub async fn run(self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let lease = match self.wait_for_lease().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "projector lease unavailable");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            let renew_every = self.settings.lease_ttl / 3;
            tokio::select! {
                result = self.follow() => {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, retry_in = ?backoff, "projector interrupted");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
                () = lease.keep(renew_every) => {
                    tracing::warn!("projector lease lost; standing by");
                }
            }
        }
    }

    /// Takes the store's projector lease, mirroring the store's checkpoint into the watch while
    /// another projector holds it (so read-your-writes waits in this process still work).
    async fn wait_for_lease(&self) -> Result<Lease, ProjectorError> {
        let kv = lease_bucket(
            self.log.jetstream(),
            self.settings.lease_ttl,
            self.settings.replicas,
        )
        .await?;
        let key = format!("projector-{}", self.store.store_id().await?);
        let owner = self.owner.clone();
        let mut announced = false;
        loop {
            match kv.create(&key, owner.clone().into()).await {
                Ok(revision) => {
                    tracing::info!(lease = %key, "projector lease acquired");
                    return Ok(Lease {
                        kv,
                        key,
                        owner,
                        revision,
                    });
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    // Still ours (renewals failed during an outage): carry on with it.
                    if let Ok(Some(entry)) = kv.entry(&key).await
                        && entry.value.as_ref() == owner.as_bytes()
                    {
                        tracing::info!(lease = %key, "projector lease resumed");
                        return Ok(Lease {
                            kv,
                            key,
                            owner,
                            revision: entry.revision,
                        });
                    }
                    if !announced {
                        tracing::info!(lease = %key, "another projector is active; standing by");
                        announced = true;
                    }
                    if let Ok(c) = self.store.checkpoint().await {
                        self.applied.send_if_modified(|v| {
                            let changed = *v != c;
                            *v = c;
                            changed
                        });
                    }
                    tokio::time::sleep(
                        Duration::from_millis(100).max(self.settings.lease_ttl / 20),
                    )
                    .await;
                }
                Err(e) => return Err(ProjectorError::Consumer(format!("lease: {e}"))),
            }
        }
    }

    /// One session of following the stream: (re)creates the durable consumer at the store's
    /// checkpoint and applies batches until an error.
    async fn follow(&self) -> Result<(), ProjectorError> {
        let checkpoint = self.store.checkpoint().await?;
        self.applied.send_replace(checkpoint);
        self.relay_outbox().await?;
        let relay_wake = Arc::new(Notify::new());
        let _relay = self.spawn_relay(relay_wake.clone());
        let name = format!("projector-{}", self.store.store_id().await?);
        let stream = self.log.stream().await?;
        // The store is the authority on progress: start the consumer right after its
        // checkpoint, whatever an earlier consumer of the same name had acknowledged.
        let _ = stream.delete_consumer(&name).await;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(name.clone()),
                // Events only: scheduled sends wait in the same stream until they fire.
                filter_subject: exchange::subject::EVENTS_WILDCARD.into(),
                deliver_policy: if checkpoint == 0 {
                    DeliverPolicy::All
                } else {
                    DeliverPolicy::ByStartSequence {
                        start_sequence: checkpoint + 1,
                    }
                },
                ack_policy: AckPolicy::All,
                ack_wait: Duration::from_secs(60),
                max_ack_pending: 20_000,
                inactive_threshold: Duration::from_secs(7 * 24 * 3600),
                ..Default::default()
            })
            .await
            .map_err(|e| ProjectorError::Consumer(format!("creating {name}: {e}")))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.settings.batch)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| ProjectorError::Consumer(e.to_string()))?;
        tracing::info!(consumer = %name, checkpoint, "projector following the event stream");
        let mut chunks = messages.ready_chunks(self.settings.batch);
        while let Some(mut chunk) = chunks.next().await {
            // Group commit: under load (more than one event ready) wait briefly for more, so a
            // commit writes each page it changes once for more rows. Live frames do not wait
            // for the fold, and an event reaching an idle projector is applied at once.
            if chunk.len() > 1 && !self.settings.linger.is_zero() {
                let deadline = tokio::time::Instant::now() + self.settings.linger;
                while chunk.len() < self.settings.batch {
                    match tokio::time::timeout_at(deadline, chunks.next()).await {
                        Ok(Some(more)) => chunk.extend(more),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            let mut batch = Vec::with_capacity(chunk.len());
            let mut last = None;
            // One `fold` span per traced event, open until its batch is applied (tracing on).
            let mut spans = Vec::new();
            for m in chunk {
                let m = m.map_err(|e| ProjectorError::Consumer(e.to_string()))?;
                let seq = m
                    .info()
                    .map_err(|e| ProjectorError::Consumer(e.to_string()))?
                    .stream_sequence;
                match decode(seq, &m.payload) {
                    Ok(envelope) => {
                        let trace = fold_span(&m, seq, &envelope).map(|(span, trace)| {
                            spans.push(span);
                            trace
                        });
                        batch.push(SequencedEvent {
                            seq,
                            envelope,
                            trace,
                        });
                    }
                    // An event this build cannot read (written by a newer version, or corrupt)
                    // is skipped deterministically; a rebuild skips it the same way.
                    Err(e) => tracing::error!(seq, error = %e, "skipping undecodable event"),
                }
                last = Some(m);
            }
            let now = OffsetDateTime::now_utc();
            let since =
                |d: Duration| now - time::Duration::try_from(d).unwrap_or(time::Duration::ZERO);
            let options = ApplyOptions {
                live_since: self
                    .settings
                    .live
                    .then(|| since(self.settings.live_horizon)),
                dispatch_since: self
                    .tasks
                    .is_some()
                    .then(|| since(self.settings.dispatch_horizon)),
                topic_tasks: self.settings.topic_tasks,
            };
            let newest = batch.last().map(|e| e.envelope.occurred_at);
            let events = batch.len();
            loop {
                let apply_started = std::time::Instant::now();
                let mut applied = self.store.apply(batch, options).await?;
                tracing::debug!(
                    events,
                    apply_ms = apply_started.elapsed().as_secs_f64() * 1e3,
                    lag_ms = newest
                        .map_or(0.0, |t| (OffsetDateTime::now_utc() - t).as_seconds_f64()
                            * 1e3),
                    notices = applied.notices.len(),
                    "batch applied"
                );
                // Live frames first: they are what users wait for; the relay can follow.
                self.applied.send_replace(applied.checkpoint);
                if !applied.notices.is_empty() {
                    exchange::live::publish(&self.nats, std::mem::take(&mut applied.notices)).await;
                }
                if self.settings.live {
                    exchange::live::publish_applied(&self.nats, applied.checkpoint).await;
                }
                relay_wake.notify_one();
                // A large message's tasks were committed ahead of its fold: they are being
                // relayed while the rest is applied.
                if applied.rest.is_empty() {
                    break;
                }
                batch = applied.rest;
            }
            drop(spans);
            if let Some(m) = last
                && let Err(e) = m.ack().await
            {
                // Harmless: a redelivered event at or below the checkpoint is skipped.
                tracing::debug!(error = %e, "ack failed");
            }
        }
        Err(ProjectorError::Consumer("message stream ended".into()))
    }
}

/// The `fold` span of an event whose append carried trace context (tracing on), and the
/// context its dispatch tasks continue from.
fn fold_span(
    m: &async_nats::jetstream::Message,
    seq: u64,
    env: &exchange::Envelope,
) -> Option<(tracing::Span, exchange::trace::TraceParent)> {
    if !exchange::trace::enabled() {
        return None;
    }
    let parent = m
        .headers
        .as_ref()?
        .get(exchange::trace::HEADER)
        .and_then(|v| exchange::trace::TraceParent::parse(v.as_str()))?;
    let span = tracing::info_span!("fold", seq, event = env.event.kind(), id = %env.id);
    parent.adopt(&span);
    let trace = exchange::trace::TraceParent::of(&span)?;
    Some((span, trace))
}

/// Relays committed dispatch tasks to the work queue, then forgets them. A crash between the
/// two re-sends them on restart; their message ids make JetStream drop the copies.
async fn relay(store: &dyn Store, queue: &TaskQueue) -> Result<(), ProjectorError> {
    loop {
        let pending = store.outbox(1000).await?;
        if pending.is_empty() {
            return Ok(());
        }
        let (ids, tasks): (Vec<i64>, Vec<_>) = pending.into_iter().unzip();
        queue.enqueue(&tasks).await?;
        store.outbox_done(ids).await?;
    }
}

/// Aborts a spawned task when dropped (the relay lives as long as the projector's follow).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The projector lease bucket: one key per store, expiring `ttl` after its last renewal.
async fn lease_bucket(
    js: &async_nats::jetstream::Context,
    ttl: Duration,
    replicas: usize,
) -> Result<kv::Store, ProjectorError> {
    if let Ok(kv) = js.get_key_value(LEASE_BUCKET).await {
        return Ok(kv);
    }
    js.create_key_value(kv::Config {
        bucket: LEASE_BUCKET.into(),
        description: "msgxc: which projector is active for each store".into(),
        history: 1,
        max_age: ttl,
        storage: async_nats::jetstream::stream::StorageType::File,
        num_replicas: replicas.max(1),
        ..Default::default()
    })
    .await
    .map_err(|e| ProjectorError::Consumer(format!("creating {LEASE_BUCKET}: {e}")))
}

pub const LEASE_BUCKET: &str = "MSGXC_LEASES";

/// A held projector lease.
struct Lease {
    kv: kv::Store,
    key: String,
    owner: String,
    revision: u64,
}

impl Lease {
    /// Renews the lease until a renewal fails (another projector took it, or NATS is gone for
    /// longer than the lease), then returns.
    async fn keep(mut self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            match self
                .kv
                .update(&self.key, self.owner.clone().into(), self.revision)
                .await
            {
                Ok(r) => self.revision = r,
                Err(e) => {
                    tracing::warn!(lease = %self.key, error = %e, "lease renewal failed");
                    self.revision = 0; // lost: nothing to release
                    return;
                }
            }
        }
    }
}

impl Drop for Lease {
    /// A projector that stops (shutdown, task aborted) hands the lease back at once, so a
    /// standby or a restarted process need not wait for it to expire. Only the revision we
    /// wrote is purged, never a successor's.
    fn drop(&mut self) {
        if self.revision == 0 {
            return;
        }
        let (kv, key, revision) = (self.kv.clone(), self.key.clone(), self.revision);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = kv.purge_expect_revision(&key, Some(revision)).await;
            });
        }
    }
}

/// Progress of a rebuild.
#[derive(Debug, Clone, Copy, Default)]
pub struct RebuildReport {
    pub events: u64,
    pub checkpoint: u64,
}

/// Folds the stream from the store's checkpoint up to the stream's current last sequence into
/// `store`, with no live notices and no other side effects.
pub async fn rebuild(
    log: &EventLog,
    store: &dyn Store,
    batch: usize,
) -> Result<RebuildReport, ProjectorError> {
    let until = log.last_seq().await?;
    let checkpoint = store.checkpoint().await?;
    let mut report = RebuildReport {
        events: 0,
        checkpoint,
    };
    if until <= checkpoint {
        return Ok(report);
    }
    let events = log
        .read(Start::Sequence(checkpoint + 1), None, until)
        .await?;
    // Reading and decoding run on a task of their own, up to `QUEUED_CHUNKS` ahead of the fold,
    // so the two overlap (the fold runs on a blocking thread); the fold takes every chunk read
    // by the time it is free, up to `READ_AHEAD` batches in one transaction. With two chunks
    // queued the reader stalled behind each commit: a 1M-event rebuild into SQLite ran at 40k
    // events/s with 27 s of CPU, against 61k and 20 s now (BENCHMARKS.md, session 17).
    const READ_AHEAD: usize = 4;
    const QUEUED_CHUNKS: usize = 16;
    let (tx, mut rx) = tokio::sync::mpsc::channel(QUEUED_CHUNKS);
    let most = READ_AHEAD * batch.max(1);
    let reader = tokio::spawn(async move {
        let mut chunks = std::pin::pin!(events.ready_chunks(batch.max(1)));
        while let Some(chunk) = chunks.next().await {
            if tx.send(chunk).await.is_err() {
                break;
            }
        }
    });
    let _stop_reader = AbortOnDrop(reader);
    let mut transactions = 0u64;
    while let Some(first) = rx.recv().await {
        let mut chunks = vec![first];
        let mut taken = chunks[0].len();
        while taken < most {
            match rx.try_recv() {
                Ok(chunk) => {
                    taken += chunk.len();
                    chunks.push(chunk);
                }
                Err(_) => break,
            }
        }
        let mut batch = Vec::with_capacity(taken);
        for item in chunks.into_iter().flatten() {
            match item {
                Ok(s) => batch.push(SequencedEvent::new(s.seq, s.envelope)),
                Err(LogError::Decode { seq, reason }) => {
                    tracing::error!(seq, reason, "skipping undecodable event");
                }
                Err(e) => return Err(e.into()),
            }
        }
        loop {
            let applied = store.apply(batch, ApplyOptions::default()).await?;
            transactions += 1;
            report.events += applied.applied as u64;
            report.checkpoint = applied.checkpoint;
            if applied.rest.is_empty() {
                break;
            }
            batch = applied.rest;
        }
        if report.checkpoint >= until {
            break;
        }
    }
    tracing::info!(
        events = report.events,
        transactions,
        checkpoint = report.checkpoint,
        "rebuilt"
    );
    Ok(report)
}
