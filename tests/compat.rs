//! Seed 001's clients against `MSGXC_COMPAT=msgxc`: the seed's documented requests, verbatim
//! where the seed's examples are valid JSON, answered as the seed documents (200 and the
//! literal `true`, the id in `Msgxc-Id`, errors as `{"code","msg"}`), and the messages really
//! delivered; `Msgxc-Api: 2` gets the exchange's own answers; other routes are unchanged.

mod common;

use common::{Exchange, token};
use serde_json::{Value, json};

/// `(status, Msgxc-Id, body)` of a seed-001 POST.
async fn seed_post(
    ex: &Exchange,
    path: &str,
    token: Option<&str>,
    body: &str,
    new_shape: bool,
) -> (u16, Option<String>, Value) {
    let mut req = ex
        .http
        .post(ex.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if new_shape {
        req = req.header("Msgxc-Api", "2");
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let id = resp
        .headers()
        .get("msgxc-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, id, body)
}

#[tokio::test]
async fn seed_001_clients_get_the_seed_s_answers_and_their_messages_arrive() {
    let ex = Exchange::start_with(|o| o.gateway.compat.msgxc = true).await;
    let (alice, bob, admin) = (
        token("alice", false),
        token("bob", false),
        token("root", true),
    );
    let (s, _) = ex.call(reqwest::Method::GET, "/ping", None, None).await;
    assert_eq!(s, 200);

    // Enlist, as the seed's examples (an iOS token, a Web Push subscription).
    let (s, id, body) = seed_post(
        &ex,
        "/enlist",
        Some(&alice),
        r#"{"os": "ios", "token": "ad62ea6ea23d6974871cf59a06cbdb2783b85adbafe3355c0007362249d3e75c"}"#,
        false,
    )
    .await;
    assert_eq!((s, &body), (200, &json!(true)));
    let device = id.expect("Msgxc-Id names the device");
    let (_, devices) = ex.get("/devices", &alice).await;
    assert_eq!(devices["results"][0]["id"], device.as_str(), "{devices}");

    // A thread (not a seed route: the exchange's own answer), then the seed's thread routes.
    let tid = ex.thread(&alice, true, true).await;
    let (s, id, body) = seed_post(
        &ex,
        "/subscribe",
        Some(&bob),
        &format!(r#"{{"tid": "{tid}"}}"#),
        false,
    )
    .await;
    assert_eq!(
        (s, &body, id.as_deref()),
        (200, &json!(true), Some(tid.as_str()))
    );
    let (s, mid, body) = seed_post(
        &ex,
        "/publish",
        Some(&alice),
        &format!(r#"{{"tid": "{tid}", "msg":"the message you want to send", "opts": {{ }}}}"#),
        false,
    )
    .await;
    assert_eq!((s, &body), (200, &json!(true)));
    let mid = mid.expect("Msgxc-Id names the message");
    let inbox = ex.inbox_until(&bob, 1).await;
    assert_eq!(inbox["results"][0]["id"], mid.as_str());
    assert_eq!(inbox["results"][0]["msg"], "the message you want to send");
    let (s, _, body) = seed_post(
        &ex,
        "/unsubscribe",
        Some(&bob),
        &format!(r#"{{"tid": "{tid}"}}"#),
        false,
    )
    .await;
    assert_eq!((s, &body), (200, &json!(true)));

    // The admin functions, with the seed's bodies.
    for (path, body) in [
        (
            "/broadcast",
            r#"{"msg":"the message to broadcast", "opts": { "data": { "key": "whatever" }} }"#,
        ),
        (
            "/multicast",
            r#"{"msg":"the message to broadcast", "uids":["00000000-0000-0000-0000-000000000000"], "opts": { "data": { "key": "whatever" }}}"#,
        ),
        (
            "/send",
            r#"{"msg":"the message to send", "uid":"14fb0860-b4bf-11e9-8971-7b80435315ac", "opts": { "data": { "key": "whatever" }}}"#,
        ),
    ] {
        let (s, id, answer) = seed_post(&ex, path, Some(&admin), body, false).await;
        assert_eq!((s, &answer), (200, &json!(true)), "{path}");
        assert!(id.is_some(), "{path}: Msgxc-Id");
    }
    let them = token("14fb0860-b4bf-11e9-8971-7b80435315ac", false);
    let inbox = ex.inbox_until(&them, 1).await;
    assert_eq!(inbox["results"][0]["msg"], "the message to send");
    assert_eq!(inbox["results"][0]["data"]["key"], "whatever");

    // Errors as the seed's server gave them, with their status.
    let (s, _, body) = seed_post(&ex, "/broadcast", Some(&bob), r#"{"msg":"no"}"#, false).await;
    assert_eq!(s, 403);
    assert_eq!(body["code"], 403, "{body}");
    assert!(
        body["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    let (s, _, body) = seed_post(&ex, "/publish", Some(&alice), r#"{"tid": 1"#, false).await;
    assert_eq!((s, &body["code"]), (400, &json!(400)), "{body}");
    let (s, _, body) = seed_post(&ex, "/send", None, r#"{"msg":"x","uid":"bob"}"#, false).await;
    assert_eq!((s, &body["code"]), (401, &json!(401)), "{body}");

    // A client that asks for the exchange's own shapes gets them.
    let (s, id, body) = seed_post(
        &ex,
        "/send",
        Some(&admin),
        r#"{"msg":"new shape", "uid":"bob"}"#,
        true,
    )
    .await;
    assert_eq!(s, 202, "{body}");
    assert!(body["mid"].is_string() && id.is_none(), "{body}");
    let (s, _, body) = seed_post(&ex, "/broadcast", Some(&bob), r#"{"msg":"no"}"#, true).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    // Other routes keep theirs.
    let (s, body) = ex.get("/notifications", &bob).await;
    assert_eq!(s, 200);
    assert!(body["results"].is_array(), "{body}");
}

/// The original server's `POST /cancel {tid, mid}` on a scheduled thread message: `true`, then
/// a `{"code":409}` once it is cancelled; a wrong thread is a 404. Without the face it answers
/// as `DELETE /messages/{mid}/schedule` does.
#[tokio::test]
async fn seed_001_cancel_stops_a_scheduled_message() {
    let ex = Exchange::start_with(|o| o.gateway.compat.msgxc = true).await;
    let owner = token("olga", false);
    let tid = ex.thread(&owner, true, false).await;
    let schedule = || {
        let (ex, owner, tid) = (&ex, owner.clone(), tid.clone());
        async move {
            let (s, _, b) = seed_post(
                ex,
                "/publish",
                Some(&owner),
                &json!({"tid": tid, "msg": "later", "opts": {"delay": "1h"}}).to_string(),
                true,
            )
            .await;
            assert_eq!(s, 202, "{b}");
            b["mid"].as_str().unwrap().to_owned()
        }
    };
    let mid = schedule().await;
    let other = uuid::Uuid::now_v7().to_string();
    let body = |tid: &str| json!({"tid": tid, "mid": mid}).to_string();
    let (s, _, b) = seed_post(&ex, "/cancel", Some(&owner), &body(&other), false).await;
    assert_eq!((s, &b["code"]), (404, &json!(404)), "{b}");
    let (s, _, b) = seed_post(&ex, "/cancel", Some(&owner), &body(&tid), false).await;
    assert_eq!((s, &b), (200, &json!(true)), "{b}");
    let (s, _, b) = seed_post(&ex, "/cancel", Some(&owner), &body(&tid), false).await;
    assert_eq!((s, &b["code"]), (409, &json!(409)), "{b}");
    // This exchange's own answer, and without a thread.
    let mid = schedule().await;
    let (s, _, b) = seed_post(
        &ex,
        "/cancel",
        Some(&owner),
        &json!({"mid": mid}).to_string(),
        true,
    )
    .await;
    assert_eq!((s, &b["status"]), (200, &json!("cancelled")), "{b}");
    let (_, listed) = ex.get("/messages/scheduled", &owner).await;
    assert_eq!(listed["scheduled"], json!([]), "{listed}");
}
