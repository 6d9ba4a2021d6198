//! The live hub: routes frames to this process's open WebSocket/SSE connections.
//!
//! New inbox entries are routed from the event stream itself: the hub follows the log with an
//! ordered consumer and, for each message event, sends the `new` frame to the local
//! connections of its recipients at once, before the projector has folded anything. For that
//! it keeps, per connected user, the threads they belong to, their preferences and whether the
//! projection knows them, loaded from the store when they connect and kept current by the same
//! events the fold uses (subscribe, unsubscribe, preferences). Changes that depend on the
//! inbox's state (read, archived, deleted) still come from the projector over core NATS after
//! its commit, followed by its checkpoint, so the hub also knows how far the committed path has
//! gone ([`Marks`]); SSE connections use both marks to send every change in feed order.
//!
//! Each connection gets a bounded queue. A frame never waits for a slow client: when a queue
//! is full the connection is dropped from the hub (its task then closes the socket), and the
//! client resynchronises from its inbox when it reconnects.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use exchange::events::{Envelope, Event, Preferences};
use exchange::{EventLog, live};
use futures::StreamExt;
use projections::live::{NewMessage, Reach, new_message, touched};
use projections::{Store, StoreError};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::queue::{FrameReceiver, FrameSender};
use uuid::Uuid;

/// How far each path has delivered frames to the hub.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marks {
    /// The last stream sequence the hub routed (every `new` frame up to it is queued).
    pub routed: u64,
    /// The projector's last announced checkpoint (every committed change up to it is queued).
    pub committed: u64,
}

/// Hub settings.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Events older than this when the hub sees them send no frames (a hub catching up after
    /// an outage does not replay old frames).
    pub horizon: Duration,
    /// Most events buffered for a user whose state is still loading; past it the user's
    /// connections are dropped (they reconnect).
    pub max_pending: usize,
}

impl Default for HubSettings {
    fn default() -> Self {
        Self {
            horizon: Duration::from_secs(300),
            max_pending: 4096,
        }
    }
}

#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new(HubSettings::default())
    }
}

/// One open connection's id and frame queue.
type Conn = (u64, FrameSender);

struct HubInner {
    state: Mutex<State>,
    next_id: AtomicU64,
    marks: watch::Sender<Marks>,
    settings: HubSettings,
}

#[derive(Default)]
struct State {
    /// routing key (subject token of the uid) -> the user's connections and routing state
    users: HashMap<String, User>,
    /// thread -> routing keys of its local members whose state is loaded
    threads: HashMap<Uuid, HashSet<String>>,
    /// users whose state is loading
    loading: HashSet<String>,
    /// loaded users the projection does not know yet
    unknown: usize,
    /// ids of recently routed messages (a message appended twice is folded once)
    recent: Recent,
}

struct User {
    uid: String,
    conns: Vec<Conn>,
    /// `None` while loading.
    route: Option<Route>,
    /// Events seen while loading, applied once the store's state arrives.
    pending: Vec<(u64, Arc<Envelope>)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Route {
    pub threads: HashSet<Uuid>,
    pub preferences: Preferences,
    /// Whether the projection knows the user (broadcasts reach known users only).
    pub known: bool,
}

/// A bounded set of recent message ids, oldest evicted first.
#[derive(Default)]
struct Recent {
    order: VecDeque<Uuid>,
    ids: HashSet<Uuid>,
}

impl Recent {
    const CAPACITY: usize = 65_536;

    /// Records `id`; false when it was already there.
    fn insert(&mut self, id: Uuid) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > Self::CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        true
    }
}

/// A registered connection; dropping it unregisters.
pub struct Registration {
    hub: Hub,
    key: String,
    id: u64,
    pub frames: FrameReceiver,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.remove(&self.key, self.id);
    }
}

