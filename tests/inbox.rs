//! Inbox features of the notification seeds: notification types, filters, offset and cursor
//! pagination, read/archive/delete (live on every device), read-all, exact counters, type
//! preferences that suppress both the inbox entry and the push.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Exchange, next_json, token, ws_connect};
use reqwest::Method;
use serde_json::{Value, json};

async fn register(ex: &Exchange, name: &str) {
    let (s, b) = ex
        .post(
            "/types",
            &token("root", true),
            json!({"name": name, "title": format!("{name} title"), "description": "d"}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
}

async fn send(ex: &Exchange, uid: &str, body: Value) -> String {
    let mut body = body;
    body["uid"] = uid.into();
    let (s, b) = ex.post("/send", &token("root", true), body).await;
    assert_eq!(s, 202, "{b}");
    b["mid"].as_str().unwrap().to_owned()
}

fn ids(page: &Value) -> Vec<String> {
    page["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn types_are_registered_by_admins_and_required_for_typed_messages() {
    let ex = Exchange::start().await;
    let (s, _) = ex
        .post(
            "/types",
            &token("bob", false),
            json!({"name": "x", "title": "X"}),
        )
        .await;
    assert_eq!(s, 403);
    let (s, b) = ex
        .post(
            "/types",
            &token("root", true),
            json!({"name": "Bad Name", "title": "X"}),
        )
        .await;
    assert_eq!((s, b["error"]["field"].clone()), (400, json!("name")));
    register(&ex, "comment_reply").await;
    register(&ex, "admin_message").await;
    let (s, b) = ex.get("/types", &token("bob", false)).await;
    assert_eq!(s, 200);
    assert_eq!(b["count"], 2);
    assert_eq!(b["results"][0]["name"], "admin_message");
    assert_eq!(b["results"][0]["title"], "admin_message title");
    // Unknown types and bad levels are refused, naming the field.
    let (s, b) = ex
        .post(
            "/send",
            &token("root", true),
            json!({"msg": "x", "uid": "bob", "type": "nope"}),
        )
        .await;
    assert_eq!(
        (s, b["error"]["field"].clone()),
        (400, json!("type")),
        "{b}"
    );
    let (s, b) = ex
        .post(
            "/send",
            &token("root", true),
            json!({"msg": "x", "uid": "bob", "level": 7}),
        )
        .await;
    assert_eq!(
        (s, b["error"]["field"].clone()),
        (400, json!("level")),
        "{b}"
    );
    // Typed message: type, title, data and level land on the notification.
    send(&ex, "bob", json!({"msg": "hello", "type": "admin_message", "title": "Hi", "data": {"k": 1}, "level": 50})).await;
    let inbox = ex.inbox_until(&token("bob", false), 1).await;
    let n = &inbox["results"][0];
    assert_eq!(n["type"], "admin_message");
    assert_eq!(n["title"], "Hi");
    assert_eq!(n["data"]["k"], 1);
    assert_eq!(n["level"], 50);
    assert_eq!(n["status"], "unread");
}

#[tokio::test]
async fn filters_status_read_archive_delete_and_read_all() {
    let ex = Exchange::start().await;
    register(&ex, "a").await;
    register(&ex, "b").await;
    let ann = token("ann", false);
    let thread = ex.thread(&token("root", true), true, true).await;
    assert_eq!(
        ex.post("/subscribe", &ann, json!({"tid": thread})).await.0,
        200
    );
    let m1 = send(&ex, "ann", json!({"msg": "1", "type": "a"})).await;
    let m2 = send(&ex, "ann", json!({"msg": "2", "type": "b", "level": 50})).await;
    let m3 = send(&ex, "ann", json!({"msg": "3", "type": "a"})).await;
    let (_, b) = ex
        .post(
            "/publish",
            &token("root", true),
            json!({"tid": thread, "msg": "4", "type": "b"}),
        )
        .await;
    let m4 = b["mid"].as_str().unwrap().to_owned();
    ex.inbox_until(&ann, 4).await;
    let q = |query: &str| {
        let path = format!("/notifications?{query}");
        let ex = &ex;
        let ann = ann.clone();
        async move {
            let (s, b) = ex.get(&path, &ann).await;
            assert_eq!(s, 200, "{path}: {b}");
            b
        }
    };
    assert_eq!(ids(&q("type=a").await), vec![m3.clone(), m1.clone()]);
    assert_eq!(ids(&q("level=50").await), vec![m2.clone()]);
    assert_eq!(ids(&q(&format!("thread={thread}")).await), vec![m4.clone()]);
    assert_eq!(q("sender=root").await["count"], 4);
    assert_eq!(q("sender=nobody").await["count"], 0);
    assert_eq!(q("since=2000-01-01T00:00:00Z").await["count"], 4);
    assert_eq!(q("before=2000-01-01T00:00:00Z").await["count"], 0);
    for (bad, field) in [
        ("status=new", "status"),
        ("since=yesterday", "since"),
        ("thread=x", "thread"),
        ("cursor=zzz", "cursor"),
    ] {
        let (s, b) = ex.get(&format!("/notifications?{bad}"), &ann).await;
        assert_eq!(
            (s, b["error"]["field"].clone()),
            (400, json!(field)),
            "{bad}: {b}"
        );
    }

    // Read one (no body), archive one, delete one.
    let (s, n) = ex
        .call(
            Method::PATCH,
            &format!("/notifications/{m1}"),
            Some(&ann),
            None,
        )
        .await;
    assert_eq!(s, 200, "{n}");
    assert_eq!(n["status"], "read");
    let (s, n) = ex
        .post(&format!("/notifications/{m2}/archive"), &ann, json!({}))
        .await;
    assert_eq!(s, 200, "{n}");
    assert_eq!(n["status"], "archived");
    assert!(n["read_at"].is_string(), "archiving marks read");
    let (s, _) = ex
        .call(
            Method::DELETE,
            &format!("/notifications/{m3}"),
            Some(&ann),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, _) = ex
        .call(
            Method::DELETE,
            &format!("/notifications/{m3}"),
            Some(&ann),
            None,
        )
        .await;
    assert_eq!(s, 404);
    // Nobody else can touch ann's notifications.
    let (s, _) = ex
        .call(
            Method::PATCH,
            &format!("/notifications/{m4}"),
            Some(&token("eve", false)),
            None,
        )
        .await;
    assert_eq!(s, 404);

    assert_eq!(
        ids(&q("").await),
        vec![m4.clone(), m1.clone()],
        "default: all but archived"
    );
    assert_eq!(ids(&q("status=archived").await), vec![m2.clone()]);
    assert_eq!(ids(&q("status=read").await), vec![m1.clone()]);
    assert_eq!(ids(&q("status=unread").await), vec![m4.clone()]);
    assert_eq!(q("status=all").await["count"], 3);

    // Read-all of one type leaves the others unread.
    let m5 = send(&ex, "ann", json!({"msg": "5", "type": "a"})).await;
    ex.inbox_until(&ann, 3).await;
    let (s, b) = ex
        .post("/notifications/read-all", &ann, json!({"type": "b"}))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(ids(&q("status=unread").await), vec![m5.clone()]);
    let (s, b) = ex
        .call(Method::POST, "/notifications/read-all", Some(&ann), None)
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["unread"], 0);
}

#[tokio::test]
async fn cursor_sync_never_skips_or_repeats_while_messages_arrive() {
    let ex = Exchange::start().await;
    let cy = token("cy", false);
    // Some history first.
    for i in 0..5 {
        send(&ex, "cy", json!({"msg": format!("old {i}")})).await;
    }
    ex.inbox_until(&cy, 5).await;
    let (_, first) = ex.get("/notifications?limit=100", &cy).await;
    let mut cursor = first["cursor"].as_str().unwrap().to_owned();
    // New messages keep arriving, from concurrent senders, while the client syncs.
    let sender = {
        let base = ex.base.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let admin = token("root", true);
            let mut sent = Vec::new();
            let mut tasks = Vec::new();
            for i in 0..60 {
                let (http, admin, base) = (http.clone(), admin.clone(), base.clone());
                tasks.push(tokio::spawn(async move {
                    let r = http
                        .post(format!("{base}/send"))
                        .bearer_auth(admin)
                        .json(&json!({"msg": format!("new {i}"), "uid": "cy"}))
                        .send()
                        .await
                        .unwrap();
                    r.json::<Value>().await.unwrap()["mid"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                }));
                if i % 10 == 9 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            for t in tasks {
                sent.push(t.await.unwrap());
            }
            sent
        })
    };
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 60 {
        let (s, page) = ex
            .get(&format!("/notifications?cursor={cursor}&limit=7"), &cy)
            .await;
        assert_eq!(s, 200, "{page}");
        seen.extend(ids(&page));
        cursor = page["cursor"].as_str().unwrap().to_owned();
        assert!(
            tokio::time::Instant::now() < deadline,
            "sync stalled at {}",
            seen.len()
        );
        if page["results"].as_array().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let sent: HashSet<String> = sender.await.unwrap().into_iter().collect();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an entry was repeated");
    assert_eq!(seen.len(), 60);
    assert!(
        seen.iter().all(|id| sent.contains(id)),
        "an old entry came back"
    );
    // Nothing more after the last cursor.
    let (_, rest) = ex
        .get(&format!("/notifications?cursor={cursor}"), &cy)
        .await;
    assert_eq!(rest["results"], json!([]));
    assert_eq!(rest["cursor"], cursor.as_str());
}

#[tokio::test]
async fn counters_stay_exact_under_concurrent_delivery_and_marking() {
    let ex = Exchange::start().await;
    register(&ex, "t1").await;
    register(&ex, "t2").await;
    let dee = token("dee", false);
    let first: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..10 {
            v.push(
                send(
                    &ex,
                    "dee",
                    json!({"msg": format!("{i}"), "type": if i % 2 == 0 { "t1" } else { "t2" }}),
                )
                .await,
            );
        }
        v
    };
    ex.inbox_until(&dee, 10).await;
    // Concurrently: 20 more deliveries, marking the first ten read one by one, and archiving.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (http, base) = (ex.http.clone(), ex.base.clone());
        tasks.push(tokio::spawn(async move {
            http.post(format!("{base}/send"))
                .bearer_auth(token("root", true))
                .json(&json!({"msg": format!("c{i}"), "uid": "dee", "type": "t1", "level": if i % 4 == 0 { 50 } else { 0 }}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for (i, id) in first.iter().enumerate() {
        let (http, base, dee, id) = (ex.http.clone(), ex.base.clone(), dee.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let req = if i % 3 == 0 {
                http.post(format!("{base}/notifications/{id}/archive"))
                    .json(&json!({}))
            } else {
                http.patch(format!("{base}/notifications/{id}"))
            };
            req.bearer_auth(dee).send().await.unwrap().status().as_u16()
        }));
    }
    for t in tasks {
        let s = t.await.unwrap();
        assert!(s == 200 || s == 202, "{s}");
    }
    ex.inbox_until(&dee, 26).await; // 30 entries, 4 of them archived (hidden by default)
    ex.caught_up().await;
    let (_, stats) = ex.get("/notifications/stats", &dee).await;
    let (_, all) = ex.get("/notifications?status=all&limit=100", &dee).await;
    let entries = all["results"].as_array().unwrap();
    let unread: Vec<&Value> = entries.iter().filter(|n| n["status"] == "unread").collect();
    assert_eq!(stats["total"], 30);
    assert_eq!(stats["unread"], unread.len() as u64);
    assert_eq!(stats["unread"], 20, "{stats}");
    let by_type = |t: &str| unread.iter().filter(|n| n["type"] == t).count() as u64;
    assert_eq!(stats["unread_by_type"]["t1"], by_type("t1"));
    assert_eq!(
        stats["unread_by_type"]
            .get("t2")
            .map_or(0, |v| v.as_u64().unwrap()),
        by_type("t2")
    );
    let at_50 = unread.iter().filter(|n| n["level"] == 50).count() as u64;
    assert_eq!(stats["unread_by_level"]["50"], at_50);
    assert_eq!(stats["unseen"], 30);
    // Clearing the stats restarts the unseen count; new arrivals count again.
    let (s, cleared) = ex
        .call(Method::DELETE, "/notifications/stats", Some(&dee), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(cleared["unseen"], 0);
    assert!(cleared["seen_at"].is_string());
    send(&ex, "dee", json!({"msg": "after"})).await;
    ex.inbox_until(&dee, 27).await;
    let (_, stats) = ex.get("/notifications/stats", &dee).await;
    assert_eq!(stats["unseen"], 1);
    assert_eq!(stats["unread"], 21);
}

#[tokio::test]
async fn disabled_types_create_no_notification_unless_mandatory() {
    let ex = Exchange::start().await;
    register(&ex, "promo").await;
    register(&ex, "security").await;
    let eli = token("eli", false);
    let (s, b) = ex
        .call(
            Method::PUT,
            "/preferences",
            Some(&eli),
            Some(json!({"types": {"promo": false}})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = ex
        .call(
            Method::PUT,
            "/preferences",
            Some(&eli),
            Some(json!({"types": {"nope": false}})),
        )
        .await;
    assert_eq!(
        (s, b["error"]["field"].clone()),
        (400, json!("types")),
        "{b}"
    );
    send(&ex, "eli", json!({"msg": "sale!", "type": "promo"})).await;
    send(
        &ex,
        "eli",
        json!({"msg": "must read", "type": "promo", "level": 50, "mandatory": true}),
    )
    .await;
    send(&ex, "eli", json!({"msg": "login", "type": "security"})).await;
    ex.caught_up().await;
    let inbox = ex.inbox_until(&eli, 2).await;
    let msgs: Vec<&str> = inbox["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["msg"].as_str().unwrap())
        .collect();
    assert_eq!(msgs, vec!["login", "must read"]);
    // Only admins may send mandatory messages.
    let (s, b) = ex
        .post(
            "/publish",
            &token("eli", false),
            json!({"tid": uuid::Uuid::now_v7(), "msg": "x", "level": 50, "mandatory": true}),
        )
        .await;
    assert_eq!(
        (s, b["error"]["field"].clone()),
        (400, json!("mandatory")),
        "{b}"
    );
}

#[tokio::test]
async fn archive_and_delete_reach_the_other_devices_live() {
    let ex = Exchange::start().await;
    let fox = token("fox", false);
    let mut other_device = ws_connect(&ex, &fox).await;
    let m1 = send(&ex, "fox", json!({"msg": "one"})).await;
    let m2 = send(&ex, "fox", json!({"msg": "two"})).await;
    for expected in [&m1, &m2] {
        let f = next_json(&mut other_device).await;
        assert_eq!(
            (f["action"].clone(), f["notification"]["id"].clone()),
            (json!("new"), json!(expected))
        );
    }
    ex.post(&format!("/notifications/{m1}/archive"), &fox, json!({}))
        .await;
    let f = next_json(&mut other_device).await;
    assert_eq!(f["action"], "archived");
    assert_eq!(f["notification"]["status"], "archived");
    ex.call(
        Method::DELETE,
        &format!("/notifications/{m2}"),
        Some(&fox),
        None,
    )
    .await;
    let f = next_json(&mut other_device).await;
    assert_eq!(f["action"], "deleted");
    assert_eq!(f["notification"]["id"], m2.as_str());
}

/// A minimal Server-Sent Events reader over a streaming response.
struct Sse {
    resp: reqwest::Response,
    buf: String,
}

#[derive(Debug)]
struct SseEvent {
    id: String,
    event: String,
    data: Value,
}

impl Sse {
    async fn open(ex: &Exchange, token: &str, last_event_id: Option<&str>) -> Self {
        let mut req = ex.http.get(ex.url("/stream")).bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Self {
            resp,
            buf: String::new(),
        }
    }

    async fn next(&mut self) -> SseEvent {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // keep-alive comment
                }
                return SseEvent {
                    id,
                    event,
                    data: serde_json::from_str(&data).unwrap(),
                };
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.resp.chunk())
                .await
                .expect("an SSE event within 10 s")
                .unwrap()
                .expect("stream open");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// New entries' frames come from the gateway's hub, reads from the projector after commit:
/// an SSE stream still sends every change of both, in feed order (ids strictly increasing),
/// when a read and a new message are appended together.
#[tokio::test]
async fn sse_sends_changes_of_both_paths_in_feed_order() {
    let ex = Exchange::start().await;
    let hal = token("hal", false);
    let mut sse = Sse::open(&ex, &hal, None).await;
    let mut newest = send(&ex, "hal", json!({"msg": "first"})).await;
    let first = sse.next().await;
    assert_eq!(first.event, "new");
    let mut positions = vec![projections::fold::Position::parse(&first.id).unwrap()];
    for round in 0..20 {
        let body = json!({"msg": format!("round {round}")});
        let read = json!({"ids": [newest.clone()]});
        let (_, mid) = tokio::join!(
            ex.patch("/notifications", &hal, read),
            send(&ex, "hal", body)
        );
        let mut got = Vec::new();
        for _ in 0..2 {
            let e = sse.next().await;
            positions.push(projections::fold::Position::parse(&e.id).unwrap());
            got.push((
                e.event,
                e.data["notification"]["id"].as_str().unwrap().to_owned(),
            ));
        }
        got.sort();
        assert_eq!(
            got,
            [("new".to_owned(), mid.clone()), ("read".to_owned(), newest)]
        );
        newest = mid;
    }
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
}

#[tokio::test]
async fn sse_delivers_changes_live_and_resumes_from_last_event_id_without_gaps() {
    let ex = Exchange::start().await;
    let gus = token("gus", false);
    let mut sse = Sse::open(&ex, &gus, None).await;
    let m1 = send(&ex, "gus", json!({"msg": "one"})).await;
    let e = sse.next().await;
    assert_eq!(
        (e.event.as_str(), e.data["notification"]["id"].clone()),
        ("new", json!(m1))
    );
    // Read on another device reaches this one.
    ex.patch("/notifications", &gus, json!({"ids": [m1]})).await;
    let e = sse.next().await;
    assert_eq!(e.event, "read");
    assert_eq!(e.data["notification"]["status"], "read");
    let last_seen = e.id.clone();
    drop(sse);

    // While disconnected: three new messages, one archived.
    let m2 = send(&ex, "gus", json!({"msg": "two"})).await;
    let m3 = send(&ex, "gus", json!({"msg": "three"})).await;
    let m4 = send(&ex, "gus", json!({"msg": "four"})).await;
    ex.inbox_until(&gus, 4).await;
    ex.post(&format!("/notifications/{m2}/archive"), &gus, json!({}))
        .await;

    let mut sse = Sse::open(&ex, &gus, Some(&last_seen)).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let e = sse.next().await;
        got.push((
            e.event.clone(),
            e.data["notification"]["id"].as_str().unwrap().to_owned(),
            e.id,
        ));
    }
    let expected = vec![
        ("new".to_string(), m2.clone()),
        ("new".to_string(), m3.clone()),
        ("new".to_string(), m4.clone()),
        ("archived".to_string(), m2.clone()),
    ];
    assert_eq!(
        got.iter()
            .map(|(a, b, _)| (a.clone(), b.clone()))
            .collect::<Vec<_>>(),
        expected
    );
    // Event ids increase strictly: no repeats.
    let positions: Vec<_> = got
        .iter()
        .map(|(_, _, id)| projections::fold::Position::parse(id).unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    // And live delivery continues after the replay.
    let m5 = send(&ex, "gus", json!({"msg": "five"})).await;
    let e = sse.next().await;
    assert_eq!(
        (e.event.as_str(), e.data["notification"]["id"].clone()),
        ("new", json!(m5))
    );
    // A malformed Last-Event-ID is a 400.
    let resp = ex
        .http
        .get(ex.url("/stream"))
        .bearer_auth(&gus)
        .header("Last-Event-ID", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn private_messages_respect_blocks_and_the_per_sender_rate() {
    let ex = Exchange::start_with(|o| o.gateway.private_messages_per_minute = 3).await;
    let (amy, ben, cal) = (
        token("amy", false),
        token("ben", false),
        token("cal", false),
    );
    let (s, b) = ex
        .post(
            "/messages",
            &amy,
            json!({"to": "ben", "msg": "hi ben", "type": null}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let inbox = ex.inbox_until(&ben, 1).await;
    assert_eq!(inbox["results"][0]["sender"], "amy");
    assert_eq!(inbox["results"][0]["msg"], "hi ben");
    // Ben blocks Cal: Cal's messages are refused, Amy's still arrive.
    let (s, _) = ex.call(Method::PUT, "/blocks/cal", Some(&ben), None).await;
    assert_eq!(s, 204);
    assert_eq!(ex.get("/blocks", &ben).await.1["results"], json!(["cal"]));
    let (s, b) = ex
        .post("/messages", &cal, json!({"to": "ben", "msg": "let me in"}))
        .await;
    assert_eq!(
        (s, b["error"]["code"].clone()),
        (403, json!("forbidden")),
        "{b}"
    );
    assert_eq!(
        ex.post("/messages", &amy, json!({"to": "ben", "msg": "two"}))
            .await
            .0,
        202
    );
    // Unblocking restores it.
    assert_eq!(
        ex.call(Method::DELETE, "/blocks/cal", Some(&ben), None)
            .await
            .0,
        204
    );
    assert_eq!(
        ex.post("/messages", &cal, json!({"to": "ben", "msg": "thanks"}))
            .await
            .0,
        202
    );
    // Amy has used 2 of her 3 per minute; the 4th is a 429 with Retry-After.
    assert_eq!(
        ex.post("/messages", &amy, json!({"to": "cal", "msg": "three"}))
            .await
            .0,
        202
    );
    let resp = ex
        .http
        .post(ex.url("/messages"))
        .bearer_auth(&amy)
        .json(&json!({"to": "cal", "msg": "four"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["error"]["code"], "rate_limited");
    ex.inbox_until(&ben, 3).await;
}

#[tokio::test]
async fn aliases_and_the_messaging_api_with_its_permission_rules() {
    let ex = Exchange::start().await;
    let admin = token("root", true);
    let (ona, enum1, outsider) = (
        token("ona", false),
        token("enum1", false),
        token("outsider", false),
    );
    // A form as a thread with an alias; members subscribe.
    let (s, b) = ex
        .post(
            "/threads",
            &ona,
            json!({"name": "Form 1337", "alias": "xform:1337", "open_subscribe": true}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["alias"], "xform:1337");
    let (s, b) = ex
        .post(
            "/threads",
            &admin,
            json!({"name": "dup", "alias": "xform:1337"}),
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].clone()),
        (409, json!("alias_taken")),
        "{b}"
    );
    let (s, b) = ex
        .post(
            "/threads",
            &admin,
            json!({"name": "bad", "alias": "no spaces"}),
        )
        .await;
    assert_eq!((s, b["error"]["field"].clone()), (400, json!("alias")));
    let (s, t) = ex.get("/threads/by-alias/xform:1337", &enum1).await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["name"], "Form 1337");
    assert_eq!(ex.get("/threads/by-alias/xform:1", &enum1).await.0, 404);
    assert_eq!(
        ex.post("/subscribe", &enum1, json!({"tid": t["tid"]}))
            .await
            .0,
        200
    );

    // Members post and read; others may not.
    let (s, m) = ex
        .post(
            "/messaging",
            &ona,
            json!({"target_type": "xform", "target_id": "1337", "message": "Hello, World!"}),
        )
        .await;
    assert_eq!(s, 201, "{m}");
    assert_eq!(m["target_type"], "xform");
    assert_eq!(m["target_id"], "1337");
    assert_eq!(m["user"], "ona");
    assert!(m["timestamp"].is_string());
    let id = m["id"].as_str().unwrap().to_owned();
    let (s, _) = ex
        .post(
            "/messaging",
            &outsider,
            json!({"target_type": "xform", "target_id": "1337", "message": "spam"}),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = ex
        .post(
            "/messaging",
            &ona,
            json!({"target_type": "project", "target_id": "7", "message": "x"}),
        )
        .await;
    assert_eq!(s, 404);
    ex.inbox_until(&enum1, 1).await; // subscribers get it in their inbox too
    let (s, list) = ex
        .get("/messaging?target_type=xform&target_id=1337", &enum1)
        .await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["count"], 1);
    assert_eq!(list["results"][0]["message"], "Hello, World!");
    assert_eq!(
        ex.get(
            "/messaging?target_type=xform&target_id=1337&user=nobody",
            &enum1
        )
        .await
        .1["count"],
        0
    );
    assert_eq!(
        ex.get(
            "/messaging?target_type=xform&target_id=1337&since=2100-01-01T00:00:00Z",
            &enum1
        )
        .await
        .1["count"],
        0
    );
    assert_eq!(
        ex.get("/messaging?target_type=xform&target_id=1337", &outsider)
            .await
            .0,
        403
    );
    let (s, b) = ex.get("/messaging?target_type=xform", &enum1).await;
    assert_eq!((s, b["error"]["field"].clone()), (400, json!("target_id")));
    let (s, one) = ex.get(&format!("/messaging/{id}"), &enum1).await;
    assert_eq!(s, 200);
    assert_eq!(one["target_id"], "1337");
    assert_eq!(ex.get(&format!("/messaging/{id}"), &outsider).await.0, 403);

    // User targets: only that user reads them.
    let (s, _) = ex
        .post(
            "/messaging",
            &ona,
            json!({"target_type": "user", "target_id": "enum1", "message": "psst"}),
        )
        .await;
    assert_eq!(s, 201);
    ex.inbox_until(&enum1, 2).await;
    let (s, mine) = ex
        .get("/messaging?target_type=user&target_id=enum1", &enum1)
        .await;
    assert_eq!(s, 200);
    assert_eq!(mine["count"], 1);
    assert_eq!(mine["results"][0]["message"], "psst");
    assert_eq!(
        ex.get("/messaging?target_type=user&target_id=enum1", &outsider)
            .await
            .0,
        403
    );

    // Only the author or an admin deletes.
    assert_eq!(
        ex.call(
            Method::DELETE,
            &format!("/messaging/{id}"),
            Some(&enum1),
            None
        )
        .await
        .0,
        403
    );
    assert_eq!(
        ex.call(
            Method::DELETE,
            &format!("/messaging/{id}"),
            Some(&ona),
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(ex.get(&format!("/messaging/{id}"), &enum1).await.0, 404);
    assert_eq!(
        ex.get("/messaging?target_type=xform&target_id=1337", &enum1)
            .await
            .1["count"],
        0
    );
}

#[tokio::test]
async fn seed_compatible_parameters() {
    let ex = Exchange::start().await;
    let ivy = token("ivy", false);
    let mut mids = Vec::new();
    for i in 0..5 {
        mids.push(send(&ex, "ivy", json!({"msg": format!("{i}")})).await);
    }
    ex.inbox_until(&ivy, 5).await;
    ex.patch("/notifications", &ivy, json!({"ids": [mids[0]]}))
        .await;
    // Seed 003: page (1-based) and size.
    let (_, p2) = ex.get("/notifications?page=2&size=2", &ivy).await;
    assert_eq!(ids(&p2), vec![mids[2].clone(), mids[1].clone()]);
    assert_eq!(ex.get("/notifications?page=0", &ivy).await.0, 400);
    // Seed 004: readed=true|false.
    assert_eq!(
        ids(&ex.get("/notifications?readed=true", &ivy).await.1),
        vec![mids[0].clone()]
    );
    assert_eq!(
        ex.get("/notifications?readed=false", &ivy).await.1["count"],
        4
    );
    // Seed 000: the messaging list without a target is empty.
    let (s, b) = ex.get("/messaging", &ivy).await;
    assert_eq!(
        (s, b["count"].clone(), b["results"].clone()),
        (200, json!(0), json!([]))
    );
}

#[tokio::test]
async fn the_seed_004_filter_endpoint_maps_onto_type_preferences() {
    let ex = Exchange::start().await;
    register(&ex, "promo").await;
    register(&ex, "news").await;
    let kay = token("kay", false);
    assert_eq!(
        ex.get("/notifications/filter", &kay).await.1,
        json!({"types": {}})
    );
    let (s, b) = ex
        .patch(
            "/notifications/filter",
            &kay,
            json!({"types": {"promo": false}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b, json!({"types": {"promo": false}}));
    // Channel choices made elsewhere survive a filter patch.
    ex.call(
        Method::PUT,
        "/preferences",
        Some(&kay),
        Some(json!({"types": {"promo": false}, "channels": {"sms": false}})),
    )
    .await;
    ex.patch(
        "/notifications/filter",
        &kay,
        json!({"types": {"news": true}}),
    )
    .await;
    let (_, prefs) = ex.get("/preferences", &kay).await;
    assert_eq!(prefs["channels"], json!({"sms": false}));
    assert_eq!(prefs["types"], json!({"promo": false, "news": true}));
    send(&ex, "kay", json!({"msg": "sale", "type": "promo"})).await;
    send(&ex, "kay", json!({"msg": "headline", "type": "news"})).await;
    ex.caught_up().await;
    let inbox = ex.inbox_until(&kay, 1).await;
    assert_eq!(inbox["results"][0]["msg"], "headline");
}

/// Ona's verbs, filters, page/page_size, group_by counts and `/stats/messaging`, with the
/// shapes of Ona's documentation.
#[tokio::test]
async fn ona_verbs_timestamp_filters_grouped_counts_and_stats() {
    let ex = Exchange::start().await;
    let (ona, bob) = (token("ona", false), token("bob", false));
    let (s, t) = ex
        .post(
            "/threads",
            &ona,
            json!({"name": "Form 1", "alias": "xform:1", "open_subscribe": true, "open_publish": true}),
        )
        .await;
    assert_eq!(s, 201, "{t}");
    let (s, _) = ex.post("/subscribe", &bob, json!({"tid": t["tid"]})).await;
    assert_eq!(s, 200);
    let post = |who: &str, verb: Option<&str>, msg: &str| {
        let mut body = json!({"target_type": "xform", "target_id": "1", "message": msg});
        if let Some(v) = verb {
            body["verb"] = json!(v);
        }
        (who.to_owned(), body)
    };
    let mut times = Vec::new();
    for (who, body) in [
        post("ona", None, "Hey there"),
        post("bob", Some("submission_created"), r#"{"id": [71472574]}"#),
        post("bob", Some("submission_created"), r#"{"id": [71472575]}"#),
        post("ona", Some("submission_edited"), r#"{"id": [71472574]}"#),
    ] {
        let (s, m) = ex.post("/messaging", &token(&who, false), body).await;
        assert_eq!(s, 201, "{m}");
        times.push(m["timestamp"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        ex.post(
            "/messaging",
            &ona,
            json!({"target_type": "xform", "target_id": "1", "message": "x", "verb": "Not A Verb"})
        )
        .await
        .0,
        400
    );
    let list = |q: &str| {
        let q = q.to_owned();
        let ex = &ex;
        let ona = ona.clone();
        async move {
            let (s, b) = ex
                .get(
                    &format!("/messaging?target_type=xform&target_id=1{q}"),
                    &ona,
                )
                .await;
            assert_eq!(s, 200, "{q}: {b}");
            b
        }
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while list("").await["count"] != 4 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let all = list("").await;
    assert_eq!(all["results"][0]["verb"], "submission_edited", "{all}");
    assert_eq!(all["results"][3]["verb"], "message");
    // Django's date lookups, in UTC: this year, month and day hold all four; others none.
    let first =
        time::OffsetDateTime::parse(&times[0], &time::format_description::well_known::Rfc3339)
            .unwrap()
            .to_offset(time::UtcOffset::UTC);
    let (y, m, d) = (first.year(), u8::from(first.month()), first.day());
    if times.iter().all(|t| t[..10] == times[0][..10]) {
        for (q, n) in [
            (format!("&timestamp__year={y}"), 4),
            (format!("&timestamp__year={}", y - 1), 0),
            (format!("&timestamp__year={y}&timestamp__month={m}"), 4),
            (format!("&timestamp__month={}", m % 12 + 1), 0),
            (
                format!("&timestamp__year={y}&timestamp__month={m}&timestamp__day={d}"),
                4,
            ),
            (format!("&timestamp__day={d}&verb=submission_created"), 2),
            (format!("&timestamp__day={}", d % 28 + 1), 0),
        ] {
            assert_eq!(list(&q).await["count"], n, "{q}");
        }
    }
    for bad in [
        "timestamp__month=13",
        "timestamp__year=x",
        "timestamp__day=0",
    ] {
        let (s, b) = ex
            .get(
                &format!("/messaging?target_type=xform&target_id=1&{bad}"),
                &ona,
            )
            .await;
        assert_eq!(s, 400, "{bad}: {b}");
    }
    // verb=, and the timestamp lookups (gt excludes, gte includes).
    let created = list("&verb=submission_created").await;
    assert_eq!(created["count"], 2, "{created}");
    assert!(
        created["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["verb"] == "submission_created" && r["user"] == "bob")
    );
    let enc = |t: &str| t.replace('+', "%2B");
    assert_eq!(
        list(&format!("&timestamp__gte={}", enc(&times[1]))).await["count"],
        3
    );
    assert_eq!(
        list(&format!("&timestamp__gt={}", enc(&times[1]))).await["count"],
        2
    );
    assert_eq!(
        list(&format!("&timestamp__lte={}", enc(&times[1]))).await["count"],
        2
    );
    assert_eq!(
        list(&format!("&timestamp__lt={}", enc(&times[1]))).await["count"],
        1
    );
    assert_eq!(list("&timestamp__lte=2024-06-20T00:00").await["count"], 0);
    // page / page_size.
    let page = list("&verb=submission_created&page=2&page_size=1").await;
    assert_eq!(
        (
            page["count"].as_u64(),
            page["results"].as_array().map(Vec::len)
        ),
        (Some(2), Some(1))
    );
    assert!(
        page["previous"]
            .as_str()
            .is_some_and(|p| p.ends_with("&page=1&page_size=1")),
        "links page as the request did: {page}"
    );
    assert_eq!(page["next"], Value::Null, "{page}");
    // Ona's page sizes: 1000 by default, up to 10,000.
    let all = list("&page=1").await;
    assert_eq!(all["results"].as_array().map(Vec::len), Some(4), "{all}");
    assert_eq!(all["count"], 4, "{all}");
    let (s, b) = ex
        .get("/messaging?target_type=xform&target_id=1&limit=101", &ona)
        .await;
    assert_eq!(s, 400, "limit/offset keep this API's bound: {b}");
    assert_eq!(list("&page_size=10000").await["count"], 4);
    for bad in ["&page_size=10001", "&page_size=0", "&page=0"] {
        let (s, b) = ex
            .get(
                &format!("/messaging?target_type=xform&target_id=1{bad}"),
                &bob,
            )
            .await;
        assert_eq!(s, 400, "{bad}: {b}");
    }
    // group_by, repeated: (day, user, verb) counts with their first and last times.
    let groups = list("&group_by=day&group_by=user&group_by=verb").await;
    assert_eq!(groups["count"], 3, "{groups}");
    let rows = groups["results"].as_array().unwrap();
    let bobs = rows.iter().find(|r| r["user"] == "bob").expect("bob's row");
    assert_eq!(bobs["verb"], "submission_created");
    assert_eq!(bobs["count"], 2);
    assert!(
        bobs["period_start"]
            .as_str()
            .unwrap()
            .ends_with("T00:00:00Z"),
        "{bobs}"
    );
    assert!(
        bobs["earliest_timestamp"].as_str().unwrap() <= bobs["latest_timestamp"].as_str().unwrap()
    );
    assert_eq!(
        rows[0]["verb"], "submission_edited",
        "most recent activity first"
    );
    let by_verb = list("&group_by=verb").await;
    assert_eq!(by_verb["count"], 3);
    assert!(by_verb["results"][0].get("user").is_none());
    assert!(by_verb["results"][0].get("period_start").is_none());
    for bad in ["&group_by=country", "&group_by=day&group_by=month"] {
        let (s, b) = ex
            .get(
                &format!("/messaging?target_type=xform&target_id=1{bad}"),
                &ona,
            )
            .await;
        assert_eq!(
            (s, b["error"]["field"].as_str()),
            (400, Some("group_by")),
            "{bad}: {b}"
        );
    }
    // /stats/messaging: counts per verb in each period, newest first.
    let (s, stats) = ex
        .get(
            "/stats/messaging?target_type=xform&target_id=1&group_by=year",
            &ona,
        )
        .await;
    assert_eq!(s, 200, "{stats}");
    let year = &stats[0];
    assert_eq!(year["submission_created"], 2, "{stats}");
    assert_eq!(year["submission_edited"], 1);
    assert_eq!(year["message"], 1);
    assert_eq!(year["group"].as_str().map(str::len), Some(4));
    let (s, b) = ex
        .get(
            "/stats/messaging?target_type=xform&target_id=1&group_by=hour",
            &ona,
        )
        .await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (400, Some("group_by")),
        "{b}"
    );
    assert_eq!(
        ex.get(
            "/stats/messaging?target_type=xform&target_id=1&group_by=day",
            &token("outsider", false)
        )
        .await
        .0,
        403
    );
}
