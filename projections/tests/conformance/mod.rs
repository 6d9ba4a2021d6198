//! The store conformance suite: what every `Store` backend must do, written once over the trait.
//! Each case takes a fresh, empty store, applies events as the projector would and checks the
//! reads the API makes. `store_sqlite.rs` runs it against SQLite (always); a backend is
//! conformant when every case passes against it.

#![allow(dead_code)]

use exchange::events::{
    AckStatus, Actor, Audience, DeliveriesSettled, DeliveryAcked, DeliveryFailed, DeliveryRequeued,
    DeliverySent, DeviceAddress, DeviceEnlisted, DeviceRemoved, Envelope, Event, InboxReadAll,
    MessageDeleted, MessageOpts, MessagePublished, MessageScheduled, MessageSent,
    NotificationsArchived, NotificationsDeleted, NotificationsRead, Preferences, PreferencesSet,
    ScheduleCancelled, SettledDelivery, SettledStatus, Subscribed, ThreadCreated, TypeRegistered,
    Unsubscribed, UserBlocked, UserUnblocked,
};
use projections::model::{
    HistoryQuery, InboxFilter, InboxQuery, NotificationStatus, ReceiptStatus, ScheduleStatus,
    StatusFilter,
};
use projections::{ApplyOptions, SequencedEvent, Store};
use time::OffsetDateTime;
use uuid::Uuid;

/// Applies events in order, numbering them after the store's checkpoint. Live notices and
/// dispatch tasks are produced as for a live projector.
pub struct Feed<'a> {
    store: &'a dyn Store,
}

impl<'a> Feed<'a> {
    pub fn new(store: &'a dyn Store) -> Self {
        Self { store }
    }

    pub async fn apply(&self, events: Vec<Envelope>) -> projections::Applied {
        let from = self.store.checkpoint().await.expect("checkpoint");
        let batch = events
            .into_iter()
            .enumerate()
            .map(|(i, envelope)| SequencedEvent {
                trace: None,
                seq: from + 1 + i as u64,
                envelope,
            })
            .collect();
        let mut applied = self
            .store
            .apply(batch, live())
            .await
            .expect("applying a batch");
        // A store may stop early to commit a large message's tasks first.
        while !applied.rest.is_empty() {
            let rest = std::mem::take(&mut applied.rest);
            let more = self
                .store
                .apply(rest, live())
                .await
                .expect("applying the rest");
            applied.checkpoint = more.checkpoint;
            applied.applied += more.applied;
            applied.notices.extend(more.notices);
            applied.rest = more.rest;
        }
        applied
    }

    pub async fn one(&self, uid: &str, event: Event) -> Uuid {
        let env = by(uid, event);
        let id = env.id;
        self.apply(vec![env]).await;
        id
    }
}

pub fn live() -> ApplyOptions {
    let past = OffsetDateTime::now_utc() - time::Duration::hours(1);
    ApplyOptions {
        live_since: Some(past),
        dispatch_since: Some(past),
        topic_tasks: false,
    }
}

/// The receipt status of one device, if it has a receipt.
fn status_of(receipts: &[projections::model::Receipt], device: &str) -> Option<ReceiptStatus> {
    receipts
        .iter()
        .find(|r| r.device_id == device)
        .map(|r| r.status)
}

/// Forgets the queued tasks (as the relay does once they are in the work queue).
async fn clear_outbox(store: &dyn Store) {
    let ids = store
        .outbox(10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|(i, _)| i);
    store.outbox_done(ids.collect()).await.unwrap();
}

pub fn by(uid: &str, event: Event) -> Envelope {
    Envelope::new(
        Actor {
            uid: uid.into(),
            roles: vec![],
        },
        event,
    )
}

pub fn thread(tid: Uuid, owner: &str, alias: Option<&str>) -> Event {
    Event::ThreadCreated(ThreadCreated {
        tid,
        name: "general".into(),
        owner: owner.into(),
        open_subscribe: true,
        open_publish: true,
        alias: alias.map(str::to_owned),
    })
}

pub fn subscribe(tid: Uuid, uid: &str) -> Event {
    Event::Subscribed(Subscribed {
        tid,
        uid: uid.into(),
    })
}

pub fn publish(tid: Uuid, sender: &str, msg: &str, opts: MessageOpts) -> Event {
    Event::MessagePublished(MessagePublished {
        tid,
        sender: sender.into(),
        msg: msg.into(),
        opts,
        experiment: None,
    })
}

pub fn send(audience: Audience, msg: &str, opts: MessageOpts) -> Event {
    Event::MessageSent(MessageSent {
        audience,
        sender: "admin".into(),
        msg: msg.into(),
        opts,
        experiment: None,
    })
}

pub fn enlist(uid: &str, device_id: &str, token: &str) -> Event {
    Event::DeviceEnlisted(DeviceEnlisted {
        uid: uid.into(),
        device_id: device_id.into(),
        address: DeviceAddress::Apns {
            token: token.into(),
        },
    })
}

/// `n` users `<prefix>00`.., each enlisting one APNs device `d<i>`.
async fn enlisted(feed: &Feed<'_>, prefix: &str, n: usize) -> Vec<String> {
    let uids: Vec<String> = (0..n).map(|i| format!("{prefix}{i:02}")).collect();
    feed.apply(
        uids.iter()
            .enumerate()
            .map(|(i, uid)| by(uid, enlist(uid, &format!("d{i}"), &format!("{i:04x}"))))
            .collect(),
    )
    .await;
    uids
}

fn all(status: Option<StatusFilter>) -> InboxQuery {
    InboxQuery {
        filter: InboxFilter {
            status,
            ..Default::default()
        },
        limit: 100,
        ..Default::default()
    }
}

/// The ids of a user's inbox entries (all but archived), sorted.
async fn inbox_ids(store: &dyn Store, uid: &str) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = store
        .inbox(uid, &all(None))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|n| n.id)
        .collect();
    ids.sort();
    ids
}

/// Events at or below the checkpoint are skipped: a redelivered batch changes nothing.
pub async fn redelivered_batch_is_harmless(store: &dyn Store) {
    assert_eq!(store.checkpoint().await.unwrap(), 0);
    let tid = Uuid::now_v7();
    let batch = vec![
        SequencedEvent {
            trace: None,
            seq: 1,
            envelope: by("ann", thread(tid, "ann", None)),
        },
        SequencedEvent {
            trace: None,
            seq: 2,
            envelope: by("bob", subscribe(tid, "bob")),
        },
        SequencedEvent {
            trace: None,
            seq: 3,
            envelope: by("ann", publish(tid, "ann", "hello", MessageOpts::default())),
        },
    ];
    let first = store.apply(batch.clone(), live()).await.unwrap();
    assert_eq!((first.checkpoint, first.applied), (3, 3));
    let again = store.apply(batch, live()).await.unwrap();
    assert_eq!((again.checkpoint, again.applied), (3, 0));
    assert!(again.notices.is_empty(), "a redelivery notifies nobody");
    assert_eq!(store.checkpoint().await.unwrap(), 3);
    let t = store.thread(tid).await.unwrap().unwrap();
    assert_eq!((t.subscribers, t.messages), (1, 1));
    assert_eq!(store.inbox_counts("bob").await.unwrap().total, 1);
}

