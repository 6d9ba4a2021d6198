//! Delivery through the production channel clients against local servers that speak the
//! providers' protocols (Twilio-shaped SMS, APNs over HTTP/2) and a real SMTP server
//! (aiosmtpd): retries, dead letters, disabled tokens, urgency lanes, receipts, idempotency.

mod common;

use std::time::Duration;

use common::{Exchange, token, ws_connect};
use exchange::channels::{ChannelSettings, apns::ApnsConfig, email::EmailConfig, sms::SmsConfig};
use exchange::dispatch::DispatchSettings;
use futures::SinkExt;
use serde_json::{Value, json};
use testkit::providers::{Reply, Sink, SmtpSink, apns_sink, form_value, sms_sink};
use tokio_tungstenite::tungstenite::Message;

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const SMS_TOKEN: &str = "sms-auth-token";
const KEY_ID: &str = "ABC123DEFG";
const TEAM_ID: &str = "TEAM123456";
const TOPIC: &str = "com.example.app";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

struct Providers {
    sms: Sink,
    apns: Sink,
    smtp: SmtpSink,
}

async fn providers() -> Providers {
    Providers {
        sms: sms_sink(SID, SMS_TOKEN).await,
        apns: apns_sink(&fixture("test-only-es256.pub.pem"), KEY_ID, TEAM_ID, TOPIC).await,
        smtp: SmtpSink::start(),
    }
}

async fn exchange_with(p: &Providers, max_attempts: u32) -> Exchange {
    exchange_paced(p, max_attempts, Default::default()).await
}

async fn exchange_paced(
    p: &Providers,
    max_attempts: u32,
    limits: std::collections::HashMap<String, exchange::dispatch::Limits>,
) -> Exchange {
    exchange_tuned(p, max_attempts, |d| d.limits = limits).await
}

async fn exchange_tuned(
    p: &Providers,
    max_attempts: u32,
    tune: impl FnOnce(&mut DispatchSettings) + Send + 'static,
) -> Exchange {
    let (sms, apns, smtp) = (
        p.sms.base_url.clone(),
        p.apns.base_url.clone(),
        p.smtp.url(),
    );
    Exchange::start_with(move |o| {
        o.channels = ChannelSettings {
            sms: Some(SmsConfig {
                account_sid: SID.into(),
                auth_token: SMS_TOKEN.into(),
                from: "+15550001111".into(),
                base_url: sms,
            }),
            apns: Some(ApnsConfig {
                key_pem: fixture("test-only-es256.key.pem"),
                key_id: KEY_ID.into(),
                team_id: TEAM_ID.into(),
                topic: TOPIC.into(),
                base_url: apns,
            }),
            email: Some(EmailConfig {
                url: smtp,
                from: "msgxc <noreply@example.com>".into(),
            }),
            webpush: None,
            fcm: None,
            mqtt: None,
            links: None,
        };
        o.dispatch = DispatchSettings {
            max_attempts,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
            ..Default::default()
        };
        tune(&mut o.dispatch);
        o.gateway.max_recipients = 100;
        o.gateway.body_limit = 16 * 1024;
    })
    .await
}

async fn enlist(ex: &Exchange, user: &str, body: Value) -> String {
    let (s, b) = ex.post("/enlist", &token(user, false), body).await;
    assert_eq!(s, 201, "{b}");
    b["id"].as_str().unwrap().to_owned()
}

