//! Scheduled sends (`opts.deliver_at`, `opts.delay`): delivered at their time and not before,
//! once, also when no exchange process runs at that time; listed while they wait; a cancelled
//! one never arrives; bad times are refused; a rebuild equals the live store.

mod common;

use std::time::Duration;

use common::{Exchange, next_json, read_models, token, ws_connect};
use projections::sqlite::SqliteStore;
use serde_json::{Value, json};
use testkit::providers::sms_sink;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

fn time_of(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().expect("a time"), &Rfc3339).expect("RFC 3339")
}

async fn scheduled(ex: &Exchange, t: &str) -> Vec<Value> {
    let (s, b) = ex.get("/messages/scheduled", t).await;
    assert_eq!(s, 200, "{b}");
    b["scheduled"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_scheduled_message_arrives_at_its_time_not_before_and_once() {
    let ex = Exchange::start().await;
    let (admin, alice) = (token("root", true), token("alice", false));
    let mut ws = ws_connect(&ex, &alice).await;
    let (s, b) = ex
        .post(
            "/send",
            &admin,
            json!({"uid": "alice", "msg": "later", "opts": {"delay": "2s", "title": "T"}}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let mid = b["mid"].as_str().unwrap().to_owned();
    let due = time_of(&b["deliver_at"]);
    let waiting = scheduled(&ex, &admin).await;
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(waiting[0]["mid"], mid.as_str());
    assert_eq!(waiting[0]["status"], "pending");
    assert_eq!(waiting[0]["kind"], "message_sent");
    assert_eq!(
        waiting[0]["audience"],
        json!({"kind": "user", "uid": "alice"})
    );
    // A user lists their own only: alice sent nothing.
    assert!(scheduled(&ex, &alice).await.is_empty());
    assert_eq!(ex.get("/notifications", &alice).await.1["count"], 0);

    let frame = next_json(&mut ws).await;
    let arrived = OffsetDateTime::now_utc();
    assert_eq!(frame["action"], "new", "{frame}");
    assert_eq!(frame["notification"]["id"], mid.as_str());
    assert_eq!(frame["notification"]["msg"], "later");
    assert_eq!(frame["notification"]["title"], "T");
    assert!(arrived >= due, "arrived {arrived} before {due}");
    eprintln!(
        "arrived {} ms after it was due",
        (arrived - due).whole_milliseconds()
    );
    // Its entry carries the time it was sent, and the absolute due time in its options.
    let inbox = ex.inbox_until(&alice, 1).await;
    let entry = &inbox["results"][0];
    assert_eq!(time_of(&entry["created_at"]), due);
    assert_eq!(time_of(&entry["opts"]["deliver_at"]), due);
    assert!(entry["opts"].get("delay").is_none(), "{entry}");

    // Sent: no longer listed, and too late to cancel.
    ex.caught_up().await;
    assert!(scheduled(&ex, &admin).await.is_empty());
    let (s, b) = ex
        .call(
            reqwest::Method::DELETE,
            &format!("/messages/{mid}/schedule"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("already_sent")),
        "{b}"
    );
    // Once: nothing else arrives.
    tokio::time::sleep(Duration::from_secs(1)).await;
    ex.caught_up().await;
    assert_eq!(ex.get("/notifications", &alice).await.1["count"], 1);
}

#[tokio::test]
async fn a_cancelled_message_never_arrives_and_a_rebuild_equals_the_live_store() {
    let ex = Exchange::start().await;
    let (alice, bob, carol) = (
        token("alice", false),
        token("bob", false),
        token("carol", false),
    );
    let tid = ex.thread(&alice, true, true).await;
    assert_eq!(
        ex.post("/subscribe", &bob, json!({"tid": tid})).await.0,
        200
    );
    let at = (OffsetDateTime::now_utc() + time::Duration::seconds(3))
        .format(&Rfc3339)
        .unwrap();
    let publish = |msg: &str| json!({"tid": tid, "msg": msg, "opts": {"deliver_at": at}});
    let (s, kept) = ex.post("/publish", &alice, publish("kept")).await;
    assert_eq!(s, 202, "{kept}");
    let (s, dropped) = ex.post("/publish", &alice, publish("cancelled")).await;
    assert_eq!(s, 202, "{dropped}");
    let (kept, dropped) = (
        kept["mid"].as_str().unwrap().to_owned(),
        dropped["mid"].as_str().unwrap().to_owned(),
    );
    ex.caught_up().await;
    assert_eq!(scheduled(&ex, &alice).await.len(), 2);
    let cancel = |t: &str| {
        let path = format!("/messages/{dropped}/schedule");
        let t = t.to_owned();
        let ex = &ex;
        async move {
            ex.call(reqwest::Method::DELETE, &path, Some(&t), None)
                .await
        }
    };
    // Someone else's scheduled message is not theirs to see or cancel.
    assert_eq!(cancel(&carol).await.0, 404);
    let (s, b) = cancel(&alice).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "cancelled");
    let (s, b) = cancel(&alice).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("already_cancelled")),
        "{b}"
    );
    let left = scheduled(&ex, &alice).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["mid"], kept.as_str());

    // The kept one arrives; the cancelled one never does (the kept one was due at the same
    // time, so waiting for it waited long enough).
    let inbox = ex.inbox_until(&bob, 1).await;
    assert_eq!(inbox["results"][0]["msg"], "kept");
    tokio::time::sleep(Duration::from_secs(1)).await;
    ex.caught_up().await;
    let inbox = ex.get("/notifications", &bob).await.1;
    assert_eq!(inbox["count"], 1, "{inbox}");
    let (s, history) = ex.get(&format!("/threads/{tid}/messages"), &bob).await;
    assert_eq!(s, 200);
    assert_eq!(
        history["results"].as_array().map(Vec::len),
        Some(1),
        "{history}"
    );
    let record = |mid: &str| {
        let store = ex.running().store.clone();
        let mid: Uuid = mid.parse().unwrap();
        async move { store.scheduled_message(mid).await.unwrap().unwrap() }
    };
    assert_eq!(
        record(&kept).await.status,
        projections::model::ScheduleStatus::Sent
    );
    assert_eq!(
        record(&dropped).await.status,
        projections::model::ScheduleStatus::Cancelled
    );

    // A rebuild of this stream (schedules, a cancel, a fired message) equals the live store.
    let dir = tempfile::tempdir().unwrap();
    let rebuilt = SqliteStore::open(&dir.path().join("rebuilt.sqlite3")).unwrap();
    projections::rebuild(&ex.running().log, &rebuilt, 2)
        .await
        .unwrap();
    let mids: Vec<Uuid> = [&kept, &dropped]
        .iter()
        .map(|m| m.parse().unwrap())
        .collect();
    let tids = [tid.parse::<Uuid>().unwrap()];
    assert_eq!(
        read_models(ex.running().store.as_ref(), &["alice", "bob"], &tids, &mids).await,
        read_models(&rebuilt, &["alice", "bob"], &tids, &mids).await
    );
}

