//! Experiments end to end: variants and a holdout on a multicast, each recipient's live frame
//! and inbox entry in their variant, nothing for the holdout, clicks, opens and conversions
//! tracked into the report, sticky arms on a second send, the checks on bad input, and a
//! rebuild that reproduces the report.

mod common;

use std::time::Duration;

use common::{Exchange, next_json, read_models, token, ws_connect};
use exchange::experiment::{Arm, Experiment, Variant};
use futures::StreamExt;
use projections::SqliteStore;
use serde_json::{Value, json};
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

/// Polls the report until `done` says so (the projection is asynchronous).
async fn report_until(ex: &Exchange, admin: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (s, b) = ex.get("/experiments/promo", admin).await;
        if s == 200 && done(&b) {
            return b;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "report never got there: {s} {b}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

    let report = report_until(&ex, &admin, |r| {
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
    let report = report_until(&ex, &admin, |r| r["messages"] == 2).await;
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
