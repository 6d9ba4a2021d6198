//! The projection itself: a deterministic fold of events into read models, written once over
//! the [`FoldTarget`] operations every backend provides.
//!
//! Everything written is derived from the event alone (timestamps come from `occurred_at`, ids
//! from the event), so folding the same stream into an empty store always gives the same data.

use std::collections::HashSet;

use exchange::events::{Audience, DeviceEnlisted, Envelope, Event};
use exchange::live::LiveNotice;
use time::OffsetDateTime;
use uuid::Uuid;

use exchange::dispatch::DispatchTask;
use exchange::events::{AckStatus, Preferences, SettledDelivery, SettledStatus};

use crate::model::{
    ArmCounts, Device, ExperimentRecord, ExperimentUser, FailedDelivery, FunnelCopy, FunnelEntry,
    FunnelMessage, FunnelStep, Notification, NotificationType, OnlineRecord, Receipt,
    ReceiptStatus, ScheduleStatus, ScheduledMessage, StageDoc, Step, StoredMessage, Thread,
    ThreadMessage,
};
use crate::store::StoreResult;
use exchange::experiment::Arm;

/// Write operations (and the few reads the fold needs) of one store transaction.
pub trait FoldTarget {
    /// The writes so far form a consistent unit (one recipient of a message, one entry of a
    /// request): a backend without multi-row transactions commits them together here. Called
    /// for every recipient of a message, in recipient order, whether or not it gets anything.
    fn group_done(&mut self) -> StoreResult<()> {
        Ok(())
    }

    /// Each of `uids` (distinct, none of them the sender) is about to get an entry of message
    /// `m`, one group each, and no group touches another's rows: a backend may read ahead
    /// what those groups need and send their writes together, until the event ends. The
    /// default does nothing.
    fn prefetch_recipients(
        &mut self,
        _m: &StoredMessage,
        _uids: &[String],
        _needs: Needs,
    ) -> StoreResult<()> {
        Ok(())
    }

    /// Records that `uid` exists (broadcast audience). Idempotent.
    fn touch_user(&mut self, uid: &str, at: OffsetDateTime) -> StoreResult<()>;
    /// Every known user (broadcast fan-out).
    fn all_users(&mut self) -> StoreResult<Vec<String>>;

    /// Every user with at least one device, when the backend can list them at once (a
    /// broadcast's plan asks this instead of [`FoldTarget::has_devices`] per user). The
    /// default answers `None`: ask per user.
    fn users_with_devices(&mut self) -> StoreResult<Option<HashSet<String>>> {
        Ok(None)
    }

    /// The user an exclusive device currently belongs to.
    fn device_owner(&mut self, device_id: &str) -> StoreResult<Option<String>>;
    /// Inserts or replaces a device (and its owner entry).
    fn put_device(&mut self, device: &Device) -> StoreResult<()>;
    /// Whether a user has any enlisted device.
    fn has_devices(&mut self, uid: &str) -> StoreResult<bool>;
    /// Removes a device of a user; false when it was not there.
    fn delete_device(&mut self, uid: &str, device_id: &str) -> StoreResult<bool>;
    /// The channel of a user's device, `None` when they have no such device.
    fn device_channel(&mut self, uid: &str, device_id: &str) -> StoreResult<Option<String>>;
    /// Adds `delta` to the number of devices on a channel (the admin's devices per channel).
    fn add_channel_devices(&mut self, channel: &str, delta: i64) -> StoreResult<()>;

    /// Inserts a thread; false when the tid exists already.
    fn insert_thread(&mut self, thread: &Thread) -> StoreResult<bool>;
    /// Adds a subscriber; false when already subscribed. Maintains the subscriber count.
    fn add_subscriber(&mut self, tid: Uuid, uid: &str, at: OffsetDateTime) -> StoreResult<bool>;
    /// Removes a subscriber; false when not subscribed. Maintains the subscriber count.
    fn remove_subscriber(&mut self, tid: Uuid, uid: &str) -> StoreResult<bool>;
    fn subscribers(&mut self, tid: Uuid) -> StoreResult<Vec<String>>;
    /// Appends to a thread's history; false when the mid is there already.
    fn insert_thread_message(&mut self, message: &ThreadMessage) -> StoreResult<bool>;

    /// Inserts an inbox entry; false when the user has it already. Maintains the counters.
    fn insert_notification(&mut self, n: &Notification) -> StoreResult<bool>;
    /// Marks an entry read; returns it when it changed from unread to read. Maintains counters.
    fn mark_read(
        &mut self,
        uid: &str,
        id: Uuid,
        at: OffsetDateTime,
    ) -> StoreResult<Option<Notification>>;
    /// Archives an entry (marking it read); returns it when it changed. Maintains counters.
    fn archive(
        &mut self,
        uid: &str,
        id: Uuid,
        at: OffsetDateTime,
    ) -> StoreResult<Option<Notification>>;
    /// Removes an entry; returns it when it existed. Maintains counters.
    fn delete_notification(&mut self, uid: &str, id: Uuid) -> StoreResult<Option<Notification>>;
    /// Unread, unarchived entries of a user, optionally of one type or thread.
    fn unread_ids(
        &mut self,
        uid: &str,
        ntype: Option<&str>,
        tid: Option<Uuid>,
    ) -> StoreResult<Vec<Uuid>>;
    /// Restarts the unseen count at this stream position.
    fn mark_seen(&mut self, uid: &str, at: OffsetDateTime, seq: u64) -> StoreResult<()>;
    fn put_type(&mut self, t: &NotificationType) -> StoreResult<()>;
    /// Removes a message from the thread history and the message table; false when unknown.
    fn delete_message(&mut self, mid: Uuid) -> StoreResult<bool>;
    /// Records or lifts a block of `blocked` by `uid`.
    fn set_blocked(
        &mut self,
        uid: &str,
        blocked: &str,
        on: bool,
        at: OffsetDateTime,
    ) -> StoreResult<()>;
    /// Appends to a user's change feed (SSE resume), dropping entries from before the UTC day
    /// [`CHANGE_RETENTION`] before `at` (so at least that much history is kept).
    fn put_change(
        &mut self,
        uid: &str,
        position: Position,
        frame: &[u8],
        at: OffsetDateTime,
    ) -> StoreResult<()>;
    /// Appends the `new` change of an entry just inserted (as [`FoldTarget::put_change`]); its
    /// frame is built only when asked for. A backend that derives these changes from the
    /// entries when the feed is read records only what retention needs (the default stores
    /// the frame).
    fn put_new_change(
        &mut self,
        uid: &str,
        position: Position,
        frame: &dyn Fn() -> Vec<u8>,
        at: OffsetDateTime,
    ) -> StoreResult<()> {
        self.put_change(uid, position, &frame(), at)
    }
    fn preferences(&mut self, uid: &str) -> StoreResult<Preferences>;

