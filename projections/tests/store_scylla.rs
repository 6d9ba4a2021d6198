//! The store conformance suite against a real CQL node: the Apache Cassandra 5.0 node of the
//! test run (`testkit::cassandra`), or a ScyllaDB node given as `MSGXC_TEST_SCYLLA=host:9042`.
//! Each case gets its own keyspace (created by `migrate`, twice, dropped afterwards). Pages
//! of three rows: every multi-row read of the suite crosses pages on the real node.

mod conformance;

use projections::scylla::{ScyllaConfig, ScyllaStore, migrate};

/// Drops the case's keyspace when the case ends.
struct Keyspace(ScyllaConfig);

impl Drop for Keyspace {
    fn drop(&mut self) {
        let config = self.0.clone();
        // Drop runs inside the test's runtime: use a thread with a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(projections::scylla::drop_keyspace(&config))
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop keyspace {}: {e}", self.0.keyspace);
        }
    }
}

async fn fresh() -> Option<(Keyspace, ScyllaStore)> {
    let node = testkit::cassandra::cql_node();
    let keyspace = format!("msgxc_test_{}", uuid::Uuid::now_v7().simple());
    let config = ScyllaConfig::parse(&format!(
        "scylla://{node}/{keyspace}?replication_factor=1&consistency=one&page_size=3"
    ))
    .expect("store URL");
    migrate(&config).await.expect("migrate");
    // Twice: migrating is idempotent.
    migrate(&config).await.expect("second migrate");
    let store = ScyllaStore::open(&config).await.expect("open");
    Some((Keyspace(config), store))
}

conformance_cases!(fresh);

// What only a real node shows.

fn dm(uid: &str, msg: &str) -> exchange::events::Envelope {
    conformance::by(
        "admin",
        conformance::send(
            exchange::events::Audience::User { uid: uid.into() },
            msg,
            Default::default(),
        ),
    )
}

/// Two projectors that both think they own the keyspace: the checkpoint's compare-and-set
/// (Cassandra answers a conditional update with `[applied]` alone) lets exactly one of two
/// batches applied from the same checkpoint count; the other fails and is not acknowledged.
#[tokio::test]
async fn the_checkpoint_fence_lets_one_of_two_writers_through() {
    use projections::{SequencedEvent, Store};
    let (keyspace, first) = fresh().await.expect("node");
    let second = ScyllaStore::open(&keyspace.0).await.expect("second store");
    let batch = |n: u64| {
        (1..=n)
            .map(|seq| SequencedEvent {
                trace: None,
                seq,
                envelope: dm("ann", &format!("m{seq}")),
            })
            .collect::<Vec<_>>()
    };
    let (a, b) = tokio::join!(
        first.apply(batch(20), Default::default()),
        second.apply(batch(1), Default::default())
    );
    let counted = [&a, &b]
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.applied > 0))
        .count();
    assert_eq!(counted, 1, "exactly one writer advances: {a:?} / {b:?}");
    for r in [&a, &b] {
        if let Err(e) = r {
            assert!(e.to_string().contains("another projector"), "{e}");
        }
    }
    let cp = first.checkpoint().await.unwrap();
    assert!(cp == 20 || cp == 1, "checkpoint {cp}");
}

/// A message as large as the gateway accepts (64 KiB of text) to a user with a device: its
/// entry, change and delivery task are one logged batch across partitions, which Cassandra
/// refuses above `batch_size_fail_threshold` (50 KiB by default, as the test node runs).
#[tokio::test]
async fn a_message_as_large_as_the_gateway_accepts_folds() {
    use projections::Store;
    let (_keyspace, store) = fresh().await.expect("node");
    let feed = conformance::Feed::new(&store);
    feed.apply(vec![conformance::by(
        "ann",
        conformance::enlist("ann", "phone", "tok"),
    )])
    .await;
    let text = "x".repeat(60 * 1024);
    feed.apply(vec![dm("ann", &text)]).await;
    let page = store
        .inbox(
            "ann",
            &projections::model::InboxQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].msg.len(), text.len());
    assert_eq!(
        store.outbox(10).await.unwrap().len(),
        1,
        "its delivery task"
    );
    assert_eq!(
        store
            .changes_after("ann", Default::default(), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// The change feed's table TTL really expires stored changes on the node (shortened here from
/// 8 days to 2 s), and the inbox keeps the entry, whose `new` change is derived from it.
#[tokio::test]
async fn the_change_feed_ttl_expires_on_the_node() {
    use projections::Store;
    let (keyspace, store) = fresh().await.expect("node");
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_node(&keyspace.0.nodes[0])
        .build()
        .await
        .expect("session");
    session
        .query_unpaged(
            format!(
                "ALTER TABLE {}.inbox_changes WITH default_time_to_live = 2",
                keyspace.0.keyspace
            ),
            (),
        )
        .await
        .expect("shorten the TTL");
    session.await_schema_agreement().await.expect("agreement");
    let feed = conformance::Feed::new(&store);
    let dm = dm("ann", "soon read");
    let mid = dm.id;
    feed.apply(vec![dm]).await;
    feed.one(
        "ann",
        exchange::events::Event::NotificationsRead(exchange::events::NotificationsRead {
            uid: "ann".into(),
            ids: vec![mid],
        }),
    )
    .await;
    let actions = || async {
        store
            .changes_after("ann", Default::default(), 10)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, frame)| {
                let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
                v["action"].as_str().unwrap_or_default().to_owned()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(actions().await, ["new", "read"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while actions().await != ["new"] {
        assert!(
            std::time::Instant::now() < deadline,
            "the stored change outlived its TTL"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(store.inbox_counts("ann").await.unwrap().total, 1);
}
