//! Experiments end to end: variants and a holdout on a multicast, each recipient's live frame
//! and inbox entry in their variant, nothing for the holdout, clicks, opens and conversions
//! tracked into the report, sticky arms on a second send, the checks on bad input, and a
//! rebuild that reproduces the report.

mod common;

use std::time::Duration;

use common::{Exchange, next_json, read_models, token, ws_connect};
use exchange::channels::{ChannelSettings, sms::SmsConfig};
use exchange::experiment::{Arm, Experiment, Variant};
use exchange::links::LinkSigner;
use futures::StreamExt;
use projections::SqliteStore;
use serde_json::{Value, json};
use testkit::providers::{form_value, sms_sink};
use uuid::Uuid;

fn spec() -> Experiment {
    let variant = |name: &str, msg: Option<&str>| Variant {
        name: name.into(),
        weight: 1.0,
        msg: msg.map(str::to_owned),
        title: None,
        opts: None,
    };
    Experiment {
        id: "promo".into(),
        variants: vec![variant("A", None), variant("B", Some("B text"))],
        holdout: 20.0,
        test_share: 0.0,
        promoted: None,
    }
}

fn body(uids: &[String], msg: &str) -> Value {
    json!({
        "uids": uids,
        "msg": msg,
        "variants": [{"name": "A", "weight": 1}, {"name": "B", "weight": 1, "msg": "B text"}],
        "holdout": 20,
        "opts": {"experiment": "promo"},
    })
}

