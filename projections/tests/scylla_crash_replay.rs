//! The Scylla backend has no multi-partition transactions, so a batch that fails part-way
//! leaves some of its writes behind; the projector then applies the same batch again. This
//! test fails the CQL node after every possible number of writes of a batch, applies the batch
//! again, and checks that every read model equals that of a store that never failed: replay
//! is harmless, and no delivery task or inbox entry is lost or doubled.

mod conformance;

use std::sync::Arc;

use conformance::by;
use exchange::events::{
    Audience, DeliveryFailed, DeliveryRequeued, DeviceAddress, DeviceEnlisted, Envelope, Event,
    MessageOpts, MessagePublished, MessageSent, NotificationsArchived, NotificationsDeleted,
    NotificationsRead, Subscribed, ThreadCreated,
};
use projections::model::{HistoryQuery, InboxFilter, InboxQuery, StatusFilter};
use projections::scylla::memory::MemoryCql;
use projections::{ApplyOptions, ScyllaStore, SequencedEvent, Store};
use time::OffsetDateTime;
use uuid::Uuid;

const USERS: [&str; 4] = ["ann", "bob", "cat", "dan"];

fn options() -> ApplyOptions {
    let past = OffsetDateTime::now_utc() - time::Duration::hours(1);
    ApplyOptions {
        live_since: Some(past),
        dispatch_since: Some(past),
        topic_tasks: false,
    }
}

fn sequenced(events: &[Envelope], from: u64) -> Vec<SequencedEvent> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| SequencedEvent {
            trace: None,
            seq: from + i as u64,
            envelope: e.clone(),
        })
        .collect()
}

/// Events applied before the failing batch: a thread with subscribers, devices.
fn setup(tid: Uuid) -> Vec<Envelope> {
    let mut out = vec![by(
        "ann",
        Event::ThreadCreated(ThreadCreated {
            tid,
            name: "t".into(),
            owner: "ann".into(),
            open_subscribe: true,
            open_publish: true,
            alias: Some("team".into()),
        }),
    )];
    for (i, uid) in USERS.iter().enumerate() {
        out.push(by(
            uid,
            Event::Subscribed(Subscribed {
                tid,
                uid: (*uid).into(),
            }),
        ));
        if i % 2 == 0 {
            out.push(by(
                uid,
                Event::DeviceEnlisted(DeviceEnlisted {
                    uid: (*uid).into(),
                    device_id: format!("phone-{uid}"),
                    address: DeviceAddress::Apns {
                        token: format!("{i:02}ab"),
                    },
                }),
            ));
        }
    }
    // Seed 002: a schedule, a set of two messages, and ann's and bob's subscriptions to it.
    let at = "2027-01-15T08:00:00Z";
    let save = |kind: exchange::events::StageKind, id: &str, record: serde_json::Value| {
        by(
            "admin",
            Event::StageRecordSaved(exchange::events::StageRecordSaved {
                kind,
                id: id.into(),
                record,
            }),
        )
    };
    use exchange::events::StageKind;
    out.push(save(
        StageKind::Schedule,
        "9001",
        serde_json::json!({"id": 9001, "minute": "0"}),
    ));
    out.push(save(
        StageKind::Messageset,
        "9002",
        serde_json::json!({"id": 9002, "short_name": "week", "default_schedule": 9001,
                           "content_type": "text", "created_at": at, "updated_at": at}),
    ));
    for n in 1..=2u64 {
        out.push(save(
            StageKind::Message,
            &(9002 + n).to_string(),
            serde_json::json!({"id": 9002 + n, "messageset": 9002, "sequence_number": n,
                               "lang": "eng", "text_content": format!("stage {n}"),
                               "created_at": at, "updated_at": at}),
        ));
    }
    for uid in ["ann", "bob"] {
        let id = Uuid::now_v7();
        out.push(save(
            StageKind::Subscription,
            &id.to_string(),
            serde_json::json!({"id": id, "identity": uid, "messageset": 9002, "lang": "eng",
                               "schedule": 9001, "created_at": at, "updated_at": at}),
        ));
    }
    out
}

