//! Event-sourcing guarantees: a 2xx means the event is in JetStream (503 otherwise), every
//! acknowledged request is projected exactly once after an outage, and a rebuild from the
//! stream equals the live store without sending anything.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Exchange, Keyspace, TestStore, next_json, read_models, token, ws_connect};
use projections::{ScyllaStore, SqliteStore, Store};
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test]
async fn outage_gives_503_and_acknowledged_requests_are_projected_exactly_once() {
    let mut ex = Exchange::start().await;
    let alice = token("alice", false);
    let bob = token("bob", false);
    let tid = ex.thread(&alice, true, true).await;
    assert_eq!(
        ex.post("/subscribe", &bob, json!({"tid": tid})).await.0,
        200
    );

    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let (s, b) = ex
            .post(
                "/publish",
                &alice,
                json!({"tid": tid, "msg": format!("before {i}")}),
            )
            .await;
        assert_eq!(s, 202);
        acknowledged.push(b["mid"].as_str().unwrap().to_owned());
    }

    ex.nats.server.stop();
    let mut unavailable = 0;
    for i in 0..3 {
        let (s, b) = ex
            .post(
                "/publish",
                &alice,
                json!({"tid": tid, "msg": format!("during {i}")}),
            )
            .await;
        assert_ne!(s / 100, 2, "no 2xx while JetStream is down: {b}");
        assert_eq!(s, 503, "{b}");
        assert_eq!(b["error"]["code"], "unavailable");
        unavailable += 1;
    }
    assert_eq!(unavailable, 3);

    ex.nats
        .server
        .restart()
        .expect("nats-server restarts on the same port and store");
    // The client reconnects by itself; keep publishing until requests succeed again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut after = 0;
    while after < 5 {
        let (s, b) = ex
            .post(
                "/publish",
                &alice,
                json!({"tid": tid, "msg": format!("after {after}")}),
            )
            .await;
        if s == 202 {
            acknowledged.push(b["mid"].as_str().unwrap().to_owned());
            after += 1;
        } else {
            assert_eq!(s, 503, "{b}");
            assert!(tokio::time::Instant::now() < deadline, "never recovered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    ex.caught_up().await;
    // Every acknowledged message is in the stream...
    let stream_mids: HashSet<String> = {
        let log = &ex.running().log;
        let last = log.last_seq().await.unwrap();
        let mut mids = HashSet::new();
        for seq in 1..=last {
            let stored = log.get(seq).await.unwrap();
            if stored.envelope.event.kind() == "message_published" {
                mids.insert(stored.envelope.id.to_string());
            }
        }
        mids
    };
    for mid in &acknowledged {
        assert!(
            stream_mids.contains(mid),
            "acknowledged {mid} missing from the stream"
        );
    }
    // ...and projected exactly once into bob's inbox. (A 503'd publish may still have been
    // stored, as the error says; it then appears once too.)
    let inbox = ex.inbox_until(&bob, stream_mids.len() as u64).await;
    let ids: Vec<String> = inbox["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no duplicates");
    for mid in &acknowledged {
        assert!(unique.contains(mid), "acknowledged {mid} not projected");
    }
    let counts = ex.running().store.inbox_counts("bob").await.unwrap();
    assert_eq!(counts.total, ids.len() as u64);
    ex.running.take().unwrap().shutdown().await;
}

#[tokio::test]
async fn rebuild_equals_live_and_sends_nothing() {
    let ex = Exchange::start().await;
    let (alice, bob, carol) = (
        token("alice", false),
        token("bob", false),
        token("carol", false),
    );
    let admin = token("root", true);
    let tid = ex.thread(&alice, true, true).await;
    let closed = ex.thread(&alice, false, false).await;
    for t in [&bob, &carol] {
        assert_eq!(ex.post("/subscribe", t, json!({"tid": tid})).await.0, 200);
        assert_eq!(
            ex.post(
                "/enlist",
                t,
                json!({"os": "email", "email": "x@example.com"})
            )
            .await
            .0,
            201
        );
    }
    assert_eq!(
        ex.post("/subscribe", &admin, json!({"tid": closed}))
            .await
            .0,
        200
    );
    let mut mids = Vec::new();
    let mut mid_of = |b: Value| {
        let mid = b["mid"].as_str().unwrap().to_owned();
        mids.push(mid.parse::<Uuid>().unwrap());
        mid
    };
    let m1 = mid_of(
        ex.post("/publish", &alice, json!({"tid": tid, "msg": "m1"}))
            .await
            .1,
    );
    mid_of(
        ex.post(
            "/publish",
            &bob,
            json!({"tid": tid, "msg": "m2", "opts": {"urgency": 1, "x": [1]}}),
        )
        .await
        .1,
    );
    ex.post("/unsubscribe", &carol, json!({"tid": tid})).await;
    mid_of(
        ex.post("/publish", &alice, json!({"tid": tid, "msg": "m3"}))
            .await
            .1,
    );
    mid_of(ex.post("/broadcast", &admin, json!({"msg": "all"})).await.1);
    mid_of(
        ex.post(
            "/multicast",
            &admin,
            json!({"msg": "some", "uids": ["bob", "zed"]}),
        )
        .await
        .1,
    );
    ex.inbox_until(&bob, 4).await;
    ex.patch("/notifications", &bob, json!({"ids": [m1]})).await;
    ex.caught_up().await;

    // A watcher connected during the rebuild must see nothing from it.
    let mut watcher = ws_connect(&ex, &bob).await;

    let dir = tempfile::tempdir().unwrap();
    let rebuilt = SqliteStore::open(&dir.path().join("rebuilt.sqlite3")).unwrap();
    let report = projections::rebuild(&ex.running().log, &rebuilt, 3)
        .await
        .unwrap();
    let last = ex.running().log.last_seq().await.unwrap();
    assert_eq!(report.checkpoint, last);
    assert_eq!(report.events, last);
    assert_eq!(rebuilt.checkpoint().await.unwrap(), last);
    // Every read model, through the Store trait: the live store (SQLite or Cassandra, as the
    // test run says) equals a SQLite rebuild of the stream and, on Cassandra, a rebuild into a
    // keyspace of its own.
    let uids = ["alice", "bob", "carol", "root", "zed"];
    let tids = [
        tid.parse::<Uuid>().unwrap(),
        closed.parse::<Uuid>().unwrap(),
    ];
    let live = read_models(ex.running().store.as_ref(), &uids, &tids, &mids).await;
    assert_eq!(
        live,
        read_models(&rebuilt, &uids, &tids, &mids).await,
        "the SQLite rebuild differs from the live store"
    );
    assert_eq!(
        live["users"]["bob"]["inbox"]["items"]
            .as_array()
            .unwrap()
            .len(),
        4,
        "{live}"
    );
    if let Some(sqlite) = ex.running().sqlite.as_ref() {
        // And row for row, where both are SQLite.
        assert_eq!(sqlite.dump().await.unwrap(), rebuilt.dump().await.unwrap());
    }
    if TestStore::from_env() == TestStore::Cassandra {
        let keyspace = Keyspace::fresh().await;
        let into = ScyllaStore::open(&keyspace.config).await.unwrap();
        let report = projections::rebuild(&ex.running().log, &into, 3)
            .await
            .unwrap();
        assert_eq!(report.checkpoint, last);
        assert_eq!(
            live,
            read_models(&into, &uids, &tids, &mids).await,
            "the Cassandra rebuild differs from the live store"
        );
    }

    // Nothing was sent during the rebuild: the next frame the watcher sees is this new one.
    let admin_send = ex
        .post(
            "/send",
            &admin,
            json!({"msg": "after rebuild", "uid": "bob"}),
        )
        .await;
    assert_eq!(admin_send.0, 202);
    let f = next_json(&mut watcher).await;
    assert_eq!(f["notification"]["msg"], "after rebuild", "{f}");

    // A second rebuild pass into the same store is a no-op (checkpoint-based).
    let report = projections::rebuild(&ex.running().log, &rebuilt, 100)
        .await
        .unwrap();
    assert_eq!(report.events, 1, "only the new event");
}

#[tokio::test]
async fn projector_resumes_from_its_checkpoint_after_a_restart() {
    let mut ex = Exchange::start().await;
    let admin = token("root", true);
    for i in 0..3 {
        ex.post(
            "/send",
            &admin,
            json!({"msg": format!("m{i}"), "uid": "bob"}),
        )
        .await;
    }
    ex.caught_up().await;
    let opts = ex.opts.clone();
    ex.running.take().unwrap().shutdown().await;
    // Events appended while no projector runs...
    let client = msgxc::nats::connect(&ex.nats.url()).await.unwrap();
    let log = msgxc::nats::open_log(client, opts.log.clone())
        .await
        .unwrap();
    for i in 3..6 {
        let env = exchange::Envelope::new(
            exchange::Actor {
                uid: "root".into(),
                roles: vec!["admin".into()],
            },
            exchange::Event::MessageSent(exchange::events::MessageSent {
                audience: exchange::events::Audience::User { uid: "bob".into() },
                sender: "root".into(),
                msg: format!("m{i}"),
                opts: Default::default(),
                experiment: None,
            }),
        );
        log.append(&env, None).await.unwrap();
    }
    // ...are applied once when it comes back on the same store.
    let running = msgxc::start(opts).await.unwrap();
    ex.base = format!("http://{}/api/v1", running.addr.unwrap());
    ex.running = Some(running);
    let inbox = ex.inbox_until(&token("bob", false), 6).await;
    assert_eq!(inbox["unread"], 6);
    ex.caught_up().await;
    assert_eq!(
        ex.running().store.inbox_counts("bob").await.unwrap().total,
        6
    );
}