    /// Records a message of any kind (receipts authorization, dead-letter requeue); false when
    /// known already.
    fn insert_message(&mut self, message: &StoredMessage) -> StoreResult<bool>;
    fn message(&mut self, mid: Uuid) -> StoreResult<Option<StoredMessage>>;
    /// Counts `n` more recipients of a message.
    fn add_recipients(&mut self, mid: Uuid, n: u64) -> StoreResult<()>;

    /// Queues a dispatch task in the outbox, committed with the batch and relayed after it.
    fn enqueue_task(&mut self, task: &DispatchTask) -> StoreResult<()>;

    /// Moves a receipt forward (see [`ReceiptStatus`]); maintains per-channel counts.
    fn advance_receipt(&mut self, r: &Receipt) -> StoreResult<()>;
    fn put_failed_delivery(&mut self, f: &FailedDelivery) -> StoreResult<()>;
    /// Removes a dead letter; returns it when it existed.
    fn take_failed_delivery(&mut self, id: &str) -> StoreResult<Option<FailedDelivery>>;

    fn put_preferences(&mut self, uid: &str, preferences: &Preferences) -> StoreResult<()>;

    /// A scheduled message's record, whatever its status.
    fn scheduled(&mut self, mid: Uuid) -> StoreResult<Option<ScheduledMessage>>;
    /// Inserts or replaces a scheduled message's record; only pending ones are listed.
    fn put_scheduled(&mut self, s: &ScheduledMessage) -> StoreResult<()>;
    /// A stage-based messaging document (seed 002) by kind and id.
    fn stage_doc(&mut self, kind: &str, id: &str) -> StoreResult<Option<StageDoc>>;
    /// Every document of `kind`, by `ord` then id.
    fn stage_docs_of(&mut self, kind: &str) -> StoreResult<Vec<StageDoc>>;
    fn put_stage_doc(&mut self, doc: &StageDoc) -> StoreResult<()>;
    fn delete_stage_doc(&mut self, kind: &str, id: &str) -> StoreResult<()>;

    /// An experiment's record.
    fn experiment(&mut self, id: &str) -> StoreResult<Option<ExperimentRecord>>;
    /// Inserts or replaces an experiment's record.
    fn put_experiment(&mut self, e: &ExperimentRecord) -> StoreResult<()>;
    /// One user's row of an experiment.
    fn experiment_user(
        &mut self,
        experiment: &str,
        uid: &str,
    ) -> StoreResult<Option<ExperimentUser>>;
    /// Every experiment row of a user.
    fn user_experiments(&mut self, uid: &str) -> StoreResult<Vec<ExperimentUser>>;
    /// Inserts or replaces a user's row of an experiment.
    fn put_experiment_user(&mut self, u: &ExperimentUser) -> StoreResult<()>;
    /// The counts of one arm among the users first exposed by message `mid` (zero when none).
    fn arm_counts(&mut self, experiment: &str, mid: Uuid, arm: &str) -> StoreResult<ArmCounts>;
    /// Replaces those counts (absolute values, so writing them again changes nothing).
    fn put_arm_counts(&mut self, experiment: &str, mid: Uuid, c: &ArmCounts) -> StoreResult<()>;

    /// A user's online record.
    fn online(&mut self, uid: &str) -> StoreResult<Option<OnlineRecord>>;
    /// Seconds a user was online on a UTC day (days since the epoch), 0 when none.
    fn online_day(&mut self, uid: &str, day: i32) -> StoreResult<u64>;
    /// Writes a user's online record and those days' totals (absolute), together.
    fn put_online(&mut self, r: &OnlineRecord, days: &[(i32, u64)]) -> StoreResult<()>;

    /// Inserts or replaces a message's funnel record, listed under its UTC day and its
    /// experiment (a backend whose message rows hold what a record outside experiments says
    /// may derive those when read instead: SQLite does).
    fn put_funnel_message(&mut self, m: &FunnelMessage) -> StoreResult<()>;
    /// Records that a provider was asked to reach `uid` on `channel` for message `mid` (and,
    /// when `accepted`, that it accepted): an insert only, repeated outcomes change nothing.
    fn put_funnel_channel(
        &mut self,
        mid: Uuid,
        uid: &str,
        variant: Option<&str>,
        channel: &str,
        accepted: bool,
    ) -> StoreResult<()>;
    /// A recipient's funnel steps for a message (without its channels).
    fn funnel_entry(&mut self, mid: Uuid, uid: &str) -> StoreResult<Option<FunnelEntry>>;
    /// Inserts or replaces a recipient's funnel steps.
    fn put_funnel_entry(&mut self, e: &FunnelEntry) -> StoreResult<()>;
    /// A user's inbox entry of message `id`, whatever its state.
    fn inbox_entry(&mut self, uid: &str, id: Uuid) -> StoreResult<Option<Notification>>;
    /// A user's newest inbox entry (the highest stream position), whatever its state.
    fn newest_entry(&mut self, uid: &str) -> StoreResult<Option<Notification>>;
}

/// Which per-recipient reads a message's delivery will make (see
/// [`FoldTarget::prefetch_recipients`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    /// Preferences (the message has a type).
    pub preferences: bool,
    /// Whether each has a device (tasks are queued).
    pub devices: bool,
    /// Whether each is a known user (not a thread message).
    pub users: bool,
}

/// Side effects a batch may produce besides read models.
#[derive(Debug, Clone, Copy, Default)]
pub struct Effects {
    /// Build live notices.
    pub live: bool,
    /// Queue dispatch tasks.
    pub dispatch: bool,
    /// Also queue one thread-topic task per thread message (only useful with MQTT).
    pub topic_tasks: bool,
    /// The trace context of the event's fold (tracing on): every task it queues carries it.
    pub trace: Option<exchange::trace::TraceParent>,
}

