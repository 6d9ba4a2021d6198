//! Roles in separate processes' worth of instances: a gateway plus two projectors on one store
//! and one stream. One projector is active at a time (a lease in JetStream KV); when it stops the
//! other takes over; every event is applied exactly once (the store equals a fresh rebuild).

mod common;

use std::time::Duration;

use common::{Keyspace, TestStore, options, read_models, token};
use msgxc::Role;
use projections::SqliteStore;
use serde_json::json;

/// An admin's direct message number `i` to bob, accepted.
async fn send_to_bob(http: &reqwest::Client, base: &str, admin: &str, i: usize) {
    let r = http
        .post(format!("{base}/send"))
        .bearer_auth(admin)
        .json(&json!({"msg": format!("m{i}"), "uid": "bob"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn two_projectors_on_one_store_apply_each_event_once_and_fail_over() {
    let nats = testkit::TestNats::start();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("shared.sqlite3");
    // On Cassandra the three share one keyspace instead of one SQLite file.
    let keyspace = match TestStore::from_env() {
        TestStore::Sqlite => None,
        TestStore::Cassandra => Some(Keyspace::fresh().await),
    };
    let with_role = |role: Role| {
        let mut o = options(nats.url(), store.clone());
        if let Some(k) = &keyspace {
            o.store = msgxc::StoreLocation::Scylla(k.config.clone());
        }
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
    let send = |i: usize| send_to_bob(&http, &base, &admin, i);
    let inbox_total = || {
        let store = gateway.store.clone();
        async move { store.inbox_counts("bob").await.unwrap().total }
    };
    // Applied means checkpointed: on Cassandra a batch's rows land before its checkpoint
    // moves (on SQLite both commit together), so wait for both before stopping a projector.
    let caught_up = || {
        let (store, log) = (gateway.store.clone(), gateway.log.clone());
        async move { store.checkpoint().await.unwrap() >= log.last_seq().await.unwrap() }
    };
    let wait_for = |n: u64| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while inbox_total().await < n || !caught_up().await {
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
    let users = ["bob", "root"];
    assert_eq!(
        read_models(gateway.store.as_ref(), &users, &[], &[]).await,
        read_models(&fresh, &users, &[], &[]).await
    );
    if let Some(shared) = gateway.sqlite.as_ref() {
        assert_eq!(shared.dump().await.unwrap(), fresh.dump().await.unwrap());
    }
    assert_eq!(inbox_total().await, 80);
    gateway.shutdown().await;
}

/// The same with real processes, as a deployment runs them: `msgxc serve --role gateway` and
/// two `msgxc serve --role projector` on one stream and one store file.
#[tokio::test]
async fn two_projector_processes_apply_each_event_once() {
    use std::process::{Child, Command, Stdio};

    struct Proc(Child);
    impl Proc {
        fn stop(&mut self) {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
            }
            let _ = self.0.wait();
        }
    }
    impl Drop for Proc {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    let nats = testkit::TestNats::start();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("shared.sqlite3");
    let keyspace = match TestStore::from_env() {
        TestStore::Sqlite => None,
        TestStore::Cassandra => Some(Keyspace::fresh().await),
    };
    let (location, store_url) = match &keyspace {
        Some(k) => (
            msgxc::StoreLocation::Scylla(k.config.clone()),
            k.url.clone(),
        ),
        None => (
            msgxc::StoreLocation::Sqlite(store.clone()),
            format!("sqlite://{}", store.display()),
        ),
    };
    let serve = |args: &[&str]| {
        Proc(
            Command::new(env!("CARGO_BIN_EXE_msgxc"))
                .arg("serve")
                .args(args)
                .env("MSGXC_NATS_URL", nats.url())
                .env("MSGXC_STORE", &store_url)
                .env("MSGXC_DATA_DIR", dir.path())
                .env("MSGXC_JWT_SECRET", common::SECRET)
                .env("MSGXC_PROJECTOR_LEASE", "2s")
                .env("MSGXC_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    };
    let addr = || format!("127.0.0.1:{}", exchange::natsd::free_port().unwrap());
    let (gw, p1, p2) = (addr(), addr(), addr());
    let _gateway = serve(&["--role", "gateway", "--listen", &gw]);
    let mut first = serve(&["--role", "projector", "--health-listen", &p1]);
    let mut second = serve(&["--role", "projector", "--health-listen", &p2]);
    let http = reqwest::Client::new();
    for a in [&gw, &p1, &p2] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ok = http
                .get(format!("http://{a}/api/v1/ping"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ok {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{a} did not come up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let role: serde_json::Value = http
        .get(format!("http://{p1}/api/v1/ping"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(role["role"], "projector");

    let base = format!("http://{gw}/api/v1");
    let (admin, bob) = (token("root", true), token("bob", false));
    let send = |i: usize| send_to_bob(&http, &base, &admin, i);
    let client = async_nats::connect(nats.url()).await.unwrap();
    let log = msgxc::nats::open_log(client, exchange::LogSettings::default())
        .await
        .unwrap();
    let (shared, _, sqlite) = msgxc::open_store(&location).await.unwrap();
    let wait_for = |n: u64| {
        let (http, base, bob) = (http.clone(), base.clone(), bob.clone());
        let (store, log) = (shared.clone(), log.clone());
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let stats: serde_json::Value = http
                    .get(format!("{base}/notifications/stats"))
                    .bearer_auth(&bob)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                // Applied means checkpointed (on Cassandra the rows land first).
                if stats["total"].as_u64() == Some(n)
                    && store.checkpoint().await.unwrap() >= log.last_seq().await.unwrap()
                {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "projection stalled below {n}: {stats}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    futures::future::join_all((0..40).map(send)).await;
    wait_for(40).await;
    // Stop one projector process (whichever was active, the other continues).
    first.stop();
    futures::future::join_all((40..80).map(send)).await;
    wait_for(80).await;
    second.stop();

    // Exactly once: the shared store equals a rebuild of the stream into an empty store.
    assert_eq!(
        shared.checkpoint().await.unwrap(),
        log.last_seq().await.unwrap()
    );
    let fresh = SqliteStore::open(&dir.path().join("fresh.sqlite3")).unwrap();
    projections::rebuild(&log, &fresh, 100).await.unwrap();
    let users = ["bob", "root"];
    assert_eq!(
        read_models(shared.as_ref(), &users, &[], &[]).await,
        read_models(&fresh, &users, &[], &[]).await
    );
    if let Some(shared) = sqlite {
        assert_eq!(shared.dump().await.unwrap(), fresh.dump().await.unwrap());
    }
}
