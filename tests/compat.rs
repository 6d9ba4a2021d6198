//! Seed 001's clients against `MSGXC_COMPAT=msgxc`: the seed's documented requests, verbatim
//! where the seed's examples are valid JSON, answered as the seed documents (200 and the
//! literal `true`, the id in `Msgxc-Id`, errors as `{"code","msg"}`), and the messages really
//! delivered; `Msgxc-Api: 2` gets the exchange's own answers; other routes are unchanged.
//! Seed 003's (DataHub) clients against its face at `/compat/datahub/` and, with
//! `MSGXC_COMPAT=datahub-root`, at the root paths: the seed's documented requests with its
//! `Authorization: Token` scheme, answered in the seed's shapes. Seed 004's (Django REST
//! notifications) clients against its face at `/compat/drf/` and, with `drf-root`, at the root:
//! its list, batch and single reads, delete, filter and WebSocket, in its shapes.

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

/// `(status, body)` of a seed-003 request: `Authorization: Token`, as the seed's examples.
async fn datahub(
    ex: &Exchange,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let root = ex.base.trim_end_matches("/api/v1");
    let mut req = ex
        .http
        .request(method, format!("{root}{path}"))
        .header("Accept", "application/json")
        .header("Authorization", format!("Token {token}"));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_owned());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