impl Hub {
    pub fn new(settings: HubSettings) -> Self {
        Self {
            inner: Arc::new(HubInner {
                state: Mutex::default(),
                next_id: AtomicU64::new(0),
                marks: watch::channel(Marks::default()).0,
                settings,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain maps behind; carry on with them.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a connection of `uid` and makes sure the hub has the user's routing state
    /// (read from `store` when this is the user's first connection here).
    pub async fn connect(
        &self,
        uid: &str,
        buffer: usize,
        store: &dyn Store,
    ) -> Result<Registration, StoreError> {
        let registration = self.register(uid, buffer);
        if self.needs_route(&registration.key) {
            // Events routed before this registration are not kept for it: the state read must
            // include them, so wait (bounded) for the fold to reach them first.
            let routed = self.inner.marks.borrow().routed;
            let route = load_route(store, uid, routed).await?;
            self.loaded(&registration.key, route.0, route.1);
        }
        Ok(registration)
    }

    /// Registers a connection; until [`Hub::loaded`] gives the user's state, events for them
    /// are kept aside.
    pub fn register(&self, uid: &str, buffer: usize) -> Registration {
        let (tx, rx) = crate::queue::queue(buffer);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let key = live::routing_key(uid);
        let mut state = self.state();
        let user = state.users.entry(key.clone()).or_insert_with(|| User {
            uid: uid.to_owned(),
            conns: Vec::new(),
            route: None,
            pending: Vec::new(),
        });
        user.conns.push((id, tx));
        if user.route.is_none() {
            state.loading.insert(key.clone());
        }
        drop(state);
        Registration {
            hub: self.clone(),
            key,
            id,
            frames: rx,
        }
    }

    fn needs_route(&self, key: &str) -> bool {
        self.state()
            .users
            .get(key)
            .is_some_and(|u| u.route.is_none())
    }

    /// Installs a user's routing state as the store had it at `checkpoint` (or later), then
    /// applies the events seen meanwhile that came after it. The result is the state after
    /// the last routed event whatever the overlap: each event sets membership, preferences
    /// or knownness to a value, so replaying a suffix over a later snapshot ends the same.
    pub fn loaded(&self, key: &str, checkpoint: u64, route: Route) {
        let mut state = self.state();
        let State { users, threads, .. } = &mut *state;
        let Some(user) = users.get_mut(key) else {
            return;
        };
        if user.route.is_some() {
            return; // another connection's load came first
        }
        for tid in &route.threads {
            threads.entry(*tid).or_default().insert(key.to_owned());
        }
        user.route = Some(route);
        let pending = std::mem::take(&mut user.pending);
        for (seq, env) in pending.iter().filter(|(seq, _)| *seq > checkpoint) {
            let message = new_message(*seq, env);
            apply(user, key, threads, env, message.as_ref());
        }
        let known = user.route.as_ref().is_some_and(|r| r.known);
        let gone = user.conns.is_empty();
        if !known {
            state.unknown += 1;
        }
        state.loading.remove(key);
        if gone {
            forget(&mut state, key);
        }
    }

    fn remove(&self, key: &str, id: u64) {
        let mut state = self.state();
        let Some(user) = state.users.get_mut(key) else {
            return;
        };
        user.conns.retain(|(i, _)| *i != id);
        if user.conns.is_empty() {
            forget(&mut state, key);
        }
    }

    /// Number of open connections (for health output and tests).
    pub fn connections(&self) -> usize {
        self.state().users.values().map(|u| u.conns.len()).sum()
    }

    /// The marks of both paths, for connections that send changes in feed order.
    pub fn marks(&self) -> watch::Receiver<Marks> {
        self.inner.marks.subscribe()
    }

    /// A user's routing state, if loaded.
    #[cfg(test)]
    fn route_of(&self, uid: &str) -> Option<Route> {
        self.state()
            .users
            .get(&live::routing_key(uid))
            .and_then(|u| u.route.clone())
    }

    /// Hands a committed change's frame to every connection registered under `key`.
    pub fn dispatch(&self, key: &str, frame: &Bytes) {
        let mut state = self.state();
        let slow = state
            .users
            .get_mut(key)
            .is_some_and(|u| send(&mut u.conns, frame));
        if slow && state.users.get(key).is_some_and(|u| u.conns.is_empty()) {
            forget(&mut state, key);
        }
    }

    /// Routes one event of the stream at `seq`: `new` frames to the local recipients of a
    /// message, and the routing state of local users kept current.
    pub fn route(&self, seq: u64, env: Arc<Envelope>) {
        let horizon =
            time::Duration::try_from(self.inner.settings.horizon).unwrap_or(time::Duration::ZERO);
        let fresh = OffsetDateTime::now_utc() - env.occurred_at <= horizon;
        let message = new_message(seq, &env).filter(|_| fresh);
        let mut state = self.state();
        if message.is_some() && !state.recent.insert(env.id) {
            drop(state);
            self.set_routed(seq);
            return;
        }
        let max_pending = self.inner.settings.max_pending;
        let mut dropped = Vec::new();
        let State {
            users,
            threads,
            loading,
            unknown,
            ..
        } = &mut *state;
        for key in loading.iter() {
            if let Some(u) = users.get_mut(key) {
                if u.pending.len() >= max_pending {
                    dropped.push(key.clone());
                } else {
                    u.pending.push((seq, env.clone()));
                }
            }
        }
        // Every loaded local user this event may concern, each once.
        let mut keys: HashSet<String> = touched(&env).into_iter().map(live::routing_key).collect();
        match &env.event {
            Event::Unsubscribed(e) => keys.insert(live::routing_key(&e.uid)),
            Event::PreferencesSet(e) => keys.insert(live::routing_key(&e.uid)),
            _ => false,
        };
        if let Some(m) = &message {
            match m.reach {
                Reach::Thread { tid, .. } => {
                    keys.extend(threads.get(&tid).into_iter().flatten().cloned());
                }
                Reach::Users(uids) => keys.extend(uids.iter().map(|u| live::routing_key(u))),
                Reach::All => keys.extend(users.keys().cloned()),
            }
        }
        for key in keys {
            let Some(user) = users.get_mut(&key) else {
                continue;
            };
            if user.route.is_none() {
                continue;
            }
            let outcome = apply(user, &key, threads, &env, message.as_ref());
            if outcome.became_known {
                *unknown = unknown.saturating_sub(1);
            }
            if outcome.slow && user.conns.is_empty() {
                dropped.push(key);
            }
        }
        for key in dropped {
            forget(&mut state, &key);
        }
        drop(state);
        self.set_routed(seq);
    }

    /// Whether any event may matter: a user's state is loading (their pending events are
    /// applied later), or a loaded user is not yet known (any event of theirs makes them so).
    fn wants_every_event(&self) -> bool {
        let state = self.state();
        !state.loading.is_empty() || state.unknown > 0
    }

    fn set_routed(&self, seq: u64) {
        self.advance(seq, |m| &mut m.routed);
    }

    fn set_committed(&self, seq: u64) {
        self.advance(seq, |m| &mut m.committed);
    }

    /// Moves one mark forward to `seq` (never back), waking watchers only when it moved.
    fn advance(&self, seq: u64, mark: impl FnOnce(&mut Marks) -> &mut u64) {
        self.inner.marks.send_if_modified(|m| {
            let mark = mark(m);
            let moved = *mark < seq;
            *mark = (*mark).max(seq);
            moved
        });
    }

    /// Receives the projector's committed changes and checkpoints until the subscription ends.
    pub async fn run(self, nats: async_nats::Client) -> Result<(), async_nats::SubscribeError> {
        let mut sub = nats.subscribe(exchange::subject::LIVE_WILDCARD).await?;
        while let Some(msg) = sub.next().await {
            if let Some(key) = live::routing_key_of(msg.subject.as_str()) {
                self.dispatch(key, &msg.payload);
            } else if let Some(seq) = live::applied_of(msg.subject.as_str(), &msg.payload) {
                self.set_committed(seq);
            }
        }
        Ok(())
    }

    /// Follows the event stream after `after` (the stream's last sequence when the gateway
    /// started, read before it accepts requests, so no event appended through it is missed;
    /// `None`: from now on) and routes every event; after an interruption it resumes after the
    /// last routed event (events past the horizon send nothing). Starts the committed mark at
    /// the store's checkpoint. Runs until the task is dropped.
    pub async fn follow(self, log: EventLog, store: Arc<dyn Store>, mut after: Option<u64>) {
        if let Ok(c) = store.checkpoint().await {
            self.set_committed(c);
        }
        // Nothing up to the start is routed live: the hub has passed it.
        if let Some(a) = after {
            self.set_routed(a);
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            match log.follow(after).await {
                Ok(events) => {
                    tracing::info!(?after, "live hub following the event stream");
                    let mut events = std::pin::pin!(events);
                    while let Some(item) = events.next().await {
                        match item {
                            Ok(raw) => {
                                backoff = Duration::from_millis(100);
                                let seq = raw.seq;
                                after = Some(seq);
                                if !ROUTED_KINDS.contains(&raw.kind()) && !self.wants_every_event()
                                {
                                    // Nothing to route and no one whose state it could change.
                                    self.set_routed(seq);
                                    continue;
                                }
                                match exchange::log::decode(seq, &raw.payload) {
                                    Ok(env) => self.route(seq, Arc::new(env)),
                                    Err(e) => {
                                        tracing::debug!(seq, error = %e, "hub skips an undecodable event");
                                        self.set_routed(seq);
                                    }
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "live hub lost the event stream");
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "live hub cannot follow the event stream")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// The kinds of event that route frames or change a loaded user's routing state other than
/// knownness; other events are decoded only while someone's state is loading or unknown.
const ROUTED_KINDS: [&str; 5] = [
    "message_published",
    "message_sent",
    "subscribed",
    "unsubscribed",
    "preferences_set",
];

/// Longest wait at connect for the fold to reach what the hub has routed.
const LOAD_WAIT: Duration = Duration::from_secs(2);

/// Reads a user's routing state: the checkpoint first, so the state read after it is at least
/// that recent.
async fn load_route(
    store: &dyn Store,
    uid: &str,
    at_least: u64,
) -> Result<(u64, Route), StoreError> {
    let deadline = tokio::time::Instant::now() + LOAD_WAIT;
    let mut checkpoint = store.checkpoint().await?;
    while checkpoint < at_least {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                uid,
                checkpoint,
                at_least,
                "projection lagging: a live connection's routing state may miss its latest changes"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        checkpoint = store.checkpoint().await?;
    }
    let threads = store.user_threads(uid).await?.into_iter().collect();
    let preferences = store.preferences(uid).await?;
    let known = store.user_exists(uid).await?;
    Ok((
        checkpoint,
        Route {
            threads,
            preferences,
            known,
        },
    ))
}

/// Removes a user and their thread memberships from the hub.
fn forget(state: &mut State, key: &str) {
    state.loading.remove(key);
    if let Some(user) = state.users.remove(key)
        && let Some(route) = user.route
    {
        if !route.known {
            state.unknown = state.unknown.saturating_sub(1);
        }
        for tid in route.threads {
            if let Some(members) = state.threads.get_mut(&tid) {
                members.remove(key);
                if members.is_empty() {
                    state.threads.remove(&tid);
                }
            }
        }
    }
}

/// Applies one event to one loaded user the way the fold does (knownness first, then
/// membership and preferences, then the message's entry), queueing the `new` frame if the
/// message reaches them.
fn apply(
    user: &mut User,
    key: &str,
    threads: &mut HashMap<Uuid, HashSet<String>>,
    env: &Envelope,
    message: Option<&NewMessage<'_>>,
) -> Outcome {
    let mut outcome = Outcome::default();
    let Some(route) = user.route.as_mut() else {
        return outcome;
    };
    let uid = user.uid.as_str();
    if !route.known && touched(env).contains(&uid) {
        route.known = true;
        outcome.became_known = true;
    }
    match &env.event {
        Event::Subscribed(e) if e.uid == uid => {
            route.threads.insert(e.tid);
            threads.entry(e.tid).or_default().insert(key.to_owned());
        }
        Event::Unsubscribed(e) if e.uid == uid => {
            route.threads.remove(&e.tid);
            if let Some(members) = threads.get_mut(&e.tid) {
                members.remove(key);
                if members.is_empty() {
                    threads.remove(&e.tid);
                }
            }
        }
        Event::PreferencesSet(e) if e.uid == uid => route.preferences = e.preferences.clone(),
        _ => {}
    }
    let Some(m) = message else {
        return outcome;
    };
    let reached = match m.reach {
        Reach::Thread { tid, sender } => sender != uid && route.threads.contains(&tid),
        Reach::Users(_) => m.reaches(uid),
        Reach::All => route.known,
    };
    if reached && route.preferences.accepts(m.opts) {
        outcome.slow = send(&mut user.conns, &m.frame_for(uid));
    }
    outcome
}

/// What applying an event to a user did.
#[derive(Default)]
struct Outcome {
    /// A connection was too slow and was removed.
    slow: bool,
    /// The user became known to the projection.
    became_known: bool,
}

/// Queues a frame on each connection; full or closed ones are removed (their tasks close the
/// socket). True if any was.
fn send(conns: &mut Vec<Conn>, frame: &Bytes) -> bool {
    let before = conns.len();
    conns.retain(|(id, tx)| {
        let ok = tx.try_send(frame.clone()).is_ok();
        if !ok {
            tracing::info!(conn = id, "dropping a slow or closed live connection");
        }
        ok
    });
    conns.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;
    use exchange::Actor;
    use exchange::events::{
        Audience, MessageOpts, MessagePublished, MessageSent, PreferencesSet, Subscribed,
        Unsubscribed,
    };

    fn env(actor: &str, event: Event) -> Arc<Envelope> {
        Arc::new(Envelope::new(
            Actor {
                uid: actor.into(),
                roles: vec![],
            },
            event,
        ))
    }

    fn publish(tid: Uuid, sender: &str, ntype: Option<&str>) -> Arc<Envelope> {
        env(
            sender,
            Event::MessagePublished(MessagePublished {
                tid,
                sender: sender.into(),
                msg: "hi".into(),
                opts: MessageOpts {
                    ntype: ntype.map(str::to_owned),
                    ..Default::default()
                },
                experiment: None,
            }),
        )
    }

    fn subscribe(tid: Uuid, uid: &str) -> Arc<Envelope> {
        env(
            uid,
            Event::Subscribed(Subscribed {
                tid,
                uid: uid.into(),
            }),
        )
    }

    fn frames(r: &mut Registration) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while let Some(f) = r.frames.try_recv() {
            out.push(serde_json::from_slice(&f).unwrap());
        }
        out
    }

    fn loaded(hub: &Hub, uid: &str, checkpoint: u64, threads: &[Uuid], known: bool) {
        hub.loaded(
            &live::routing_key(uid),
            checkpoint,
            Route {
                threads: threads.iter().copied().collect(),
                preferences: Preferences::default(),
                known,
            },
        );
    }

    #[tokio::test]
    async fn slow_connections_are_dropped_without_blocking_others() {
        let hub = Hub::default();
        let mut fast = hub.register("u", 8);
        let slow = hub.register("u", 1);
        loaded(&hub, "u", 0, &[], true);
        let key = live::routing_key("u");
        for i in 0..3u8 {
            hub.dispatch(&key, &Bytes::from(vec![i]));
            // the fast client keeps up
            assert_eq!(fast.frames.recv().await.unwrap(), Bytes::from(vec![i]));
        }
        assert_eq!(hub.connections(), 1, "the slow one is gone");
        drop(slow);
        drop(fast);
        assert_eq!(hub.connections(), 0);
    }

    #[test]
    fn thread_messages_reach_members_except_the_sender_as_membership_changes() {
        let hub = Hub::default();
        let tid = Uuid::now_v7();
        let mut a = hub.register("a", 64);
        let mut b = hub.register("b", 64);
        loaded(&hub, "a", 0, &[tid], true);
        loaded(&hub, "b", 0, &[], true);
        hub.route(1, publish(tid, "a", None));
        assert!(frames(&mut a).is_empty(), "the sender gets no copy");
        assert!(frames(&mut b).is_empty(), "b is not a member");
        hub.route(2, subscribe(tid, "b"));
        hub.route(3, publish(tid, "a", None));
        let got = frames(&mut b);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["action"], "new");
        assert_eq!(got[0]["notification"]["uid"], "b");
        assert_eq!(got[0]["position"], "3.3");
        hub.route(
            4,
            env(
                "b",
                Event::Unsubscribed(Unsubscribed {
                    tid,
                    uid: "b".into(),
                }),
            ),
        );
        hub.route(5, publish(tid, "c", None));
        assert!(frames(&mut b).is_empty(), "b left");
        assert_eq!(frames(&mut a).len(), 1);
        assert_eq!(
            *hub.marks().borrow(),
            Marks {
                routed: 5,
                committed: 0
            }
        );
    }

    #[test]
    fn preferences_knownness_and_duplicates_are_honoured() {
        let hub = Hub::default();
        let mut a = hub.register("a", 64);
        let mut n = hub.register("newcomer", 64);
        loaded(&hub, "a", 0, &[], true);
        loaded(&hub, "newcomer", 0, &[], false);
        let broadcast = |ntype: Option<&str>| {
            env(
                "admin",
                Event::MessageSent(MessageSent {
                    audience: Audience::All,
                    sender: "admin".into(),
                    msg: "all".into(),
                    opts: MessageOpts {
                        ntype: ntype.map(str::to_owned),
                        ..Default::default()
                    },
                    experiment: None,
                }),
            )
        };
        let once = broadcast(None);
        hub.route(1, once.clone());
        hub.route(2, once);
        assert_eq!(
            frames(&mut a).len(),
            1,
            "a message appended twice is routed once"
        );
        assert!(frames(&mut n).is_empty(), "unknown users get no broadcast");
        let mut prefs = Preferences::default();
        prefs.types.insert("promo".into(), false);
        hub.route(
            3,
            env(
                "a",
                Event::PreferencesSet(PreferencesSet {
                    uid: "a".into(),
                    preferences: prefs,
                }),
            ),
        );
        hub.route(4, broadcast(Some("promo")));
        hub.route(5, broadcast(Some("news")));
        let got = frames(&mut a);
        assert_eq!(got.len(), 1, "the turned-off type is not sent");
        // Any event by the newcomer makes them known, as in the fold.
        hub.route(6, subscribe(Uuid::now_v7(), "newcomer"));
        hub.route(7, broadcast(None));
        assert_eq!(frames(&mut n).len(), 1);
    }

    #[test]
    fn events_seen_while_loading_apply_after_the_snapshot() {
        let hub = Hub::default();
        let tid = Uuid::now_v7();
        let mut b = hub.register("b", 64);
        // While b's state loads: b subscribes (seq 1), a message follows (seq 2).
        hub.route(1, subscribe(tid, "b"));
        hub.route(2, publish(tid, "a", None));
        hub.route(3, publish(tid, "a", None));
        assert!(frames(&mut b).is_empty());
        // The snapshot was taken at checkpoint 2: it has the subscription and the first
        // message (the inbox has it); only what came after is applied and sent.
        loaded(&hub, "b", 2, &[tid], true);
        let got = frames(&mut b);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["position"], "3.3");
        // An older snapshot (checkpoint 0, no subscription) ends the same.
        let mut c = hub.register("c", 64);
        hub.route(4, subscribe(tid, "c"));
        hub.route(5, publish(tid, "a", None));
        loaded(&hub, "c", 0, &[], true);
        assert_eq!(frames(&mut c).len(), 1);
        assert!(hub.route_of("c").unwrap().threads.contains(&tid));
    }

    #[test]
    fn every_event_is_wanted_only_while_someone_loads_or_is_unknown() {
        let hub = Hub::default();
        assert!(!hub.wants_every_event());
        let known = hub.register("k", 8);
        assert!(hub.wants_every_event(), "k is loading");
        loaded(&hub, "k", 0, &[], true);
        assert!(!hub.wants_every_event());
        let newcomer = hub.register("n", 8);
        loaded(&hub, "n", 0, &[], false);
        assert!(hub.wants_every_event(), "n is not known yet");
        hub.route(1, subscribe(Uuid::now_v7(), "n"));
        assert!(!hub.wants_every_event(), "n's own event made them known");
        let other = hub.register("o", 8);
        loaded(&hub, "o", 0, &[], false);
        drop(other);
        assert!(
            !hub.wants_every_event(),
            "an unknown user who left counts no more"
        );
        drop((known, newcomer));
    }

    #[test]
    fn a_user_loading_too_long_is_dropped() {
        let hub = Hub::new(HubSettings {
            max_pending: 2,
            ..Default::default()
        });
        let _r = hub.register("slow", 8);
        for seq in 1..=3 {
            hub.route(seq, publish(Uuid::now_v7(), "x", None));
        }
        assert_eq!(hub.connections(), 0);
    }
}