/// Threads, subscriptions, aliases and thread history.
pub async fn threads_and_history(store: &dyn Store) {
    let feed = Feed::new(store);
    let tid = Uuid::now_v7();
    feed.apply(vec![
        by("ann", thread(tid, "ann", Some("team"))),
        by("bob", subscribe(tid, "bob")),
        by("cat", subscribe(tid, "cat")),
        by("cat", subscribe(tid, "cat")),
    ])
    .await;
    let t = store.thread(tid).await.unwrap().unwrap();
    assert_eq!((t.owner.as_str(), t.subscribers), ("ann", 2));
    assert_eq!(t.alias.as_deref(), Some("team"));
    assert_eq!(
        store.thread_by_alias("team").await.unwrap().unwrap().tid,
        tid
    );
    assert!(store.thread_by_alias("nope").await.unwrap().is_none());
    assert!(store.thread(Uuid::now_v7()).await.unwrap().is_none());
    assert!(store.is_subscribed(tid, "cat").await.unwrap());
    feed.one(
        "cat",
        Event::Unsubscribed(Unsubscribed {
            tid,
            uid: "cat".into(),
        }),
    )
    .await;
    assert!(!store.is_subscribed(tid, "cat").await.unwrap());
    assert_eq!(store.thread(tid).await.unwrap().unwrap().subscribers, 1);

    let mut mids = Vec::new();
    for (sender, msg) in [("ann", "one"), ("bob", "two"), ("ann", "three")] {
        mids.push(
            feed.one(sender, publish(tid, sender, msg, MessageOpts::default()))
                .await,
        );
    }
    let page = store
        .thread_messages(
            tid,
            &HistoryQuery {
                limit: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.total, 3);
    let texts: Vec<&str> = page.items.iter().map(|m| m.msg.as_str()).collect();
    assert_eq!(texts, ["three", "two"], "newest first, limited");
    let rest = store
        .thread_messages(
            tid,
            &HistoryQuery {
                limit: 2,
                offset: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.items[0].msg, "one");
    let by_ann = store
        .thread_messages(
            tid,
            &HistoryQuery {
                limit: 10,
                sender: Some("ann".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(by_ann.items.len(), 2);
    assert!(by_ann.items.iter().all(|m| m.sender == "ann"));
    assert_eq!(store.thread(tid).await.unwrap().unwrap().messages, 3);

    // A deleted message leaves the history and the message lookup; the inbox entries made
    // from it keep their text.
    feed.one(
        "ann",
        Event::MessageDeleted(MessageDeleted { mid: mids[0] }),
    )
    .await;
    assert!(store.message(mids[0]).await.unwrap().is_none());
    assert!(store.message(mids[2]).await.unwrap().is_some());
    let history = store
        .thread_messages(
            tid,
            &HistoryQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let texts: Vec<&str> = history.items.iter().map(|m| m.msg.as_str()).collect();
    assert_eq!((history.total, texts), (2, vec!["three", "two"]));
    let kept = store.notifications("bob", &[mids[0]]).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].msg, "one");
}

/// Devices: newest first, an exclusive push token moves to its new user, removal.
pub async fn devices(store: &dyn Store) {
    let feed = Feed::new(store);
    feed.one("ann", enlist("ann", "phone", "aa01")).await;
    feed.one("ann", enlist("ann", "tablet", "aa02")).await;
    let ids: Vec<String> = store
        .devices("ann")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["tablet", "phone"]);
    // The same physical device (token) enlisted by another user leaves ann.
    feed.one("bob", enlist("bob", "phone", "aa01")).await;
    assert_eq!(store.devices("ann").await.unwrap().len(), 1);
    assert_eq!(store.devices("bob").await.unwrap()[0].id, "phone");
    // And from bob to carol: the token's owner record followed it to bob.
    feed.one("carol", enlist("carol", "phone", "aa01")).await;
    assert!(store.devices("bob").await.unwrap().is_empty());
    assert_eq!(store.devices("carol").await.unwrap().len(), 1);
    feed.one(
        "ann",
        Event::DeviceRemoved(DeviceRemoved {
            uid: "ann".into(),
            device_id: "tablet".into(),
        }),
    )
    .await;
    assert!(store.devices("ann").await.unwrap().is_empty());
    // Devices per channel follow: one APNs device (carol's) is left.
    let per = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
        v.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect()
    };
    assert_eq!(
        store.devices_per_channel().await.unwrap(),
        per(&[("apns", 1)])
    );
    // Re-enlisting a device unchanged, or on another channel, counts it once; removal and a
    // provider's disabling take it off; a redelivered batch changes nothing.
    feed.one("dan", enlist("dan", "d1", "dd01")).await;
    feed.one("dan", enlist("dan", "d1", "dd01")).await;
    feed.one(
        "dan",
        Event::DeviceEnlisted(DeviceEnlisted {
            uid: "dan".into(),
            device_id: "mail".into(),
            address: DeviceAddress::Email {
                email: "dan@example.com".into(),
            },
        }),
    )
    .await;
    assert_eq!(
        store.devices_per_channel().await.unwrap(),
        per(&[("apns", 2), ("email", 1)])
    );
    feed.one(
        "dan",
        Event::DeviceEnlisted(DeviceEnlisted {
            uid: "dan".into(),
            device_id: "d1".into(),
            address: DeviceAddress::Fcm {
                token: "dd01".into(),
            },
        }),
    )
    .await;
    assert_eq!(
        store.devices_per_channel().await.unwrap(),
        per(&[("apns", 1), ("email", 1), ("fcm", 1)])
    );
    feed.one(
        "dan",
        Event::DeviceDisabled(exchange::events::DeviceDisabled {
            uid: "dan".into(),
            device_id: "d1".into(),
            channel: "fcm".into(),
            reason: "unregistered".into(),
        }),
    )
    .await;
    feed.one(
        "dan",
        Event::DeviceRemoved(DeviceRemoved {
            uid: "dan".into(),
            device_id: "nothing-here".into(),
        }),
    )
    .await;
    assert_eq!(
        store.devices_per_channel().await.unwrap(),
        per(&[("apns", 1), ("email", 1)])
    );
    let again = store.checkpoint().await.unwrap();
    store
        .apply(
            vec![SequencedEvent {
                trace: None,
                seq: again,
                envelope: by("dan", enlist("dan", "d9", "dd09")),
            }],
            ApplyOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        store.devices_per_channel().await.unwrap(),
        per(&[("apns", 1), ("email", 1)]),
        "an event at or below the checkpoint is skipped"
    );
}

/// A thread message reaches every subscriber but its sender, with counters, change feed
/// and, for recipients with a device, a dispatch task.
pub async fn thread_message_fans_out(store: &dyn Store) {
    let feed = Feed::new(store);
    let tid = Uuid::now_v7();
    feed.apply(vec![
        by("ann", thread(tid, "ann", None)),
        by("ann", subscribe(tid, "ann")),
        by("bob", subscribe(tid, "bob")),
        by("cat", subscribe(tid, "cat")),
        by("bob", enlist("bob", "phone", "bb01")),
    ])
    .await;
    let env = by("ann", publish(tid, "ann", "hi all", MessageOpts::default()));
    let mid = env.id;
    let applied = feed.apply(vec![env.clone()]).await;
    // New entries' frames leave from the gateway's hub, straight from the event; the fold
    // only records them in the change feed.
    assert!(applied.notices.is_empty(), "{:?}", applied.notices);
    assert_eq!(
        store.inbox_counts("ann").await.unwrap().total,
        0,
        "not to the sender"
    );
    let bob = store.inbox("bob", &all(None)).await.unwrap();
    assert_eq!(bob.total, 1);
    assert_eq!(bob.items[0].id, mid);
    assert_eq!(bob.items[0].status, NotificationStatus::Unread);
    let m = store.message(mid).await.unwrap().unwrap();
    assert_eq!((m.tid, m.recipients), (Some(tid), 2));
    // Only bob has a device: one task for him, none for cat (the inbox is her delivery).
    let outbox = store.outbox(100).await.unwrap();
    let uids: Vec<&str> = outbox.iter().map(|(_, t)| t.uid.as_str()).collect();
    assert_eq!(uids, ["bob"]);
    store
        .outbox_done(outbox.into_iter().map(|(id, _)| id).collect())
        .await
        .unwrap();
    assert!(store.outbox(100).await.unwrap().is_empty());
    let changes = store
        .changes_after("cat", Default::default(), 10)
        .await
        .unwrap();
    assert_eq!(changes.len(), 1);
    assert!(changes[0].1.contains("\"action\":\"new\""));
    // The feed holds the frame the hub sends (`projections::live`), byte for byte.
    let seq = store.checkpoint().await.unwrap();
    let live = projections::live::new_message(seq, &env).unwrap();
    assert_eq!(changes[0].1.as_bytes(), live.frame_for("cat").as_ref());
}

/// Subscriptions that change between messages of one batch: each message reaches the members
/// of the thread at its place in the stream (a backend that keeps the members for the batch
/// must keep them current).
pub async fn membership_changes_within_one_batch(store: &dyn Store) {
    let feed = Feed::new(store);
    let tid = Uuid::now_v7();
    let unsubscribe = |uid: &str| {
        Event::Unsubscribed(Unsubscribed {
            tid,
            uid: uid.into(),
        })
    };
    let msg = |text: &str| by("ann", publish(tid, "ann", text, MessageOpts::default()));
    let (m1, m2, m3, m4) = (msg("one"), msg("two"), msg("three"), msg("four"));
    feed.apply(vec![
        by("ann", thread(tid, "ann", None)),
        by("bob", subscribe(tid, "bob")),
        m1.clone(),
        by("cat", subscribe(tid, "cat")),
        m2.clone(),
        by("bob", unsubscribe("bob")),
        m3.clone(),
        by("bob", subscribe(tid, "bob")),
        by("abe", subscribe(tid, "abe")),
        m4.clone(),
    ])
    .await;
    let ids = |uid: &'static str| inbox_ids(store, uid);
    assert_eq!(ids("bob").await, [m1.id, m2.id, m4.id]);
    assert_eq!(ids("cat").await, [m2.id, m3.id, m4.id]);
    assert_eq!(ids("abe").await, [m4.id]);
    let recipients = |mid| async move { store.message(mid).await.unwrap().unwrap().recipients };
    assert_eq!(
        [
            recipients(m1.id).await,
            recipients(m2.id).await,
            recipients(m3.id).await,
            recipients(m4.id).await
        ],
        [1, 2, 1, 3]
    );
}

/// Replay (no live, no dispatch options) builds the same read models and sends nothing.
pub async fn replay_sends_nothing(store: &dyn Store) {
    let tid = Uuid::now_v7();
    let events: Vec<SequencedEvent> = [
        by("ann", thread(tid, "ann", None)),
        by("bob", subscribe(tid, "bob")),
        by("bob", enlist("bob", "phone", "bb02")),
        by(
            "ann",
            publish(tid, "ann", "history", MessageOpts::default()),
        ),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, envelope)| SequencedEvent {
        trace: None,
        seq: i as u64 + 1,
        envelope,
    })
    .collect();
    let applied = store.apply(events, ApplyOptions::default()).await.unwrap();
    assert!(applied.notices.is_empty());
    assert!(store.outbox(100).await.unwrap().is_empty());
    assert_eq!(store.inbox_counts("bob").await.unwrap().total, 1);
}

/// Direct messages: one user, a list, everyone known.
pub async fn audiences(store: &dyn Store) {
    let feed = Feed::new(store);
    feed.one("ann", enlist("ann", "p1", "cc01")).await;
    feed.one("bob", enlist("bob", "p2", "cc02")).await;
    feed.one("cat", enlist("cat", "p3", "cc03")).await;
    feed.one(
        "admin",
        send(
            Audience::User { uid: "ann".into() },
            "to ann",
            MessageOpts::default(),
        ),
    )
    .await;
    feed.one(
        "admin",
        send(
            Audience::Users {
                uids: vec!["ann".into(), "bob".into(), "bob".into()],
            },
            "to two",
            MessageOpts::default(),
        ),
    )
    .await;
    let mid = feed
        .one(
            "admin",
            send(Audience::All, "to all", MessageOpts::default()),
        )
        .await;
    assert_eq!(store.inbox_counts("ann").await.unwrap().total, 3);
    assert_eq!(store.inbox_counts("bob").await.unwrap().total, 2);
    assert_eq!(store.inbox_counts("cat").await.unwrap().total, 1);
    // The broadcast reached every known user, the sending admin included.
    assert_eq!(store.message(mid).await.unwrap().unwrap().recipients, 4);
    let direct = store
        .inbox(
            "ann",
            &InboxQuery {
                filter: InboxFilter {
                    direct: true,
                    ..Default::default()
                },
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(direct.total, 3);
    assert!(direct.items.iter().all(|n| n.tid.is_none()));
}

/// Read, archive, delete, read-all, with counters and stats that follow.
pub async fn inbox_lifecycle(store: &dyn Store) {
    let feed = Feed::new(store);
    feed.one(
        "admin",
        Event::TypeRegistered(TypeRegistered {
            name: "billing".into(),
            title: "Billing".into(),
            description: "invoices".into(),
        }),
    )
    .await;
    let typed = MessageOpts {
        ntype: Some("billing".into()),
        level: Some(50),
        ..Default::default()
    };
    let mut ids = Vec::new();
    for (i, opts) in [
        MessageOpts::default(),
        typed.clone(),
        typed,
        MessageOpts::default(),
    ]
    .into_iter()
    .enumerate()
    {
        ids.push(
            feed.one(
                "admin",
                send(Audience::User { uid: "ann".into() }, &format!("m{i}"), opts),
            )
            .await,
        );
    }
    let stats = store.inbox_stats("ann").await.unwrap();
    assert_eq!((stats.total, stats.unread, stats.unseen), (4, 4, 4));
    assert_eq!(stats.unread_by_type.get("billing"), Some(&2));
    assert_eq!(stats.unread_by_level.get("50"), Some(&2));
    assert_eq!(stats.unread_by_level.get("0"), Some(&2));
    assert_eq!(store.types().await.unwrap()[0].name, "billing");

    let newest_first: Vec<Uuid> = store
        .inbox("ann", &all(None))
        .await
        .unwrap()
        .items
        .iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(newest_first, ids.iter().rev().copied().collect::<Vec<_>>());

    feed.one(
        "ann",
        Event::NotificationsRead(NotificationsRead {
            uid: "ann".into(),
            ids: vec![ids[0]],
        }),
    )
    .await;
    feed.one(
        "ann",
        Event::NotificationsArchived(NotificationsArchived {
            uid: "ann".into(),
            ids: vec![ids[1]],
        }),
    )
    .await;
    feed.one(
        "ann",
        Event::NotificationsDeleted(NotificationsDeleted {
            uid: "ann".into(),
            ids: vec![ids[3]],
        }),
    )
    .await;
    let counts = store.inbox_counts("ann").await.unwrap();
    assert_eq!((counts.total, counts.unread), (3, 1));
    let unread = store
        .inbox("ann", &all(Some(StatusFilter::Unread)))
        .await
        .unwrap();
    assert_eq!(
        unread.items.iter().map(|n| n.id).collect::<Vec<_>>(),
        [ids[2]]
    );
    let archived = store
        .inbox("ann", &all(Some(StatusFilter::Archived)))
        .await
        .unwrap();
    assert_eq!(archived.items[0].status, NotificationStatus::Archived);
    let default = store.inbox("ann", &all(None)).await.unwrap();
    assert_eq!(default.total, 2, "archived entries are hidden by default");
    let billing = store
        .inbox(
            "ann",
            &InboxQuery {
                filter: InboxFilter {
                    status: Some(StatusFilter::All),
                    ntype: Some("billing".into()),
                    ..Default::default()
                },
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(billing.total, 2);
    // Two more unread billing entries: one "read all" event then marks three at once, each
    // mark moving the same counters.
    let billing_opts = MessageOpts {
        ntype: Some("billing".into()),
        level: Some(50),
        ..Default::default()
    };
    for i in 4..6 {
        ids.push(
            feed.one(
                "admin",
                send(
                    Audience::User { uid: "ann".into() },
                    &format!("m{i}"),
                    billing_opts.clone(),
                ),
            )
            .await,
        );
    }
    let stats = store.inbox_stats("ann").await.unwrap();
    assert_eq!((stats.total, stats.unread), (5, 3));
    assert_eq!(stats.unread_by_type.get("billing"), Some(&3));
    feed.one(
        "ann",
        Event::InboxReadAll(InboxReadAll {
            uid: "ann".into(),
            ntype: None,
            tid: None,
        }),
    )
    .await;
    let stats = store.inbox_stats("ann").await.unwrap();
    assert_eq!((stats.total, stats.unread), (5, 0));
    assert!(
        stats.unread_by_type.is_empty() && stats.unread_by_level.is_empty(),
        "{stats:?}"
    );
    // Reading and deleting several entries in one event.
    feed.one(
        "ann",
        Event::NotificationsDeleted(NotificationsDeleted {
            uid: "ann".into(),
            ids: vec![ids[4], ids[5], ids[4]],
        }),
    )
    .await;
    assert_eq!(store.inbox_counts("ann").await.unwrap().total, 3);
    let found = store
        .notifications("ann", &[ids[0], ids[3], Uuid::now_v7()])
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "deleted and unknown ids are not found");
    let feed_entries = store
        .changes_after("ann", Default::default(), 100)
        .await
        .unwrap();
    assert!(
        feed_entries.windows(2).all(|w| w[0].0 < w[1].0),
        "feed in order"
    );
    // A deleted entry's feed keeps its arrival and shows its deletion.
    let of_deleted: Vec<&str> = feed_entries
        .iter()
        .filter(|(_, frame)| frame.contains(&ids[4].to_string()))
        .map(|(_, frame)| {
            if frame.starts_with(r#"{"action":"new""#) {
                "new"
            } else if frame.starts_with(r#"{"action":"deleted""#) {
                "deleted"
            } else {
                "other"
            }
        })
        .collect();
    assert_eq!(of_deleted.first(), Some(&"new"), "{of_deleted:?}");
    assert_eq!(of_deleted.last(), Some(&"deleted"), "{of_deleted:?}");
}

/// Cursor sync: entries after a position, oldest first, and a snapshot's position.
pub async fn cursor_sync(store: &dyn Store) {
    let feed = Feed::new(store);
    let first = feed
        .one(
            "admin",
            send(
                Audience::User { uid: "ann".into() },
                "a",
                MessageOpts::default(),
            ),
        )
        .await;
    let (page, position) = store.inbox_snapshot("ann", &all(None)).await.unwrap();
    assert_eq!(page.items[0].id, first);
    assert!(position > 0);
    let second = feed
        .one(
            "admin",
            send(
                Audience::User { uid: "ann".into() },
                "b",
                MessageOpts::default(),
            ),
        )
        .await;
    let third = feed
        .one(
            "admin",
            send(
                Audience::User { uid: "ann".into() },
                "c",
                MessageOpts::default(),
            ),
        )
        .await;
    let after = store
        .inbox(
            "ann",
            &InboxQuery {
                after: Some(position),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        after.items.iter().map(|n| n.id).collect::<Vec<_>>(),
        [second, third]
    );
}

/// The change feed keeps at least a week and drops what is older than that (by day).
pub async fn change_feed_keeps_a_week(store: &dyn Store) {
    let feed = Feed::new(store);
    let dm = |msg: &str, days_ago: i64| {
        let mut env = by(
            "admin",
            send(
                Audience::User { uid: "ann".into() },
                msg,
                MessageOpts::default(),
            ),
        );
        env.occurred_at = OffsetDateTime::now_utc() - time::Duration::days(days_ago);
        env
    };
    feed.apply(vec![dm("old", 10), dm("recent", 6)]).await;
    assert_eq!(
        store
            .changes_after("ann", Default::default(), 10)
            .await
            .unwrap()
            .len(),
        2
    );
    feed.apply(vec![dm("today", 0)]).await;
    let kept = store
        .changes_after("ann", Default::default(), 10)
        .await
        .unwrap();
    assert_eq!(kept.len(), 2, "the 10-day-old change is gone");
    assert!(kept[0].1.contains("recent") && kept[1].1.contains("today"));
    assert_eq!(
        store.inbox_counts("ann").await.unwrap().total,
        3,
        "the inbox keeps all"
    );
}

/// Blocks and preferences.
pub async fn blocks_and_preferences(store: &dyn Store) {
    let feed = Feed::new(store);
    feed.one(
        "ann",
        Event::UserBlocked(UserBlocked {
            uid: "ann".into(),
            blocked: "spam".into(),
        }),
    )
    .await;
    feed.one(
        "ann",
        Event::UserBlocked(UserBlocked {
            uid: "ann".into(),
            blocked: "troll".into(),
        }),
    )
    .await;
    assert!(store.is_blocked("ann", "spam").await.unwrap());
    feed.one(
        "ann",
        Event::UserUnblocked(UserUnblocked {
            uid: "ann".into(),
            blocked: "spam".into(),
        }),
    )
    .await;
    assert!(!store.is_blocked("ann", "spam").await.unwrap());
    assert_eq!(store.blocks("ann").await.unwrap(), ["troll"]);

    assert_eq!(
        store.preferences("ann").await.unwrap(),
        Preferences::default()
    );
    let mut prefs = Preferences::default();
    prefs.types.insert("promo".into(), false);
    prefs.channels.insert("sms".into(), false);
    feed.one(
        "ann",
        Event::PreferencesSet(PreferencesSet {
            uid: "ann".into(),
            preferences: prefs.clone(),
        }),
    )
    .await;
    assert_eq!(store.preferences("ann").await.unwrap(), prefs);
    // A type the user turned off creates no inbox entry.
    feed.one(
        "admin",
        send(
            Audience::User { uid: "ann".into() },
            "sale!",
            MessageOpts {
                ntype: Some("promo".into()),
                ..Default::default()
            },
        ),
    )
    .await;
    assert_eq!(store.inbox_counts("ann").await.unwrap().total, 0);
}

/// Receipts move forward; a dead letter is listed until requeued.
pub async fn receipts_and_dead_letters(store: &dyn Store) {
    let feed = Feed::new(store);
    feed.one("ann", enlist("ann", "phone", "dd01")).await;
    feed.one("ann", enlist("ann", "tablet", "dd02")).await;
    let mid = feed
        .one(
            "admin",
            send(
                Audience::User { uid: "ann".into() },
                "x",
                MessageOpts::default(),
            ),
        )
        .await;
    feed.one(
        "msgxc",
        Event::DeliverySent(DeliverySent {
            mid,
            uid: "ann".into(),
            device_id: "phone".into(),
            channel: "apns".into(),
            attempt: 1,
            provider_id: Some("p-1".into()),
        }),
    )
    .await;
    feed.one(
        "ann",
        Event::DeliveryAcked(DeliveryAcked {
            mid,
            uid: "ann".into(),
            device_id: Some("phone".into()),
            channel: "apns".into(),
            status: AckStatus::Opened,
        }),
    )
    .await;
    // A late "sent" does not move an opened receipt back.
    feed.one(
        "msgxc",
        Event::DeliverySent(DeliverySent {
            mid,
            uid: "ann".into(),
            device_id: "phone".into(),
            channel: "apns".into(),
            attempt: 2,
            provider_id: None,
        }),
    )
    .await;
    feed.one(
        "msgxc",
        Event::DeliveryFailed(DeliveryFailed {
            mid,
            uid: "ann".into(),
            device_id: "tablet".into(),
            channel: "apns".into(),
            attempt: 5,
            reason: "503".into(),
            permanent: false,
            dead: true,
        }),
    )
    .await;
    let receipts = store.receipts(mid, 10, 0).await.unwrap();
    assert_eq!(receipts.total, 2);
    let status = |device: &str| status_of(&receipts.items, device);
    assert_eq!(status("phone"), Some(ReceiptStatus::Opened));
    assert_eq!(status("tablet"), Some(ReceiptStatus::Failed));
    let counts = store.receipt_counts(mid).await.unwrap();
    assert!(counts.contains(&("apns".into(), "opened".into(), 1)));
    assert!(counts.contains(&("apns".into(), "failed".into(), 1)));
    let dead = store.failed_deliveries(10, 0).await.unwrap();
    assert_eq!(dead.total, 1);
    let id = dead.items[0].id.clone();
    assert_eq!(
        store.failed_delivery(&id).await.unwrap().unwrap().reason,
        "503"
    );
    clear_outbox(store).await;
    feed.one(
        "admin",
        Event::DeliveryRequeued(DeliveryRequeued {
            mid,
            uid: "ann".into(),
            device_id: "tablet".into(),
        }),
    )
    .await;
    assert!(store.failed_delivery(&id).await.unwrap().is_none());
    let requeued = store.outbox(10).await.unwrap();
    assert_eq!(requeued.len(), 1);
    assert_eq!(
        requeued[0].1.only_devices.as_deref(),
        Some(&["tablet".to_owned()][..])
    );
}

/// A message to many users queues one task per batch of recipients with a device, in
/// recipient order; one `deliveries_settled` event folds like the single outcome events.
pub async fn batched_tasks_and_settled_outcomes(store: &dyn Store) {
    let feed = Feed::new(store);
    let n = projections::fold::TASK_BATCH + 3;
    let uids: Vec<String> = (0..n).map(|i| format!("u{i:03}")).collect();
    feed.apply(
        uids.iter()
            .enumerate()
            .map(|(i, uid)| by(uid, enlist(uid, &format!("d{i}"), &format!("{i:04x}"))))
            .collect(),
    )
    .await;
    let mut audience = uids.clone();
    audience.push("nodevice".into());
    let mid = feed
        .one(
            "admin",
            send(
                Audience::Users { uids: audience },
                "x",
                MessageOpts::default(),
            ),
        )
        .await;
    let tasks: Vec<_> = store
        .outbox(100)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(tasks.len(), 2, "one task per batch");
    assert_eq!(tasks[0].batch, Some(0));
    assert_eq!(tasks[1].batch, Some(1));
    let queued: Vec<String> = tasks.iter().flat_map(|t| t.recipients().to_vec()).collect();
    assert_eq!(
        queued, uids,
        "every recipient with a device, in order, once"
    );
    assert_ne!(tasks[0].message_id(), tasks[1].message_id());
    clear_outbox(store).await;

    let outcome = |uid: &str, device: &str, status: SettledStatus| SettledDelivery {
        uid: uid.into(),
        device_id: device.into(),
        channel: "apns".into(),
        attempt: 1,
        status,
        provider_id: None,
        reason: (status == SettledStatus::Failed).then(|| "503".to_owned()),
        permanent: false,
        dead: false,
        disabled: false,
        held_until: None,
    };
    let dead = SettledDelivery {
        dead: true,
        attempt: 5,
        ..outcome("u002", "d2", SettledStatus::Failed)
    };
    let gone = SettledDelivery {
        dead: true,
        permanent: true,
        disabled: true,
        ..outcome("u003", "d3", SettledStatus::Failed)
    };
    feed.one(
        "msgxc",
        Event::DeliveriesSettled(DeliveriesSettled {
            mid,
            deliveries: vec![
                outcome("u000", "d0", SettledStatus::Sent),
                outcome("u001", "d1", SettledStatus::Failed),
                dead,
                gone,
            ],
        }),
    )
    .await;
    let receipts = store.receipts(mid, 10, 0).await.unwrap();
    let status = |device: &str| status_of(&receipts.items, device);
    assert_eq!(receipts.total, 4);
    assert_eq!(status("d0"), Some(ReceiptStatus::Sent));
    assert_eq!(status("d1"), Some(ReceiptStatus::Retrying));
    assert_eq!(status("d2"), Some(ReceiptStatus::Failed));
    assert_eq!(status("d3"), Some(ReceiptStatus::Failed));
    let letters = store.failed_deliveries(10, 0).await.unwrap();
    let mut devices: Vec<_> = letters.items.iter().map(|f| f.device_id.as_str()).collect();
    devices.sort_unstable();
    assert_eq!(devices, ["d2", "d3"]);
    assert!(store.devices("u003").await.unwrap().is_empty(), "disabled");
    assert_eq!(store.devices("u002").await.unwrap().len(), 1);

    // Quiet hours hold a delivery (its receipt says until when), a cap suppresses one; the
    // held one's release then replaces its receipt, and the counts follow.
    let until = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let held = SettledDelivery {
        reason: Some("quiet hours".into()),
        held_until: Some(until),
        ..outcome("u004", "d4", SettledStatus::Held)
    };
    let capped = SettledDelivery {
        reason: Some("frequency cap: push 3/1h".into()),
        ..outcome("u005", "d5", SettledStatus::Suppressed)
    };
    feed.one(
        "msgxc",
        Event::DeliveriesSettled(DeliveriesSettled {
            mid,
            deliveries: vec![held, capped],
        }),
    )
    .await;
    let receipts = store.receipts(mid, 10, 0).await.unwrap();
    let item = |device: &str| {
        receipts
            .items
            .iter()
            .find(|r| r.device_id == device)
            .cloned()
            .unwrap()
    };
    assert_eq!(item("d4").status, ReceiptStatus::Held);
    assert_eq!(
        item("d4").reason.as_deref(),
        Some("quiet hours until 2027-01-15T08:00:00Z")
    );
    assert_eq!(item("d5").status, ReceiptStatus::Suppressed);
    assert_eq!(
        item("d5").reason.as_deref(),
        Some("frequency cap: push 3/1h")
    );
    let count = |counts: &[(String, String, u64)], status: &str| {
        counts
            .iter()
            .find(|(c, s, _)| c == "apns" && s == status)
            .map_or(0, |c| c.2)
    };
    let counts = store.receipt_counts(mid).await.unwrap();
    assert_eq!(count(&counts, "held"), 1);
    assert_eq!(count(&counts, "suppressed"), 1);
    feed.one(
        "msgxc",
        Event::DeliveriesSettled(DeliveriesSettled {
            mid,
            deliveries: vec![SettledDelivery {
                held_until: Some(until),
                ..outcome("u004", "d4", SettledStatus::Sent)
            }],
        }),
    )
    .await;
    let receipts = store.receipts(mid, 10, 0).await.unwrap();
    let d4 = receipts.items.iter().find(|r| r.device_id == "d4").unwrap();
    assert_eq!(
        (d4.status, d4.reason.as_deref()),
        (ReceiptStatus::Sent, None)
    );
    let counts = store.receipt_counts(mid).await.unwrap();
    assert_eq!(count(&counts, "held"), 0);
    assert_eq!(count(&counts, "sent"), 2);
}

/// Seed 002's records and index rows, and due sends walking a subscription through its set.
pub async fn stage_records_and_sends<'a>(store: &'a dyn Store) {
    use exchange::events::{
        StageKind, StageRecordDeleted, StageRecordSaved, StageSendRequested, StageTick,
    };
    use serde_json::json;
    let feed = Feed::new(store);
    let save = |kind: StageKind, id: &str, record: serde_json::Value| {
        Event::StageRecordSaved(StageRecordSaved {
            kind,
            id: id.into(),
            record,
        })
    };
    let at = "2027-01-15T08:00:00Z";
    feed.one(
        "admin",
        save(StageKind::Schedule, "", json!({"minute": "0"})),
    )
    .await;
    let schedule = store.checkpoint().await.unwrap();
    let set_record = |name: &str| {
        json!({"id": 0, "short_name": name, "default_schedule": schedule, "content_type": "text",
               "created_at": at, "updated_at": at})
    };
    feed.one("admin", save(StageKind::Messageset, "", set_record("week")))
        .await;
    let set = store.checkpoint().await.unwrap();
    let mut messages = Vec::new();
    for (n, text) in [(1, "first"), (2, "second")] {
        feed.one(
            "admin",
            save(
                StageKind::Message,
                "",
                json!({"id": 0, "messageset": set, "sequence_number": n, "lang": "eng",
                       "text_content": text, "created_at": at, "updated_at": at}),
            ),
        )
        .await;
        messages.push(store.checkpoint().await.unwrap());
    }
    let sub = Uuid::now_v7();
    let sub_record = json!({"id": sub, "identity": "ann", "messageset": set, "lang": "eng",
                            "schedule": schedule, "created_at": at, "updated_at": at});
    feed.one(
        "ann",
        save(
            StageKind::Subscription,
            &sub.to_string(),
            sub_record.clone(),
        ),
    )
    .await;
    let doc = store
        .stage_doc("schedule", &schedule.to_string())
        .await
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&doc.body).unwrap();
    assert_eq!(
        v["id"],
        json!(schedule),
        "a created record's id is its event's sequence"
    );
    let kinds = |kind: String| async move { store.stage_docs(&kind, 100, 0).await.unwrap() };
    assert_eq!(kinds(format!("messages_of.{set}")).await.0, 2);
    assert_eq!(kinds(format!("subscriptions_on.{schedule}")).await.0, 1);
    assert_eq!(kinds("subscriptions_of.ann".into()).await.0, 1);

    // A tick sends the first message and advances; a send request the second and completes.
    feed.one(
        "msgxc",
        Event::StageTick(StageTick {
            schedule: schedule.to_string(),
            due: OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).unwrap(),
        }),
    )
    .await;
    let inbox = store.inbox("ann", &all(None)).await.unwrap();
    assert_eq!(inbox.total, 1);
    assert_eq!(inbox.items[0].msg, "first");
    assert_eq!(inbox.items[0].opts.ntype.as_deref(), Some("stage_message"));
    let sub_now = |store: &'a dyn Store| async move {
        let d = store
            .stage_doc("subscription", &sub.to_string())
            .await
            .unwrap()
            .unwrap();
        serde_json::from_str::<serde_json::Value>(&d.body).unwrap()
    };
    assert_eq!(sub_now(store).await["next_sequence_number"], 2);
    feed.one(
        "admin",
        Event::StageSendRequested(StageSendRequested { subscription: sub }),
    )
    .await;
    let inbox = store.inbox("ann", &all(None)).await.unwrap();
    assert_eq!(inbox.total, 2);
    let walked = sub_now(store).await;
    assert_eq!(
        (
            walked["completed"].clone(),
            walked["process_status"].clone()
        ),
        (json!(true), json!(2))
    );
    // Another send of a completed subscription sends nothing.
    feed.one(
        "admin",
        Event::StageSendRequested(StageSendRequested { subscription: sub }),
    )
    .await;
    assert_eq!(store.inbox("ann", &all(None)).await.unwrap().total, 2);

    // Saving a record again keeps its index rows (the same rows rewritten), renaming moves
    // them; deleting removes them.
    feed.one(
        "admin",
        save(StageKind::Subscription, &sub.to_string(), sub_record),
    )
    .await;
    assert_eq!(kinds(format!("subscriptions_on.{schedule}")).await.0, 1);
    assert_eq!(kinds("subscriptions_of.ann".into()).await.0, 1);
    assert_eq!(
        sub_now(store).await["_applied"],
        walked["_applied"],
        "kept across a save"
    );
    let mut renamed = set_record("month");
    renamed["id"] = json!(set);
    feed.one(
        "admin",
        save(StageKind::Messageset, &set.to_string(), renamed),
    )
    .await;
    assert!(
        store
            .stage_doc("messageset_name", "week")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .stage_doc("messageset_name", "month")
            .await
            .unwrap()
            .unwrap()
            .body,
        set.to_string()
    );
    feed.one(
        "admin",
        Event::StageRecordDeleted(StageRecordDeleted {
            kind: StageKind::Message,
            id: messages[1].to_string(),
        }),
    )
    .await;
    assert_eq!(kinds(format!("messages_of.{set}")).await.0, 1);
    assert!(
        store
            .stage_doc("message", &messages[1].to_string())
            .await
            .unwrap()
            .is_none()
    );
    // Pages by ord: messages by id.
    let (total, page) = store.stage_docs("message", 1, 0).await.unwrap();
    assert_eq!((total, page[0].id.clone()), (1, messages[0].to_string()));
    let (total, page) = store.stage_docs("messageset", 1, 1).await.unwrap();
    assert_eq!((total, page.len()), (1, 0));
}

/// One `#[tokio::test]` per case. `$fresh` is an async fn returning `Some((guard, store))`: a
/// new, empty store and whatever must live as long as it (a temp dir, a keyspace to drop), or
/// `None` when the backend's server is not configured (the case then checks nothing and says so).
/// What a gateway's hub reads when a user connects: the threads they belong to (kept
/// through subscribe and unsubscribe) and whether the projection knows them.
pub async fn live_routing_state(store: &dyn Store) {
    let feed = Feed::new(store);
    let (t1, t2, t3) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    feed.apply(vec![
        by("own", thread(t1, "own", None)),
        by("own", thread(t2, "own", None)),
        by("own", thread(t3, "own", None)),
        by("ann", subscribe(t1, "ann")),
        by("ann", subscribe(t2, "ann")),
        by("ann", subscribe(t2, "ann")),
        by("bob", subscribe(t3, "bob")),
        by(
            "ann",
            Event::Unsubscribed(Unsubscribed {
                tid: t1,
                uid: "ann".into(),
            }),
        ),
    ])
    .await;
    assert_eq!(store.user_threads("ann").await.unwrap(), vec![t2]);
    assert_eq!(store.user_threads("bob").await.unwrap(), vec![t3]);
    assert!(store.user_threads("nobody").await.unwrap().is_empty());
    assert!(store.user_exists("ann").await.unwrap());
    assert!(store.user_exists("own").await.unwrap());
    assert!(!store.user_exists("nobody").await.unwrap());
}

/// Scheduled messages are listed (soonest first, all or one sender's) until they fire or are
/// cancelled; a fired one is delivered as any message, a cancelled one never is; a message that
/// fired before its record was folded is recorded as sent.
pub async fn scheduled_sends(store: &dyn Store) {
    let feed = Feed::new(store);
    let soon =
        OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() + time::Duration::minutes(5);
    let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let due = |mid: Uuid| {
        soon + time::Duration::seconds(if mid == a {
            2
        } else if mid == b {
            1
        } else {
            3
        })
    };
    let record = |mid: Uuid, seq: u64| {
        by(
            "admin",
            Event::MessageScheduled(MessageScheduled {
                mid,
                sender: "admin".into(),
                deliver_at: due(mid),
                schedule_seq: seq,
                kind: "message_sent".into(),
                tid: None,
                audience: Some(Audience::User { uid: "ann".into() }),
                msg: format!("m-{mid}"),
                local: None,
            }),
        )
    };
    let fired = |mid: Uuid| {
        let mut opts = MessageOpts::default();
        let at = due(mid)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        opts.extra.insert("deliver_at".into(), at.into());
        let mut env = by(
            "admin",
            send(
                Audience::User { uid: "ann".into() },
                &format!("m-{mid}"),
                opts,
            ),
        );
        env.id = mid;
        env.occurred_at = due(mid);
        env
    };
    let cancel = |mid: Uuid| by("admin", Event::ScheduleCancelled(ScheduleCancelled { mid }));
    let listed = |sender: Option<&'static str>| async move {
        store
            .scheduled_messages(sender, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.mid)
            .collect::<Vec<_>>()
    };
    let status = |mid: Uuid| async move {
        store
            .scheduled_message(mid)
            .await
            .unwrap()
            .map(|s| (s.status, s.schedule_seq))
    };
    let inbox = || inbox_ids(store, "ann");

    feed.apply(vec![record(a, 11), record(b, 12)]).await;
    assert_eq!(listed(None).await, vec![b, a], "soonest first");
    assert_eq!(listed(Some("admin")).await, vec![b, a]);
    assert!(listed(Some("ann")).await.is_empty());
    assert_eq!(status(a).await, Some((ScheduleStatus::Pending, 11)));
    let full = store.scheduled_message(a).await.unwrap().unwrap();
    assert_eq!(full.deliver_at, due(a));
    assert_eq!(full.msg, format!("m-{a}"));
    assert_eq!(full.audience, Some(Audience::User { uid: "ann".into() }));
    assert!(inbox().await.is_empty());

    feed.apply(vec![cancel(b)]).await;
    assert_eq!(listed(None).await, vec![a]);
    assert_eq!(status(b).await, Some((ScheduleStatus::Cancelled, 12)));
    // a fires; so does b, which cannot happen after its cancel, and is not delivered anyway.
    feed.apply(vec![fired(a), fired(b)]).await;
    assert!(listed(None).await.is_empty());
    assert!(listed(Some("admin")).await.is_empty());
    assert_eq!(status(a).await, Some((ScheduleStatus::Sent, 11)));
    assert_eq!(status(b).await, Some((ScheduleStatus::Cancelled, 12)));
    assert_eq!(inbox().await, vec![a]);
    // A cancel after the fire changes nothing.
    feed.apply(vec![cancel(a)]).await;
    assert_eq!(status(a).await, Some((ScheduleStatus::Sent, 11)));

    // c was due at once and fired before its record was folded.
    feed.apply(vec![fired(c), record(c, 13)]).await;
    assert_eq!(status(c).await, Some((ScheduleStatus::Sent, 13)));
    assert!(listed(None).await.is_empty());
    let mut want = vec![a, c];
    want.sort();
    assert_eq!(inbox().await, want);
}