fn apns_token(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

/// Polls the receipts of `mid` until `check` holds.
async fn receipts_until(ex: &Exchange, mid: &str, check: impl Fn(&Value) -> bool) -> Value {
    let admin = token("root", true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (s, b) = ex.get(&format!("/messages/{mid}/receipts"), &admin).await;
        // 404 until the message event is projected.
        assert!(s == 200 || s == 404, "{s} {b}");
        if s == 200 && check(&b) {
            return b;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "receipts never matched: {b}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn ping_lists_the_configured_channels() {
    let p = providers().await;
    let ex = exchange_with(&p, 3).await;
    let (_, b) = ex.call(reqwest::Method::GET, "/ping", None, None).await;
    assert_eq!(b["channels"], json!(["websocket", "apns", "email", "sms"]));
}

#[tokio::test]
async fn transient_failures_are_retried_and_give_one_success_receipt() {
    let p = providers().await;
    let ex = exchange_with(&p, 5).await;
    enlist(&ex, "bob", json!({"os": "sms", "phone": "+14155550101"})).await;
    p.sms.script(
        "+14155550101",
        vec![
            Reply::status(503, r#"{"code":20500,"message":"Internal error"}"#),
            Reply::status(503, r#"{"code":20500,"message":"Internal error"}"#),
        ],
    );
    let (s, b) = ex
        .post(
            "/send",
            &token("root", true),
            json!({"msg": "hi bob", "uid": "bob", "opts": {"title": "Note"}}),
        )
        .await;
    assert_eq!(s, 202);
    let mid = b["mid"].as_str().unwrap().to_owned();
    let got = p.sms.wait_for(3).await;
    let form = String::from_utf8_lossy(&got[2].body).to_string();
    assert_eq!(form_value(&form, "To").as_deref(), Some("+14155550101"));
    assert_eq!(form_value(&form, "From").as_deref(), Some("+15550001111"));
    assert_eq!(form_value(&form, "Body").as_deref(), Some("Note: hi bob"));
    let r = receipts_until(&ex, &mid, |b| b["counts"]["sms"]["sent"] == 1).await;
    assert_eq!(r["results"][0]["attempts"], 3, "{r}");
    assert_eq!(r["results"][0]["status"], "sent");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.sms.count(), 3, "no fourth attempt after the success");
}

#[tokio::test]
async fn a_gone_token_disables_the_device_and_other_devices_still_get_the_message() {
    let p = providers().await;
    let ex = exchange_with(&p, 5).await;
    let (good, gone, bad) = (apns_token(1), apns_token(2), apns_token(3));
    enlist(&ex, "bob", json!({"os": "ios", "token": good})).await;
    let gone_id = enlist(&ex, "bob", json!({"os": "ios", "token": gone})).await;
    let bad_id = enlist(&ex, "bob", json!({"os": "ios", "token": bad})).await;
    p.apns.script(
        &bad,
        vec![Reply::status(400, r#"{"reason":"BadDeviceToken"}"#)],
    );
    enlist(&ex, "bob", json!({"os": "sms", "phone": "+14155550102"})).await;
    p.apns.script(
        &gone,
        vec![Reply::status(
            410,
            r#"{"reason":"Unregistered","timestamp":1}"#,
        )],
    );
    let admin = token("root", true);
    let (_, b) = ex
        .post(
            "/send",
            &admin,
            json!({"msg": "first", "uid": "bob", "opts": {"urgency": "high", "data": {"k": 1}}}),
        )
        .await;
    let mid = b["mid"].as_str().unwrap().to_owned();
    p.apns.wait_for(3).await;
    p.sms.wait_for(1).await;
    // The dead tokens (410 Unregistered, 400 BadDeviceToken) disappear from the user's devices.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, d) = ex.get("/devices", &token("bob", false)).await;
        if d["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["id"] != gone_id.as_str() && x["id"] != bad_id.as_str())
        {
            assert_eq!(d["count"], 2);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "device never disabled: {d}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let r = receipts_until(&ex, &mid, |b| {
        b["counts"]["apns"]["failed"] == 2 && b["counts"]["apns"]["sent"] == 1
    })
    .await;
    assert_eq!(r["counts"]["sms"]["sent"], 1, "{r}");
    assert_eq!(r["recipients"], 1, "{r}");

    // The accepted request carried the APNs headers and payload.
    let first = p.apns.received();
    let good_req = first.iter().find(|r| r.path.contains(&good)).unwrap();
    let h = |k: &str| {
        good_req
            .headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(h("apns-topic"), TOPIC);
    assert_eq!(h("apns-push-type"), "alert");
    assert_eq!(h("apns-priority"), "10");
    assert!(uuid::Uuid::parse_str(&h("apns-id")).is_ok());
    let payload: Value = serde_json::from_slice(&good_req.body).unwrap();
    assert_eq!(payload["aps"]["alert"]["body"], "first");
    assert_eq!(payload["mid"], mid.as_str());
    assert_eq!(payload["data"]["k"], 1);

    // The next message goes to the good token only, at low priority for low urgency.
    ex.post(
        "/send",
        &admin,
        json!({"msg": "second", "uid": "bob", "opts": {"urgency": "low"}}),
    )
    .await;
    let all = p.apns.wait_for(4).await;
    p.sms.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all_after = p.apns.received();
    assert_eq!(
        all_after.len(),
        4,
        "the disabled tokens are never used again"
    );
    for dead in [&gone, &bad] {
        let n = all
            .iter()
            .filter(|r| r.path.contains(dead.as_str()))
            .count();
        assert_eq!(n, 1, "a 410/400-token answer is not retried");
    }
    let third = &all_after[3];
    assert!(third.path.contains(&good));
    assert_eq!(third.headers.get("apns-priority").unwrap(), "5");
}

#[tokio::test]
async fn email_arrives_over_real_smtp() {
    let p = providers().await;
    let ex = exchange_with(&p, 3).await;
    enlist(
        &ex,
        "carol",
        json!({"os": "email", "email": "carol@example.com"}),
    )
    .await;
    let (s, _) = ex
        .post(
            "/send",
            &token("root", true),
            json!({"msg": "Your <report> is ready", "uid": "carol", "opts": {"title": "Report", "url": "https://example.com/r/1"}}),
        )
        .await;
    assert_eq!(s, 202);
    let mails = p.smtp.wait_for(1).await;
    let mail = &mails[0];
    assert!(mail.contains("Subject: Report"), "{mail}");
    assert!(mail.contains("To: carol@example.com"), "{mail}");
    assert!(mail.contains("From: msgxc <noreply@example.com>"), "{mail}");
    assert!(mail.contains("multipart/alternative"), "{mail}");
    assert!(
        mail.contains("Your <report> is ready"),
        "plain part: {mail}"
    );
    assert!(
        mail.contains("Your &lt;report&gt; is ready"),
        "escaped HTML part: {mail}"
    );
    assert!(mail.contains("https://example.com/r/1"), "{mail}");
}

#[tokio::test]
async fn exhausted_retries_become_a_dead_letter_that_an_admin_can_requeue() {
    let p = providers().await;
    let ex = exchange_with(&p, 3).await;
    enlist(&ex, "dave", json!({"os": "sms", "phone": "+14155550103"})).await;
    p.sms
        .script("+14155550103", vec![Reply::status(500, "{}"); 3]);
    let admin = token("root", true);
    let (_, b) = ex
        .post("/send", &admin, json!({"msg": "x", "uid": "dave"}))
        .await;
    let mid = b["mid"].as_str().unwrap().to_owned();
    p.sms.wait_for(3).await;
    receipts_until(&ex, &mid, |b| b["counts"]["sms"]["failed"] == 1).await;
    let (s, failed) = ex.get("/deliveries/failed", &admin).await;
    assert_eq!(s, 200);
    assert_eq!(failed["count"], 1, "{failed}");
    let entry = &failed["results"][0];
    assert_eq!(entry["mid"], mid.as_str());
    assert_eq!(entry["attempts"], 3);
    assert_eq!(entry["permanent"], false);
    let id = entry["id"].as_str().unwrap().to_owned();
    // Non-admins may not see or requeue dead letters.
    assert_eq!(
        ex.get("/deliveries/failed", &token("dave", false)).await.0,
        403
    );
    // Requeue: the provider answers 201 now.
    let (s, b) = ex
        .post(&format!("/deliveries/{id}/retry"), &admin, json!({}))
        .await;
    assert_eq!(s, 202, "{b}");
    p.sms.wait_for(4).await;
    let r = receipts_until(&ex, &mid, |b| b["counts"]["sms"]["sent"] == 1).await;
    assert_eq!(r["results"][0]["status"], "sent");
    assert_eq!(ex.get("/deliveries/failed", &admin).await.1["count"], 0);
    assert_eq!(
        ex.post(&format!("/deliveries/{id}/retry"), &admin, json!({}))
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn high_urgency_overtakes_a_low_urgency_backlog() {
    let p = providers().await;
    // 10,000 users with an SMS device each, appended straight to the log (2,000 on Cassandra,
    // whose fold is slower on this machine: see BENCHMARKS.md).
    let users: u32 = match common::TestStore::from_env() {
        common::TestStore::Sqlite => 10_000,
        common::TestStore::Cassandra => 2_000,
    };
    // The provider takes the backlog in about ten seconds: longer than the broadcast's fold,
    // which the high-urgency message (later in the stream) waits for. Unpaced, a fast sink
    // drained the whole backlog before that fold ended and the test proved nothing.
    let limits = [(
        "sms".to_owned(),
        exchange::dispatch::Limits {
            rate: Some(f64::from(users) / 10.0),
            burst: 50,
            in_flight: 64,
        },
    )]
    .into_iter()
    .collect();
    let ex = exchange_paced(&p, 3, limits).await;
    let log = &ex.running().log;
    for i in 0..users {
        let uid = format!("user{i}");
        let address = exchange::events::DeviceAddress::Sms {
            phone: format!("+1415{i:07}"),
        };
        let env = exchange::Envelope::new(
            exchange::Actor {
                uid: uid.clone(),
                roles: vec![],
            },
            exchange::Event::DeviceEnlisted(exchange::events::DeviceEnlisted {
                uid,
                device_id: address.device_id(),
                address,
            }),
        );
        log.append(&env, None).await.unwrap();
    }
    enlist(&ex, "vip", json!({"os": "sms", "phone": "+19995550000"})).await;
    ex.caught_up().await;
    p.sms.set_delay(Duration::from_millis(2));
    let admin = token("root", true);
    let (s, _) = ex
        .post(
            "/broadcast",
            &admin,
            json!({"msg": "sale", "opts": {"urgency": "very-low"}}),
        )
        .await;
    assert_eq!(s, 202);
    // The low lane is draining. On Cassandra the first sends wait for the broadcast's whole
    // fold (no plan-ahead there), which a loaded machine slows past the sink's usual 20 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while p.sms.count() < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broadcast's first sends never came ({} of 20)",
            p.sms.count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (s, _) = ex
        .post(
            "/send",
            &admin,
            json!({"msg": "call now", "uid": "vip", "opts": {"urgency": "high"}}),
        )
        .await;
    assert_eq!(s, 202);
    let (position, seen) = p
        .sms
        .wait_until(|r| String::from_utf8_lossy(&r.body).contains("call+now"))
        .await;
    // The broadcast makes users + 1 requests; when the high-urgency one arrived, most of them
    // had not been sent yet.
    assert!(
        seen.len() < users as usize + 1,
        "the high-urgency message (request #{position}) waited for the whole backlog"
    );
}

#[tokio::test]
async fn a_redelivered_task_does_not_notify_the_device_twice() {
    let p = providers().await;
    let ex = exchange_with(&p, 3).await;
    enlist(&ex, "erin", json!({"os": "sms", "phone": "+14155550104"})).await;
    let (_, b) = ex
        .post(
            "/send",
            &token("root", true),
            json!({"msg": "once", "uid": "erin"}),
        )
        .await;
    let mid = b["mid"].as_str().unwrap().to_owned();
    p.sms.wait_for(1).await;
    receipts_until(&ex, &mid, |b| b["counts"]["sms"]["sent"] == 1).await;
    // Simulate JetStream redelivering the same task (a dispatcher that crashed before acking):
    // the same payload, published again under another message id.
    let js = ex.running().log.jetstream().clone();
    let task = exchange::dispatch::DispatchTask {
        trace: None,
        mid: mid.parse().unwrap(),
        uid: "erin".into(),
        uids: Vec::new(),
        batch: None,
        tid: None,
        sender: "root".into(),
        msg: "once".into(),
        opts: Default::default(),
        created_at: time::OffsetDateTime::now_utc(),
        only_devices: None,
        requeue: None,
        thread_topic: false,
        fallback_due: None,
        hold_until: None,
        released_from: None,
        only_channels: None,
    };
    js.publish(
        "msgxc.dispatch.normal",
        serde_json::to_vec(&task).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // Wait until the normal lane has nothing pending or unacknowledged.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
            .get_stream("MSGXC_DISPATCH")
            .await
            .unwrap()
            .get_consumer("dispatch-normal")
            .await
            .unwrap();
        let info = consumer.info().await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 && info.delivered.stream_sequence >= 2
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "lane never drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(p.sms.count(), 1, "the device was not notified twice");
}

#[tokio::test]
async fn app_and_websocket_acks_become_receipts() {
    let p = providers().await;
    let ex = exchange_with(&p, 3).await;
    let device = enlist(&ex, "fay", json!({"os": "ios", "token": apns_token(7)})).await;
    let fay = token("fay", false);
    let mut ws = ws_connect(&ex, &fay).await;
    let (_, b) = ex
        .post(
            "/send",
            &token("root", true),
            json!({"msg": "ping", "uid": "fay"}),
        )
        .await;
    let mid = b["mid"].as_str().unwrap().to_owned();
    let frame = common::next_json(&mut ws).await;
    assert_eq!(frame["notification"]["id"], mid.as_str());
    ws.send(Message::Text(
        json!({"action": "ack", "mid": mid, "status": "opened"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let reply = common::next_json(&mut ws).await;
    assert_eq!(reply["action"], "acked", "{reply}");
    let (s, _) = ex
        .post(
            "/ack",
            &fay,
            json!({"mid": mid, "status": "delivered", "device": device}),
        )
        .await;
    assert_eq!(s, 202);
    // Acks for messages not in the caller's inbox, or for foreign devices, are refused.
    assert_eq!(
        ex.post(
            "/ack",
            &token("mallory", false),
            json!({"mid": mid, "status": "opened"})
        )
        .await
        .0,
        404
    );
    assert_eq!(
        ex.post(
            "/ack",
            &fay,
            json!({"mid": mid, "status": "opened", "device": "apns-nope"})
        )
        .await
        .0,
        400
    );
    assert_eq!(
        ex.post("/ack", &fay, json!({"mid": mid, "status": "seen"}))
            .await
            .0,
        400
    );
    let r = receipts_until(&ex, &mid, |b| {
        b["counts"]["websocket"]["opened"] == 1 && b["counts"]["apns"]["delivered"] == 1
    })
    .await;
    assert_eq!(r["count"], 2, "{r}");
    // Receipts are for the sender or an admin only.
    assert_eq!(
        ex.get(&format!("/messages/{mid}/receipts"), &fay).await.0,
        403
    );
}

#[tokio::test]
async fn web_push_is_encrypted_for_the_subscription_and_signed_with_vapid() {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let sink = testkit::providers::webpush_sink().await;
    let vapid_key = exchange::channels::webpush::generate_vapid_key().unwrap();
    let vapid_public = exchange::channels::webpush::vapid_public_key(&vapid_key).unwrap();
    let key_for_config = vapid_key.clone();
    let ex = Exchange::start_with(move |o| {
        o.channels.webpush = Some(exchange::channels::webpush::WebPushConfig {
            vapid_private_key: key_for_config,
            subject: "mailto:ops@example.com".into(),
            allowed_hosts: vec!["127.0.0.1".into()],
        });
        o.gateway.webpush_allowed_hosts = vec!["127.0.0.1".into()];
    })
    .await;
    // The browser side: fetch the VAPID key, subscribe (a real P-256 key pair and auth secret).
    let (s, b) = ex
        .call(
            reqwest::Method::GET,
            "/webpush/vapid-public-key",
            None,
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["publicKey"], vapid_public.as_str());
    let (keypair, auth) = ece::generate_keypair_and_auth_secret().unwrap();
    let endpoint = format!("{}/push/sub1", sink.base_url);
    let gone_endpoint = format!("{}/push/gone", sink.base_url);
    let moved_endpoint = format!("{}/push/moved", sink.base_url);
    for e in [&endpoint, &gone_endpoint, &moved_endpoint] {
        enlist(
            &ex,
            "gina",
            json!({"endpoint": e, "expirationTime": null,
                   "keys": {"p256dh": b64(&keypair.pub_as_raw().unwrap()), "auth": b64(&auth)}}),
        )
        .await;
    }
    sink.script("/push/gone", vec![Reply::status(410, r#"{"errno":106}"#)]);
    // A redirect is not followed (it could lead anywhere off the allow-list).
    sink.script(
        "/push/moved",
        vec![Reply {
            headers: vec![(
                "location".into(),
                format!("{}/push/elsewhere", sink.base_url),
            )],
            ..Reply::status(307, "{}")
        }],
    );
    // Endpoints outside the allow-list are refused at enlistment.
    let (s, b) = ex
        .post(
            "/enlist",
            &token("gina", false),
            json!({"endpoint": "http://10.0.0.1/push/x",
            "keys": {"p256dh": b64(&keypair.pub_as_raw().unwrap()), "auth": b64(&auth)}}),
        )
        .await;
    assert_eq!(
        (s, b["error"]["field"].clone()),
        (400, json!("endpoint")),
        "{b}"
    );

    let (_, b) = ex
        .post("/send", &token("root", true), json!({"msg": "secret text", "uid": "gina",
            "opts": {"urgency": "high", "ttl": 600, "title": "T", "data": {"n": 1}, "collapse_key": "score"}}))
        .await;
    let mid = b["mid"].as_str().unwrap().to_owned();
    let (i, got) = sink.wait_until(|r| r.path == "/push/sub1").await;
    let req = &got[i];
    let header = |k: &str| {
        req.headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("content-encoding"), "aes128gcm");
    assert_eq!(header("ttl"), "600");
    assert_eq!(header("urgency"), "high");
    assert_eq!(header("topic"), "score");
    // The body decrypts with the subscription's private key to exactly what was published.
    let plain = ece::decrypt(&keypair.raw_components().unwrap(), &auth, &req.body).unwrap();
    let payload: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(payload["body"], "secret text");
    assert_eq!(payload["title"], "T");
    assert_eq!(payload["mid"], mid.as_str());
    assert_eq!(payload["data"]["n"], 1);
    assert!(
        !String::from_utf8_lossy(&req.body).contains("secret text"),
        "sent encrypted"
    );
    // VAPID: `vapid t=<ES256 JWT>, k=<public key>`, the JWT signed by that key for this origin.
    let auth_header = header("authorization");
    let rest = auth_header.strip_prefix("vapid ").expect("vapid scheme");
    let part = |name: &str| {
        rest.split(',')
            .map(str::trim)
            .find_map(|p| p.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_owned()
    };
    assert_eq!(part("k"), vapid_public);
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part("k"))
        .unwrap();
    let key = jsonwebtoken::DecodingKey::from_ec_components(&b64(&raw[1..33]), &b64(&raw[33..65]))
        .unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[sink.base_url.as_str()]);
    let claims = jsonwebtoken::decode::<Value>(&part("t"), &key, &validation)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], "mailto:ops@example.com");
    // The 410 subscription is disabled; the redirected one failed for good but stays; the
    // good one stays.
    receipts_until(&ex, &mid, |b| {
        b["counts"]["webpush"]["sent"] == 1 && b["counts"]["webpush"]["failed"] == 2
    })
    .await;
    assert!(
        sink.received().iter().all(|r| r.path != "/push/elsewhere"),
        "the redirect was followed"
    );
    let (_, d) = ex.get("/devices", &token("gina", false)).await;
    assert_eq!(d["count"], 2, "{d}");
}

#[tokio::test]
async fn preferences_and_message_channels_choose_the_channels() {
    let p = providers().await;
    let ex = exchange_with(&p, 3).await;
    let hal = token("hal", false);
    let admin = token("root", true);
    enlist(&ex, "hal", json!({"os": "sms", "phone": "+14155550105"})).await;
    enlist(
        &ex,
        "hal",
        json!({"os": "email", "email": "hal@example.com"}),
    )
    .await;
    let tid = ex.thread(&admin, true, true).await;
    assert_eq!(
        ex.post("/subscribe", &hal, json!({"tid": tid})).await.0,
        200
    );

    // Defaults: everything on.
    let (s, b) = ex.get("/preferences", &hal).await;
    assert_eq!(s, 200);
    assert_eq!(b, json!({"types": {}, "channels": {}, "threads": {}}));
    // Bad channel names are refused, naming the field.
    let (s, b) = ex
        .call(
            reqwest::Method::PUT,
            "/preferences",
            Some(&hal),
            Some(json!({"channels": {"pager": false}})),
        )
        .await;
    assert_eq!(
        (s, b["error"]["field"].clone()),
        (400, json!("channels")),
        "{b}"
    );
    // No SMS in general, but SMS and no e-mail for this thread.
    let prefs = json!({"types": {}, "channels": {"sms": false}, "threads": {tid.clone(): {"sms": true, "email": false}}});
    let (s, b) = ex
        .call(
            reqwest::Method::PUT,
            "/preferences",
            Some(&hal),
            Some(prefs.clone()),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(ex.get("/preferences", &hal).await.1, prefs);

    let (_, b) = ex
        .post("/send", &admin, json!({"msg": "direct", "uid": "hal"}))
        .await;
    let direct = b["mid"].as_str().unwrap().to_owned();
    let (_, b) = ex
        .post("/publish", &admin, json!({"tid": tid, "msg": "in thread"}))
        .await;
    let threaded = b["mid"].as_str().unwrap().to_owned();
    let (_, b) = ex
        .post(
            "/send",
            &admin,
            json!({"msg": "mail only", "uid": "hal", "opts": {"channels": ["email"]}}),
        )
        .await;
    let restricted = b["mid"].as_str().unwrap().to_owned();

    let d = receipts_until(&ex, &direct, |b| b["counts"]["email"]["sent"] == 1).await;
    assert_eq!(
        d["counts"],
        json!({"email": {"sent": 1}}),
        "direct: e-mail only"
    );
    let t = receipts_until(&ex, &threaded, |b| b["counts"]["sms"]["sent"] == 1).await;
    assert_eq!(t["counts"], json!({"sms": {"sent": 1}}), "thread: SMS only");
    let r = receipts_until(&ex, &restricted, |b| b["counts"]["email"]["sent"] == 1).await;
    assert_eq!(r["counts"], json!({"email": {"sent": 1}}));
    assert_eq!(p.sms.count(), 1);
    assert_eq!(p.smtp.messages().len(), 2);
    // The inbox got all three regardless.
    ex.inbox_until(&hal, 3).await;
}

#[tokio::test]
async fn fcm_v1_with_an_oauth_token_from_the_service_account() {
    let email = "msgxc@test-project.iam.gserviceaccount.com";
    let sink = testkit::providers::fcm_sink(&fixture("test-only-rs256.pub.pem"), email).await;
    let key = json!({
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": "k1",
        "private_key": String::from_utf8(fixture("test-only-rs256.key.pem")).unwrap(),
        "client_email": email,
        "client_id": "1",
        "token_uri": format!("{}/token", sink.base_url),
    })
    .to_string();
    let base = sink.base_url.clone();
    let ex = Exchange::start_with(move |o| {
        o.channels.fcm = Some(exchange::channels::fcm::FcmConfig {
            service_account_json: key,
            project_id: None,
            base_url: base,
        });
        o.dispatch.backoff_base = Duration::from_millis(50);
    })
    .await;
    enlist(
        &ex,
        "ivy",
        json!({"os": "android", "token": "fcm-token-good"}),
    )
    .await;
    let gone = enlist(
        &ex,
        "ivy",
        json!({"os": "android", "token": "fcm-token-gone"}),
    )
    .await;
    sink.script(
        "fcm-token-gone",
        vec![Reply::status(404, r#"{"error":{"code":404,"status":"NOT_FOUND","message":"Requested entity was not found.","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#)],
    );
    sink.script(
        "fcm-token-good",
        vec![Reply::status(
            503,
            r#"{"error":{"code":503,"status":"UNAVAILABLE"}}"#,
        )],
    );
    let admin = token("root", true);
    let (_, b) = ex
        .post("/send", &admin, json!({"msg": "fcm hi", "uid": "ivy",
            "opts": {"urgency": "high", "ttl": 60, "collapse_key": "c1", "title": "T", "data": {"n": 5, "s": "x"}}}))
        .await;
    let mid = b["mid"].as_str().unwrap().to_owned();
    let r = receipts_until(&ex, &mid, |b| {
        b["counts"]["fcm"]["sent"] == 1 && b["counts"]["fcm"]["failed"] == 1
    })
    .await;
    assert_eq!(r["count"], 2);
    let got = sink.received();
    // One OAuth token, fetched once and reused for all three sends.
    assert_eq!(got.iter().filter(|r| r.path == "/token").count(), 1);
    let sends: Vec<_> = got
        .iter()
        .filter(|r| r.path.contains("/messages/"))
        .collect();
    assert_eq!(sends.len(), 3, "good (503, then 200) + gone (404)");
    assert!(
        sends
            .iter()
            .all(|r| r.path.starts_with("/v1/projects/test-project/"))
    );
    let ok = sends
        .iter()
        .rev()
        .find(|r| r.path.ends_with("fcm-token-good"))
        .unwrap();
    let m: Value = serde_json::from_slice(&ok.body).unwrap();
    let m = &m["message"];
    assert_eq!(m["notification"], json!({"title": "T", "body": "fcm hi"}));
    assert_eq!(m["data"]["mid"], mid.as_str());
    assert_eq!(m["data"]["n"], "5", "data values are strings");
    assert_eq!(m["data"]["s"], "x");
    assert_eq!(
        m["android"],
        json!({"priority": "HIGH", "ttl": "60s", "collapse_key": "c1"})
    );
    assert_eq!(m["apns"]["headers"]["apns-priority"], "10");
    // UNREGISTERED disables the device.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ex.get("/devices", &token("ivy", false)).await.1["results"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["id"] == gone.as_str())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "UNREGISTERED device not disabled"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn mqtt_user_and_thread_topics_carry_the_seed_payload() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let broker = testkit::providers::Mosquitto::start();
    let url = broker.url();
    let ex = Exchange::start_with(move |o| {
        o.channels.mqtt = Some(exchange::channels::mqtt::MqttConfig {
            url,
            topic_base: "msgxc".into(),
            qos: 1,
            retain: false,
        });
    })
    .await;
    let admin = token("root", true);
    let jo = token("jo", false);
    let tid = ex.thread(&admin, true, true).await;
    assert_eq!(ex.post("/subscribe", &jo, json!({"tid": tid})).await.0, 200);

    // A subscriber such as a mobile client would run.
    let (client, mut events) = AsyncClient::new(
        MqttOptions::new("test-subscriber", "127.0.0.1", broker.port),
        64,
    );
    client
        .subscribe("/msgxc/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(ev) = events.poll().await {
            match ev {
                Event::Incoming(Packet::SubAck(_)) => {
                    let _ = tx.send(None);
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let body: Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                    let _ = tx.send(Some((p.topic.clone(), body)));
                }
                _ => {}
            }
        }
    });
    assert!(matches!(rx.recv().await, Some(None)), "subscribed");

    let (_, b) = ex
        .post(
            "/publish",
            &admin,
            json!({"tid": tid, "msg": "to the thread"}),
        )
        .await;
    let mid = b["mid"].as_str().unwrap().to_owned();
    let mut got = Vec::new();
    while got.len() < 2 {
        let item = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("MQTT publications within 10 s");
        if let Some(Some(x)) = item {
            got.push(x);
        }
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let (thread_topic, thread_body) = &got[0];
    let (user_topic, user_body) = &got[1];
    assert_eq!(
        thread_topic,
        &format!("/msgxc/thread/{tid}/messages/publish")
    );
    assert_eq!(user_topic, "/msgxc/user/jo/messages/publish");
    for body in [thread_body, user_body] {
        assert_eq!(body["id"], mid.as_str());
        assert_eq!(body["payload"]["message"], "to the thread");
        assert_eq!(body["payload"]["author"]["username"], "root");
        assert!(body["time"].is_string());
    }
    assert_eq!(thread_body["payload"]["context"]["type"], "thread");
    assert_eq!(
        thread_body["payload"]["context"]["metadata"]["id"],
        tid.as_str()
    );
    assert_eq!(user_body["payload"]["context"]["type"], "user");
    assert_eq!(user_body["payload"]["context"]["metadata"]["id"], "jo");
    receipts_until(&ex, &mid, |b| b["counts"]["mqtt"]["sent"] == 1).await;
}

#[tokio::test]
async fn skip_if_seen_spares_the_phone_when_the_socket_acknowledged() {
    let p = providers().await;
    let sms_url = p.sms.base_url.clone();
    let ex = Exchange::start_with(move |o| {
        o.channels.sms = Some(SmsConfig {
            account_sid: SID.into(),
            auth_token: SMS_TOKEN.into(),
            from: "+15550001111".into(),
            base_url: sms_url,
        });
        o.dispatch.skip_if_seen = Duration::from_millis(1500);
    })
    .await;
    enlist(&ex, "kim", json!({"os": "sms", "phone": "+14155550106"})).await;
    let mut ws = ws_connect(&ex, &token("kim", false)).await;
    let admin = token("root", true);
    let send = |msg: &'static str, urgency: &'static str| {
        let ex = &ex;
        let admin = admin.clone();
        async move {
            let (s, b) = ex
                .post(
                    "/send",
                    &admin,
                    json!({"msg": msg, "uid": "kim", "opts": {"urgency": urgency}}),
                )
                .await;
            assert_eq!(s, 202);
            b["mid"].as_str().unwrap().to_owned()
        }
    };
    // m1 is read on the live socket right away: no SMS for it.
    let m1 = send("seen on the socket", "normal").await;
    let frame = common::next_json(&mut ws).await;
    assert_eq!(frame["notification"]["id"], m1.as_str());
    ws.send(Message::Text(
        json!({"action": "ack", "mid": m1, "status": "delivered"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    assert_eq!(common::next_json(&mut ws).await["action"], "acked");
    // m2 is not acknowledged: it is pushed after the grace window.
    send("not acknowledged", "normal").await;
    // m3 is urgent: pushed at once, even to a connected user.
    send("urgent", "high").await;
    let (i2, got) = p
        .sms
        .wait_until(|r| String::from_utf8_lossy(&r.body).contains("not+acknowledged"))
        .await;
    let i3 = got
        .iter()
        .position(|r| String::from_utf8_lossy(&r.body).contains("urgent"))
        .expect("the urgent message was pushed");
    assert!(
        i3 < i2,
        "the urgent message did not wait for the grace window"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bodies: Vec<String> = p
        .sms
        .received()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).to_string())
        .collect();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert!(
        !bodies.iter().any(|b| b.contains("seen+on+the+socket")),
        "{bodies:?}"
    );
}

#[tokio::test]
async fn fallback_channels_are_used_only_for_unread_notifications() {
    let p = providers().await;
    let ex = exchange_with(&p, 3).await;
    let lee = token("lee", false);
    enlist(&ex, "lee", json!({"os": "sms", "phone": "+14155550107"})).await;
    enlist(
        &ex,
        "lee",
        json!({"os": "email", "email": "lee@example.com"}),
    )
    .await;
    let admin = token("root", true);
    let fallback = json!({"after": "1s", "channels": ["email"]});
    // Bad fallbacks are refused.
    for (bad, field) in [
        (
            json!({"after": "1w", "channels": ["email"]}),
            "opts.fallback.after",
        ),
        (
            json!({"after": 0, "channels": ["email"]}),
            "opts.fallback.after",
        ),
        (
            json!({"after": 60, "channels": []}),
            "opts.fallback.channels",
        ),
        (
            json!({"after": 60, "channels": ["websocket"]}),
            "opts.fallback.channels",
        ),
    ] {
        let (s, b) = ex
            .post(
                "/send",
                &admin,
                json!({"msg": "x", "uid": "lee", "opts": {"fallback": bad}}),
            )
            .await;
        assert_eq!((s, b["error"]["field"].clone()), (400, json!(field)), "{b}");
    }
    let (_, b) = ex
        .post("/send", &admin, json!({"msg": "read in time", "uid": "lee", "opts": {"title": "first", "fallback": fallback}}))
        .await;
    let read_mid = b["mid"].as_str().unwrap().to_owned();
    let (_, b) = ex
        .post("/send", &admin, json!({"msg": "left unread", "uid": "lee", "opts": {"title": "second", "fallback": fallback}}))
        .await;
    let unread_mid = b["mid"].as_str().unwrap().to_owned();
    // The normal channels (SMS) get both at once; e-mail is reserved for the fallback.
    p.sms.wait_for(2).await;
    assert!(
        p.smtp.messages().is_empty(),
        "no e-mail before the fallback is due"
    );
    let (s, _) = ex
        .patch("/notifications", &lee, json!({"ids": [read_mid]}))
        .await;
    assert_eq!(s, 200);
    // After the delay only the unread one falls back to e-mail.
    let mails = p.smtp.wait_for(1).await;
    assert!(mails[0].contains("Subject: second"), "{}", mails[0]);
    receipts_until(&ex, &unread_mid, |b| b["counts"]["email"]["sent"] == 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        p.smtp.messages().len(),
        1,
        "the read notification did not fall back"
    );
    let r = receipts_until(&ex, &read_mid, |b| b["counts"]["sms"]["sent"] == 1).await;
    assert!(r["counts"].get("email").is_none(), "{r}");
}

#[tokio::test]
async fn a_pending_fallback_survives_a_restart() {
    let p = providers().await;
    let mut ex = exchange_with(&p, 3).await;
    enlist(
        &ex,
        "max",
        json!({"os": "email", "email": "max@example.com"}),
    )
    .await;
    let (s, _) = ex
        .post("/send", &token("root", true), json!({"msg": "later", "uid": "max",
            "opts": {"title": "fallback after restart", "fallback": {"after": 2, "channels": ["email"]}}}))
        .await;
    assert_eq!(s, 202);
    ex.caught_up().await;
    // Stop everything (gateway, projector, dispatcher) before the fallback is due...
    let opts = ex.opts.clone();
    ex.running.take().unwrap().shutdown().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(p.smtp.messages().is_empty());
    // ...and start again on the same store and JetStream: the fallback still fires.
    let running = msgxc::start(opts).await.unwrap();
    ex.running = Some(running);
    let mails = p.smtp.wait_for(1).await;
    assert!(mails[0].contains("Subject: fallback after restart"));
}

#[tokio::test]
async fn a_disabled_type_is_not_pushed_either() {
    let p = providers().await;
    let ex = exchange_with(&p, 3).await;
    let admin = token("root", true);
    for t in ["promo", "news"] {
        let (s, _) = ex
            .post("/types", &admin, json!({"name": t, "title": t}))
            .await;
        assert_eq!(s, 201);
    }
    enlist(&ex, "ned", json!({"os": "sms", "phone": "+14155550108"})).await;
    let (s, _) = ex
        .call(
            reqwest::Method::PUT,
            "/preferences",
            Some(&token("ned", false)),
            Some(json!({"types": {"promo": false}})),
        )
        .await;
    assert_eq!(s, 200);
    ex.post(
        "/send",
        &admin,
        json!({"msg": "buy now", "uid": "ned", "type": "promo"}),
    )
    .await;
    let (_, b) = ex
        .post(
            "/send",
            &admin,
            json!({"msg": "headline", "uid": "ned", "type": "news"}),
        )
        .await;
    let news = b["mid"].as_str().unwrap().to_owned();
    receipts_until(&ex, &news, |b| b["counts"]["sms"]["sent"] == 1).await;
    ex.caught_up().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bodies: Vec<String> = p
        .sms
        .received()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).to_string())
        .collect();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert!(bodies[0].contains("headline"));
}

/// A provider's 429 pauses every send to it for its Retry-After, the throttled send is tried
/// again within the batch (it is not an attempt: with one attempt allowed there is still no
/// dead letter), and the rate limit spaces the sends.
#[tokio::test]
async fn a_429_pauses_the_provider_and_the_batch_drains_at_its_pace() {
    let p = providers().await;
    let rate = 40.0;
    let limits = [(
        "sms".to_owned(),
        exchange::dispatch::Limits {
            rate: Some(rate),
            burst: 1,
            in_flight: 4,
        },
    )]
    .into_iter()
    .collect();
    let ex = exchange_paced(&p, 1, limits).await;
    let users: Vec<String> = (0..12).map(|i| format!("pace{i:02}")).collect();
    for (i, u) in users.iter().enumerate() {
        enlist(
            &ex,
            u,
            json!({"os": "sms", "phone": format!("+1415555{i:04}")}),
        )
        .await;
    }
    p.sms.script(
        "+14155550003",
        vec![Reply {
            headers: vec![("retry-after".into(), "1".into())],
            ..Reply::status(429, r#"{"code":20429,"message":"Too Many Requests"}"#)
        }],
    );
    let (s, b) = ex
        .post(
            "/multicast",
            &token("root", true),
            json!({"msg": "paced", "uids": users}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let mid = b["mid"].as_str().unwrap().to_owned();
    let got = p.sms.wait_for(users.len() + 1).await;
    let to = |r: &testkit::providers::Received| {
        form_value(&String::from_utf8_lossy(&r.body), "To").unwrap_or_default()
    };
    let throttled = got.iter().position(|r| to(r) == "+14155550003").unwrap();
    // Nothing left in the second after the 429 (what was in flight aside).
    let paused = &got[throttled..];
    let soon = paused
        .iter()
        .filter(|r| r.at.duration_since(paused[0].at) < Duration::from_millis(900))
        .count();
    assert!(soon <= 4, "{soon} sends within the pause");
    // Paced: after the pause the sends come one per 1/40 s (burst 1), give or take jitter.
    let after: Vec<_> = paused
        .iter()
        .filter(|r| r.at.duration_since(paused[0].at) >= Duration::from_millis(900))
        .collect();
    assert!(after.len() >= 3, "{} sends after the pause", after.len());
    let span = after.last().unwrap().at.duration_since(after[0].at);
    let spaced = Duration::from_secs_f64((after.len() - 1) as f64 / rate * 0.7);
    assert!(span >= spaced, "{} sends in {span:?}", after.len());
    let r = receipts_until(&ex, &mid, |b| b["counts"]["sms"]["sent"] == 12).await;
    assert_eq!(r["counts"]["sms"].get("failed"), None, "{r}");
    let (_, dead) = ex.get("/deliveries/failed", &token("root", true)).await;
    assert_eq!(dead["count"], 0, "{dead}");
}

#[tokio::test]
async fn metrics_count_provider_calls_by_channel_lane_and_outcome_and_the_queue() {
    let p = providers().await;
    let ex = exchange_with(&p, 3).await;
    enlist(&ex, "mia", json!({"os": "sms", "phone": "+14155550142"})).await;
    // A number the provider refuses for good: a dead letter.
    p.sms.script(
        "+14155550143",
        vec![Reply::status(
            400,
            r#"{"code":21211,"message":"Invalid 'To' Phone Number","status":400}"#,
        )],
    );
    enlist(&ex, "max", json!({"os": "sms", "phone": "+14155550143"})).await;
    // A slow provider: the task stays in flight on its lane while the call waits.
    p.sms.set_delay(Duration::from_millis(1500));
    let (s, _) = ex
        .post(
            "/send",
            &token("root", true),
            json!({"msg": "counted", "uid": "mia", "opts": {"urgency": "high"}}),
        )
        .await;
    assert_eq!(s, 202);
    let (s, _) = ex
        .post(
            "/send",
            &token("root", true),
            json!({"msg": "refused", "uid": "max"}),
        )
        .await;
    assert_eq!(s, 202);
    let root = ex.base.trim_end_matches("/api/v1").to_owned();
    let scrape = || async {
        ex.http
            .get(format!("{root}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape().await;
        if text
            .lines()
            .any(|l| l == r#"msgxc_dispatch_queue_in_flight{lane="high"} 1"#)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never in flight: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.sms.set_delay(Duration::ZERO);
    p.sms.wait_for(2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let want = [
        r#"msgxc_dispatch_sends_total{channel="sms",lane="high",outcome="accepted"} 1"#,
        r#"msgxc_dispatch_sends_total{channel="sms",lane="normal",outcome="device_gone"} 1"#,
        r#"msgxc_dispatch_send_seconds_count{channel="sms",lane="high"} 1"#,
        r#"msgxc_dispatch_dead_letters_total{channel="sms"} 1"#,
        r#"msgxc_dispatch_queue_pending{lane="high"} 0"#,
        r#"msgxc_dispatch_queue_in_flight{lane="high"} 0"#,
        r#"msgxc_dispatch_queue_pending{lane="normal"} 0"#,
        "msgxc_projector_lag_seconds 0.0",
    ];
    loop {
        let text = scrape().await;
        if want.iter().all(|w| text.lines().any(|l| l == *w)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{want:?} in {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `HH:MM:SS` in `zone`, `offset` seconds from now.
fn local_clock(zone: &str, offset: i64) -> String {
    let tz = jiff::tz::TimeZone::get(zone).unwrap();
    let at = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(offset))
        .unwrap();
    at.to_zoned_datetime(tz).strftime("%H:%M:%S").to_string()
}

fn sms_bodies(p: &Providers) -> Vec<String> {
    p.sms
        .received()
        .iter()
        .map(|r| form_value(&String::from_utf8_lossy(&r.body), "Body").unwrap_or_default())
        .collect()
}

/// A user's quiet hours (in their zone) hold a normal push until the window ends: the inbox
/// entry is there at once, the receipt says held and why, and the SMS goes out once when the
/// window is over. High-urgency and critical messages go at once; only admins send critical.
#[tokio::test]
async fn quiet_hours_hold_pushes_until_they_end_but_not_urgent_or_critical_ones() {
    let p = providers().await;
    let ex = exchange_with(&p, 3).await;
    let admin = token("root", true);
    let quinn = token("quinn", false);
    enlist(&ex, "quinn", json!({"os": "sms", "phone": "+14155550170"})).await;
    let put = |body: Value| {
        ex.call(
            reqwest::Method::PUT,
            "/preferences",
            Some(&quinn),
            Some(body),
        )
    };
    for (bad, field) in [
        (json!({"timezone": "Mars/Olympus"}), "timezone"),
        (
            json!({"quiet_hours": {"from": "22:00", "to": "7am"}}),
            "quiet_hours",
        ),
        (
            json!({"quiet_hours": {"from": "22:00", "to": "22:00"}}),
            "quiet_hours",
        ),
    ] {
        let (s, b) = put(bad).await;
        assert_eq!(s, 400, "{b}");
        assert!(
            b["error"]["message"].as_str().unwrap().contains(field),
            "{b}"
        );
    }
    // Quiet from 20 s ago until 10 s from now, New York time.
    let zone = "America/New_York";
    let window = json!({"from": local_clock(zone, -20), "to": local_clock(zone, 10)});
    let (s, b) = put(json!({"timezone": zone, "quiet_hours": window})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["timezone"], zone);
    assert_eq!(b["quiet_hours"], window);
    let (s, b) = ex
        .post(
            "/send",
            &quinn,
            json!({"msg": "x", "uid": "quinn", "opts": {"critical": true}}),
        )
        .await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = ex
        .post(
            "/send",
            &admin,
            json!({"msg": "x", "uid": "quinn", "opts": {"critical": "yes"}}),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    let send = |msg: &'static str, opts: Value| {
        let admin = admin.clone();
        let ex = &ex;
        async move {
            let (s, b) = ex
                .post(
                    "/send",
                    &admin,
                    json!({"msg": msg, "uid": "quinn", "opts": opts}),
                )
                .await;
            assert_eq!(s, 202, "{b}");
            b["mid"].as_str().unwrap().to_owned()
        }
    };
    let sent_at = std::time::Instant::now();
    let quiet = send("goodnight digest", json!({})).await;
    let urgent = send("your code is 1234", json!({"urgency": 4})).await;
    let critical = send("storm warning", json!({"critical": true})).await;
    let held = receipts_until(&ex, &quiet, |b| b["counts"]["sms"]["held"] == 1).await;
    let reason = held["results"][0]["reason"].as_str().unwrap();
    assert!(reason.starts_with("quiet hours until "), "{held}");
    for mid in [&urgent, &critical] {
        receipts_until(&ex, mid, |b| b["counts"]["sms"]["sent"] == 1).await;
    }
    // Not held: the inbox entry.
    let inbox = ex.inbox_until(&quinn, 3).await;
    assert!(inbox.to_string().contains("goodnight digest"), "{inbox}");
    let early = sms_bodies(&p);
    if sent_at.elapsed() < Duration::from_secs(8) {
        assert!(
            !early.iter().any(|b| b.contains("goodnight")),
            "sent during quiet hours: {early:?}"
        );
    }
    // Released when the window ends, once.
    let r = receipts_until(&ex, &quiet, |b| b["counts"]["sms"]["sent"] == 1).await;
    assert_eq!(r["results"][0]["reason"], Value::Null, "{r}");
    assert!(
        sent_at.elapsed() >= Duration::from_secs(4),
        "released early"
    );
    ex.caught_up().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bodies = sms_bodies(&p);
    assert_eq!(bodies.len(), 3, "{bodies:?}");
    assert_eq!(
        bodies.iter().filter(|b| b.contains("goodnight")).count(),
        1,
        "{bodies:?}"
    );
}

/// A frequency cap per user and channel: what is over it is suppressed (a receipt with the
/// reason, no SMS), a critical message is not counted or capped, and another user has their
/// own count.
#[tokio::test]
async fn frequency_caps_suppress_what_is_over_the_cap_but_not_critical_messages() {
    let p = providers().await;
    let ex = exchange_tuned(&p, 3, |d| {
        d.caps.by.insert(
            "sms".into(),
            exchange::dispatch::Cap::parse("2/1h").unwrap(),
        );
    })
    .await;
    let admin = token("root", true);
    enlist(&ex, "cara", json!({"os": "sms", "phone": "+14155550181"})).await;
    enlist(&ex, "cato", json!({"os": "sms", "phone": "+14155550182"})).await;
    let mut mids = Vec::new();
    for (i, opts) in [json!({}), json!({}), json!({}), json!({"critical": true})]
        .into_iter()
        .enumerate()
    {
        let (s, b) = ex
            .post(
                "/send",
                &admin,
                json!({"msg": format!("note {i}"), "uid": "cara", "opts": opts}),
            )
            .await;
        assert_eq!(s, 202, "{b}");
        let mid = b["mid"].as_str().unwrap().to_owned();
        // One at a time, so which one is over the cap is known.
        receipts_until(&ex, &mid, |b| {
            b["count"] == 1 && b["results"][0]["status"] != "held"
        })
        .await;
        mids.push(mid);
    }
    let status = |b: &Value| b["results"][0]["status"].as_str().unwrap().to_owned();
    let mut got = Vec::new();
    for mid in &mids {
        let (_, b) = ex.get(&format!("/messages/{mid}/receipts"), &admin).await;
        got.push(status(&b));
        if status(&b) == "suppressed" {
            assert_eq!(b["results"][0]["reason"], "frequency cap: sms 2/1h", "{b}");
            assert_eq!(b["counts"]["sms"]["suppressed"], 1, "{b}");
        }
    }
    assert_eq!(got, ["sent", "sent", "suppressed", "sent"]);
    let (s, b) = ex
        .post("/send", &admin, json!({"msg": "hello cato", "uid": "cato"}))
        .await;
    assert_eq!(s, 202);
    receipts_until(&ex, b["mid"].as_str().unwrap(), |b| {
        b["counts"]["sms"]["sent"] == 1
    })
    .await;
    let bodies = sms_bodies(&p);
    assert_eq!(bodies.len(), 4, "{bodies:?}");
    assert!(!bodies.iter().any(|b| b == "note 2"), "{bodies:?}");
    let metrics = ex
        .http
        .get(ex.url("/metrics").replace("/api/v1", ""))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"msgxc_dispatch_stopped_total{channel="sms",rule="frequency_cap"} 1"#),
        "{metrics}"
    );
}