/// Applies one event. Live notices are appended to `notices` and dispatch tasks queued only
/// when `effects` asks for them (never during replay).
pub fn apply_event<T: FoldTarget + ?Sized>(
    t: &mut T,
    seq: u64,
    env: &Envelope,
    effects: Effects,
    notices: &mut Vec<LiveNotice>,
) -> StoreResult<()> {
    let mut changes = Changes {
        seq,
        live: effects.live,
        announce_new: false,
        at: env.occurred_at,
        notices,
    };
    let changes = &mut changes;
    let at = env.occurred_at;
    t.touch_user(&env.actor.uid, at)?;
    match &env.event {
        Event::DeviceEnlisted(e) => enlist(t, e, at),
        Event::DeviceRemoved(e) => remove_device(t, &e.uid, &e.device_id),
        Event::ThreadCreated(e) => {
            t.touch_user(&e.owner, at)?;
            t.insert_thread(&Thread {
                tid: e.tid,
                name: e.name.clone(),
                owner: e.owner.clone(),
                open_subscribe: e.open_subscribe,
                open_publish: e.open_publish,
                created_at: at,
                subscribers: 0,
                messages: 0,
                alias: e.alias.clone(),
            })
            .map(drop)
        }
        Event::Subscribed(e) => {
            t.touch_user(&e.uid, at)?;
            t.add_subscriber(e.tid, &e.uid, at).map(drop)
        }
        Event::Unsubscribed(e) => t.remove_subscriber(e.tid, &e.uid).map(drop),
        Event::MessagePublished(e) => {
            if !fired(t, env.id, &e.opts, at)? {
                return Ok(());
            }
            let mut stored = message_of(env, Some(e.tid), &e.sender, &e.msg, &e.opts);
            stored.experiment = e.experiment.clone();
            if !t.insert_message(&stored)? {
                return Ok(());
            }
            record_experiment(t, &stored, seq)?;
            t.insert_thread_message(&ThreadMessage {
                mid: env.id,
                tid: e.tid,
                sender: e.sender.clone(),
                msg: e.msg.clone(),
                opts: e.opts.clone(),
                created_at: at,
            })?;
            // The sender does not get their own thread message in their inbox.
            let recipients: Vec<String> = t
                .subscribers(e.tid)?
                .into_iter()
                .filter(|uid| uid != &e.sender)
                .collect();
            deliver(t, seq, &stored, recipients, false, effects, changes)?;
            if effects.dispatch && effects.topic_tasks {
                // Topic channels (MQTT) publish a thread message once on the thread's topic.
                let mut task = topic_task(&stored);
                task.trace = effects.trace;
                t.enqueue_task(&task)?;
            }
            Ok(())
        }
        Event::MessageSent(e) => {
            if !fired(t, env.id, &e.opts, at)? {
                return Ok(());
            }
            let mut stored = message_of(env, None, &e.sender, &e.msg, &e.opts);
            stored.experiment = e.experiment.clone();
            if !t.insert_message(&stored)? {
                return Ok(());
            }
            record_experiment(t, &stored, seq)?;
            // A broadcast's audience is the known users: none needs recording.
            let (recipients, known) = match &e.audience {
                Audience::User { uid } => (vec![uid.clone()], false),
                Audience::Users { uids } => (uids.clone(), false),
                Audience::All => (t.all_users()?, true),
            };
            deliver(t, seq, &stored, recipients, known, effects, changes)
        }
        Event::DeliverySent(e) => {
            t.advance_receipt(&Receipt {
                mid: e.mid,
                uid: e.uid.clone(),
                device_id: e.device_id.clone(),
                channel: e.channel.clone(),
                status: ReceiptStatus::Sent,
                attempts: e.attempt,
                reason: None,
                updated_at: at,
            })?;
            let m = t.message(e.mid)?;
            funnel_dispatched(t, m.as_ref(), &e.uid, &e.channel, true)?;
            let experiment = m.and_then(|m| m.experiment).map(|x| x.id);
            reach(t, experiment.as_deref(), &e.uid, &[Step::Delivered], at)
        }
        Event::DeliveryFailed(e) => {
            t.advance_receipt(&Receipt {
                mid: e.mid,
                uid: e.uid.clone(),
                device_id: e.device_id.clone(),
                channel: e.channel.clone(),
                status: if e.dead {
                    ReceiptStatus::Failed
                } else {
                    ReceiptStatus::Retrying
                },
                attempts: e.attempt,
                reason: Some(e.reason.clone()),
                updated_at: at,
            })?;
            let m = t.message(e.mid)?;
            funnel_dispatched(t, m.as_ref(), &e.uid, &e.channel, false)?;
            if e.dead {
                t.put_failed_delivery(&FailedDelivery {
                    id: FailedDelivery::id_of(e.mid, &e.device_id),
                    mid: e.mid,
                    uid: e.uid.clone(),
                    device_id: e.device_id.clone(),
                    channel: e.channel.clone(),
                    reason: e.reason.clone(),
                    permanent: e.permanent,
                    attempts: e.attempt,
                    failed_at: at,
                })?;
            }
            Ok(())
        }
        Event::DeviceDisabled(e) => remove_device(t, &e.uid, &e.device_id),
        Event::DeliveriesSettled(e) => {
            // One group per device: its receipt, dead letter and disabling, as the single
            // events did (and the experiment step its user reached).
            let m = t.message(e.mid)?;
            let experiment = m
                .as_ref()
                .and_then(|m| m.experiment.as_ref())
                .map(|x| &x.id);
            for d in &e.deliveries {
                settle(t, e.mid, d, at)?;
                // Held and suppressed deliveries did not reach a provider (yet).
                let accepted = match d.status {
                    SettledStatus::Sent => true,
                    SettledStatus::Failed => false,
                    SettledStatus::Held | SettledStatus::Suppressed => {
                        t.group_done()?;
                        continue;
                    }
                };
                funnel_dispatched(t, m.as_ref(), &d.uid, &d.channel, accepted)?;
                if accepted {
                    reach(
                        t,
                        experiment.map(String::as_str),
                        &d.uid,
                        &[Step::Delivered],
                        at,
                    )?;
                }
                t.group_done()?;
            }
            Ok(())
        }
        Event::DeliveryAcked(e) => {
            t.advance_receipt(&Receipt {
                mid: e.mid,
                uid: e.uid.clone(),
                device_id: e.device_id.clone().unwrap_or_else(|| e.channel.clone()),
                channel: e.channel.clone(),
                status: match e.status {
                    AckStatus::Delivered => ReceiptStatus::Delivered,
                    AckStatus::Opened => ReceiptStatus::Opened,
                },
                attempts: 0,
                reason: None,
                updated_at: at,
            })?;
            let steps: &[FunnelStep] = match e.status {
                AckStatus::Delivered => &[FunnelStep::Delivered],
                AckStatus::Opened => &[FunnelStep::Delivered, FunnelStep::Opened],
            };
            funnel_reach(t, e.mid, &e.uid, steps, at, Recipient::Check)?;
            let experiment = experiment_of(t, e.mid)?;
            let steps: &[Step] = match e.status {
                AckStatus::Delivered => &[Step::Delivered],
                AckStatus::Opened => &[Step::Delivered, Step::Opened],
            };
            reach(t, experiment.as_deref(), &e.uid, steps, at)
        }
        Event::Tracked(e) => track(t, e, at),
        Event::SessionEnded(e) => session(t, seq, e),
        Event::StageRecordSaved(e) if e.id.is_empty() => {
            // A created record with an integer id: the event's stream sequence.
            let mut record = e.record.clone();
            record["id"] = serde_json::json!(seq);
            crate::stage::save(t, seq, e.kind, &seq.to_string(), &record)
        }
        Event::StageRecordSaved(e) => crate::stage::save(t, seq, e.kind, &e.id, &e.record),
        Event::StageRecordDeleted(e) => crate::stage::delete(t, seq, e.kind, &e.id),
        Event::StageTick(e) => {
            let mut sets = crate::stage::Sets::default();
            for id in crate::stage::on_schedule(t, &e.schedule)? {
                // Each subscription is a group of its own (see `FoldTarget::group_done`).
                t.group_done()?;
                crate::stage::send(t, seq, &id, at, effects, changes, &mut sets)?;
            }
            t.group_done()
        }
        Event::StageSendRequested(e) => {
            let mut sets = crate::stage::Sets::default();
            let id = e.subscription.to_string();
            crate::stage::send(t, seq, &id, at, effects, changes, &mut sets)
        }
        Event::PreferencesSet(e) => t.put_preferences(&e.uid, &e.preferences),
        Event::DeliveryRequeued(e) => {
            let id = FailedDelivery::id_of(e.mid, &e.device_id);
            if t.take_failed_delivery(&id)?.is_some()
                && effects.dispatch
                && let Some(m) = t.message(e.mid)?
                && let Some(m) = m.for_uid(&e.uid)
            {
                let mut task = task_for(&m, &e.uid);
                task.only_devices = Some(vec![e.device_id.clone()]);
                task.requeue = Some(env.id);
                task.trace = effects.trace;
                t.enqueue_task(&task)?;
            }
            Ok(())
        }
        Event::NotificationsRead(e) => {
            // Reading an entry opens it (reading all at once does not: nobody saw each one).
            for id in &e.ids {
                if let Some(n) = t.mark_read(&e.uid, *id, at)? {
                    changes.record(t, "read", &n)?;
                    let steps = [Step::Delivered, Step::Opened];
                    reach(t, n.experiment.as_deref(), &e.uid, &steps, at)?;
                    let steps = [FunnelStep::Delivered, FunnelStep::Opened];
                    let known = Recipient::Known(n.variant.clone());
                    funnel_reach(t, n.id, &e.uid, &steps, at, known)?;
                }
                t.group_done()?;
            }
            Ok(())
        }
        Event::InboxReadAll(e) => {
            for id in t.unread_ids(&e.uid, e.ntype.as_deref(), e.tid)? {
                if let Some(n) = t.mark_read(&e.uid, id, at)? {
                    changes.record(t, "read", &n)?;
                }
                t.group_done()?;
            }
            Ok(())
        }
        Event::NotificationsArchived(e) => {
            for id in &e.ids {
                if let Some(n) = t.archive(&e.uid, *id, at)? {
                    changes.record(t, "archived", &n)?;
                }
                t.group_done()?;
            }
            Ok(())
        }
        Event::NotificationsDeleted(e) => {
            for id in &e.ids {
                if let Some(n) = t.delete_notification(&e.uid, *id)? {
                    changes.record(t, "deleted", &n)?;
                }
                t.group_done()?;
            }
            Ok(())
        }
        Event::InboxSeen(e) => t.mark_seen(&e.uid, at, seq),
        Event::MessageScheduled(e) => {
            if t.scheduled(e.mid)?.is_some() {
                return Ok(());
            }
            // The schedule is stored before this record, so a message due at once may have
            // fired (and been folded) before it.
            let sent = t.message(e.mid)?.is_some();
            t.put_scheduled(&ScheduledMessage {
                mid: e.mid,
                sender: e.sender.clone(),
                kind: e.kind.clone(),
                tid: e.tid,
                audience: e.audience.clone(),
                msg: e.msg.clone(),
                deliver_at: e.deliver_at,
                scheduled_at: at,
                status: if sent {
                    ScheduleStatus::Sent
                } else {
                    ScheduleStatus::Pending
                },
                settled_at: sent.then_some(e.deliver_at),
                schedule_seq: e.schedule_seq,
                local: e.local.clone(),
            })
        }
        Event::ScheduleCancelled(e) => match t.scheduled(e.mid)? {
            Some(mut s) if s.status == ScheduleStatus::Pending => {
                s.status = ScheduleStatus::Cancelled;
                s.settled_at = Some(at);
                t.put_scheduled(&s)
            }
            _ => Ok(()),
        },
        Event::MessageDeleted(e) => t.delete_message(e.mid).map(drop),
        Event::UserBlocked(e) => t.set_blocked(&e.uid, &e.blocked, true, at),
        Event::UserUnblocked(e) => t.set_blocked(&e.uid, &e.blocked, false, at),
        Event::TypeRegistered(e) => t.put_type(&NotificationType {
            name: e.name.clone(),
            title: e.title.clone(),
            description: e.description.clone(),
            registered_at: at,
        }),
    }
}