/// The batch that fails part-way: fan-out with fallback tasks, a broadcast, a multicast, read
/// marks, archiving, deleting, a dead letter and its requeue.
fn batch(tid: Uuid) -> Vec<Envelope> {
    let fallback: MessageOpts = serde_json::from_value(
        serde_json::json!({"fallback": {"after": 60, "channels": ["email"]}}),
    )
    .expect("opts");
    let publish = by(
        "bob",
        Event::MessagePublished(MessagePublished {
            tid,
            sender: "bob".into(),
            msg: "hello thread".into(),
            opts: fallback,
            experiment: None,
        }),
    );
    let broadcast = by(
        "admin",
        Event::MessageSent(MessageSent {
            audience: Audience::All,
            sender: "admin".into(),
            msg: "to everyone".into(),
            opts: MessageOpts::default(),
            experiment: None,
        }),
    );
    let multicast = by(
        "admin",
        Event::MessageSent(MessageSent {
            audience: Audience::Users {
                uids: vec!["dan".into(), "ann".into(), "dan".into()],
            },
            sender: "admin".into(),
            msg: "to two".into(),
            opts: MessageOpts::default(),
            experiment: Some(serde_json::from_value(serde_json::json!({
                "id": "crash-exp",
                "variants": [{"name": "A", "weight": 1}, {"name": "B", "weight": 1, "msg": "B"}],
            })).expect("experiment")),
        }),
    );
    let track = |uid: &str, event: &str, mid: Option<Uuid>| {
        by(
            uid,
            Event::Tracked(exchange::events::Tracked {
                uid: uid.into(),
                event: event.into(),
                mid,
                props: None,
                window: 3_600,
            }),
        )
    };
    let click = track("ann", "click", Some(multicast.id));
    let purchase = track("dan", "purchase", None);
    let now = time::OffsetDateTime::now_utc();
    let session = by(
        "dan",
        Event::SessionEnded(exchange::events::SessionEnded {
            uid: "dan".into(),
            started_at: now - time::Duration::hours(30),
            ended_at: now,
            transport: "websocket".into(),
        }),
    );
    let read = by(
        "ann",
        Event::NotificationsRead(NotificationsRead {
            uid: "ann".into(),
            ids: vec![publish.id, broadcast.id, multicast.id],
        }),
    );
    let archived = by(
        "ann",
        Event::NotificationsArchived(NotificationsArchived {
            uid: "ann".into(),
            ids: vec![multicast.id, publish.id],
        }),
    );
    let deleted = by(
        "dan",
        Event::NotificationsDeleted(NotificationsDeleted {
            uid: "dan".into(),
            ids: vec![broadcast.id],
        }),
    );
    let dead_mid = publish.id;
    let failed = by(
        "system",
        Event::DeliveryFailed(DeliveryFailed {
            mid: dead_mid,
            uid: "cat".into(),
            device_id: "phone-cat".into(),
            channel: "apns".into(),
            reason: "BadDeviceToken".into(),
            permanent: true,
            dead: true,
            attempt: 3,
        }),
    );
    let requeued = by(
        "admin",
        Event::DeliveryRequeued(DeliveryRequeued {
            mid: dead_mid,
            uid: "cat".into(),
            device_id: "phone-cat".into(),
        }),
    );
    // A tick of the stage schedule: a message to each of its two subscriptions in one event.
    let tick = by(
        "msgxc",
        Event::StageTick(exchange::events::StageTick {
            schedule: "9001".into(),
            due: OffsetDateTime::now_utc(),
        }),
    );
    vec![
        publish, broadcast, multicast, read, archived, deleted, failed, requeued, click, purchase,
        session, tick,
    ]
}

