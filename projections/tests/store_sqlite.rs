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
            trace: None,
            seq: from + 1,
            envelope: broadcast.clone(),
        },
        SequencedEvent {
            trace: None,
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

/// A store written by version 1 of the schema (every inbox entry and history row with its own
/// copy of the text, every `new` change stored, deleted messages removed) is migrated when
/// opened: the same inbox, history, feed and counters, and it folds on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_store_is_migrated_when_opened() {
    use exchange::events::{
        Audience, Event, MessageDeleted, MessageOpts, NotificationsRead, PreferencesSet,
    };
    use projections::Store;
    use projections::model::{HistoryQuery, InboxQuery, StatusFilter};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.sqlite3");
    let store = SqliteStore::open(&path).unwrap();
    let feed = conformance::Feed::new(&store);
    let tid = uuid::Uuid::now_v7();
    feed.apply(vec![
        conformance::by("ann", conformance::thread(tid, "ann", None)),
        conformance::by("bob", conformance::subscribe(tid, "bob")),
    ])
    .await;
    let hello = feed
        .one(
            "ann",
            conformance::publish(tid, "ann", "hello", MessageOpts::default()),
        )
        .await;
    let gone = feed
        .one(
            "admin",
            conformance::send(
                Audience::User { uid: "bob".into() },
                "gone",
                MessageOpts::default(),
            ),
        )
        .await;
    feed.one(
        "bob",
        Event::NotificationsRead(NotificationsRead {
            uid: "bob".into(),
            ids: vec![gone],
        }),
    )
    .await;
    feed.one("admin", Event::MessageDeleted(MessageDeleted { mid: gone }))
        .await;
    let all = InboxQuery {
        limit: 10,
        filter: projections::model::InboxFilter {
            status: Some(StatusFilter::All),
            ..Default::default()
        },
        ..Default::default()
    };
    let history = HistoryQuery {
        limit: 10,
        ..Default::default()
    };
    let inbox = store.inbox("bob", &all).await.unwrap();
    let changes = store
        .changes_after("bob", Default::default(), 10)
        .await
        .unwrap();
    let stats = store.inbox_stats("bob").await.unwrap();
    let thread = store.thread_messages(tid, &history).await.unwrap();
    assert_eq!(inbox.items.len(), 2);
    assert_eq!(changes.len(), 3, "two arrivals and a read: {changes:?}");
    drop(store);

    // Written back in version 1's shape, as that version's fold left it.
    let c = rusqlite::Connection::open(&path).unwrap();
    let news: Vec<_> = changes.iter().filter(|(p, _)| p.seq == p.sub).collect();
    for (p, frame) in &news {
        let at: String = c
            .query_row(
                "SELECT created_at FROM inbox WHERE uid = 'bob' AND seq = ?1",
                [p.seq as i64],
                |r| r.get(0),
            )
            .unwrap();
        c.execute(
            "INSERT INTO inbox_changes (uid, seq, sub, frame, at) VALUES ('bob', ?1, ?1, ?2, ?3)",
            rusqlite::params![p.seq as i64, frame, at],
        )
        .unwrap();
    }
    c.execute_batch(
        "CREATE TABLE inbox_v1 (
           uid TEXT NOT NULL, id TEXT NOT NULL, tid TEXT, sender TEXT NOT NULL, msg TEXT NOT NULL,
           opts TEXT NOT NULL, created_at TEXT NOT NULL, read_at TEXT, ntype TEXT,
           level INTEGER NOT NULL DEFAULT 0, archived_at TEXT, seq INTEGER NOT NULL,
           PRIMARY KEY (uid, id)) WITHOUT ROWID;
         INSERT INTO inbox_v1 SELECT i.uid, i.id, i.tid, i.sender, m.msg, m.opts, i.created_at,
           i.read_at, i.ntype, i.level, i.archived_at, i.seq
           FROM inbox i JOIN messages m ON m.mid = i.id;
         DROP TABLE inbox;
         ALTER TABLE inbox_v1 RENAME TO inbox;
         CREATE INDEX inbox_by_position ON inbox (uid, seq);
         CREATE TABLE thread_messages_v1 (
           tid TEXT NOT NULL, mid TEXT NOT NULL, sender TEXT NOT NULL, msg TEXT NOT NULL,
           opts TEXT NOT NULL, created_at TEXT NOT NULL, PRIMARY KEY (tid, mid)) WITHOUT ROWID;
         INSERT INTO thread_messages_v1 SELECT t.tid, t.mid, t.sender, m.msg, m.opts, t.created_at
           FROM thread_messages t JOIN messages m ON m.mid = t.mid;
         DROP TABLE thread_messages;
         ALTER TABLE thread_messages_v1 RENAME TO thread_messages;
         DELETE FROM messages WHERE deleted = 1;
         ALTER TABLE messages DROP COLUMN deleted;
         DROP INDEX messages_by_time;
         ALTER TABLE messages DROP COLUMN experiment;
         ALTER TABLE inbox_counts DROP COLUMN feed_floor;",
    )
    .unwrap();
    drop(c);

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.inbox("bob", &all).await.unwrap(), inbox);
    assert_eq!(
        store
            .changes_after("bob", Default::default(), 10)
            .await
            .unwrap(),
        changes
    );
    assert_eq!(store.inbox_stats("bob").await.unwrap(), stats);
    assert_eq!(store.thread_messages(tid, &history).await.unwrap(), thread);
    assert!(store.message(gone).await.unwrap().is_none());
    assert!(store.message(hello).await.unwrap().is_some());
    // The funnel of a message outside experiments is derived from its row (the `experiment`
    // column and its index were added by the migration).
    let funnel = store.funnel_message(hello).await.unwrap().expect("derived");
    assert_eq!(funnel.copies.len(), 1);
    assert_eq!(funnel.copies[0].sent, 1);
    // Opening again changes nothing; the fold goes on.
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.inbox("bob", &all).await.unwrap(), inbox);
    let feed = conformance::Feed::new(&store);
    feed.one(
        "bob",
        Event::PreferencesSet(PreferencesSet {
            uid: "bob".into(),
            preferences: Default::default(),
        }),
    )
    .await;
    feed.one(
        "ann",
        conformance::publish(tid, "ann", "again", MessageOpts::default()),
    )
    .await;
    let after = store.inbox("bob", &all).await.unwrap();
    assert_eq!(after.items.len(), 3);
    assert_eq!(after.items[0].msg, "again");
    assert_eq!(
        store
            .changes_after("bob", Default::default(), 10)
            .await
            .unwrap()
            .len(),
        4
    );
}