/// A message event that carries `deliver_at` fired from a schedule: its record is marked
/// sent. False when the record says it was cancelled (JetStream removes a cancelled schedule
/// in the cancel's own write, so this does not happen; the fold still never sends one).
fn fired<T: FoldTarget + ?Sized>(
    t: &mut T,
    mid: Uuid,
    opts: &exchange::events::MessageOpts,
    at: OffsetDateTime,
) -> StoreResult<bool> {
    if opts.deliver_at().is_none() {
        return Ok(true);
    }
    match t.scheduled(mid)? {
        Some(s) if s.status == ScheduleStatus::Cancelled => Ok(false),
        Some(mut s) if s.status == ScheduleStatus::Pending => {
            s.status = ScheduleStatus::Sent;
            s.settled_at = Some(at);
            t.put_scheduled(&s)?;
            Ok(true)
        }
        _ => Ok(true),
    }
}

fn settle<T: FoldTarget + ?Sized>(
    t: &mut T,
    mid: Uuid,
    d: &SettledDelivery,
    at: OffsetDateTime,
) -> StoreResult<()> {
    let failed = d.status == SettledStatus::Failed;
    let reason = match (d.status, d.held_until) {
        (SettledStatus::Held, Some(until)) => Some(format!(
            "{} until {}",
            d.reason.as_deref().unwrap_or("held"),
            until
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        )),
        _ => d.reason.clone(),
    };
    t.advance_receipt(&Receipt {
        mid,
        uid: d.uid.clone(),
        device_id: d.device_id.clone(),
        channel: d.channel.clone(),
        status: match (d.status, d.dead) {
            (SettledStatus::Sent, _) => ReceiptStatus::Sent,
            (SettledStatus::Held, _) => ReceiptStatus::Held,
            (SettledStatus::Suppressed, _) => ReceiptStatus::Suppressed,
            (SettledStatus::Failed, true) => ReceiptStatus::Failed,
            (SettledStatus::Failed, false) => ReceiptStatus::Retrying,
        },
        attempts: d.attempt,
        reason,
        updated_at: at,
    })?;
    if failed && d.disabled {
        remove_device(t, &d.uid, &d.device_id)?;
    }
    if failed && d.dead {
        t.put_failed_delivery(&FailedDelivery {
            id: FailedDelivery::id_of(mid, &d.device_id),
            mid,
            uid: d.uid.clone(),
            device_id: d.device_id.clone(),
            channel: d.channel.clone(),
            reason: d.reason.clone().unwrap_or_default(),
            permanent: d.permanent,
            attempts: d.attempt,
            failed_at: at,
        })?;
    }
    Ok(())
}