/// An experiment on a send: each recipient's entry, change and task carry their variant's
/// text, the holdout gets nothing, the arms are counted at each step (deliveries, reads,
/// clicks, conversions), and a second send of the same experiment exposes no one again and
/// gives everyone the same variant.
pub async fn experiments(store: &dyn Store) {
    use exchange::experiment::{Arm, Experiment, Variant};
    let feed = Feed::new(store);
    let uids = enlisted(&feed, "u", 40).await;
    let spec = Experiment {
        id: "welcome".into(),
        variants: vec![
            Variant {
                name: "A".into(),
                weight: 1.0,
                msg: None,
                title: None,
                opts: None,
            },
            Variant {
                name: "B".into(),
                weight: 1.0,
                msg: Some("hello from B".into()),
                title: Some("B!".into()),
                opts: None,
            },
        ],
        holdout: 25.0,
        test_share: 0.0,
        promoted: None,
    };
    let arm_of = |uid: &str| spec.arm_name(spec.assign(uid)).to_owned();
    let held: Vec<&String> = uids
        .iter()
        .filter(|u| spec.assign(u) == Arm::Holdout)
        .collect();
    assert!(!held.is_empty() && held.len() < uids.len(), "{held:?}");
    let message = |msg: &str| {
        Event::MessageSent(MessageSent {
            audience: Audience::Users { uids: uids.clone() },
            sender: "admin".into(),
            msg: msg.into(),
            opts: MessageOpts::default(),
            experiment: Some(spec.clone()),
        })
    };
    let mid = feed.one("admin", message("hello")).await;

    // Entries: the variant's text, none for the holdout.
    for uid in &uids {
        let items = store.inbox(uid, &all(None)).await.unwrap().items;
        match spec.assign(uid) {
            Arm::Holdout | Arm::Later => assert!(items.is_empty(), "{uid} is held out"),
            Arm::Variant(i) => {
                let n = &items[0];
                assert_eq!(n.variant.as_deref(), Some(["A", "B"][i]), "{uid}");
                assert_eq!(n.experiment.as_deref(), Some("welcome"));
                let (msg, title) = if i == 0 {
                    ("hello", None)
                } else {
                    ("hello from B", Some("B!"))
                };
                assert_eq!((n.msg.as_str(), n.title.as_deref()), (msg, title), "{uid}");
                // The change feed's `new` frame is the variant's.
                let changes = store
                    .changes_after(uid, projections::fold::Position::default(), 10)
                    .await
                    .unwrap();
                let frame: serde_json::Value = serde_json::from_str(&changes[0].1).unwrap();
                assert_eq!(frame["notification"]["variant"], ["A", "B"][i]);
                assert_eq!(frame["notification"]["msg"], msg);
            }
        }
    }
    // Tasks: each carries its variant's text; the holdout has none.
    let tasks: Vec<_> = store
        .outbox(100)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    let mut queued = Vec::new();
    for t in &tasks {
        for uid in t.recipients() {
            let want = if arm_of(uid) == "B" {
                "hello from B"
            } else {
                "hello"
            };
            assert_eq!(t.msg, want, "{uid}");
            queued.push(uid.clone());
        }
    }
    queued.sort();
    let expected: Vec<String> = uids
        .iter()
        .filter(|u| spec.assign(u) != Arm::Holdout)
        .cloned()
        .collect();
    assert_eq!(queued, expected);
    let mut batches: Vec<_> = tasks.iter().map(|t| t.message_id()).collect();
    batches.sort();
    batches.dedup();
    assert_eq!(batches.len(), tasks.len(), "distinct task ids");
    clear_outbox(store).await;

    let record = store.experiment("welcome").await.unwrap().unwrap();
    assert_eq!(
        (record.owner.as_str(), record.messages, record.first_mid),
        ("admin", 1, mid)
    );
    let count = |arms: &[projections::model::ArmCounts], arm: &str| {
        arms.iter()
            .find(|c| c.arm == arm)
            .cloned()
            .unwrap_or_default()
    };
    let arms = store.experiment_arms("welcome").await.unwrap();
    let exposed: u64 = arms.iter().map(|c| c.exposed).sum();
    assert_eq!(exposed, 40);
    assert_eq!(count(&arms, "holdout").exposed, held.len() as u64);

    // Steps: a provider accepted one B user's push, an A user read theirs, another B user
    // clicked, a held-out user converted (no mid: within the window of their exposure).
    let of_arm = |arm: &str| {
        uids.iter()
            .filter(|u| arm_of(u) == arm)
            .cloned()
            .collect::<Vec<_>>()
    };
    let (a, b) = (of_arm("A"), of_arm("B"));
    assert!(a.len() >= 2 && b.len() >= 2, "{a:?} {b:?}");
    let device_of = |uid: &str| {
        format!(
            "d{}",
            &uid[1..].trim_start_matches('0').parse::<u32>().unwrap_or(0)
        )
    };
    feed.one(
        "msgxc",
        Event::DeliveriesSettled(DeliveriesSettled {
            mid,
            deliveries: vec![SettledDelivery {
                uid: b[0].clone(),
                device_id: device_of(&b[0]),
                channel: "apns".into(),
                attempt: 1,
                status: SettledStatus::Sent,
                provider_id: None,
                reason: None,
                permanent: false,
                dead: false,
                disabled: false,
                held_until: None,
            }],
        }),
    )
    .await;
    feed.one(
        &a[0],
        Event::NotificationsRead(NotificationsRead {
            uid: a[0].clone(),
            ids: vec![mid],
        }),
    )
    .await;
    let tracked = |uid: &str, event: &str, mid: Option<Uuid>| {
        Event::Tracked(exchange::events::Tracked {
            uid: uid.into(),
            event: event.into(),
            mid,
            props: None,
            window: 3_600,
        })
    };
    feed.one(&b[1], tracked(&b[1], "click", Some(mid))).await;
    feed.one(held[0], tracked(held[0], "purchase", None)).await;
    // Twice: a user converts once.
    feed.one(held[0], tracked(held[0], "purchase", None)).await;
    let arms = store.experiment_arms("welcome").await.unwrap();
    let (ca, cb, ch) = (
        count(&arms, "A"),
        count(&arms, "B"),
        count(&arms, "holdout"),
    );
    assert_eq!((cb.delivered, cb.opened, cb.clicked), (2, 1, 1), "{cb:?}");
    assert_eq!((ca.delivered, ca.opened, ca.clicked), (1, 1, 0), "{ca:?}");
    assert_eq!(
        (ch.converted, ca.converted, cb.converted),
        (1, 0, 0),
        "{ch:?}"
    );
    assert_eq!(ca.exposed + cb.exposed + ch.exposed, 40);

    // A second send: nobody is exposed again, everyone gets the same variant.
    let mid2 = feed.one("admin", message("again")).await;
    let arms2 = store.experiment_arms("welcome").await.unwrap();
    assert_eq!(
        arms2.iter().map(|c| c.exposed).sum::<u64>(),
        40,
        "{arms2:?}"
    );
    for uid in &b {
        let n = store.notifications(uid, &[mid2]).await.unwrap();
        assert_eq!(n[0].variant.as_deref(), Some("B"));
        assert_eq!(n[0].msg, "hello from B");
    }
    let record = store.experiment("welcome").await.unwrap().unwrap();
    assert_eq!((record.messages, record.last_mid), (2, mid2));
    assert!(store.experiment("nope").await.unwrap().is_none());
    assert!(store.experiment_arms("nope").await.unwrap().is_empty());
}