/// A store file written before devices were counted per channel counts the devices it holds
/// when it is opened (once).
#[tokio::test]
async fn an_older_store_counts_its_devices_when_opened() {
    use projections::Store;

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store.sqlite3");
    {
        let store = SqliteStore::open(&path).unwrap();
        let feed = conformance::Feed::new(&store);
        feed.one("ann", conformance::enlist("ann", "phone", "aa01"))
            .await;
        feed.one("bob", conformance::enlist("bob", "tablet", "bb01"))
            .await;
    }
    // As the previous version left it: no counts, no mark.
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch("DELETE FROM device_counts; DELETE FROM meta WHERE key = 'device_counts';")
        .unwrap();
    drop(c);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.devices_per_channel().await.unwrap(),
        vec![("apns".to_owned(), 2)]
    );
    drop(store);
    // Opened again: not counted twice.
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.devices_per_channel().await.unwrap(),
        vec![("apns".to_owned(), 2)]
    );
}

/// A message outside experiments gets no funnel row: its record is derived from the message's
/// row (one copy of its urgency and type to its recipients, none when it reached nobody), listed
/// by day once; a record an older version stored is the one read, and listed once.
#[tokio::test]
async fn funnel_records_outside_experiments_are_derived_from_the_messages() {
    use exchange::events::{Audience, MessageOpts, Urgency};
    use projections::Store;
    use projections::model::FunnelScope;

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store.sqlite3");
    let store = SqliteStore::open(&path).unwrap();
    let feed = conformance::Feed::new(&store);
    let to = |uids: &[&str]| Audience::Users {
        uids: uids.iter().map(|u| u.to_string()).collect(),
    };
    let opts = MessageOpts {
        urgency: Some(Urgency::High),
        ntype: Some("promo".into()),
        ..Default::default()
    };
    let reached = feed
        .one("admin", conformance::send(to(&["ann", "bob"]), "x", opts))
        .await;
    let nobody = feed
        .one(
            "admin",
            conformance::send(to(&[]), "y", MessageOpts::default()),
        )
        .await;
    let c = rusqlite::Connection::open(&path).unwrap();
    let rows: i64 = c
        .query_row("SELECT count(*) FROM funnel_messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0, "the fold writes no funnel row outside experiments");

    let m = store
        .funnel_message(reached)
        .await
        .unwrap()
        .expect("derived");
    assert_eq!(
        (m.sender.as_str(), m.experiment.clone(), m.held_out),
        ("admin", None, 0)
    );
    assert_eq!(m.copies.len(), 1);
    let copy = &m.copies[0];
    assert_eq!(
        (
            copy.variant.clone(),
            copy.urgency,
            copy.ntype.as_deref(),
            copy.sent
        ),
        (None, Urgency::High as u8, Some("promo"), 2)
    );
    let none = store
        .funnel_message(nobody)
        .await
        .unwrap()
        .expect("derived");
    assert!(none.copies.is_empty());
    assert!(
        store
            .funnel_message(uuid::Uuid::now_v7())
            .await
            .unwrap()
            .is_none()
    );

    let day = projections::fold::day_of(m.sent_at);
    let listed = |first: i32, last: i32| {
        let store = &store;
        async move {
            store
                .funnel_messages(&FunnelScope::Days { first, last })
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.mid)
                .collect::<Vec<_>>()
        }
    };
    let mut both = vec![reached, nobody];
    both.sort();
    assert_eq!(listed(day, day).await, both);
    assert_eq!(listed(i32::MIN, i32::MAX).await, both);
    assert!(listed(day - 3, day - 1).await.is_empty());
    assert!(listed(day + 1, day + 3).await.is_empty());

    // As an older version left it: a stored record for a message outside experiments.
    let mut old = m.clone();
    old.copies[0].sent = 5;
    c.execute(
        "INSERT INTO funnel_messages (mid, day, experiment, record) VALUES (?1, ?2, NULL, ?3)",
        rusqlite::params![
            reached.to_string(),
            day,
            serde_json::to_string(&old).unwrap()
        ],
    )
    .unwrap();
    drop(c);
    assert_eq!(store.funnel_message(reached).await.unwrap(), Some(old));
    assert_eq!(listed(day, day).await, both);
}