fn enlist<T: FoldTarget + ?Sized>(
    t: &mut T,
    e: &DeviceEnlisted,
    at: OffsetDateTime,
) -> StoreResult<()> {
    if e.address.is_exclusive()
        && let Some(previous) = t.device_owner(&e.device_id)?
        && previous != e.uid
    {
        // A push token identifies a physical device: it now belongs to the new user only.
        remove_device(t, &previous, &e.device_id)?;
    }
    // The count changes with the device row it describes (the same write batch on every
    // backend), so a replayed enlistment, finding the row, counts nothing twice.
    let channel = e.address.channel();
    match t.device_channel(&e.uid, &e.device_id)? {
        Some(before) if before == channel => {}
        Some(before) => {
            t.add_channel_devices(&before, -1)?;
            t.add_channel_devices(channel, 1)?;
        }
        None => t.add_channel_devices(channel, 1)?,
    }
    t.put_device(&Device {
        id: e.device_id.clone(),
        uid: e.uid.clone(),
        address: e.address.clone(),
        enlisted_at: at,
    })
}

/// Removes a user's device and takes it off its channel's count (written before the delete,
/// which a backend may send at once: the two go together).
fn remove_device<T: FoldTarget + ?Sized>(t: &mut T, uid: &str, device_id: &str) -> StoreResult<()> {
    if let Some(channel) = t.device_channel(uid, device_id)? {
        t.add_channel_devices(&channel, -1)?;
    }
    t.delete_device(uid, device_id).map(drop)
}

/// Whether the recipient takes the message: a type the user turned off creates nothing for
/// them (mandatory admin messages excepted); an untyped message is always taken.
fn accepts<T: FoldTarget + ?Sized>(t: &mut T, m: &StoredMessage, uid: &str) -> StoreResult<bool> {
    Ok(!needs_preferences(m) || t.preferences(uid)?.accepts(&m.opts))
}

/// Whether who gets message `m` depends on the recipients' preferences: a notification type
/// they may have turned off, or a local-time wave for some zones only.
fn needs_preferences(m: &StoredMessage) -> bool {
    m.opts.ntype.is_some() || m.opts.local_zones().is_some()
}

/// Whether a recipient who gets an entry has something to push to. A recipient with no
/// device has nothing (unless a topic channel such as MQTT carries every user's copy): their
/// inbox entry and live frame are the delivery.
fn pushes_to<T: FoldTarget + ?Sized>(t: &mut T, uid: &str, effects: Effects) -> StoreResult<bool> {
    Ok(effects.topic_tasks || t.has_devices(uid)?)
}

/// The tasks of a message pushed to `to_push`: per batch, its task and, when the message
/// has a fallback, the fallback's timer. Batches are numbered from `first`.
fn tasks_of(m: &StoredMessage, to_push: &[String], first: usize) -> Vec<Vec<DispatchTask>> {
    to_push
        .chunks(TASK_BATCH)
        .enumerate()
        .map(|(k, uids)| {
            let task = batch_task(m, uids, first + k);
            match &m.opts.fallback {
                Some(f) => {
                    let mut wait = task.clone();
                    wait.fallback_due = Some(
                        m.created_at + time::Duration::seconds(f.after.min(i64::MAX as u64) as i64),
                    );
                    vec![task, wait]
                }
                None => vec![task],
            }
        })
        .collect()
}

/// The copies of a message its recipients get: the message itself, or, with an experiment,
/// one per variant (made on first use), the holdout getting none.
struct Arms<'m> {
    m: &'m StoredMessage,
    copies: Vec<std::cell::OnceCell<StoredMessage>>,
}

impl<'m> Arms<'m> {
    fn new(m: &'m StoredMessage) -> Self {
        let n = m.experiment.as_ref().map_or(1, |e| e.variants.len().max(1));
        Self {
            m,
            copies: (0..n).map(|_| std::cell::OnceCell::new()).collect(),
        }
    }

    fn slots(&self) -> usize {
        self.copies.len()
    }

    /// The slot of `uid`'s copy, `None` for a holdout user.
    fn slot_of(&self, uid: &str) -> Option<usize> {
        match self.m.arm_of(uid) {
            None => Some(0),
            Some(Arm::Holdout | Arm::Later) => None,
            Some(Arm::Variant(i)) => Some(i.min(self.copies.len() - 1)),
        }
    }

    fn message(&self, slot: usize) -> &StoredMessage {
        if self.m.experiment.is_none() {
            return self.m;
        }
        self.copies[slot].get_or_init(|| self.m.as_variant(slot))
    }

    /// The tasks of every slot's recipients to push to, batches numbered across the slots.
    fn tasks(&self, to_push: &[Vec<String>]) -> Vec<Vec<DispatchTask>> {
        let mut out = Vec::new();
        for (slot, uids) in to_push.iter().enumerate() {
            if uids.is_empty() {
                continue;
            }
            out.extend(tasks_of(self.message(slot), uids, out.len()));
        }
        out
    }
}

/// Messages with at least this many recipients have their dispatch planned ahead of their
/// fold (see [`plan_ahead`]).
pub const PLAN_AHEAD_RECIPIENTS: usize = 2_000;

/// The dispatch tasks of a large message, computed before its fold so that they can be
/// committed and relayed first: the first provider request of a broadcast to a million users
/// need not wait until a million inbox entries are written. `None` for any other event.
///
/// Reads the state as the event's own fold reads it (the actor is touched first, as
/// [`apply_event`] does); the backend commits the tasks with the events before this one, marks
/// the event planned, and folds it afterwards without dispatch effects. A replay of a planned
/// event queues nothing again (the mark says so); the planned tasks carry message ids derived
/// from the event, so relaying them twice stores them once.
pub fn plan_ahead<T: FoldTarget + ?Sized>(
    t: &mut T,
    env: &Envelope,
    effects: Effects,
) -> StoreResult<Option<Vec<DispatchTask>>> {
    if !effects.dispatch {
        return Ok(None);
    }
    // Admin messages to many users (broadcasts, large multicasts); thread messages are folded
    // as they come (their subscriber lists would be read twice per message).
    let Event::MessageSent(e) = &env.event else {
        return Ok(None);
    };
    if let Audience::User { .. } = &e.audience {
        return Ok(None);
    }
    if let Audience::Users { uids } = &e.audience
        && uids.len() < PLAN_AHEAD_RECIPIENTS
    {
        return Ok(None);
    }
    let mut m = message_of(env, None, &e.sender, &e.msg, &e.opts);
    m.experiment = e.experiment.clone();
    if t.message(m.mid)?.is_some() {
        return Ok(None);
    }
    t.touch_user(&env.actor.uid, env.occurred_at)?;
    let recipients = match &e.audience {
        Audience::Users { uids } => uids.clone(),
        _ => t.all_users()?,
    };
    if recipients.len() < PLAN_AHEAD_RECIPIENTS {
        return Ok(None);
    }
    let with_devices = match e.audience {
        Audience::All if !effects.topic_tasks => t.users_with_devices()?,
        _ => None,
    };
    // Every known user is listed once; a multicast's list may repeat one.
    let mut seen = HashSet::new();
    let listed = matches!(e.audience, Audience::Users { .. });
    let arms = Arms::new(&m);
    let mut to_push = vec![Vec::new(); arms.slots()];
    for uid in recipients {
        if listed && !seen.insert(uid.clone()) {
            continue;
        }
        if !accepts(t, &m, &uid)? {
            continue;
        }
        let Some(slot) = arms.slot_of(&uid) else {
            continue;
        };
        let pushes = match &with_devices {
            Some(set) => set.contains(&uid),
            None => pushes_to(t, &uid, effects)?,
        };
        if pushes {
            to_push[slot].push(uid);
        }
    }
    let mut tasks: Vec<DispatchTask> = arms.tasks(&to_push).into_iter().flatten().collect();
    for task in &mut tasks {
        task.trace = effects.trace;
    }
    Ok(Some(tasks))
}

