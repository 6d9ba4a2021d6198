//! The HTTP API against a real nats-server and a real SQLite file: every route's success path,
//! authorization, validation and idempotency.

mod common;

use common::{Exchange, token};
use reqwest::Method;
use serde_json::json;

const APNS_TOKEN: &str = "ad62ea6ea23d6974871cf59a06cbdb2783b85adbafe3355c0007362249d3e75c";

#[tokio::test]
async fn ping_needs_no_token() {
    let ex = Exchange::start().await;
    let (s, b) = ex.call(Method::GET, "/ping", None, None).await;
    assert_eq!(s, 200);
    assert_eq!(b["ok"], true);
}

/// `MSGXC_JWT_MAX_LIFETIME` reaches the gateway: a token that lives longer is refused on every
/// route, a shorter one works.
#[tokio::test]
async fn tokens_living_longer_than_the_configured_maximum_are_refused() {
    let ex = Exchange::start_with(|o| {
        o.gateway.jwt_max_lifetime = Some(std::time::Duration::from_secs(300));
    })
    .await;
    // The test tokens live 600 s.
    let (s, b) = ex.get("/devices", &token("bob", false)).await;
    assert_eq!(s, 401, "{b}");
    assert_eq!(
        b["error"]["message"],
        "token lifetime 600 s is over the 300 s this server accepts"
    );
    let short = gateway::auth::sign(
        &jsonwebtoken::EncodingKey::from_secret(common::SECRET.as_bytes()),
        jsonwebtoken::Algorithm::HS256,
        "bob",
        &[],
        120,
        None,
        None,
    )
    .unwrap();
    assert_eq!(ex.get("/devices", &short).await.0, 200);
}

