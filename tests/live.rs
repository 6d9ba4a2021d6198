//! Live delivery over WebSockets: new notifications arrive as frames, and marking one read on
//! one device shows up on the user's other devices.

mod common;

use common::{Exchange, next_json, token, ws_connect};
use futures::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

#[tokio::test]
async fn published_message_reaches_the_socket_and_read_reaches_the_other_device() {
    let ex = Exchange::start().await;
    let (alice, bob) = (token("alice", false), token("bob", false));
    let tid = ex.thread(&alice, true, false).await;
    assert_eq!(
        ex.post("/subscribe", &bob, json!({"tid": tid})).await.0,
        200
    );

    // Bob has two devices: one authenticates with ?token=, the other with the header.
    let mut phone = ws_connect(&ex, &bob).await;
    let mut req = ex.ws_url("").into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {bob}").parse().unwrap());
    let (mut laptop, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(next_json(&mut laptop).await["action"], "hello");

    let (s, b) = ex
        .post(
            "/publish",
            &alice,
            json!({"tid": tid, "msg": "live!", "opts": {"urgency": "high"}}),
        )
        .await;
    assert_eq!(s, 202);
    let mid = b["mid"].as_str().unwrap().to_owned();
    for ws in [&mut phone, &mut laptop] {
        let f = next_json(ws).await;
        assert_eq!(f["action"], "new", "{f}");
        assert_eq!(f["notification"]["id"], mid.as_str());
        assert_eq!(f["notification"]["msg"], "live!");
        assert_eq!(f["notification"]["opts"]["urgency"], 4);
    }

    // Read on the phone (through the API) -> the laptop gets a read frame.
    let (s, _) = ex
        .patch("/notifications", &bob, json!({"ids": [mid]}))
        .await;
    assert_eq!(s, 200);
    let f = next_json(&mut laptop).await;
    assert_eq!(f["action"], "read", "{f}");
    assert_eq!(f["notification"]["id"], mid.as_str());
    assert!(f["notification"]["read_at"].is_string());
    let f = next_json(&mut phone).await;
    assert_eq!(f["action"], "read");

    // Alice's messages never reach someone else's socket: a socket for carol stays quiet
    // while bob gets the next one.
    let mut carol = ws_connect(&ex, &token("carol", false)).await;
    ex.post("/publish", &alice, json!({"tid": tid, "msg": "second"}))
        .await;
    assert_eq!(next_json(&mut phone).await["notification"]["msg"], "second");
    carol
        .send(Message::Text(r#"{"action":"ping"}"#.into()))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut carol).await["action"],
        "pong",
        "carol's first frame is the pong"
    );
}

#[tokio::test]
async fn cookie_authentication_and_hello_counts_unread() {
    let ex = Exchange::start().await;
    let admin = token("root", true);
    let dana = token("dana", false);
    assert_eq!(
        ex.post("/send", &admin, json!({"msg": "one", "uid": "dana"}))
            .await
            .0,
        202
    );
    ex.inbox_until(&dana, 1).await;
    let mut req = ex.ws_url("").into_client_request().unwrap();
    req.headers_mut().insert(
        "Cookie",
        format!("theme=dark; xsajwt={dana}").parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["action"], "hello");
    assert_eq!(hello["uid"], "dana");
    assert_eq!(hello["unread"], 1);
    assert_eq!(
        ex.post("/send", &admin, json!({"msg": "two", "uid": "dana"}))
            .await
            .0,
        202
    );
    // Frames are hints deduplicated by id: a socket opened right after "one" was committed may
    // still see its "new" frame, which the hello's unread count already includes.
    let mut f = next_json(&mut ws).await;
    if f["notification"]["msg"] == "one" {
        f = next_json(&mut ws).await;
    }
    assert_eq!(f["notification"]["msg"], "two");
}

/// Cross-site WebSocket hijacking: a hostile page's handshake carries the victim's cookie, so a
/// cookie counts only from the gateway's own origin or an allowed one; a token the page put in
/// the query string or header is its own and is not affected. `GET /stream` follows the same
/// rule.
#[tokio::test]
async fn a_cookie_is_accepted_only_from_an_allowed_origin() {
    let ex = Exchange::start_with(|o| {
        o.gateway.allowed_origins = vec!["https://app.example.com".into()];
    })
    .await;
    let dana = token("dana", false);
    let handshake = |origin: Option<String>, query: &str, cookie: bool| {
        let mut req = ex.ws_url(query).into_client_request().unwrap();
        if cookie {
            req.headers_mut()
                .insert("Cookie", format!("xsajwt={dana}").parse().unwrap());
        }
        if let Some(o) = origin {
            req.headers_mut().insert("Origin", o.parse().unwrap());
        }
        async move {
            match tokio_tungstenite::connect_async(req).await {
                Ok((mut ws, _)) => {
                    let hello = next_json(&mut ws).await;
                    assert_eq!(hello["uid"], "dana");
                    101
                }
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
                Err(e) => panic!("handshake: {e}"),
            }
        }
    };
    let evil = Some("https://evil.example".to_owned());
    let own = Some(ex.url("").split("/api").next().unwrap().to_owned());
    assert_eq!(handshake(evil.clone(), "", true).await, 403, "hostile page");
    assert_eq!(
        handshake(Some("https://APP.example.com/".into()), "", true).await,
        101,
        "allowed origin (compared case-insensitively)"
    );
    assert_eq!(handshake(own, "", true).await, 101, "same origin");
    assert_eq!(
        handshake(None, "", true).await,
        101,
        "no Origin: not a browser"
    );
    assert_eq!(
        handshake(evil.clone(), &format!("?token={dana}"), false).await,
        101,
        "the page's own token"
    );

    // The same rule on the SSE stream.
    let sse = |origin: Option<&str>| {
        let mut req = reqwest::Client::new()
            .get(ex.url("/stream"))
            .header("Cookie", format!("xsajwt={dana}"));
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(sse(Some("https://evil.example")).await, 403);
    assert_eq!(sse(None).await, 200);
    assert_eq!(sse(Some("https://app.example.com")).await, 200);
}

/// A new entry's frame is routed by the gateway's hub from the event itself: it reaches the
/// socket while no projector runs at all, and the entry the projector folds later carries the
/// very same frame in the change feed.
#[tokio::test]
async fn new_frames_leave_before_the_fold() {
    let ex = Exchange::start_with(|o| o.role = msgxc::Role::Gateway).await;
    let mut projector_opts = ex.opts.clone();
    projector_opts.role = msgxc::Role::Projector;
    let projector = msgxc::start(projector_opts.clone()).await.unwrap();
    let (alice, bob) = (token("alice", false), token("bob", false));
    let tid = ex.thread(&alice, true, false).await;
    assert_eq!(
        ex.post("/subscribe", &bob, json!({"tid": tid})).await.0,
        200
    );
    let mut ws = ws_connect(&ex, &bob).await;
    projector.shutdown().await;

    let (s, b) = ex
        .post(
            "/publish",
            &alice,
            json!({"tid": tid, "msg": "before the fold"}),
        )
        .await;
    assert_eq!(s, 202);
    let frame = next_json(&mut ws).await;
    assert_eq!(frame["action"], "new", "{frame}");
    assert_eq!(frame["notification"]["id"], b["mid"]);
    assert_eq!(frame["notification"]["uid"], "bob");
    let (s, inbox) = ex.get("/notifications", &bob).await;
    assert_eq!(s, 200);
    assert_eq!(inbox["count"], 0, "nothing folded yet: {inbox}");

    let _projector = msgxc::start(projector_opts).await.unwrap();
    ex.inbox_until(&bob, 1).await;
    let feed = ex
        .running()
        .store
        .changes_after("bob", Default::default(), 10)
        .await
        .unwrap();
    let (position, stored) = feed.last().unwrap();
    assert_eq!(frame["position"], position.to_string());
    let stored: serde_json::Value = serde_json::from_str(stored).unwrap();
    assert_eq!(stored, frame, "the feed holds the frame that was sent");
}