fn message_of(
    env: &Envelope,
    tid: Option<Uuid>,
    sender: &str,
    msg: &str,
    opts: &exchange::events::MessageOpts,
) -> StoredMessage {
    StoredMessage {
        mid: env.id,
        tid,
        sender: sender.to_owned(),
        msg: msg.to_owned(),
        opts: opts.clone(),
        created_at: env.occurred_at,
        recipients: 0,
        experiment: None,
        variant: None,
    }
}

/// The once-per-message publication of a thread message on the thread's topic (MQTT).
fn topic_task(m: &StoredMessage) -> DispatchTask {
    let mut topic = task_for(m, "");
    topic.thread_topic = true;
    topic
}

/// Recipients per dispatch task: the dispatcher's unit of work (devices and preferences read
/// in bulk, one outcome event per part, progress marked per part).
pub const TASK_BATCH: usize = 256;

/// The task of batch `k` of a message's recipients; a batch of one is an ordinary
/// one-recipient task (its id does not depend on the batching).
fn batch_task(m: &StoredMessage, uids: &[String], k: usize) -> DispatchTask {
    match uids {
        [uid] => task_for(m, uid),
        _ => DispatchTask {
            uids: uids.to_vec(),
            batch: Some(k as u32),
            ..task_for(m, "")
        },
    }
}

fn task_for(m: &StoredMessage, uid: &str) -> DispatchTask {
    DispatchTask {
        mid: m.mid,
        uid: uid.to_owned(),
        uids: Vec::new(),
        batch: None,
        tid: m.tid,
        sender: m.sender.clone(),
        msg: m.msg.clone(),
        opts: m.opts.clone(),
        created_at: m.created_at,
        only_devices: None,
        requeue: None,
        thread_topic: false,
        fallback_due: None,
        hold_until: None,
        released_from: None,
        only_channels: None,
        trace: None,
    }
}

pub(crate) fn deliver<T: FoldTarget + ?Sized>(
    t: &mut T,
    seq: u64,
    m: &StoredMessage,
    recipients: Vec<String>,
    known_users: bool,
    effects: Effects,
    changes: &mut Changes<'_>,
) -> StoreResult<()> {
    let mut seen = HashSet::with_capacity(recipients.len());
    let recipients: Vec<String> = recipients
        .into_iter()
        .filter(|uid| seen.insert(uid.clone()))
        .collect();
    t.prefetch_recipients(
        m,
        &recipients,
        Needs {
            preferences: needs_preferences(m),
            devices: effects.dispatch && !effects.topic_tasks,
            users: m.tid.is_none() && !known_users,
        },
    )?;
    let mut delivered = 0u64;
    let arms = Arms::new(m);
    // The `new` frame is the same for every recipient of a copy but their uid: serialized
    // once per copy, when its first recipient's change is stored (a backend that derives them
    // never asks).
    let templates: Vec<std::cell::OnceCell<crate::live::FrameTemplate>> = (0..arms.slots())
        .map(|_| std::cell::OnceCell::new())
        .collect();
    // Recipients with something to push to, per copy, in recipient order: one dispatch task
    // per `TASK_BATCH` of them.
    let mut to_push = vec![Vec::new(); arms.slots()];
    // Users this message exposed to its experiment, per arm (those of an interrupted earlier
    // application of this event included: their rows name this message).
    let mut exposed: std::collections::BTreeMap<String, u64> = Default::default();
    // Recipients of each copy (entries written now or by an interrupted application) and
    // users held out: the message's funnel record.
    let mut sent = vec![0u64; arms.slots()];
    let mut held_out = 0u64;
    for uid in recipients {
        // Each recipient is one group, also one skipped below: a backend that numbers its
        // writes by group numbers them the same when a crashed event is applied again.
        t.group_done()?;
        // Thread subscribers are known users already (touched when they subscribed), and so
        // is a broadcast's audience.
        if m.tid.is_none() && !known_users {
            t.touch_user(&uid, m.created_at)?;
        }
        if !accepts(t, m, &uid)? {
            continue;
        }
        if let Some(arm) = expose(t, m, &uid)? {
            *exposed.entry(arm).or_default() += 1;
        }
        let Some(slot) = arms.slot_of(&uid) else {
            // Held out: measured, sent nothing.
            if m.arm_of(&uid) == Some(Arm::Holdout) {
                held_out += 1;
            }
            continue;
        };
        sent[slot] += 1;
        let copy = arms.message(slot);
        let n = Notification::new(copy, uid, seq);
        // An entry that exists already was written by an earlier, interrupted application of
        // this same event (the message row, written last, says whether it finished): its
        // recipient still belongs to the same task batch, so a replay queues the same tasks.
        if t.insert_notification(&n)? {
            delivered += 1;
            changes.record_new(t, &n, &|| {
                templates[slot].get_or_init(|| crate::live::FrameTemplate::new(copy, seq))
            })?;
        }
        if effects.dispatch && pushes_to(t, &n.uid, effects)? {
            to_push[slot].push(n.uid);
        }
    }
    // Each task (and its fallback) is a group of its own, after the recipients' groups.
    for mut group in arms.tasks(&to_push) {
        t.group_done()?;
        for task in &mut group {
            task.trace = effects.trace;
            t.enqueue_task(task)?;
        }
    }
    t.group_done()?;
    if let Some(e) = &m.experiment {
        for (arm, n) in exposed {
            let mut c = t.arm_counts(&e.id, m.mid, &arm)?;
            c.exposed = n;
            t.put_arm_counts(&e.id, m.mid, &c)?;
        }
        t.group_done()?;
    }
    t.put_funnel_message(&FunnelMessage {
        mid: m.mid,
        sender: m.sender.clone(),
        sent_at: m.created_at,
        experiment: m.experiment.as_ref().map(|e| e.id.clone()),
        copies: (0..arms.slots())
            .filter(|&slot| sent[slot] > 0)
            .map(|slot| {
                let copy = arms.message(slot);
                FunnelCopy {
                    variant: copy.arm_names().1,
                    urgency: copy
                        .opts
                        .urgency
                        .unwrap_or(exchange::events::Urgency::Normal)
                        as u8,
                    ntype: copy.opts.ntype.clone(),
                    sent: sent[slot],
                }
            })
            .collect(),
        held_out,
    })?;
    t.group_done()?;
    if delivered > 0 {
        t.add_recipients(m.mid, delivered)?;
    }
    Ok(())
}