/// A broadcast tested on a share of its audience: only that share gets a variant and is
/// measured; its promotion gives the chosen variant to everyone else and measures no one.
pub async fn experiment_test_share_and_promotion(store: &dyn Store) {
    use exchange::experiment::{Arm, Experiment, Variant};
    let feed = Feed::new(store);
    let uids = enlisted(&feed, "t", 60).await;
    let variant = |name: &str| Variant {
        name: name.into(),
        weight: 1.0,
        msg: Some(format!("text {name}")),
        title: None,
        opts: None,
    };
    let spec = Experiment {
        id: "staged".into(),
        variants: vec![variant("A"), variant("B")],
        holdout: 0.0,
        test_share: 40.0,
        promoted: None,
    };
    let broadcast = |spec: Experiment| {
        Event::MessageSent(MessageSent {
            audience: Audience::All,
            sender: "admin".into(),
            msg: "base".into(),
            opts: MessageOpts::default(),
            experiment: Some(spec),
        })
    };
    let test = feed.one("admin", broadcast(spec.clone())).await;
    // The broadcast reaches every known user (the enlisted ones and the admin).
    let mut everyone = uids.clone();
    everyone.push("admin".into());
    let tested: Vec<&String> = everyone
        .iter()
        .filter(|u| spec.assign(u) != Arm::Later)
        .collect();
    assert!(!tested.is_empty() && tested.len() < everyone.len());
    let arms = store.experiment_arms("staged").await.unwrap();
    assert_eq!(
        arms.iter().map(|c| c.exposed).sum::<u64>(),
        tested.len() as u64
    );
    let queued: usize = store
        .outbox(100)
        .await
        .unwrap()
        .iter()
        .map(|(_, t)| t.recipients().len())
        .sum();
    assert_eq!(
        queued,
        tested.iter().filter(|u| u.as_str() != "admin").count(),
        "tasks for the tested users with a device only"
    );
    clear_outbox(store).await;

    let mut promotion = spec.clone();
    promotion.promoted = Some("B".into());
    let promoted = feed.one("admin", broadcast(promotion)).await;
    for uid in &everyone {
        let items = store.inbox(uid, &all(None)).await.unwrap().items;
        let ids: Vec<Uuid> = items.iter().map(|n| n.id).collect();
        if tested.contains(&uid) {
            assert_eq!(ids, vec![test], "{uid} was tested, not promoted to");
        } else {
            assert_eq!(ids, vec![promoted], "{uid} waited for the promotion");
            assert_eq!(items[0].msg, "text B");
            assert_eq!(items[0].variant.as_deref(), Some("B"));
        }
    }
    let arms2 = store.experiment_arms("staged").await.unwrap();
    assert_eq!(arms, arms2, "a promotion measures no one");
    let record = store.experiment("staged").await.unwrap().unwrap();
    assert_eq!(
        (record.messages, record.promoted.as_deref()),
        (2, Some("B"))
    );
}

