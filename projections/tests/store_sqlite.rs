//! The store conformance suite against SQLite: a fresh database file per case.

mod conformance;

use projections::SqliteStore;

async fn fresh() -> Option<(tempfile::TempDir, SqliteStore)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("store.sqlite3")).expect("opening SQLite");
    Some((dir, store))
}

conformance_cases!(fresh);

/// A broadcast to thousands of users commits its dispatch tasks before its fold (the first
/// provider request does not wait for every inbox entry), and queues them once, also when the
/// store stops between the two and the whole batch is applied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_broadcast_commits_its_tasks_ahead_of_its_fold_and_queues_them_once() {
    use exchange::events::{Audience, MessageOpts};
    use projections::{SequencedEvent, Store};

    let (_dir, store) = fresh().await.unwrap();
    let users = projections::fold::PLAN_AHEAD_RECIPIENTS + 10;
    let feed = conformance::Feed::new(&store);
    feed.apply(
        (0..users)
            .map(|i| {
                let uid = format!("u{i:05}");
                // Every tenth user has no device: nothing to push to.
                let event = if i % 10 == 0 {
                    conformance::subscribe(uuid::Uuid::now_v7(), &uid)
                } else {
                    conformance::enlist(&uid, &format!("d{i}"), &format!("{i:04x}"))
                };
                conformance::by(&uid, event)
            })
            .collect(),
    )
    .await;
    let from = store.checkpoint().await.unwrap();
    let broadcast = conformance::by(
        "admin",
        conformance::send(Audience::All, "to all", MessageOpts::default()),
    );
    let after = conformance::by(
        "admin",
        conformance::send(
            Audience::User {
                uid: "u00001".into(),
            },
            "after",
            MessageOpts::default(),
        ),
    );
    let batch = vec![
        SequencedEvent {
            seq: from + 1,
            envelope: broadcast.clone(),
        },
        SequencedEvent {
            seq: from + 2,
            envelope: after,
        },
    ];
    let first = store
        .apply(batch.clone(), conformance::live())
        .await
        .unwrap();
    assert_eq!(first.applied, 0, "nothing folded yet");
    assert_eq!(first.checkpoint, from);
    assert_eq!(first.rest.len(), 2, "the broadcast and what follows it");
    let planned = store.outbox(10_000).await.unwrap();
    let pushed: usize = planned.iter().map(|(_, t)| t.recipients().len()).sum();
    assert_eq!(
        pushed,
        users - users.div_ceil(10),
        "every user with a device"
    );
    assert!(planned.iter().all(|(_, t)| t.mid == broadcast.id));
    assert!(
        store.inbox_counts("u00001").await.unwrap().total == 0,
        "the fold comes after"
    );

    // Stopped here: the whole batch comes again (the tasks are not queued twice).
    let second = store.apply(batch, conformance::live()).await.unwrap();
    assert!(second.rest.is_empty());
    assert_eq!(second.applied, 2);
    assert_eq!(store.inbox_counts("u00001").await.unwrap().total, 2);
    assert_eq!(store.inbox_counts("u00000").await.unwrap().total, 1);
    let tasks = store.outbox(10_000).await.unwrap();
    let mut ids: Vec<String> = tasks.iter().map(|(_, t)| t.message_id()).collect();
    assert_eq!(
        tasks.len(),
        planned.len() + 1,
        "the broadcast's tasks and the one message's"
    );
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), tasks.len(), "no task twice");
}