/// The variant of the copy `uid` gets of message `m` (`Ok(None)` without an experiment);
/// `Err(())` when they get none (held out, or not in this send).
fn variant_of(m: &StoredMessage, uid: &str) -> Result<Option<String>, ()> {
    match (&m.experiment, m.arm_of(uid)) {
        (Some(e), Some(arm @ Arm::Variant(_))) => Ok(Some(e.arm_name(arm).to_owned())),
        (_, Some(Arm::Holdout | Arm::Later)) => Err(()),
        _ => Ok(None),
    }
}

/// A dispatch outcome of message `m` for `uid` on `channel`, into its funnel.
fn funnel_dispatched<T: FoldTarget + ?Sized>(
    t: &mut T,
    m: Option<&StoredMessage>,
    uid: &str,
    channel: &str,
    accepted: bool,
) -> StoreResult<()> {
    let Some(m) = m else {
        return Ok(());
    };
    let Ok(variant) = variant_of(m, uid) else {
        return Ok(());
    };
    t.put_funnel_channel(m.mid, uid, variant.as_deref(), channel, accepted)
}

/// How [`funnel_reach`] knows that a user is a recipient of the message.
enum Recipient {
    /// They are, and got this variant (their entry says so).
    Known(Option<String>),
    /// Only if they have an entry of it (asked when their funnel row is new).
    Check,
}

/// `uid` reached `steps` of message `mid`'s funnel (those not reached before); nothing when
/// they are not a recipient.
fn funnel_reach<T: FoldTarget + ?Sized>(
    t: &mut T,
    mid: Uuid,
    uid: &str,
    steps: &[FunnelStep],
    at: OffsetDateTime,
    recipient: Recipient,
) -> StoreResult<()> {
    let mut entry = match t.funnel_entry(mid, uid)? {
        Some(e) => e,
        None => {
            let variant = match recipient {
                Recipient::Known(v) => v,
                Recipient::Check => match t.inbox_entry(uid, mid)? {
                    Some(n) => n.variant,
                    None => return Ok(()),
                },
            };
            FunnelEntry::new(mid, uid, variant)
        }
    };
    let mut changed = false;
    for step in steps {
        changed |= entry.reach(*step, at);
    }
    if changed {
        t.put_funnel_entry(&entry)?;
    }
    Ok(())
}

/// Records `uid`'s exposure to the experiment of message `m`; returns the arm when this
/// message is the one that exposed them (a user keeps the arm and the message of their first
/// exposure).
fn expose<T: FoldTarget + ?Sized>(
    t: &mut T,
    m: &StoredMessage,
    uid: &str,
) -> StoreResult<Option<String>> {
    let Some(e) = &m.experiment else {
        return Ok(None);
    };
    // A promotion measures no one; users outside this send's test share are not in it (yet).
    let arm = e.assign(uid);
    if e.promoted.is_some() || arm == Arm::Later {
        return Ok(None);
    }
    if let Some(u) = t.experiment_user(&e.id, uid)? {
        return Ok((u.mid == m.mid).then_some(u.arm));
    }
    let arm = e.arm_name(arm).to_owned();
    t.put_experiment_user(&ExperimentUser {
        experiment: e.id.clone(),
        uid: uid.to_owned(),
        arm: arm.clone(),
        mid: m.mid,
        exposed_at: m.created_at,
        delivered_at: None,
        opened_at: None,
        clicked_at: None,
        converted_at: None,
    })?;
    Ok(Some(arm))
}

/// Creates the record of a message's experiment, or counts one more message in it (once: a
/// message at or below the record's position was counted by an interrupted application).
fn record_experiment<T: FoldTarget + ?Sized>(
    t: &mut T,
    m: &StoredMessage,
    seq: u64,
) -> StoreResult<()> {
    let Some(e) = &m.experiment else {
        return Ok(());
    };
    let record = match t.experiment(&e.id)? {
        Some(r) if r.last_seq >= seq => return Ok(()),
        Some(mut r) => {
            r.messages += 1;
            r.last_mid = m.mid;
            r.last_seq = seq;
            if e.promoted.is_some() {
                r.promoted = e.promoted.clone();
            }
            r
        }
        None => ExperimentRecord {
            id: e.id.clone(),
            owner: m.sender.clone(),
            created_at: m.created_at,
            spec: e.clone(),
            messages: 1,
            first_mid: m.mid,
            last_mid: m.mid,
            last_seq: seq,
            promoted: e.promoted.clone(),
        },
    };
    t.put_experiment(&record)
}

/// The experiment id of a message, if it has one.
fn experiment_of<T: FoldTarget + ?Sized>(t: &mut T, mid: Uuid) -> StoreResult<Option<String>> {
    Ok(t.message(mid)?.and_then(|m| m.experiment).map(|e| e.id))
}

/// `uid` reached `steps` in `experiment` (those they had not reached already; nothing when
/// they are not in it). Their row and their arm's counts are written once.
fn reach<T: FoldTarget + ?Sized>(
    t: &mut T,
    experiment: Option<&str>,
    uid: &str,
    steps: &[Step],
    at: OffsetDateTime,
) -> StoreResult<()> {
    let Some(experiment) = experiment else {
        return Ok(());
    };
    let Some(mut u) = t.experiment_user(experiment, uid)? else {
        return Ok(());
    };
    let mut delta = ArmCounts {
        arm: u.arm.clone(),
        ..Default::default()
    };
    for step in steps {
        if u.reach(*step, at) {
            delta.add(&ArmCounts::one(&u.arm, *step));
        }
    }
    if delta
        == (ArmCounts {
            arm: u.arm.clone(),
            ..Default::default()
        })
    {
        return Ok(());
    }
    t.put_experiment_user(&u)?;
    let mut c = t.arm_counts(experiment, u.mid, &u.arm)?;
    c.add(&delta);
    t.put_arm_counts(experiment, u.mid, &c)
}

/// The UTC day (days since the epoch) of an instant.
pub fn day_of(at: OffsetDateTime) -> i32 {
    i32::try_from(at.unix_timestamp().div_euclid(86_400)).unwrap_or(0)
}