#[tokio::test]
async fn bad_times_are_refused_and_a_past_time_sends_at_once() {
    let ex = Exchange::start().await;
    let admin = token("root", true);
    let send = |opts: Value| {
        let admin = admin.clone();
        let ex = &ex;
        async move {
            ex.post(
                "/send",
                &admin,
                json!({"uid": "bob", "msg": "m", "opts": opts}),
            )
            .await
        }
    };
    let far = (OffsetDateTime::now_utc() + time::Duration::days(3 * 365))
        .format(&Rfc3339)
        .unwrap();
    for (opts, field) in [
        (json!({"deliver_at": "tomorrow"}), "opts.deliver_at"),
        (
            json!({"deliver_at": "2027-01-15T09:00:00"}),
            "opts.deliver_at",
        ),
        (json!({"deliver_at": 1_800_000_000}), "opts.deliver_at"),
        (json!({"deliver_at": far}), "opts.deliver_at"),
        (json!({"delay": "soon"}), "opts.delay"),
        (json!({"delay": -5}), "opts.delay"),
        (
            json!({"delay": "10m", "deliver_at": "2027-01-15T09:00:00Z"}),
            "opts.delay",
        ),
    ] {
        let (s, b) = send(opts.clone()).await;
        assert_eq!(s, 400, "{opts}: {b}");
        assert_eq!(b["error"]["field"], field, "{opts}: {b}");
    }
    // A time already past is sent now, as any message.
    let (s, b) = send(json!({"deliver_at": "2020-01-01T00:00:00Z"})).await;
    assert_eq!(s, 202, "{b}");
    assert!(b.get("deliver_at").is_none(), "{b}");
    let inbox = ex.inbox_until(&token("bob", false), 1).await;
    assert!(
        inbox["results"][0]["opts"].get("deliver_at").is_none(),
        "{inbox}"
    );
    // Non-admins list their own only.
    let (s, _) = ex
        .get("/messages/scheduled?sender=root", &token("bob", false))
        .await;
    assert_eq!(s, 403);
    let (s, _) = ex.get("/messages/scheduled?limit=0", &admin).await;
    assert_eq!(s, 400);
    // Not a number: refused in the API's error shape (found by schemathesis).
    for bad in ["", "x", "-1"] {
        let (s, b) = ex
            .get(&format!("/messages/scheduled?limit={bad}"), &admin)
            .await;
        assert_eq!(s, 400);
        assert_eq!(b["error"]["field"], "limit", "{b}");
    }
}

