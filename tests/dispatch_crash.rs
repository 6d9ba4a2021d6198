//! A dispatcher process killed in the middle of a batch: another one finishes the batch, every
//! device gets the message, and only devices inside the documented window (the unrecorded part
//! of the batch and the sends in flight) can get it twice.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Proc, options, token};
use msgxc::Role;
use serde_json::json;
use testkit::providers::{form_value, sms_sink};

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const SMS_TOKEN: &str = "sms-auth-token";
const USERS: usize = 600;
/// Requests in flight per provider in the dispatcher processes (`--provider-in-flight`).
const IN_FLIGHT: usize = 8;
/// Outcomes per progress record (`exchange::dispatch` PART).
const PART: usize = 64;

#[tokio::test]
async fn a_dispatcher_killed_mid_batch_resends_at_most_the_unrecorded_part() {
    let nats = testkit::TestNats::start();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("shared.sqlite3");
    let sms = sms_sink(SID, SMS_TOKEN).await;
    let mut o = options(nats.url(), store.clone());
    o.role = Role::Gateway;
    o.gateway.max_recipients = USERS;
    o.gateway.body_limit = 64 * 1024;
    let gateway = msgxc::start(o.clone()).await.unwrap();
    o.role = Role::Projector;
    let projector = msgxc::start(o).await.unwrap();

    // One process at a time sends: one normal-lane task at once, paced to 300 SMS/s, so the
    // first batch (256 recipients) is mid-way when the process is killed.
    let dispatcher = || {
        Proc(
            Command::new(env!("CARGO_BIN_EXE_msgxc"))
                .args(["serve", "--role", "dispatcher"])
                .env("MSGXC_NATS_URL", nats.url())
                .env("MSGXC_STORE", format!("sqlite://{}", store.display()))
                .env("MSGXC_DATA_DIR", dir.path())
                .env("MSGXC_JWT_SECRET", common::SECRET)
                .env("MSGXC_SMS_ACCOUNT_SID", SID)
                .env("MSGXC_SMS_AUTH_TOKEN", SMS_TOKEN)
                .env("MSGXC_SMS_FROM", "+15550001111")
                .env("MSGXC_SMS_BASE_URL", &sms.base_url)
                .env("MSGXC_SKIP_IF_SEEN", "0s")
                .env("MSGXC_DISPATCH_CONCURRENCY", "64,1,16,8,16")
                .env("MSGXC_DISPATCH_SEND_TIMEOUT", "1s")
                .env("MSGXC_PROVIDER_IN_FLIGHT", IN_FLIGHT.to_string())
                .env("MSGXC_RATE_LIMITS", "sms=300")
                .env("MSGXC_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    };

    let base = format!("http://{}/api/v1", gateway.addr.unwrap());
    let http = reqwest::Client::new();
    let users: Vec<String> = (0..USERS).map(|i| format!("u{i:03}")).collect();
    let phone = |i: usize| format!("+1415555{i:04}");
    for chunk in (0..USERS).collect::<Vec<_>>().chunks(50) {
        futures::future::join_all(chunk.iter().map(|&i| {
            http.post(format!("{base}/enlist"))
                .bearer_auth(token(&users[i], false))
                .json(&json!({"os": "sms", "phone": phone(i)}))
                .send()
        }))
        .await
        .into_iter()
        .for_each(|r| assert_eq!(r.unwrap().status(), 201));
    }
    let r = http
        .post(format!("{base}/multicast"))
        .bearer_auth(token("root", true))
        .json(&json!({"msg": "once each", "uids": users}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let mut first = dispatcher();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while sms.count() < 100 {
        assert!(tokio::time::Instant::now() < deadline, "no sends started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let at_kill = sms.count();
    assert!(
        at_kill < 256,
        "killed after the first batch ended ({at_kill} sent)"
    );

    let _second = dispatcher();
    let received = |sms: &testkit::providers::Sink| {
        let mut per_phone: HashMap<String, usize> = HashMap::new();
        for r in sms.received() {
            let form = String::from_utf8_lossy(&r.body).to_string();
            *per_phone
                .entry(form_value(&form, "To").unwrap())
                .or_default() += 1;
        }
        per_phone
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while received(&sms).len() < USERS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {USERS} phones reached",
            received(&sms).len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let a wrongly repeated part show up before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per_phone = received(&sms);
    assert_eq!(per_phone.len(), USERS);
    let twice: usize = per_phone.values().map(|n| n - 1).sum();
    eprintln!("{at_kill} sent when killed; {twice} phones got the message twice");
    assert!(per_phone.values().all(|n| *n <= 2), "{per_phone:?}");
    assert!(
        twice <= PART + IN_FLIGHT,
        "{twice} duplicates: more than one part and the sends in flight"
    );
    drop(projector);
}