/// Polls a DataHub listing until it holds `n` entries.
async fn datahub_until(ex: &Exchange, path: &str, token: &str, n: u64) -> Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (s, b) = datahub(ex, reqwest::Method::GET, path, token, None).await;
        assert_eq!(s, 200, "{b}");
        if b["total"].as_u64() == Some(n)
            && b["results"].as_array().map(Vec::len) == Some(n as usize)
        {
            return b;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never held {n}: {b}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn seed_003_clients_send_list_and_count_as_the_seed_documents() {
    let ex = Exchange::start_with(|o| o.gateway.compat.datahub_root = true).await;
    let admin = token("admin@hub.dataio.com", true);
    let (zhang3, li4) = (
        token("zhang3@example.com", false),
        token("li4@example.com", false),
    );
    for name in [
        "admin_message",
        "site_broadcast",
        "private_message",
        "apply_whitelist",
    ] {
        let (s, b) = ex
            .post("/types", &admin, json!({"name": name, "title": name}))
            .await;
        assert_eq!(s, 201, "{b}");
    }
    use reqwest::Method;

    // The seed's admin example, verbatim: three receivers, an empty answer.
    let (s, b) = datahub(
        &ex,
        Method::POST,
        "/notifications",
        &admin,
        Some(
            r#"{
		"type": "admin_message",
		"receiver": "zhang3@example.com,li4@example.com,john@example.com",
		"data": {
			"content": "bla bla ..."
		}
	}"#,
        ),
    )
    .await;
    assert_eq!((s, &b), (200, &Value::Null));
    // The seed's request example for a user's type names no receiver: DataHub found the
    // item's owner itself, which this exchange cannot, so it asks for one.
    let apply = r#"{
		"type": "apply_whitelist",
		"data": {
			"repname": "repo001",
			"itemname": "item123"
		}
	}"#;
    let (s, b) = datahub(&ex, Method::POST, "/notifications", &li4, Some(apply)).await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (400, Some("receiver")),
        "{b}"
    );
    // With its receiver (and the level the seed's queue format gives it), for a client.
    let (s, b) = datahub(
        &ex,
        Method::POST,
        "/notifications",
        &li4,
        Some(
            r#"{"type": "apply_whitelist", "receiver": "zhang3@example.com", "level": 50,
                "forclient": 1, "data": {"repname": "repo001", "itemname": "item123"}}"#,
        ),
    )
    .await;
    assert_eq!((s, &b), (200, &Value::Null));
    let (s, _) = datahub(
        &ex,
        Method::POST,
        "/notifications",
        &li4,
        Some(r#"{"type": "private_message", "receiver": "zhang3@example.com", "data": {"content": "hi"}}"#),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = datahub(
        &ex,
        Method::POST,
        "/notifications",
        &admin,
        Some(r#"{"type": "site_broadcast", "data": {"content": "maintenance tonight"}}"#),
    )
    .await;
    assert_eq!(s, 200);

    // The seed's listing: browser messages by default, newest first, in its shape.
    let list = datahub_until(&ex, "/notifications", &zhang3, 3).await;
    let first = &list["results"][0];
    assert_eq!(first["type"], "site_broadcast", "{list}");
    assert_eq!(first["sender"], "admin@hub.dataio.com");
    assert_eq!(first["data"]["content"], "maintenance tonight");
    assert_eq!(first["level"], 0);
    assert!(
        first["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{first}"
    );
    let ids: Vec<u64> = list["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["messageid"].as_u64().expect("a numeric messageid"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    let mut keys: Vec<&String> = first.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["data", "level", "messageid", "sender", "time", "type"]
    );
    // The client's message is listed for clients only.
    let client = datahub_until(&ex, "/notifications?forclient=1", &zhang3, 1).await;
    assert_eq!(client["results"][0]["type"], "apply_whitelist");
    assert_eq!(client["results"][0]["level"], 50);
    assert_eq!(client["results"][0]["sender"], "li4@example.com");
    assert_eq!(client["results"][0]["data"]["itemname"], "item123");
    // Filters and pages, as the seed's query string spells them.
    let typed = datahub_until(
        &ex,
        "/notifications?type=private_message&sender=li4@example.com",
        &zhang3,
        1,
    )
    .await;
    assert_eq!(typed["results"][0]["data"]["content"], "hi");
    let (_, page) = datahub(
        &ex,
        Method::GET,
        "/notifications?page=2&size=2",
        &zhang3,
        None,
    )
    .await;
    assert_eq!(
        (
            page["total"].as_u64(),
            page["results"].as_array().map(Vec::len)
        ),
        (Some(3), Some(1)),
        "{page}"
    );
    assert_eq!(page["results"][0]["type"], "admin_message");
    let (_, level) = datahub(
        &ex,
        Method::GET,
        "/notifications?forclient=1&level=50&status=0",
        &zhang3,
        None,
    )
    .await;
    assert_eq!(level["total"], 1, "{level}");

    // Unread counts per type; the clear empties them, and status 0/1 follow.
    let (s, stat) = datahub(&ex, Method::GET, "/notification_stat", &zhang3, None).await;
    assert_eq!(s, 200);
    assert_eq!(
        stat,
        json!({"admin_message": 1, "apply_whitelist": 1, "private_message": 1, "site_broadcast": 1})
    );
    let (s, b) = datahub(&ex, Method::DELETE, "/notification_stat", &zhang3, None).await;
    assert_eq!((s, &b), (200, &Value::Null));
    let (_, stat) = datahub(&ex, Method::GET, "/notification_stat", &zhang3, None).await;
    assert_eq!(stat, json!({}));
    let read = datahub_until(&ex, "/notifications?status=1", &zhang3, 3).await;
    assert_eq!(read["results"][2]["type"], "admin_message");
    let (_, unread) = datahub(&ex, Method::GET, "/notifications?status=0", &zhang3, None).await;
    assert_eq!(unread["total"], 0, "{unread}");
    // Li4 got the admin message and the broadcast, and not what they sent.
    datahub_until(&ex, "/compat/datahub/notifications", &li4, 2).await;

    // Bad input and the seed's rules.
    for (who, body, status, field) in [
        (
            &li4,
            r#"{"type": "admin_message", "receiver": "zhang3@example.com", "data": {}}"#,
            403,
            None,
        ),
        (&li4, r#"{"type": "site_broadcast", "data": {}}"#, 403, None),
        (
            &admin,
            r#"{"type": "admin_message", "data": {"content": "x"}}"#,
            400,
            Some("receiver"),
        ),
        (
            &admin,
            r#"{"type": "no_such_type", "receiver": "a", "data": {}}"#,
            400,
            Some("type"),
        ),
        (
            &admin,
            r#"{"type": "admin_message", "receiver": "a", "level": 7, "data": {}}"#,
            400,
            Some("level"),
        ),
        (
            &admin,
            r#"{"type": "admin_message", "receiver": "a", "forclient": 2}"#,
            400,
            Some("forclient"),
        ),
        (&admin, r#"{"receiver": "a"}"#, 400, Some("type")),
        (&admin, r#"{"type": 1"#, 400, None),
    ] {
        let (s, b) = datahub(&ex, Method::POST, "/notifications", who, Some(body)).await;
        assert_eq!(s, status, "{body}: {b}");
        assert!(b["error"]["code"].is_string(), "{body}: {b}");
        if let Some(f) = field {
            assert_eq!(b["error"]["field"], f, "{body}: {b}");
        }
    }
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let body = json!({"type": "admin_message", "receiver": many.join(" "), "data": {}}).to_string();
    let (s, b) = datahub(&ex, Method::POST, "/notifications", &admin, Some(&body)).await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (400, Some("receiver")),
        "{b}"
    );
    for q in ["status=3", "forclient=x", "level=1", "page=0", "size=1000"] {
        let (s, b) = datahub(
            &ex,
            Method::GET,
            &format!("/notifications?{q}"),
            &zhang3,
            None,
        )
        .await;
        assert_eq!(s, 400, "{q}: {b}");
    }
    let root = ex.base.trim_end_matches("/api/v1").to_owned();
    let resp = ex
        .http
        .get(format!("{root}/notifications"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401, "the face needs a token");
}

/// Without `datahub-root` the face answers under `/compat/datahub/` only.
#[tokio::test]
async fn seed_003_face_stays_under_its_prefix_unless_asked_for_at_the_root() {
    let ex = Exchange::start().await;
    let admin = token("root", true);
    let (s, b) = ex
        .post(
            "/types",
            &admin,
            json!({"name": "admin_message", "title": "Admin"}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let body = r#"{"type": "admin_message", "receiver": "bob", "data": {"content": "hello"}}"#;
    let (s, b) = datahub(
        &ex,
        reqwest::Method::POST,
        "/notifications",
        &admin,
        Some(body),
    )
    .await;
    assert_eq!(s, 404, "{b}");
    let (s, b) = datahub(
        &ex,
        reqwest::Method::POST,
        "/compat/datahub/notifications",
        &admin,
        Some(body),
    )
    .await;
    assert_eq!((s, &b), (200, &Value::Null));
    let bob = token("bob", false);
    let list = datahub_until(&ex, "/compat/datahub/notifications", &bob, 1).await;
    assert_eq!(list["results"][0]["data"]["content"], "hello");
    // The same entry through the exchange's own API.
    let inbox = ex.inbox_until(&bob, 1).await;
    assert_eq!(inbox["results"][0]["msg"], "hello");
    assert_eq!(inbox["results"][0]["type"], "admin_message");
}

/// `(status, body)` of a seed-004 request at the server's root.
async fn drf(
    ex: &Exchange,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> (u16, Value) {
    datahub(ex, method, path, token, body).await
}

/// Waits for the next seed-004 socket frame.
async fn drf_frame(ws: &mut common::Ws) -> Value {
    common::next_json(ws).await
}

/// A time as the seed writes it: `YYYY-MM-DDTHH:MM:SS`.
fn is_seed_time(v: &Value) -> bool {
    v.as_str().is_some_and(|t| {
        t.len() == 19
            && t.char_indices().all(|(i, c)| match i {
                4 | 7 => c == '-',
                10 => c == 'T',
                13 | 16 => c == ':',
                _ => c.is_ascii_digit(),
            })
    })
}

#[tokio::test]
async fn seed_004_clients_list_read_delete_filter_and_listen_as_the_seed_documents() {
    use reqwest::Method;
    let ex = Exchange::start_with(|o| o.gateway.compat.drf_root = true).await;
    let admin = token("root", true);
    let ann = token("ann", false);
    // The seed's EVENTS, registered as types.
    for (name, title, description) in [
        (
            "post_like",
            "Post liking",
            "Event triggered when someone like your post",
        ),
        (
            "post_comment",
            "Post commenting",
            "Event triggered when someone comment under your post",
        ),
    ] {
        let (s, b) = ex
            .post(
                "/types",
                &admin,
                json!({"name": name, "title": title, "description": description}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }
    let send = |ntype: &'static str, title: &'static str, msg: &'static str| {
        let (ex, admin) = (&ex, admin.clone());
        async move {
            let (s, b) = ex
                .post(
                    "/send",
                    &admin,
                    json!({"uid": "ann", "type": ntype, "title": title, "msg": msg,
                           "data": {"post": 7}}),
                )
                .await;
            assert_eq!(s, 202, "{b}");
        }
    };
    send("post_like", "Post liked", "Bob likes your post").await;
    send("post_comment", "New comment", "Bob: nice!").await;
    ex.inbox_until(&ann, 2).await;

    // The list: {"count","next","previous","results"} in the seed's notification shape.
    let (s, list) = drf(&ex, Method::GET, "/notifications", &ann, None).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(
        (list["count"].as_u64(), &list["next"], &list["previous"]),
        (Some(2), &Value::Null, &Value::Null),
        "{list}"
    );
    let first = &list["results"][0];
    let mut keys: Vec<&String> = first.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["event", "id", "readed", "user"], "{first}");
    let mut event_keys: Vec<&String> = first["event"].as_object().unwrap().keys().collect();
    event_keys.sort();
    assert_eq!(
        event_keys,
        [
            "author",
            "data",
            "id",
            "message",
            "timestamp",
            "title",
            "type"
        ]
    );
    assert_eq!(first["user"], "ann");
    assert_eq!(first["readed"], Value::Null);
    assert!(is_seed_time(&first["event"]["timestamp"]), "{first}");
    assert_eq!(first["event"]["author"], "root");
    assert_eq!(first["event"]["title"], "New comment");
    assert_eq!(first["event"]["message"], "Bob: nice!");
    assert_eq!(first["event"]["data"], json!({"post": 7}));
    assert_eq!(
        first["event"]["type"],
        json!({"id": 2, "name": "post_comment", "title": "Post commenting",
               "description": "Event triggered when someone comment under your post"})
    );
    let comment = first["id"].as_u64().expect("a numeric id");
    let like = list["results"][1]["id"].as_u64().unwrap();
    assert!(like < comment);
    assert_eq!(list["results"][1]["event"]["type"]["id"], 1);

    // The socket: new notifications, and reads made elsewhere as "readed".
    let root = ex
        .base
        .trim_end_matches("/api/v1")
        .replacen("http://", "ws://", 1);
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{root}/ws/notifications?token={ann}"))
            .await
            .expect("the seed's socket connects");
    send("post_like", "Post liked", "Cat likes your post").await;
    let frame = drf_frame(&mut ws).await;
    assert_eq!(frame["action"], "new", "{frame}");
    assert_eq!(
        frame["notification"]["event"]["message"],
        "Cat likes your post"
    );
    assert_eq!(frame["notification"]["event"]["type"]["name"], "post_like");
    assert_eq!(frame["notification"]["readed"], Value::Null);
    let newest = frame["notification"]["id"].as_u64().unwrap();
    ex.inbox_until(&ann, 3).await;
    let (_, list) = drf(&ex, Method::GET, "/notifications", &ann, None).await;
    assert_eq!(
        list["results"][0], frame["notification"],
        "the socket and the list agree"
    );

    // Batch read with a bare array, from "another device".
    let before = time::OffsetDateTime::now_utc() - time::Duration::seconds(2);
    let (s, read) = drf(
        &ex,
        Method::PATCH,
        "/notifications",
        &ann,
        Some(&format!("[{like}]")),
    )
    .await;
    assert_eq!(s, 200, "{read}");
    assert_eq!(read[0]["id"], like);
    assert!(is_seed_time(&read[0]["readed"]), "{read}");
    let frame = drf_frame(&mut ws).await;
    assert_eq!(frame["action"], "readed", "{frame}");
    assert_eq!(frame["notification"]["id"], like);
    assert!(is_seed_time(&frame["notification"]["readed"]), "{frame}");

    // readed=true|false|<time>.
    let count = |q: &'static str| {
        let (ex, ann) = (&ex, ann.clone());
        async move {
            let (s, b) = drf(ex, Method::GET, &format!("/notifications?{q}"), &ann, None).await;
            assert_eq!(s, 200, "{q}: {b}");
            b["count"].as_u64().unwrap()
        }
    };
    assert_eq!(count("readed=true").await, 1);
    assert_eq!(count("readed=false").await, 2);
    let since = before
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]"
        ))
        .unwrap();
    let (_, b) = drf(
        &ex,
        Method::GET,
        &format!("/notifications?readed={since}"),
        &ann,
        None,
    )
    .await;
    assert_eq!(
        (b["count"].as_u64(), &b["results"][0]["id"]),
        (Some(1), &json!(like)),
        "{b}"
    );
    assert_eq!(count("readed=2999-01-01T00:00:00").await, 0);

    // One read, one delete.
    let (s, one) = drf(
        &ex,
        Method::PATCH,
        &format!("/notifications/{comment}"),
        &ann,
        None,
    )
    .await;
    assert_eq!((s, &one["id"]), (200, &json!(comment)), "{one}");
    assert!(is_seed_time(&one["readed"]), "{one}");
    let frame = drf_frame(&mut ws).await;
    assert_eq!(
        (frame["action"].as_str(), &frame["notification"]["id"]),
        (Some("readed"), &json!(comment))
    );
    let (s, _) = drf(
        &ex,
        Method::DELETE,
        &format!("/notifications/{newest}"),
        &ann,
        None,
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(count("").await, 2);

    // Pages with absolute links that keep the filter.
    let (_, page) = drf(
        &ex,
        Method::GET,
        "/notifications?readed=true&limit=1",
        &ann,
        None,
    )
    .await;
    let next = page["next"].as_str().expect("a next link").to_owned();
    assert!(
        next.starts_with("http://127.0.0.1:")
            && next.contains("/notifications?")
            && next.contains("readed=true")
            && next.contains("limit=1")
            && next.contains("offset=1"),
        "{next}"
    );
    assert_eq!(page["previous"], Value::Null);
    let resp = ex
        .http
        .get(&next)
        .header("Authorization", format!("Token {ann}"))
        .send()
        .await
        .unwrap();
    let second: Value = resp.json().await.unwrap();
    assert_eq!(second["results"][0]["id"], like, "{second}");
    assert!(
        second["previous"]
            .as_str()
            .is_some_and(|p| p.contains("offset=0")),
        "{second}"
    );

    // The filter, the seed's per-user event types.
    let (s, f) = drf(
        &ex,
        Method::PATCH,
        "/notifications/filter",
        &ann,
        Some(r#"{"types": {"post_like": false}}"#),
    )
    .await;
    assert_eq!((s, &f["types"]["post_like"]), (200, &json!(false)), "{f}");
    let (_, f) = drf(&ex, Method::GET, "/notifications/filter", &ann, None).await;
    assert_eq!(f["types"], json!({"post_like": false}));

    // The same face under its prefix.
    let (s, b) = drf(
        &ex,
        Method::GET,
        "/compat/drf/notifications?limit=5",
        &ann,
        None,
    )
    .await;
    assert_eq!((s, b["count"].as_u64()), (200, Some(2)), "{b}");

    // Bad input.
    for (method, path, body, status) in [
        (
            Method::PATCH,
            "/notifications",
            Some(r#"{"ids": [1]}"#),
            400,
        ),
        (Method::PATCH, "/notifications", Some("[]"), 400),
        (Method::PATCH, "/notifications", Some(r#"["x"]"#), 400),
        (Method::PATCH, "/notifications", Some("[999999999]"), 404),
        (Method::PATCH, "/notifications/abc", None, 400),
        (Method::DELETE, "/notifications/999999999", None, 404),
        (Method::GET, "/notifications?readed=yesterday", None, 400),
        (Method::GET, "/notifications?limit=0", None, 400),
    ] {
        let (s, b) = drf(&ex, method.clone(), path, &ann, body).await;
        assert_eq!(s, status, "{method} {path}: {b}");
        assert!(b["error"]["code"].is_string(), "{method} {path}: {b}");
    }
    // Someone else's id is not found.
    let (s, _) = drf(
        &ex,
        Method::PATCH,
        &format!("/notifications/{like}"),
        &token("bob", false),
        None,
    )
    .await;
    assert_eq!(s, 404);
}