/// Every read the API makes of the data the batch touches, as text.
async fn snapshot(store: &ScyllaStore, tid: Uuid, mids: &[Uuid]) -> Vec<String> {
    let mut out = Vec::new();
    // The messages the entries name (the stage tick's included), read after the inboxes.
    let mut named = Vec::new();
    for uid in USERS {
        let all = InboxQuery {
            filter: InboxFilter {
                status: Some(StatusFilter::All),
                ..Default::default()
            },
            limit: 100,
            ..Default::default()
        };
        let snapshot = store.inbox_snapshot(uid, &all).await.unwrap();
        named.extend(snapshot.0.items.iter().map(|n| n.id));
        out.push(format!("{snapshot:?}"));
        let default = InboxQuery {
            limit: 100,
            ..Default::default()
        };
        out.push(format!("{:?}", store.inbox(uid, &default).await.unwrap()));
        out.push(format!("{:?}", store.inbox_stats(uid).await.unwrap()));
        out.push(format!("{:?}", store.devices(uid).await.unwrap()));
        out.push(format!(
            "{:?}",
            store
                .changes_after(uid, Default::default(), 100)
                .await
                .unwrap()
        ));
    }
    for mid in named {
        out.push(format!("{:?}", store.message(mid).await.unwrap()));
    }
    out.push(format!(
        "{:?}",
        store.stage_docs("subscription", 100, 0).await.unwrap()
    ));
    out.push(format!("{:?}", store.thread(tid).await.unwrap()));
    let history = HistoryQuery {
        limit: 100,
        ..Default::default()
    };
    out.push(format!(
        "{:?}",
        store.thread_messages(tid, &history).await.unwrap()
    ));
    for mid in mids {
        out.push(format!("{:?}", store.message(*mid).await.unwrap()));
        out.push(format!("{:?}", store.receipts(*mid, 100, 0).await.unwrap()));
        out.push(format!("{:?}", store.receipt_counts(*mid).await.unwrap()));
        out.push(format!("{:?}", store.funnel_message(*mid).await.unwrap()));
        out.push(format!("{:?}", store.funnel_entries(*mid).await.unwrap()));
    }
    out.push(format!(
        "{:?}",
        store
            .funnel_messages(&projections::model::FunnelScope::Experiment(
                "crash-exp".into()
            ))
            .await
            .unwrap()
    ));
    out.push(format!(
        "{:?}",
        store.failed_deliveries(100, 0).await.unwrap()
    ));
    out.push(format!(
        "{:?}",
        store.experiment("crash-exp").await.unwrap()
    ));
    out.push(format!(
        "{:?}",
        store.experiment_arms("crash-exp").await.unwrap()
    ));
    let mut outbox: Vec<String> = store
        .outbox(10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, task)| format!("{id} {}", serde_json::to_string(&task).unwrap()))
        .collect();
    outbox.sort();
    out.extend(outbox);
    out.push(format!("checkpoint {}", store.checkpoint().await.unwrap()));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_failing_after_any_write_and_applied_again_equals_one_that_never_failed() {
    let tid = Uuid::now_v7();
    let setup = setup(tid);
    let batch = batch(tid);
    let mids: Vec<Uuid> = batch.iter().take(3).map(|e| e.id).collect();
    let from = setup.len() as u64 + 1;

    let fresh = || async {
        let cql =
            Arc::new(MemoryCql::new(projections::scylla::MIGRATIONS.iter().map(|m| m.1)).unwrap());
        let store = ScyllaStore::on_memory(cql.clone()).await.unwrap();
        store.apply(sequenced(&setup, 1), options()).await.unwrap();
        (cql, store)
    };
    let (_, clean) = fresh().await;
    clean
        .apply(sequenced(&batch, from), options())
        .await
        .unwrap();
    let expected = snapshot(&clean, tid, &mids).await;
    let waits: Vec<&String> = expected
        .iter()
        .filter(|l| l.contains("\"fallback_due\":\""))
        .collect();
    assert!(
        waits.len() == 1 && waits[0].contains("\"uids\":[\"ann\",\"cat\"]"),
        "one fallback timer, for ann and cat (one batch): {expected:#?}"
    );
    assert_eq!(
        expected
            .iter()
            .filter(|l| l.starts_with("Some(StoredMessage") && l.contains("msg: \"stage 1\""))
            .count(),
        2,
        "the stage tick's two messages, each with its row: {expected:#?}"
    );
    assert!(
        expected.iter().any(|l| l.contains("\"requeue\":\"")),
        "the requeued dead letter's task: {expected:#?}"
    );

    let mut crash_points = 0;
    for writes in 0.. {
        let (cql, store) = fresh().await;
        cql.fail_writes_after(Some(writes));
        let first = store.apply(sequenced(&batch, from), options()).await;
        cql.fail_writes_after(None);
        if first.is_ok() {
            // The batch needs fewer writes than this: every crash point was tried.
            break;
        }
        crash_points += 1;
        let again = store
            .apply(sequenced(&batch, from), options())
            .await
            .unwrap_or_else(|e| panic!("after {writes} writes, applying again: {e}"));
        assert_eq!(again.checkpoint, from + batch.len() as u64 - 1);
        let got = snapshot(&store, tid, &mids).await;
        for (g, e) in got.iter().zip(&expected) {
            if g != e {
                let at = g
                    .chars()
                    .zip(e.chars())
                    .position(|(a, b)| a != b)
                    .unwrap_or(g.len().min(e.len()));
                let from = at.saturating_sub(150);
                panic!(
                    "after a failure at write {writes}, from char {from}:\n got: {}\n want: {}",
                    g.chars().skip(from).take(400).collect::<String>(),
                    e.chars().skip(from).take(400).collect::<String>()
                );
            }
        }
        assert_eq!(
            got.len(),
            expected.len(),
            "after a failure at write {writes}"
        );
    }
    assert!(crash_points > 20, "only {crash_points} crash points");
}