/// Counts an ended live session into its user's online time, split at UTC midnights (once: a
/// session at or below the record's position was counted by an interrupted application).
fn session<T: FoldTarget + ?Sized>(
    t: &mut T,
    seq: u64,
    e: &exchange::events::SessionEnded,
) -> StoreResult<()> {
    let mut r = match t.online(&e.uid)? {
        Some(r) if r.last_seq >= seq => return Ok(()),
        Some(r) => r,
        None => OnlineRecord {
            uid: e.uid.clone(),
            last_seen: e.ended_at,
            sessions: 0,
            seconds: 0,
            last_seq: 0,
        },
    };
    let mut days = Vec::new();
    let mut from = e.started_at;
    // A session longer than a year is counted for its last year only.
    if e.ended_at - from > time::Duration::days(366) {
        from = e.ended_at - time::Duration::days(366);
    }
    let mut total = 0u64;
    while from < e.ended_at {
        let day = day_of(from);
        let midnight =
            OffsetDateTime::from_unix_timestamp(i64::from(day + 1) * 86_400).unwrap_or(e.ended_at);
        let until = midnight.min(e.ended_at);
        let secs = u64::try_from((until - from).whole_seconds()).unwrap_or(0);
        if secs > 0 {
            days.push((day, t.online_day(&e.uid, day)? + secs));
            total += secs;
        }
        from = until;
    }
    r.last_seen = r.last_seen.max(e.ended_at);
    r.sessions += 1;
    r.seconds += total;
    r.last_seq = seq;
    t.put_online(&r, &days)
}

/// A tracked event: a click or a conversion of the experiment of the message it names, or,
/// without one, of every experiment the user was exposed to within its window before it.
fn track<T: FoldTarget + ?Sized>(
    t: &mut T,
    e: &exchange::events::Tracked,
    at: OffsetDateTime,
) -> StoreResult<()> {
    let step = if e.event == exchange::events::CLICK {
        Step::Clicked
    } else {
        Step::Converted
    };
    let experiments = match e.mid {
        Some(mid) => experiment_of(t, mid)?.into_iter().collect(),
        None => {
            let window = time::Duration::seconds(e.window.min(i64::MAX as u64) as i64);
            t.user_experiments(&e.uid)?
                .into_iter()
                .filter(|u| u.exposed_at <= at && at - u.exposed_at <= window)
                .map(|u| u.experiment)
                .collect::<Vec<_>>()
        }
    };
    // A click is also an open and a delivery.
    let steps: &[Step] = match step {
        Step::Clicked => &[Step::Delivered, Step::Opened, Step::Clicked],
        _ => &[Step::Converted],
    };
    for experiment in experiments {
        reach(t, Some(&experiment), &e.uid, steps, at)?;
        t.group_done()?;
    }
    // The message's funnel: the one named, or the newest the user had within the window.
    let (mid, recipient) = match e.mid {
        Some(mid) => (mid, Recipient::Check),
        None => {
            let window = time::Duration::seconds(e.window.min(i64::MAX as u64) as i64);
            match t.newest_entry(&e.uid)? {
                Some(n) if n.created_at <= at && at - n.created_at <= window => {
                    (n.id, Recipient::Known(n.variant))
                }
                _ => return Ok(()),
            }
        }
    };
    let steps: &[FunnelStep] = match step {
        Step::Clicked => &[
            FunnelStep::Delivered,
            FunnelStep::Opened,
            FunnelStep::Clicked,
        ],
        _ => &[FunnelStep::Converted],
    };
    funnel_reach(t, mid, &e.uid, steps, at, recipient)?;
    t.group_done()
}

/// The action of a change that creates an entry.
pub const NEW: &str = "new";

/// How long a user's change feed is kept (SSE resume window).
pub const CHANGE_RETENTION: time::Duration = time::Duration::days(7);

/// Where an inbox change sits in a user's feed: the stream sequence of the event that made it
/// and the entry it concerns (the stream sequence of the message that created the entry; one
/// event changes an entry at most once). Derived from the data alone, so a backend applying an
/// event again after a crash writes each change at the same place. Serialized as
/// `"<seq>.<sub>"` (the SSE event id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub seq: u64,
    pub sub: u64,
}

impl Position {
    pub fn parse(s: &str) -> Option<Self> {
        let (seq, sub) = s.trim().split_once('.')?;
        Some(Self {
            seq: seq.parse().ok()?,
            sub: sub.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.seq, self.sub)
    }
}

/// The inbox changes one event makes: each goes to the user's change feed (always, so the feed
/// is part of the deterministic projection) and, when live, to their connections.
pub struct Changes<'a> {
    seq: u64,
    live: bool,
    /// New entries' frames go out as live notices too: messages the hub cannot route from
    /// their event (a stage message, derived by the fold).
    announce_new: bool,
    at: OffsetDateTime,
    notices: &'a mut Vec<LiveNotice>,
}

impl Changes<'_> {
    /// Records a new entry's change, its frame built from the message's template. Its live
    /// frame is sent by the hub straight from the event (`crate::live`), before this fold.
    fn record_new<'m, T: FoldTarget + ?Sized>(
        &mut self,
        t: &mut T,
        n: &Notification,
        template: &dyn Fn() -> &'m crate::live::FrameTemplate,
    ) -> StoreResult<()> {
        let position = self.position(n);
        if self.live && self.announce_new {
            self.notices.push(LiveNotice {
                uid: n.uid.clone(),
                frame: template().for_uid(&n.uid),
            });
        }
        t.put_new_change(
            &n.uid,
            position,
            &|| template().for_uid(&n.uid).to_vec(),
            self.at,
        )
    }

    pub(crate) fn announce_new(&mut self, on: bool) {
        self.announce_new = on;
    }

    /// Where a change of entry `n` made by this event sits in its user's feed.
    fn position(&self, n: &Notification) -> Position {
        Position {
            seq: self.seq,
            sub: n.seq,
        }
    }

    fn record<T: FoldTarget + ?Sized>(
        &mut self,
        t: &mut T,
        action: &str,
        n: &Notification,
    ) -> StoreResult<()> {
        let position = self.position(n);
        let frame = frame(action, n, position);
        t.put_change(&n.uid, position, &frame, self.at)?;
        if self.live {
            self.notices.push(LiveNotice {
                uid: n.uid.clone(),
                frame: frame.into(),
            });
        }
        Ok(())
    }
}

/// The `new` frame of an existing entry, byte for byte the one sent when it was created.
pub fn new_frame(n: &Notification) -> Vec<u8> {
    let created = Notification {
        status: crate::model::NotificationStatus::Unread,
        read_at: None,
        archived_at: None,
        ..n.clone()
    };
    frame(
        NEW,
        &created,
        Position {
            seq: n.seq,
            sub: n.seq,
        },
    )
}

/// The frame a connected client receives:
/// `{"action": "new"|"read"|"archived"|"deleted", "notification": {...}, "position": "s.n"}`.
pub fn frame(action: &str, n: &Notification, position: Position) -> Vec<u8> {
    // Serialized straight from the fields (one per recipient; no intermediate JSON tree).
    #[derive(serde::Serialize)]
    struct Frame<'a> {
        action: &'a str,
        notification: &'a Notification,
        position: String,
    }
    serde_json::to_vec(&Frame {
        action,
        notification: n,
        position: position.to_string(),
    })
    .unwrap_or_default()
}