/// Online time: ended sessions add up per user and per UTC day (a session over midnight is
/// split), the last one seen is kept, and a replayed session is not counted twice.
pub async fn online_time(store: &dyn Store) {
    use exchange::events::SessionEnded;
    let feed = Feed::new(store);
    let at =
        |s: &str| OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap();
    let session = |from: &str, to: &str| {
        Event::SessionEnded(SessionEnded {
            uid: "ola".into(),
            started_at: at(from),
            ended_at: at(to),
            transport: "websocket".into(),
        })
    };
    feed.one(
        "ola",
        session("2026-12-01T23:30:00Z", "2026-12-02T00:15:00Z"),
    )
    .await;
    feed.one(
        "ola",
        session("2026-12-02T08:00:00Z", "2026-12-02T08:00:40Z"),
    )
    .await;
    let r = store.online("ola").await.unwrap().unwrap();
    assert_eq!((r.sessions, r.seconds), (2, 45 * 60 + 40));
    assert_eq!(r.last_seen, at("2026-12-02T08:00:40Z"));
    let day = |s: &str| projections::fold::day_of(at(s));
    assert_eq!(
        store.online_days("ola", 10).await.unwrap(),
        vec![
            (day("2026-12-02T00:00:00Z"), 15 * 60 + 40),
            (day("2026-12-01T00:00:00Z"), 30 * 60)
        ]
    );
    assert_eq!(store.online_days("ola", 1).await.unwrap().len(), 1);
    // The same event again (a redelivered batch) changes nothing.
    let env = by(
        "ola",
        session("2026-12-02T09:00:00Z", "2026-12-02T09:01:00Z"),
    );
    let seq = store.checkpoint().await.unwrap() + 1;
    for _ in 0..2 {
        store
            .apply(
                vec![SequencedEvent {
                    trace: None,
                    seq,
                    envelope: env.clone(),
                }],
                live(),
            )
            .await
            .unwrap();
    }
    let r = store.online("ola").await.unwrap().unwrap();
    assert_eq!((r.sessions, r.seconds), (3, 46 * 60 + 40));
    assert!(store.online("nobody").await.unwrap().is_none());
    assert!(store.online_days("nobody", 7).await.unwrap().is_empty());
}