#[tokio::test]
async fn devices_enlist_list_and_remove() {
    let ex = Exchange::start().await;
    let bob = token("bob", false);
    let bodies = [
        json!({"os": "ios", "token": APNS_TOKEN}),
        json!({"os": "android", "token": "e_nslPZejyM:APA91bHR-znf4EuSIKeY9dzlX4cupXA5cdsW1SzOHUFRrsteaL5W"}),
        json!({
            "endpoint": "https://fcm.googleapis.com/fcm/send/czVGxJOoycA:APA91bGZt8FZU2fE",
            "expirationTime": null,
            "keys": {
                "p256dh": "BN81HfHxzt4V4lXDV_2ia8Rl_QvqofvoNI7_MOHCiOMEYuFXFNDBOJzKCCj2nzK5luwnH6rvBCN2jx7lNHpraaw",
                "auth": "0ywNrBxQ-rm4skkHDJB5lw"
            }
        }),
        json!({"os": "sms", "phone": "+14155550100"}),
        json!({"os": "email", "email": "bob@example.com"}),
    ];
    let mut ids = Vec::new();
    for body in &bodies {
        let (s, b) = ex.post("/enlist", &bob, body.clone()).await;
        assert_eq!(s, 201, "{body} -> {b}");
        ids.push(b["id"].as_str().unwrap().to_owned());
    }
    // Re-enlisting the same token is idempotent: 200, same device, no new event.
    let before = ex.running().log.last_seq().await.unwrap();
    let (s, b) = ex.post("/enlist", &bob, bodies[0].clone()).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["id"], ids[0].as_str());
    assert_eq!(ex.running().log.last_seq().await.unwrap(), before);

    let (s, b) = ex.get("/devices", &bob).await;
    assert_eq!(s, 200);
    assert_eq!(b["count"], 5, "{b}");
    let channels: Vec<&str> = b["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["channel"].as_str().unwrap())
        .collect();
    for c in ["apns", "fcm", "webpush", "sms", "email"] {
        assert!(channels.contains(&c), "{c} missing from {channels:?}");
    }

    let (s, _) = ex
        .call(
            Method::DELETE,
            &format!("/devices/{}", ids[0]),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (_, b) = ex.get("/devices", &bob).await;
    assert_eq!(b["count"], 4);
    let (s, b) = ex
        .call(
            Method::DELETE,
            &format!("/devices/{}", ids[0]),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(s, 404, "{b}");
    // Another user cannot remove bob's device.
    let (s, _) = ex
        .call(
            Method::DELETE,
            &format!("/devices/{}", ids[1]),
            Some(&token("eve", false)),
            None,
        )
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn a_push_token_moves_to_the_user_who_enlists_it_last() {
    let ex = Exchange::start().await;
    let (a, b) = (token("a", false), token("b", false));
    assert_eq!(
        ex.post("/enlist", &a, json!({"os":"ios","token":APNS_TOKEN}))
            .await
            .0,
        201
    );
    assert_eq!(
        ex.post("/enlist", &b, json!({"os":"ios","token":APNS_TOKEN}))
            .await
            .0,
        201
    );
    assert_eq!(ex.get("/devices", &a).await.1["count"], 0);
    assert_eq!(ex.get("/devices", &b).await.1["count"], 1);
}

#[tokio::test]
async fn threads_subscriptions_publish_inbox_and_history() {
    let ex = Exchange::start().await;
    let (alice, bob, carol) = (
        token("alice", false),
        token("bob", false),
        token("carol", false),
    );
    let tid = ex.thread(&alice, true, true).await;

    let (s, b) = ex.get(&format!("/threads/{tid}"), &bob).await;
    assert_eq!(s, 200);
    assert_eq!(b["owner"], "alice");
    assert_eq!(b["subscribed"], false);

    for t in [&bob, &carol] {
        let (s, b) = ex.post("/subscribe", t, json!({"tid": tid})).await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["subscribed"], true);
    }
    let (_, b) = ex.get(&format!("/threads/{tid}"), &bob).await;
    assert_eq!(b["subscribed"], true);
    assert_eq!(b["subscribers"], 2);

    let (s, b) = ex
        .post(
            "/publish",
            &alice,
            json!({"tid": tid, "msg": "hello", "opts": {"data": {"k": "v"}}}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let mid = b["mid"].as_str().unwrap().to_owned();

    // A subscriber of an open_publish thread may publish too.
    let (s, b) = ex
        .post("/publish", &bob, json!({"tid": tid, "msg": "hi from bob"}))
        .await;
    assert_eq!(s, 202, "{b}");

    let inbox = ex.inbox_until(&carol, 2).await;
    let first = &inbox["results"][1];
    assert_eq!(first["id"], mid.as_str());
    assert_eq!(first["msg"], "hello");
    assert_eq!(first["sender"], "alice");
    assert_eq!(first["opts"]["data"]["k"], "v");
    assert_eq!(first["read_at"], serde_json::Value::Null);
    assert_eq!(inbox["unread"], 2);
    // Newest first.
    assert_eq!(inbox["results"][0]["msg"], "hi from bob");
    // Bob got alice's message but not his own.
    let bob_inbox = ex.inbox_until(&bob, 1).await;
    assert_eq!(bob_inbox["results"][0]["msg"], "hello");

    // Paging: limit/offset with next/previous.
    let (_, p) = ex.get("/notifications?limit=1&offset=0", &carol).await;
    assert_eq!(p["results"].as_array().unwrap().len(), 1);
    assert_eq!(p["next"], "/api/v1/notifications?limit=1&offset=1");
    assert_eq!(p["previous"], serde_json::Value::Null);
    let (_, p) = ex.get("/notifications?limit=1&offset=1", &carol).await;
    assert_eq!(p["results"][0]["id"], mid.as_str());
    assert_eq!(p["next"], serde_json::Value::Null);
    assert_eq!(p["previous"], "/api/v1/notifications?limit=1&offset=0");

    // Mark read.
    let (s, b) = ex
        .patch("/notifications", &carol, json!({"ids": [mid]}))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["read"], json!([mid]));
    assert_eq!(b["unread"], 1);
    let (_, b) = ex
        .patch("/notifications", &carol, json!({"ids": [mid]}))
        .await;
    assert_eq!(b["read"], json!([]), "already read: nothing changes");

    // History, newest first, for subscribers and the owner.
    let (s, h) = ex.get(&format!("/threads/{tid}/messages"), &carol).await;
    assert_eq!(s, 200, "{h}");
    assert_eq!(h["count"], 2);
    assert_eq!(h["results"][1]["msg"], "hello");

    // Unsubscribe: carol receives no further messages.
    let (s, b) = ex.post("/unsubscribe", &carol, json!({"tid": tid})).await;
    assert_eq!(s, 200);
    assert_eq!(b["subscribed"], false);
    let (s, _) = ex
        .post("/publish", &alice, json!({"tid": tid, "msg": "after"}))
        .await;
    assert_eq!(s, 202);
    ex.inbox_until(&bob, 2).await;
    ex.caught_up().await;
    assert_eq!(ex.get("/notifications", &carol).await.1["count"], 2);
}

#[tokio::test]
async fn admin_broadcast_multicast_and_send() {
    let ex = Exchange::start().await;
    let admin = token("root", true);
    let users: Vec<String> = (0..3).map(|i| format!("u{i}")).collect();
    // Users become known to the exchange by acting (here: enlisting an e-mail address).
    for u in &users {
        let (s, _) = ex
            .post(
                "/enlist",
                &token(u, false),
                json!({"os":"email","email": format!("{u}@example.com")}),
            )
            .await;
        assert_eq!(s, 201);
    }
    let (s, b) = ex
        .post(
            "/broadcast",
            &admin,
            json!({"msg": "to all", "opts": {"data": {"key": "whatever"}}}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    for u in &users {
        let inbox = ex.inbox_until(&token(u, false), 1).await;
        assert_eq!(inbox["results"][0]["msg"], "to all");
        assert_eq!(inbox["results"][0]["opts"]["data"]["key"], "whatever");
    }
    let (s, _) = ex
        .post(
            "/multicast",
            &admin,
            json!({"msg": "some", "uids": ["u0", "u1", "u0"]}),
        )
        .await;
    assert_eq!(s, 202);
    let (s, _) = ex
        .post("/send", &admin, json!({"msg": "one", "uid": "u2"}))
        .await;
    assert_eq!(s, 202);
    // A user the exchange has never seen can be sent to directly.
    let (s, _) = ex
        .post(
            "/send",
            &admin,
            json!({"msg": "hello new", "uid": "newcomer"}),
        )
        .await;
    assert_eq!(s, 202);
    ex.inbox_until(&token("u0", false), 2).await;
    ex.inbox_until(&token("u1", false), 2).await;
    let u2 = ex.inbox_until(&token("u2", false), 2).await;
    assert_eq!(u2["results"][0]["msg"], "one");
    ex.inbox_until(&token("newcomer", false), 1).await;
}

#[tokio::test]
async fn non_admins_and_closed_threads_get_403() {
    let ex = Exchange::start().await;
    let (alice, bob) = (token("alice", false), token("bob", false));
    for (path, body) in [
        ("/broadcast", json!({"msg": "x"})),
        ("/multicast", json!({"msg": "x", "uids": ["a"]})),
        ("/send", json!({"msg": "x", "uid": "a"})),
    ] {
        let (s, b) = ex.post(path, &bob, body).await;
        assert_eq!(s, 403, "{path}: {b}");
        assert_eq!(b["error"]["code"], "forbidden");
    }
    let closed = ex.thread(&alice, false, false).await;
    let (s, b) = ex.post("/subscribe", &bob, json!({"tid": closed})).await;
    assert_eq!(s, 403, "{b}");
    // Reading another user's thread history.
    let (s, _) = ex.get(&format!("/threads/{closed}/messages"), &bob).await;
    assert_eq!(s, 403);
    // Publishing to a closed thread as a non-owner.
    let (s, _) = ex
        .post("/publish", &bob, json!({"tid": closed, "msg": "x"}))
        .await;
    assert_eq!(s, 403);
    // An open-subscribe thread that is not open-publish: subscribers may not publish.
    let t = ex.thread(&alice, true, false).await;
    assert_eq!(ex.post("/subscribe", &bob, json!({"tid": t})).await.0, 200);
    assert_eq!(
        ex.post("/publish", &bob, json!({"tid": t, "msg": "x"}))
            .await
            .0,
        403
    );
    // Owner and admin may.
    assert_eq!(
        ex.post("/publish", &alice, json!({"tid": t, "msg": "x"}))
            .await
            .0,
        202
    );
    let admin = token("root", true);
    assert_eq!(
        ex.post("/subscribe", &admin, json!({"tid": closed}))
            .await
            .0,
        200
    );
    assert_eq!(
        ex.get(&format!("/threads/{closed}/messages"), &admin)
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let ex = Exchange::start().await;
    let alice = token("alice", false);
    let admin = token("root", true);
    let tid = ex.thread(&alice, true, true).await;
    let cases = [
        ("/publish", json!({"msg": "x"}), "tid"),
        ("/publish", json!({"tid": 5, "msg": "x"}), "tid"),
        ("/publish", json!({"tid": "not-a-uuid", "msg": "x"}), "tid"),
        ("/publish", json!({"tid": tid, "msg": ""}), "msg"),
        (
            "/publish",
            json!({"tid": tid, "msg": "x", "opts": {"urgency": 9}}),
            "opts.urgency",
        ),
        (
            "/publish",
            json!({"tid": tid, "msg": "x", "opts": {"data": [1]}}),
            "opts.data",
        ),
        ("/threads", json!({"open_subscribe": true}), "name"),
        (
            "/threads",
            json!({"name": "x", "open_publish": "yes"}),
            "open_publish",
        ),
        ("/enlist", json!({"os": "ios"}), "token"),
        ("/enlist", json!({"os": "ios", "token": "zz"}), "token"),
        ("/enlist", json!({"os": "pager", "token": "x"}), "os"),
        ("/enlist", json!({"os": "sms", "phone": "12345"}), "phone"),
        ("/enlist", json!({"os": "email", "email": "nope"}), "email"),
        (
            "/enlist",
            json!({"endpoint": "https://push.example/x", "keys": {"auth": "0ywNrBxQ-rm4skkHDJB5lw"}}),
            "keys.p256dh",
        ),
        ("/enlist", json!({"token": "x"}), "os"),
        ("/multicast", json!({"msg": "x", "uids": []}), "uids"),
        (
            "/multicast",
            json!({"msg": "x", "uids": ["a", ""]}),
            "uids[1]",
        ),
        (
            "/multicast",
            json!({"msg": "x", "uids": ["a","b","c","d","e","f"]}),
            "uids",
        ),
        ("/send", json!({"msg": "x"}), "uid"),
    ];
    for (path, body, field) in cases {
        let (s, b) = ex.post(path, &admin, body.clone()).await;
        assert_eq!(s, 400, "{path} {body} -> {b}");
        assert_eq!(b["error"]["field"], field, "{path} {body} -> {b}");
        assert!(
            b["error"]["message"].as_str().unwrap().contains(field),
            "{b}"
        );
    }
    // Not JSON at all, and JSON that is not an object.
    let resp = ex
        .http
        .post(ex.url("/publish"))
        .bearer_auth(&alice)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let b: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(b["error"]["code"], "invalid_json");
    let (s, _) = ex.post("/publish", &alice, json!([1, 2])).await;
    assert_eq!(s, 400);
    // Query parameters.
    let (s, b) = ex.get("/notifications?limit=0", &alice).await;
    assert_eq!(s, 400);
    assert_eq!(b["error"]["field"], "limit");
    let (s, b) = ex.get("/notifications?offset=-1", &alice).await;
    assert_eq!(s, 400);
    assert_eq!(b["error"]["field"], "offset");
    // Unknown thread and route.
    let (s, _) = ex
        .get(&format!("/threads/{}", uuid::Uuid::now_v7()), &alice)
        .await;
    assert_eq!(s, 404);
    let (s, b) = ex.get("/nope", &alice).await;
    assert_eq!(s, 404);
    assert_eq!(b["error"]["code"], "not_found");
    let (s, b) = ex.call(Method::PUT, "/publish", Some(&alice), None).await;
    assert_eq!(s, 405, "{b}");
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let ex = Exchange::start().await;
    let alice = token("alice", false);
    let tid = ex.thread(&alice, true, true).await;
    let big = "x".repeat(5000); // the test exchange's limit is 4096 bytes
    let (s, b) = ex
        .post("/publish", &alice, json!({"tid": tid, "msg": big}))
        .await;
    assert_eq!(s, 413, "{b}");
    assert_eq!(b["error"]["code"], "payload_too_large");
}

#[tokio::test]
async fn idempotency_key_yields_one_event_and_the_same_response() {
    let ex = Exchange::start().await;
    let alice = token("alice", false);
    let bob = token("bob", false);
    let tid = ex.thread(&alice, true, true).await;
    assert_eq!(
        ex.post("/subscribe", &bob, json!({"tid": tid})).await.0,
        200
    );
    let body = json!({"tid": tid, "msg": "once"});
    let before = ex.running().log.last_seq().await.unwrap();
    let (s1, b1) = ex
        .post_keyed("/publish", &alice, "key-1", body.clone())
        .await;
    assert_eq!(s1, 202);
    let (s2, b2) = ex.post_keyed("/publish", &alice, "key-1", body).await;
    assert_eq!(s2, 202);
    assert_eq!(b1, b2, "same key, same response");
    assert_eq!(
        ex.running().log.last_seq().await.unwrap(),
        before + 1,
        "one event"
    );
    // The same key from another user is a different request.
    let (s3, _) = ex
        .post_keyed("/threads", &bob, "key-1", json!({"name": "bob's"}))
        .await;
    assert_eq!(s3, 201);
    // Reusing a key for a different kind of request is a conflict.
    let (s4, b4) = ex
        .post_keyed("/threads", &alice, "key-1", json!({"name": "x"}))
        .await;
    assert_eq!(s4, 409, "{b4}");
    assert_eq!(b4["error"]["code"], "idempotency_key_reused");
    ex.inbox_until(&bob, 1).await;
    ex.caught_up().await;
    assert_eq!(ex.get("/notifications", &bob).await.1["count"], 1);
}

/// Deterministic garbage (xorshift) thrown at every write route: the answer is always a JSON
/// 4xx error, never a 5xx, a panic or a dropped connection.
#[tokio::test]
async fn no_input_breaks_the_server() {
    let ex = Exchange::start().await;
    let admin = token("root", true);
    let tid = ex.thread(&admin, true, true).await;
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let fragments = [
        "{",
        "}",
        "[",
        "]",
        "\"",
        ":",
        ",",
        "null",
        "true",
        "1e999",
        "-0",
        "\"tid\"",
        "\"msg\"",
        "\"uids\"",
        "\"opts\"",
        "\"urgency\"",
        "\"data\"",
        "\"os\"",
        "\"endpoint\"",
        "\"keys\"",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\u{1F600}",
        "\u{0}",
        "\"ids\"",
        "\"name\"",
    ];
    let routes = [
        (Method::POST, "/publish"),
        (Method::POST, "/broadcast"),
        (Method::POST, "/multicast"),
        (Method::POST, "/send"),
        (Method::POST, "/enlist"),
        (Method::POST, "/threads"),
        (Method::POST, "/subscribe"),
        (Method::POST, "/unsubscribe"),
        (Method::PATCH, "/notifications"),
    ];
    for i in 0..400 {
        let (method, path) = &routes[i % routes.len()];
        let n = 1 + (next() % 12) as usize;
        let mut body = String::new();
        for _ in 0..n {
            body.push_str(fragments[(next() % fragments.len() as u64) as usize]);
        }
        if i % 7 == 0 {
            body = format!(r#"{{"tid":"{tid}","msg":{body},"uids":[{body}],"os":{body}}}"#);
        }
        let resp = ex
            .http
            .request(method.clone(), ex.url(path))
            .bearer_auth(&admin)
            .body(body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path} {body:?}: connection failed: {e}"));
        let status = resp.status().as_u16();
        let json: serde_json::Value = resp.json().await.unwrap_or_default();
        assert!(
            (200..500).contains(&status),
            "{path} {body:?} -> {status} {json}"
        );
        if status >= 400 {
            assert!(
                json["error"]["code"].is_string(),
                "{path} {body:?} -> {json}"
            );
        }
    }
    // Odd paths and methods too.
    for path in [
        "/threads/%00",
        "/threads/..%2F..",
        "/devices/%FF",
        "/threads/x/messages?limit=1e9",
    ] {
        let (s, _) = ex.get(path, &admin).await;
        assert!((400..500).contains(&s), "{path} -> {s}");
    }
    assert_eq!(ex.get("/ping", &admin).await.0, 200, "still serving");
}

#[tokio::test]
async fn writes_over_the_limits_get_429_and_reads_do_not_count() {
    use gateway::rate::Rate;
    let ex = Exchange::start_with(|o| {
        o.gateway.user_write_rate = Some(Rate {
            per_second: 2,
            burst: 3,
        });
        o.gateway.ip_write_rate = None;
    })
    .await;
    let (alice, bob, admin) = (
        token("alice", false),
        token("bob", false),
        token("root", true),
    );
    let create = |t: &str| {
        let t = t.to_owned();
        let ex = &ex;
        async move {
            ex.http
                .post(ex.url("/threads"))
                .bearer_auth(t)
                .json(&json!({"name": "t"}))
                .send()
                .await
                .unwrap()
        }
    };
    for _ in 0..3 {
        assert_eq!(create(&alice).await.status(), 201);
    }
    let refused = create(&alice).await;
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "{retry}");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    // Reads are not limited; other users and admins have buckets of their own (admins none).
    assert_eq!(ex.get("/notifications", &alice).await.0, 200);
    assert_eq!(create(&bob).await.status(), 201);
    for _ in 0..6 {
        assert_eq!(create(&admin).await.status(), 201);
    }
    // At 2 a second a token is back after half a second.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(create(&alice).await.status(), 201);

    // Per client address, for every caller (admins too).
    let ex = Exchange::start_with(|o| {
        o.gateway.user_write_rate = None;
        o.gateway.ip_write_rate = Some(Rate {
            per_second: 1,
            burst: 4,
        });
    })
    .await;
    for t in [&alice, &bob, &admin, &alice] {
        let (s, b) = ex.post("/threads", t, json!({"name": "t"})).await;
        assert_eq!(s, 201, "{b}");
    }
    let (s, b) = ex.post("/threads", &admin, json!({"name": "t"})).await;
    assert_eq!(s, 429, "{b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("address"),
        "{b}"
    );
    // Requests without a valid token count against the address as well.
    let (s, _) = ex
        .post("/threads", "not.a.token", json!({"name": "t"}))
        .await;
    assert_eq!(s, 429);
}

#[tokio::test]
async fn live_connections_per_user_are_capped() {
    let ex = Exchange::start_with(|o| o.gateway.max_sockets_per_user = 2).await;
    let alice = token("alice", false);
    let first = common::ws_connect(&ex, &alice).await;
    let _second = common::ws_connect(&ex, &alice).await;
    let err = tokio_tungstenite::connect_async(ex.ws_url(&format!("?token={alice}")))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 429),
        "{err:?}"
    );
    // SSE streams count too; another user is not affected.
    let sse = ex
        .http
        .get(ex.url("/stream"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 429);
    let _bob = common::ws_connect(&ex, &token("bob", false)).await;
    // A closed connection frees its place.
    drop(first);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match tokio_tungstenite::connect_async(ex.ws_url(&format!("?token={alice}"))).await {
            Ok(_) => break,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "never freed: {e:?}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn cors_answers_preflights_and_marks_responses_for_the_configured_origins() {
    let ex =
        Exchange::start_with(|o| o.gateway.cors_origins = vec!["https://app.example.com".into()])
            .await;
    let app = "https://app.example.com";
    let preflight = |origin: &'static str| {
        ex.http
            .request(Method::OPTIONS, ex.url("/publish"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization,content-type,idempotency-key",
            )
            .send()
    };
    let r = preflight(app).await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], app);
    let methods = h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_ascii_uppercase();
    assert!(
        methods.contains("POST") && methods.contains("DELETE"),
        "{methods}"
    );
    let headers = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for want in [
        "authorization",
        "idempotency-key",
        "last-event-id",
        "content-type",
    ] {
        assert!(headers.contains(want), "{headers}");
    }
    // Another origin gets no grant.
    let r = preflight("https://evil.example").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // Real responses carry the header, refusals too (a page must be able to read a 401).
    let alice = token("alice", false);
    let r = ex
        .http
        .get(ex.url("/notifications"))
        .header("Origin", app)
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], app);
    let r = ex
        .http
        .get(ex.url("/notifications"))
        .header("Origin", app)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["access-control-allow-origin"], app);
    assert!(
        r.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("retry-after")
    );

    // `*`: any origin, token-only.
    let any = Exchange::start_with(|o| o.gateway.cors_origins = vec!["*".into()]).await;
    let r = any
        .http
        .get(any.url("/ping"))
        .header("Origin", "https://anywhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    // None configured (the default): no CORS at all; a preflight is a 405.
    let none = Exchange::start().await;
    let r = none
        .http
        .request(Method::OPTIONS, none.url("/publish"))
        .header("Origin", app)
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn metrics_count_requests_appends_lag_and_sockets() {
    let ex = Exchange::start().await;
    let (alice, admin) = (token("alice", false), token("root", true));
    let (s, _) = ex
        .post("/send", &admin, json!({"msg": "m", "uid": "alice"}))
        .await;
    assert_eq!(s, 202);
    assert_eq!(ex.get("/notifications", "not.a.token").await.0, 401);
    let _ws = common::ws_connect(&ex, &alice).await;
    ex.caught_up().await;
    let root = ex.base.trim_end_matches("/api/v1").to_owned();
    let resp = ex.http.get(format!("{root}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = resp.text().await.unwrap();
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
    };
    // Routes by template (never with ids), method and status.
    assert_eq!(
        value(r#"msgxc_http_requests_total{route="/api/v1/send",method="POST",status="202"}"#),
        1.0
    );
    assert_eq!(
        value(
            r#"msgxc_http_requests_total{route="/api/v1/notifications",method="GET",status="401"}"#
        ),
        1.0
    );
    assert!(
        value(r#"msgxc_http_request_duration_seconds_count{route="/api/v1/send",method="POST"}"#)
            >= 1.0
    );
    assert!(value("msgxc_jetstream_append_seconds_count") >= 1.0);
    assert_eq!(value("msgxc_projector_lag_events"), 0.0);
    assert!(value("msgxc_projector_checkpoint") >= 1.0);
    assert_eq!(value("msgxc_open_sockets"), 1.0);
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
}

#[tokio::test]
async fn a_websocket_client_over_its_frame_rate_is_closed_with_1008() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let ex = Exchange::start_with(|o| {
        o.gateway.socket_frame_rate = Some(gateway::rate::Rate {
            per_second: 1,
            burst: 5,
        })
    })
    .await;
    let mut ws = common::ws_connect(&ex, &token("alice", false)).await;
    for _ in 0..20 {
        if ws
            .send(Message::Text(r#"{"action":"ping"}"#.into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let (mut pongs, mut close) = (0, None);
    while let Ok(Some(msg)) =
        tokio::time::timeout(std::time::Duration::from_secs(10), ws.next()).await
    {
        match msg {
            Ok(Message::Text(t)) if t.as_str().contains("pong") => pongs += 1,
            Ok(Message::Close(frame)) => {
                close = frame;
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(pongs, 5, "the burst is answered");
    let close = close.expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.as_str().contains("too many frames"));
}

/// Reads what the server sends until it closes the connection; None if it is still open after
/// `within` (the timeouts under test are far shorter).
async fn until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&got).into_owned())
}

use std::time::Duration;

/// `MSGXC_HTTP_HEADER_TIMEOUT` and `MSGXC_HTTP_BODY_TIMEOUT`: a connection that sends nothing,
/// half a request line, or nothing after its last request is closed; a body that stalls gets
/// the JSON 408; an upgraded WebSocket is not subject to either.
#[tokio::test]
async fn silent_and_stalled_clients_are_cut_off_by_the_http_timeouts() {
    use tokio::io::AsyncWriteExt;
    let ex = Exchange::start_with(|o| {
        o.gateway.header_timeout = Duration::from_millis(400);
        o.gateway.body_timeout = Duration::from_millis(400);
    })
    .await;
    let addr = ex.running().addr.unwrap();
    let open = Duration::from_secs(15);

    // Connects and sends nothing.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let said = until_closed(&mut silent, open).await;
    assert_eq!(said.as_deref(), Some(""), "closed without an answer");

    // Half a request line, then nothing (slowloris).
    let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /api/v1/ping HTT").await.unwrap();
    assert!(until_closed(&mut half, open).await.is_some(), "still open");

    // A whole request on a kept-alive connection, then silence: answered, then closed.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /api/v1/ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let said = until_closed(&mut idle, open)
        .await
        .expect("closed when idle");
    assert!(said.starts_with("HTTP/1.1 200"), "{said}");
    assert!(said.contains("\"ok\":true"), "{said}");

    // A body that stops halfway: 408 in the JSON error shape.
    let alice = token("alice", false);
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/v1/threads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":"
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    let said = until_closed(&mut stalled, open).await.expect("answered");
    assert!(said.starts_with("HTTP/1.1 408"), "{said}");
    assert!(said.contains("\"code\":\"request_timeout\""), "{said}");

    // Requests that arrive in time are served as before.
    let (s, b) = ex.post("/threads", &alice, json!({"name": "t"})).await;
    assert_eq!(s, 201, "{b}");

    // A WebSocket outlives both timeouts: after them it still answers a ping.
    let mut ws = common::ws_connect(&ex, &alice).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::Ping(b"still there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(open, async {
        while let Some(m) = ws.next().await {
            if let Message::Pong(p) = m.expect("valid frame") {
                return p;
            }
        }
        panic!("socket closed");
    })
    .await
    .expect("a pong");
    assert_eq!(&pong[..], b"still there");
}

/// `GET /devices/channels`: admins see every user's devices per channel, kept current as
/// devices are enlisted, moved between channels and removed; users are refused.
#[tokio::test]
async fn admins_see_devices_per_channel() {
    let ex = Exchange::start().await;
    let (admin, ann, bob) = (
        token("root", true),
        token("ann", false),
        token("bob", false),
    );
    let (s, b) = ex.get("/devices/channels", &admin).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b, json!({"total": 0, "channels": {}}));
    for (t, body) in [
        (&ann, json!({"os": "sms", "phone": "+14155550100"})),
        (&ann, json!({"os": "email", "email": "ann@example.com"})),
        (&bob, json!({"os": "email", "email": "bob@example.com"})),
        (&bob, json!({"os": "ios", "token": "ab".repeat(32)})),
        // The same device again: counted once.
        (&bob, json!({"os": "ios", "token": "ab".repeat(32)})),
    ] {
        let (s, d) = ex.post("/enlist", t, body).await;
        assert!(s == 201 || s == 200, "{d}");
    }
    ex.caught_up().await;
    let (_, b) = ex.get("/devices/channels", &admin).await;
    assert_eq!(
        b,
        json!({"total": 4, "channels": {"apns": 1, "email": 2, "sms": 1}})
    );
    let (s, devices) = ex.get("/devices", &ann).await;
    assert_eq!(s, 200);
    let sms = devices["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["channel"] == "sms")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _) = ex
        .call(Method::DELETE, &format!("/devices/{sms}"), Some(&ann), None)
        .await;
    assert_eq!(s, 204);
    ex.caught_up().await;
    let (_, b) = ex.get("/devices/channels", &admin).await;
    assert_eq!(b, json!({"total": 3, "channels": {"apns": 1, "email": 2}}));
    let (s, _) = ex.get("/devices/channels", &ann).await;
    assert_eq!(s, 403);
}