/// The exchange is killed (SIGKILL) right after accepting a scheduled message and is down
/// when it is due: JetStream fires it meanwhile, and the restarted exchange delivers it once.
#[tokio::test]
async fn a_message_due_while_the_exchange_is_down_is_delivered_once_after_restart() {
    const SID: &str = "AC0123456789abcdef0123456789abcdef";
    let nats = testkit::TestNats::start();
    let data = tempfile::tempdir().unwrap();
    let sms = sms_sink(SID, "sms-token").await;
    let port = exchange::natsd::free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let serve = || {
        common::serve_process(
            &nats.url(),
            data.path(),
            &listen,
            &[
                ("MSGXC_SMS_ACCOUNT_SID", SID),
                ("MSGXC_SMS_AUTH_TOKEN", "sms-token"),
                ("MSGXC_SMS_FROM", "+15550001111"),
                ("MSGXC_SMS_BASE_URL", &sms.base_url),
            ],
        )
    };
    let base = format!("http://{listen}/api/v1");
    let http = reqwest::Client::new();
    let up = || common::wait_until_up(&http, &base);
    let mut first = serve();
    up().await;
    let r = http
        .post(format!("{base}/enlist"))
        .bearer_auth(token("alice", false))
        .json(&json!({"os": "sms", "phone": "+14155550100"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = http
        .post(format!("{base}/send"))
        .bearer_auth(token("root", true))
        .json(&json!({"uid": "alice", "msg": "while you were out", "opts": {"delay": "3s"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let due = time_of(&r.json::<Value>().await.unwrap()["deliver_at"]);
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    // Down until well after it was due.
    let wait = due - OffsetDateTime::now_utc() + time::Duration::seconds(2);
    tokio::time::sleep(Duration::try_from(wait).unwrap_or_default()).await;
    assert_eq!(
        sms.count(),
        0,
        "nothing can send while the exchange is down"
    );

    let _second = serve();
    up().await;
    let got = sms.wait_for(1).await;
    assert!(String::from_utf8_lossy(&got[0].body).contains("while+you+were+out"));
    // Let a repeat show up before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sms.count(), 1, "delivered once");
    let inbox: Value = http
        .get(format!("{base}/notifications"))
        .bearer_auth(token("alice", false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(inbox["count"], 1, "{inbox}");
}

/// `opts.deliver_at_local`: the same wall-clock time in each recipient's zone. One wave per
/// distinct instant: Berlin's fires seconds from now and reaches only the Berlin user; Tokyo's
/// has passed, so it goes at once; New York's and UTC's (users without a zone) wait and are
/// cancelled with the group's id. A rebuild equals the live store.
#[tokio::test]
async fn a_local_time_send_reaches_each_zone_at_its_own_wall_clock_time() {
    let ex = Exchange::start().await;
    let admin = token("root", true);
    let users = [
        ("lena", Some("europe/berlin")),
        ("kenji", Some("Asia/Tokyo")),
        ("nora", Some("America/New_York")),
        ("uma", None),
    ];
    for (uid, zone) in users {
        let prefs = match zone {
            Some(z) => json!({"timezone": z}),
            None => json!({}),
        };
        let (s, b) = ex
            .call(
                reqwest::Method::PUT,
                "/preferences",
                Some(&token(uid, false)),
                Some(prefs),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        if uid == "lena" {
            assert_eq!(
                b["timezone"], "Europe/Berlin",
                "stored as the database spells it"
            );
        }
    }
    let uids: Vec<&str> = users.iter().map(|(u, _)| *u).collect();
    for (bad, why) in [
        (
            json!({"deliver_at_local": "2027-01-15 09:00"}),
            "local date",
        ),
        (
            json!({"deliver_at_local": "2027-01-15T09:00+01:00"}),
            "local date",
        ),
        (
            json!({"deliver_at_local": "2027-01-15T09:00", "delay": "1h"}),
            "one of",
        ),
    ] {
        let (s, b) = ex
            .post(
                "/multicast",
                &admin,
                json!({"uids": uids, "msg": "x", "opts": bad}),
            )
            .await;
        assert_eq!(s, 400, "{b}");
        assert!(b["error"]["message"].as_str().unwrap().contains(why), "{b}");
    }
    // Live frames follow the zones as the inbox does.
    let mut lena_ws = ws_connect(&ex, &token("lena", false)).await;
    let mut nora_ws = ws_connect(&ex, &token("nora", false)).await;
    // Berlin's wall clock 5 s from now.
    let berlin = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
    let wall = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(5))
        .unwrap()
        .to_zoned_datetime(berlin)
        .strftime("%Y-%m-%dT%H:%M:%S")
        .to_string();
    let (s, b) = ex
        .post(
            "/multicast",
            &admin,
            json!({"uids": uids, "msg": "good morning", "opts": {"deliver_at_local": wall}}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let waves = b["waves"].as_array().unwrap().clone();
    let wave_of = |zone: &str| {
        waves
            .iter()
            .find(|w| w["zones"].as_array().unwrap().iter().any(|z| z == zone))
            .unwrap()
            .clone()
    };
    assert_eq!(wave_of("Asia/Tokyo")["sent"], true, "{b}");
    let group = b["mid"].as_str().unwrap().to_owned();
    assert_eq!(wave_of("Europe/Berlin")["mid"], group.as_str(), "{b}");
    let due = time_of(&wave_of("Europe/Berlin")["deliver_at"]);
    assert!(due > OffsetDateTime::now_utc(), "{b}");
    assert_eq!(
        time_of(&wave_of("UTC")["deliver_at"]) - due,
        time::Duration::hours(1),
        "{b}"
    );
    assert_eq!(
        time_of(&wave_of("America/New_York")["deliver_at"]) - due,
        time::Duration::hours(6),
        "{b}"
    );
    // Tokyo's wave went at once; Berlin's is listed and waits.
    ex.inbox_until(&token("kenji", false), 1).await;
    let listed = scheduled(&ex, &admin).await;
    assert!(listed.len() >= 3, "{listed:?}");
    assert!(
        listed.iter().any(|w| w["mid"] == group.as_str()
            && w["local"]["at"] == wall.as_str()
            && w["local"]["waves"].as_array().unwrap().len() == listed.len()),
        "{listed:?}"
    );
    assert_eq!(
        ex.get("/notifications", &token("lena", false)).await.1["count"],
        0
    );
    let inbox = ex.inbox_until(&token("lena", false), 1).await;
    assert!(OffsetDateTime::now_utc() >= due, "arrived before its time");
    assert_eq!(inbox["results"][0]["msg"], "good morning");
    let frame = next_json(&mut lena_ws).await;
    assert_eq!(frame["notification"]["msg"], "good morning", "{frame}");
    assert!(
        tokio::time::timeout(Duration::from_millis(700), next_json(&mut nora_ws))
            .await
            .is_err(),
        "New York got Berlin's wave live"
    );
    // The group's id cancels the waves still waiting (New York's, UTC's, ...).
    let (s, b) = ex
        .call(
            reqwest::Method::DELETE,
            &format!("/messages/{group}/schedule"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["waves_sent"], 1, "{b}");
    assert_eq!(b["waves_cancelled"], listed.len() - 1, "{b}");
    assert!(scheduled(&ex, &admin).await.is_empty());
    ex.caught_up().await;
    for (uid, n) in [("lena", 1), ("kenji", 1), ("nora", 0), ("uma", 0)] {
        let inbox = ex.get("/notifications", &token(uid, false)).await.1;
        assert_eq!(inbox["count"], n, "{uid}: {inbox}");
    }
    let (s, _) = ex
        .call(
            reqwest::Method::DELETE,
            &format!("/messages/{group}/schedule"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, 409);

    let dir = tempfile::tempdir().unwrap();
    let rebuilt = SqliteStore::open(&dir.path().join("rebuilt.sqlite3")).unwrap();
    projections::rebuild(&ex.running().log, &rebuilt, 2)
        .await
        .unwrap();
    let mids: Vec<Uuid> = waves
        .iter()
        .map(|w| w["mid"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        read_models(ex.running().store.as_ref(), &uids, &[], &mids).await,
        read_models(&rebuilt, &uids, &[], &mids).await
    );
}