/// The funnel's read models: a message's recipients per copy, listed by day; each recipient's
/// dispatch channels (tried, accepted) and first steps; a conversion without a mid counted for
/// the newest message the user has within the window; nothing for a non-recipient; the same
/// outcomes again change nothing.
pub async fn funnel(store: &dyn Store) {
    use exchange::events::Tracked;
    use projections::model::FunnelScope;
    let feed = Feed::new(store);
    let to = |uids: &[&str]| Audience::Users {
        uids: uids.iter().map(|u| u.to_string()).collect(),
    };
    let mid = feed
        .one(
            "admin",
            send(to(&["fa", "fb", "fc"]), "x", MessageOpts::default()),
        )
        .await;
    let m = store
        .funnel_message(mid)
        .await
        .unwrap()
        .expect("its record");
    assert_eq!(m.copies.len(), 1);
    assert_eq!((m.copies[0].sent, m.copies[0].urgency), (3, 3));
    assert_eq!(m.copies[0].variant, None);
    let day = projections::fold::day_of(m.sent_at);
    let listed = store
        .funnel_messages(&FunnelScope::Days {
            first: day - 1,
            last: day,
        })
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|m| m.mid).collect::<Vec<_>>(), vec![mid]);
    assert!(
        store
            .funnel_messages(&FunnelScope::Days {
                first: day + 1,
                last: day + 2
            })
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .funnel_messages(&FunnelScope::Experiment("none".into()))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.funnel_entries(mid).await.unwrap().is_empty());

    let outcome = |uid: &str, device: &str, channel: &str, status: SettledStatus| SettledDelivery {
        uid: uid.into(),
        device_id: device.into(),
        channel: channel.into(),
        attempt: 1,
        status,
        provider_id: None,
        reason: (status == SettledStatus::Failed).then(|| "503".to_owned()),
        permanent: false,
        dead: false,
        disabled: false,
        held_until: None,
    };
    let settled = by(
        "msgxc",
        Event::DeliveriesSettled(DeliveriesSettled {
            mid,
            deliveries: vec![
                outcome("fa", "a1", "apns", SettledStatus::Sent),
                outcome("fb", "b1", "apns", SettledStatus::Failed),
                outcome("fb", "b2", "email", SettledStatus::Sent),
            ],
        }),
    );
    feed.apply(vec![settled.clone()]).await;
    let track = |uid: &str, event: &str, mid: Option<Uuid>| {
        Event::Tracked(Tracked {
            uid: uid.into(),
            event: event.into(),
            mid,
            props: None,
            window: 3 * 86_400,
        })
    };
    feed.apply(vec![
        by(
            "fc",
            Event::DeliveryAcked(DeliveryAcked {
                mid,
                uid: "fc".into(),
                device_id: None,
                channel: "websocket".into(),
                status: AckStatus::Opened,
            }),
        ),
        by("fa", track("fa", "click", Some(mid))),
        by("fb", track("fb", "purchase", None)),
        // Not a recipient: counted nowhere.
        by("zz", track("zz", "purchase", Some(mid))),
        by(
            "fc",
            Event::NotificationsRead(NotificationsRead {
                uid: "fc".into(),
                ids: vec![mid],
            }),
        ),
    ])
    .await;
    // The same outcomes again (a redelivered event) change nothing.
    feed.apply(vec![settled]).await;
    let entries = store.funnel_entries(mid).await.unwrap();
    let uids: Vec<&str> = entries.iter().map(|e| e.uid.as_str()).collect();
    assert_eq!(uids, vec!["fa", "fb", "fc"]);
    let (fa, fb, fc) = (&entries[0], &entries[1], &entries[2]);
    assert_eq!(
        (fa.channels.clone(), fa.accepted.clone()),
        (vec!["apns".to_owned()], vec!["apns".to_owned()])
    );
    assert!(fa.clicked_at.is_some() && fa.opened_at.is_some() && fa.delivered_at.is_some());
    assert_eq!(fb.channels, vec!["apns".to_owned(), "email".to_owned()]);
    assert_eq!(fb.accepted, vec!["email".to_owned()]);
    assert!(fb.converted_at.is_some() && fb.opened_at.is_none());
    assert!(fc.channels.is_empty());
    let opened = fc.opened_at.expect("opened by the ack");
    assert!(fc.delivered_at.is_some() && fc.converted_at.is_none());

    // A newer message to fb takes the next conversion; the first keeps its one.
    let mid2 = feed
        .one("admin", send(to(&["fb"]), "y", MessageOpts::default()))
        .await;
    feed.one("fb", track("fb", "signup", None)).await;
    let second = store.funnel_entries(mid2).await.unwrap();
    assert_eq!(second.len(), 1);
    assert!(second[0].converted_at.is_some());
    let first = store.funnel_entries(mid).await.unwrap();
    assert_eq!(first[2].opened_at, Some(opened), "the first open stays");
    assert_eq!(first[1].converted_at, fb.converted_at);
    let listed = store
        .funnel_messages(&FunnelScope::Days {
            first: day,
            last: day + 1,
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
}

#[macro_export]
macro_rules! conformance_cases {
    ($fresh:path) => {
        conformance_cases!(@cases $fresh;
            redelivered_batch_is_harmless,
            threads_and_history,
            devices,
            thread_message_fans_out,
            membership_changes_within_one_batch,
            replay_sends_nothing,
            audiences,
            inbox_lifecycle,
            cursor_sync,
            change_feed_keeps_a_week,
            blocks_and_preferences,
            receipts_and_dead_letters,
            batched_tasks_and_settled_outcomes,
            live_routing_state,
            scheduled_sends,
            experiments,
            experiment_test_share_and_promotion,
            online_time,
            funnel,
            stage_records_and_sends,
        );
    };
    (@cases $fresh:path; $($case:ident,)*) => {
        $(
            // Multi-threaded: a backend may run its fold on a blocking thread that waits on
            // the runtime's I/O.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some((_guard, store)) = $fresh().await else {
                    return;
                };
                conformance::$case(&store).await;
            }
        )*
    };
}
