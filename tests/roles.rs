//! Roles in separate processes' worth of instances: a gateway plus two projectors on one store
//! and one stream. One projector is active at a time (a lease in JetStream KV); when it stops the
//! other takes over; every event is applied exactly once (the store equals a fresh rebuild).

mod common;

use std::time::Duration;

use common::{options, token};
use msgxc::Role;
use projections::{SqliteStore, Store};
use serde_json::json;

#[tokio::test]
async fn two_projectors_on_one_store_apply_each_event_once_and_fail_over() {
    let nats = testkit::TestNats::start();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("shared.sqlite3");
    let with_role = |role: Role| {
        let mut o = options(nats.url(), store.clone());
        o.role = role;
        o.projector.lease_ttl = Duration::from_secs(2);
        o
    };
    let gateway = msgxc::start(with_role(Role::Gateway)).await.unwrap();
    let first = msgxc::start(with_role(Role::Projector)).await.unwrap();
    let second = msgxc::start(with_role(Role::Projector)).await.unwrap();
    let base = format!("http://{}/api/v1", gateway.addr.unwrap());
    let http = reqwest::Client::new();
    let admin = token("root", true);
    let send = |i: usize| {
        let (http, base, admin) = (http.clone(), base.clone(), admin.clone());
        async move {
            let r = http
                .post(format!("{base}/send"))
                .bearer_auth(admin)
                .json(&json!({"msg": format!("m{i}"), "uid": "bob"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
        }
    };
    let inbox_total = || {
        let store = gateway.store.clone();
        async move { store.inbox_counts("bob").await.unwrap().total }
    };
    let wait_for = |n: u64| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while inbox_total().await < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "projection stalled below {n}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    futures::future::join_all((0..40).map(send)).await;
    wait_for(40).await;
    // Stop one projector (whichever was active, the other continues).
    first.shutdown().await;
    futures::future::join_all((40..80).map(send)).await;
    wait_for(80).await;
    second.shutdown().await;

    // Exactly once: the shared store equals a rebuild of the stream into an empty store.
    let log = gateway.log.clone();
    let last = log.last_seq().await.unwrap();
    assert_eq!(gateway.store.checkpoint().await.unwrap(), last);
    let fresh = SqliteStore::open(&dir.path().join("fresh.sqlite3")).unwrap();
    projections::rebuild(&log, &fresh, 100).await.unwrap();
    assert_eq!(
        gateway.store.dump().await.unwrap(),
        fresh.dump().await.unwrap()
    );
    assert_eq!(inbox_total().await, 80);
    gateway.shutdown().await;
}