/// Polls a report at `path` until `done` says so (the projection is asynchronous).
async fn get_until(ex: &Exchange, admin: &str, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (s, b) = ex.get(path, admin).await;
        if s == 200 && done(&b) {
            return b;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never got there: {s} {b}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the experiment's report until `done` says so.
async fn report_until(
    ex: &Exchange,
    admin: &str,
    id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    get_until(ex, admin, &format!("/experiments/{id}"), done).await
}

fn arm<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["arms"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("no arm {name} in {report}"))
}

#[tokio::test]
async fn variants_holdout_tracking_and_a_rebuilt_report() {
    let ex = Exchange::start_with(|o| o.gateway.max_recipients = 100).await;
    let admin = token("root", true);
    let spec = spec();
    let uids: Vec<String> = (0..60).map(|i| format!("p{i:02}")).collect();
    let of = |arm: Arm| {
        uids.iter()
            .filter(|u| spec.assign(u) == arm)
            .cloned()
            .collect::<Vec<_>>()
    };
    let (a, b, held) = (of(Arm::Variant(0)), of(Arm::Variant(1)), of(Arm::Holdout));
    assert!(a.len() >= 2 && b.len() >= 2 && !held.is_empty());

    let mut ws_b = ws_connect(&ex, &token(&b[0], false)).await;
    let mut ws_held = ws_connect(&ex, &token(&held[0], false)).await;
    let (s, r) = ex.post("/multicast", &admin, body(&uids, "base")).await;
    assert_eq!(s, 202, "{r}");
    let mid: Uuid = r["mid"].as_str().unwrap().parse().unwrap();

    // Live: the B user's frame is B's; the held-out user gets nothing.
    let frame = next_json(&mut ws_b).await;
    assert_eq!(frame["action"], "new", "{frame}");
    assert_eq!(frame["notification"]["variant"], "B", "{frame}");
    assert_eq!(frame["notification"]["experiment"], "promo");
    assert_eq!(frame["notification"]["msg"], "B text");
    let nothing = tokio::time::timeout(Duration::from_millis(800), async {
        loop {
            match ws_held.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => return t,
                Some(Ok(_)) => continue,
                _ => futures::future::pending().await,
            }
        }
    })
    .await;
    assert!(nothing.is_err(), "the holdout got a frame: {nothing:?}");

    // Inboxes.
    let inbox = ex.inbox_until(&token(&a[0], false), 1).await;
    assert_eq!(inbox["results"][0]["variant"], "A");
    assert_eq!(inbox["results"][0]["msg"], "base");
    let inbox = ex.inbox_until(&token(&b[1], false), 1).await;
    assert_eq!(inbox["results"][0]["msg"], "B text");
    ex.caught_up().await;
    let (_, inbox) = ex.get("/notifications", &token(&held[0], false)).await;
    assert_eq!(inbox["count"], 0, "{inbox}");

    // What users did: a click (A), an open (B), a conversion (held out, no mid).
    let (s, r) = ex
        .post(
            "/track",
            &token(&a[0], false),
            json!({"event": "click", "mid": mid}),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    let (s, r) = ex
        .post(
            "/ack",
            &token(&b[0], false),
            json!({"mid": mid, "status": "opened"}),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    let (s, r) = ex
        .post(
            "/track",
            &token(&held[0], false),
            json!({"event": "purchase", "props": {"amount": 12}}),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    // Refused: a message not in the caller's inbox, a bad event name.
    let (s, r) = ex
        .post(
            "/track",
            &token(&a[0], false),
            json!({"event": "purchase", "mid": Uuid::now_v7()}),
        )
        .await;
    assert_eq!(s, 404, "{r}");
    let (s, r) = ex
        .post(
            "/track",
            &token(&a[0], false),
            json!({"event": "no spaces"}),
        )
        .await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (400, Some("invalid_field")),
        "{r}"
    );

    let report = report_until(&ex, &admin, "promo", |r| {
        r["arms"].as_array().is_some_and(|a| {
            a.iter()
                .map(|x| x["converted"].as_u64().unwrap_or(0))
                .sum::<u64>()
                == 1
        }) && arm(r, "A")["clicked"] == 1
            && arm(r, "B")["opened"] == 1
    })
    .await;
    assert_eq!(report["control"], "holdout");
    assert_eq!(report["messages"], 1);
    assert_eq!(arm(&report, "holdout")["exposed"], held.len());
    assert_eq!(arm(&report, "A")["exposed"], a.len());
    assert_eq!(arm(&report, "B")["exposed"], b.len());
    assert_eq!(arm(&report, "holdout")["converted"], 1);
    assert_eq!(arm(&report, "A")["opened"], 1, "a click is an open");
    assert!(arm(&report, "B")["against_control"]["always_valid_p"].is_number());
    assert!(report["sample_ratio"]["p_value"].is_number());
    assert_eq!(report["winner"], Value::Null, "nothing is significant here");
    // Receipts name the variant.
    let (s, r) = ex.get(&format!("/messages/{mid}/receipts"), &admin).await;
    assert_eq!((s, r["experiment"].as_str()), (200, Some("promo")), "{r}");

    // Who may read it, and bad queries.
    assert_eq!(
        ex.get("/experiments/promo", &token(&a[0], false)).await.0,
        403
    );
    assert_eq!(ex.get("/experiments/nope", &admin).await.0, 404);
    assert_eq!(ex.get("/experiments/promo?metric=x", &admin).await.0, 400);

    // Bad experiments are refused before anything is stored.
    for (bad, field) in [
        (
            json!({"variants": [{"name": "A", "weight": 1}, {"name": "A", "weight": 1}]}),
            "variants[1].name",
        ),
        (
            json!({"variants": [{"name": "A", "weight": 1}], "holdout": 150}),
            "holdout",
        ),
        (
            json!({"variants": [{"name": "A", "weight": 0}, {"name": "B", "weight": 1}]}),
            "variants[0].weight",
        ),
        (json!({"opts": {"experiment": "x"}}), "variants"),
        (
            json!({"variants": [{"name": "A", "weight": 1}, {"name": "B", "weight": 1, "opts": {"urgency": 9}}]}),
            "variants[1].opts",
        ),
    ] {
        let mut req = json!({"uid": "p00", "msg": "m"});
        req.as_object_mut()
            .unwrap()
            .extend(bad.as_object().unwrap().clone());
        let (s, r) = ex.post("/send", &admin, req).await;
        assert_eq!(s, 400, "{r}");
        assert!(
            r["error"]["message"].as_str().unwrap_or("").contains(field),
            "{field}: {r}"
        );
    }
    // The same id with other weights would move users between arms.
    let mut changed = body(&uids, "x");
    changed["variants"][1]["weight"] = json!(3);
    let (s, r) = ex.post("/multicast", &admin, changed).await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (409, Some("experiment_changed")),
        "{r}"
    );

    // A second send: the same arms, nobody exposed twice.
    let (s, r) = ex.post("/multicast", &admin, body(&uids, "again")).await;
    assert_eq!(s, 202, "{r}");
    let mid2: Uuid = r["mid"].as_str().unwrap().parse().unwrap();
    let inbox = ex.inbox_until(&token(&b[1], false), 2).await;
    assert!(
        inbox["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["variant"] == "B")
    );
    let report = report_until(&ex, &admin, "promo", |r| r["messages"] == 2).await;
    let exposed: u64 = report["arms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["exposed"].as_u64().unwrap())
        .sum();
    assert_eq!(exposed, 60);

    // A rebuild reproduces every read model, the experiment's included, and sends nothing.
    ex.caught_up().await;
    let dir = tempfile::tempdir().unwrap();
    let rebuilt = SqliteStore::open(&dir.path().join("rebuilt.sqlite3")).unwrap();
    projections::rebuild(&ex.running().log, &rebuilt, 2)
        .await
        .unwrap();
    assert!(
        projections::Store::outbox(&rebuilt, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let users: Vec<&str> = [&a[0], &b[0], &b[1], &held[0]]
        .iter()
        .map(|s| s.as_str())
        .collect();
    let live = read_models(ex.running().store.as_ref(), &users, &[], &[mid, mid2]).await;
    assert_eq!(live, read_models(&rebuilt, &users, &[], &[mid, mid2]).await);
    assert_eq!(
        live["messages"][mid.to_string()]["experiment"]["record"]["messages"],
        2
    );
}

/// Links in an SMS body arrive as tracked links: following one records the click (once per
/// link) into the experiment and answers 302 to the link of the recipient's variant; a forged
/// or altered token is a 400, never a redirect.
#[tokio::test]
async fn tracked_links_record_clicks_and_redirect_only_to_the_message_s_links() {
    let sms = sms_sink("AC0123", "sms-token").await;
    let base = sms.base_url.clone();
    let ex = Exchange::start_with(move |o| {
        o.channels = ChannelSettings {
            sms: Some(SmsConfig {
                account_sid: "AC0123".into(),
                auth_token: "sms-token".into(),
                from: "+15550001111".into(),
                base_url: base,
            }),
            links: Some(LinkSigner::new(
                b"link-secret",
                Some("https://go.example".into()),
            )),
            ..Default::default()
        };
    })
    .await;
    let admin = token("root", true);
    let (s, r) = ex
        .post(
            "/enlist",
            &token("sam", false),
            json!({"os": "sms", "phone": "+14155550123"}),
        )
        .await;
    assert_eq!(s, 201, "{r}");
    let (s, r) = ex
        .post(
            "/send",
            &admin,
            json!({"uid": "sam", "msg": "Sale! https://shop.example/a and https://shop.example/b.",
                   "opts": {"experiment": "sale"},
                   "variants": [{"name": "A", "weight": 1},
                                {"name": "B", "weight": 1, "msg": "B: https://shop.example/b-only"}]}),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    let mid: Uuid = r["mid"].as_str().unwrap().parse().unwrap();
    let got = sms.wait_for(1).await;
    let text = form_value(std::str::from_utf8(&got[0].body).unwrap(), "Body").unwrap();
    assert!(!text.contains("shop.example"), "links are wrapped: {text}");
    let wrapped: Vec<&str> = exchange::links::links(&text)
        .into_iter()
        .map(|r| &text[r])
        .collect();
    let b = Experiment {
        id: "sale".into(),
        holdout: 0.0,
        ..spec()
    }
    .assign("sam")
        == Arm::Variant(1);
    assert_eq!(wrapped.len(), if b { 1 } else { 2 }, "{text}");
    assert!(
        wrapped
            .iter()
            .all(|u| u.starts_with("https://go.example/r/"))
    );

    // Followed (twice): 302 to the message's own link, one click recorded.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let root = ex.base.trim_end_matches("/api/v1").to_owned();
    let token_of = |u: &str| u.trim_start_matches("https://go.example/r/").to_owned();
    let last = wrapped.last().unwrap();
    for _ in 0..2 {
        let resp = http
            .get(format!("{root}/r/{}", token_of(last)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 302);
        let want = if b {
            "https://shop.example/b-only"
        } else {
            "https://shop.example/b"
        };
        assert_eq!(resp.headers()["location"], want);
    }
    // Forged: another message id or another user under the same signature, or garbage.
    let mut forged = token_of(last).into_bytes();
    let i = forged.len() / 2;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    for t in [
        String::from_utf8(forged).unwrap(),
        "x".repeat(60),
        "not-a-token".into(),
    ] {
        let resp = http.get(format!("{root}/r/{t}")).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{t}");
        assert!(resp.headers().get("location").is_none());
    }
    // The click reached the experiment once (with the open and delivery it implies).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (s, r) = ex.get("/experiments/sale", &admin).await;
        let clicked: u64 = r["arms"].as_array().map_or(0, |a| {
            a.iter().map(|x| x["clicked"].as_u64().unwrap_or(0)).sum()
        });
        if s == 200 && clicked == 1 {
            let arm = &r["arms"][usize::from(b)];
            assert_eq!(
                (arm["clicked"].as_u64(), arm["opened"].as_u64()),
                (Some(1), Some(1)),
                "{r}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no click: {s} {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One `tracked` event for two follows of the same link (its token deduplicates).
    ex.caught_up().await;
    let events = ex.running().log.last_seq().await.unwrap();
    let mut clicks = 0;
    for seq in 1..=events {
        if let Ok(stored) = ex.running().log.get(seq).await
            && let exchange::Event::Tracked(t) = &stored.envelope.event
        {
            assert_eq!((t.uid.as_str(), t.mid), ("sam", Some(mid)));
            clicks += 1;
        }
    }
    assert_eq!(clicks, 1);
}

/// A broadcast tested on a share of its audience, then its winner promoted to the rest: the
/// rest get the promoted variant, the tested users nothing more, the report counts the test
/// only; a second promotion, one of an experiment without a share and one by someone else are
/// refused.
#[tokio::test]
async fn a_test_share_then_its_promotion() {
    let ex = Exchange::start_with(|o| o.gateway.max_recipients = 100).await;
    let admin = token("root", true);
    let uids: Vec<String> = (0..40).map(|i| format!("s{i:02}")).collect();
    // Known users: each enlists a device.
    for (i, u) in uids.iter().enumerate() {
        let (s, b) = ex
            .post(
                "/enlist",
                &token(u, false),
                json!({"os": "ios", "token": format!("{i:064x}")}),
            )
            .await;
        assert!(s == 201 || s == 200, "{b}");
    }
    ex.caught_up().await;
    let (s, r) = ex
        .post(
            "/send",
            &admin,
            json!({"uid": "s00", "msg": "m", "variants": [{"name": "A", "weight": 1}],
                   "holdout": 10, "opts": {"test_share": 20}}),
        )
        .await;
    assert_eq!(
        (s, r["error"]["field"].as_str()),
        (400, Some("opts.test_share")),
        "{r}"
    );
    let (s, r) = ex
        .post(
            "/broadcast",
            &admin,
            json!({"msg": "base", "opts": {"experiment": "staged", "test_share": 30},
                   "variants": [{"name": "A", "weight": 1}, {"name": "B", "weight": 1, "msg": "B wins"}]}),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    let spec = Experiment {
        id: "staged".into(),
        test_share: 30.0,
        holdout: 0.0,
        ..spec()
    };
    let tested: Vec<&String> = uids
        .iter()
        .filter(|u| spec.assign(u) != Arm::Later)
        .collect();
    let waiting: Vec<&String> = uids
        .iter()
        .filter(|u| spec.assign(u) == Arm::Later)
        .collect();
    assert!(!tested.is_empty() && !waiting.is_empty());
    ex.inbox_until(&token(tested[0], false), 1).await;
    ex.caught_up().await;
    let (_, inbox) = ex.get("/notifications", &token(waiting[0], false)).await;
    assert_eq!(inbox["count"], 0, "held back: {inbox}");
    let report = report_until(&ex, &admin, "staged", |r| r["messages"] == 1).await;
    let exposed: u64 = report["arms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["exposed"].as_u64().unwrap())
        .sum();
    // The admin is a known user too (and in the test or not, by the same hash).
    let admin_tested = u64::from(spec.assign("root") != Arm::Later);
    assert_eq!(exposed, tested.len() as u64 + admin_tested);
    assert_eq!(report["test_share"], 30.0);

    // Who may promote, and what.
    let (s, _) = ex
        .post(
            "/experiments/staged/promote",
            &token("s01", false),
            json!({"variant": "B"}),
        )
        .await;
    assert_eq!(s, 403);
    let (s, r) = ex
        .post(
            "/experiments/staged/promote",
            &admin,
            json!({"variant": "C"}),
        )
        .await;
    assert_eq!(
        (s, r["error"]["field"].as_str()),
        (400, Some("variant")),
        "{r}"
    );
    let (s, r) = ex
        .post(
            "/experiments/staged/promote",
            &admin,
            json!({"variant": "B"}),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    let promoted = r["mid"].as_str().unwrap().to_owned();
    for u in &waiting {
        let inbox = ex.inbox_until(&token(u, false), 1).await;
        assert_eq!(inbox["results"][0]["id"], promoted.as_str());
        assert_eq!(inbox["results"][0]["msg"], "B wins");
    }
    ex.caught_up().await;
    let (_, inbox) = ex.get("/notifications", &token(tested[0], false)).await;
    assert_eq!(
        inbox["count"], 1,
        "a tested user gets nothing more: {inbox}"
    );
    let report = report_until(&ex, &admin, "staged", |r| r["promoted"] == "B").await;
    let exposed_after: u64 = report["arms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["exposed"].as_u64().unwrap())
        .sum();
    assert_eq!(exposed_after, exposed, "the promotion measures no one");
    let (s, r) = ex
        .post(
            "/experiments/staged/promote",
            &admin,
            json!({"variant": "A"}),
        )
        .await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (409, Some("already_promoted")),
        "{r}"
    );
}

/// Online time: a WebSocket session, once closed, is folded into the user's online time; an
/// admin sees who is connected, when each was last seen and their seconds per day.
#[tokio::test]
async fn online_time_from_websocket_sessions() {
    let ex = Exchange::start().await;
    let admin = token("root", true);
    let mut ws = ws_connect(&ex, &token("olga", false)).await;
    // The connection stamps its presence right after its hello.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let r = loop {
        let (s, r) = ex.get("/presence?uids=olga,nobody", &admin).await;
        assert_eq!(s, 200, "{r}");
        if r["results"][0]["online"] == true {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "never online: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(r["results"][1]["online"], false);
    assert_eq!(r["results"][1]["sessions"], 0);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    use futures::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        r#"{"action":"ping"}"#.into(),
    ))
    .await
    .unwrap();
    let _ = next_json(&mut ws).await;
    ws.close(None).await.unwrap();
    drop(ws);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, r) = ex.get("/presence?uids=olga", &admin).await;
        let u = &r["results"][0];
        if u["sessions"] == 1 {
            assert!(u["online_seconds"].as_u64().unwrap() >= 1, "{u}");
            assert!(u["last_seen"].is_string());
            let today = time::OffsetDateTime::now_utc().date().to_string();
            let days = u["days"].as_array().unwrap();
            assert!(
                days.iter().any(|d| d["day"] == today.as_str()) || days.len() == 2,
                "{u}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no session: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, r) = ex.get("/presence", &admin).await;
    assert_eq!((s, r["error"]["field"].as_str()), (400, Some("uids")));
    let (s, _) = ex.get("/presence?uids=olga", &token("olga", false)).await;
    assert_eq!(s, 403);
}

/// Polls the funnel report at `query` until `done` says so.
async fn funnel_until(
    ex: &Exchange,
    admin: &str,
    query: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    get_until(ex, admin, &format!("/reports/funnel?{query}"), done).await
}

fn funnel_row<'a>(report: &'a Value, key: &[(&str, Value)]) -> &'a Value {
    report["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| key.iter().all(|(k, v)| &r[*k] == v)))
        .unwrap_or_else(|| panic!("no row {key:?} in {report}"))
}

/// The funnel of a multicast with variants (B at another urgency), over SMS devices (one
/// number dead) and the inbox: sent, provider-accepted, delivered, opened, clicked and
/// converted per channel and variant, a conversion without a mid attributed to the newest
/// message within the window, time to open, who may read which report, bad queries, and a
/// rebuild that gives the same report.
#[tokio::test]
async fn the_funnel_counts_each_step_by_channel_and_variant_and_rebuilds_the_same() {
    let sms = sms_sink("AC0123", "sms-token").await;
    sms.script(
        "+14155550199",
        vec![testkit::providers::Reply::status(
            400,
            r#"{"code":21211,"message":"Invalid 'To' Phone Number","status":400}"#,
        )],
    );
    let base = sms.base_url.clone();
    let ex = Exchange::start_with(move |o| {
        o.gateway.max_recipients = 100;
        o.channels = ChannelSettings {
            sms: Some(SmsConfig {
                account_sid: "AC0123".into(),
                auth_token: "sms-token".into(),
                from: "+15550001111".into(),
                base_url: base,
            }),
            ..Default::default()
        };
    })
    .await;
    let admin = token("root", true);
    let spec = Experiment {
        id: "fun".into(),
        holdout: 0.0,
        ..spec()
    };
    let uids: Vec<String> = (0..12).map(|i| format!("f{i:02}")).collect();
    let a: Vec<&String> = uids
        .iter()
        .filter(|u| spec.assign(u) == Arm::Variant(0))
        .collect();
    let b: Vec<&String> = uids
        .iter()
        .filter(|u| spec.assign(u) == Arm::Variant(1))
        .collect();
    assert!(a.len() >= 3 && b.len() >= 3, "{a:?} {b:?}");
    // Two A users and one B user have phones; the second A number is dead.
    for (uid, phone) in [
        (a[0], "+14155550101"),
        (a[1], "+14155550199"),
        (b[0], "+14155550102"),
    ] {
        let (s, r) = ex
            .post(
                "/enlist",
                &token(uid, false),
                json!({"os": "sms", "phone": phone}),
            )
            .await;
        assert_eq!(s, 201, "{r}");
    }
    let (s, r) = ex
        .post(
            "/multicast",
            &admin,
            json!({"uids": uids, "msg": "hello",
                   "variants": [{"name": "A", "weight": 1},
                                {"name": "B", "weight": 1, "msg": "B text", "opts": {"urgency": 4}}],
                   "opts": {"experiment": "fun"}}),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    let mid: Uuid = r["mid"].as_str().unwrap().parse().unwrap();
    for u in [a[0], b[0], b[1], b[2]] {
        ex.inbox_until(&token(u, false), 1).await;
    }
    // A[0]: the SMS, then a click. B[0]: the SMS, an opened ack. B[1]: reads the entry.
    // B[2]: a delivered ack, then a purchase without a mid (the newest message it has).
    let steps = [
        ("/track", a[0], json!({"event": "click", "mid": mid})),
        ("/ack", b[0], json!({"mid": mid, "status": "opened"})),
        ("/ack", b[2], json!({"mid": mid, "status": "delivered"})),
        ("/track", b[2], json!({"event": "purchase"})),
    ];
    for (path, uid, body) in steps {
        let (s, r) = ex.post(path, &token(uid, false), body).await;
        assert_eq!(s, 202, "{path} {r}");
    }
    let (s, r) = ex
        .patch(
            &format!("/notifications/{mid}"),
            &token(b[1], false),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{r}");

    let q = format!("mid={mid}&by=channel,variant");
    let report = funnel_until(&ex, &admin, &q, |r| {
        r["total"]["accepted"] == 2 && r["total"]["converted"] == 1 && r["total"]["opened"] == 3
    })
    .await;
    assert_eq!(report["messages"], 1);
    assert_eq!(report["by"], json!(["channel", "variant"]));
    let total = &report["total"];
    assert_eq!(total["sent"], 12, "{report}");
    assert_eq!(
        total["delivered"], 4,
        "click, opened ack, read, delivered ack"
    );
    assert_eq!(total["clicked"], 1);
    assert_eq!(total["rates"]["opened"], json!(3.0 / 12.0));
    assert_eq!(total["time_to_open"]["n"], 3);
    assert!(total["time_to_open"]["p90"].as_f64().unwrap() >= 0.0);
    let row =
        |ch: &str, v: &str| funnel_row(&report, &[("channel", json!(ch)), ("variant", json!(v))]);
    assert_eq!(row("sms", "A")["sent"], 2, "two A users tried on SMS");
    assert_eq!(row("sms", "A")["accepted"], 1, "one number is dead");
    assert_eq!(row("sms", "A")["clicked"], 1);
    assert_eq!(row("sms", "B")["sent"], 1);
    assert_eq!(row("sms", "B")["opened"], 1);
    assert_eq!(row("inbox", "A")["sent"], a.len() - 2);
    assert_eq!(row("inbox", "A")["accepted"], 0);
    assert_eq!(row("inbox", "B")["sent"], b.len() - 1);
    assert_eq!(row("inbox", "B")["opened"], 1, "the read");
    assert_eq!(row("inbox", "B")["converted"], 1);
    // By urgency: B's copy is high (4), A's normal (3).
    let (s, by_urgency) = ex
        .get(&format!("/reports/funnel?mid={mid}&by=urgency"), &admin)
        .await;
    assert_eq!(s, 200, "{by_urgency}");
    assert_eq!(
        funnel_row(&by_urgency, &[("urgency", json!(4))])["sent"],
        b.len()
    );
    assert_eq!(
        funnel_row(&by_urgency, &[("urgency", json!(3))])["sent"],
        a.len()
    );

    // A second message to B[2]; a conversion without a mid now counts for it, once.
    let (s, r) = ex
        .post("/send", &admin, json!({"uid": b[2], "msg": "second"}))
        .await;
    assert_eq!(s, 202, "{r}");
    let mid2: Uuid = r["mid"].as_str().unwrap().parse().unwrap();
    ex.inbox_until(&token(b[2], false), 2).await;
    for _ in 0..2 {
        let (s, r) = ex
            .post("/track", &token(b[2], false), json!({"event": "signup"}))
            .await;
        assert_eq!(s, 202, "{r}");
    }
    let second = funnel_until(&ex, &admin, &format!("mid={mid2}"), |r| {
        r["total"]["converted"] == 1
    })
    .await;
    assert_eq!(second["total"]["sent"], 1);
    ex.caught_up().await;
    let (_, first) = ex.get(&format!("/reports/funnel?mid={mid}"), &admin).await;
    assert_eq!(first["total"]["converted"], 1, "still one: {first}");

    // The experiment's and the time range's reports hold the message; the range also the
    // second one.
    let (s, r) = ex
        .get("/reports/funnel?experiment=fun&by=variant", &admin)
        .await;
    assert_eq!((s, r["messages"].as_u64()), (200, Some(1)), "{r}");
    assert_eq!(funnel_row(&r, &[("variant", json!("B"))])["sent"], b.len());
    let (s, r) = ex.get("/reports/funnel", &admin).await;
    assert_eq!((s, r["messages"].as_u64()), (200, Some(2)), "{r}");
    assert_eq!(r["total"]["sent"], 13);
    let (s, r) = ex
        .get("/reports/funnel?since=2000-01-01&until=2000-01-02", &admin)
        .await;
    assert_eq!((s, r["messages"].as_u64()), (200, Some(0)), "{r}");

    // Who may read which report, and bad queries.
    let user = token(a[0], false);
    assert_eq!(
        ex.get(&format!("/reports/funnel?mid={mid}"), &user).await.0,
        403
    );
    assert_eq!(ex.get("/reports/funnel?experiment=fun", &user).await.0, 403);
    assert_eq!(ex.get("/reports/funnel", &user).await.0, 403);
    let unknown = Uuid::now_v7();
    assert_eq!(
        ex.get(&format!("/reports/funnel?mid={unknown}"), &admin)
            .await
            .0,
        404
    );
    assert_eq!(
        ex.get("/reports/funnel?experiment=nope", &admin).await.0,
        404
    );
    for bad in [
        "by=country",
        "mid=x",
        "since=yesterday",
        "since=2026-01-01&until=2025-01-01",
        "since=2020-01-01&until=2026-01-01",
    ] {
        let (s, r) = ex.get(&format!("/reports/funnel?{bad}"), &admin).await;
        assert_eq!(
            (s, r["error"]["code"].as_str()),
            (400, Some("invalid_field")),
            "{bad}: {r}"
        );
    }
    let (s, r) = ex
        .get(&format!("/reports/funnel?mid={mid}&experiment=fun"), &admin)
        .await;
    assert_eq!(s, 400, "{r}");

    // A rebuild gives the same report and sends nothing.
    ex.caught_up().await;
    let dir = tempfile::tempdir().unwrap();
    let rebuilt = SqliteStore::open(&dir.path().join("rebuilt.sqlite3")).unwrap();
    projections::rebuild(&ex.running().log, &rebuilt, 2)
        .await
        .unwrap();
    assert!(
        projections::Store::outbox(&rebuilt, 10)
            .await
            .unwrap()
            .is_empty()
    );
    use projections::funnel::Dim;
    let dims = [Dim::Channel, Dim::Urgency, Dim::Type, Dim::Variant];
    for m in [mid, mid2] {
        let live = ex.running().store.funnel_message(m).await.unwrap();
        let again = projections::Store::funnel_message(&rebuilt, m)
            .await
            .unwrap();
        assert_eq!(live, again);
        let live =
            projections::funnel::report(ex.running().store.as_ref(), &[live.unwrap()], &dims)
                .await
                .unwrap();
        let again = projections::funnel::report(&rebuilt, &[again.unwrap()], &dims)
            .await
            .unwrap();
        assert_eq!(live, again);
    }
}
