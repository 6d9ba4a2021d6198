//! Seed 002's stage-based messaging: schedules, message sets, messages and subscriptions
//! under `/api/v1/` with the seed's shapes (paths with and without the trailing slash, pages
//! with absolute links, the seed's ranges and uniqueness), and the scheduler walking each
//! subscription through its set on its schedule through the ordinary delivery path. The
//! scheduler runs on a test clock sixty times faster than the wall clock, so a schedule that
//! fires every minute fires every second here.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Exchange, next_json, read_models, token, ws_connect};
use projections::sqlite::SqliteStore;
use serde_json::{Value, json};
use time::OffsetDateTime;

/// A clock that starts now and runs `speed` times faster than the wall clock.
fn fast_clock(speed: u32) -> exchange::stage::Clock {
    let (t0, started) = (OffsetDateTime::now_utc(), Instant::now());
    Arc::new(move || t0 + started.elapsed() * speed)
}

async fn exchange(speed: u32) -> Exchange {
    Exchange::start_with(move |o| {
        o.stage = exchange::stage::SchedulerSettings {
            clock: fast_clock(speed),
            every: Duration::from_millis(100),
            ..Default::default()
        };
    })
    .await
}

async fn create(ex: &Exchange, path: &str, body: Value) -> Value {
    let (s, b) = ex.post(path, &token("root", true), body).await;
    assert_eq!(s, 201, "{path}: {b}");
    b
}

fn id(v: &Value) -> u64 {
    v["id"].as_u64().expect("an integer id")
}

#[tokio::test]
async fn the_content_api_has_the_seeds_shapes_ranges_and_rules() {
    let ex = exchange(1).await;
    let admin = token("root", true);
    // The seed's ranges, the field named; day_of_week is 1 (Monday) to 7 (Sunday).
    for (field, value) in [
        ("minute", "60"),
        ("hour", "24"),
        ("day_of_week", "0"),
        ("day_of_week", "8"),
        ("day_of_month", "32"),
        ("month_of_year", "0"),
        ("minute", "*/5"),
        ("timezone", "Mars/Olympus"),
    ] {
        let (s, b) = ex.post("/schedule/", &admin, json!({ field: value })).await;
        assert_eq!(s, 400, "{field}={value}: {b}");
        assert_eq!(b["error"]["field"], field, "{b}");
    }
    let weekly = create(
        &ex,
        "/schedule/",
        json!({"minute": "0", "hour": "8", "day_of_week": "1,7", "timezone": "africa/johannesburg"}),
    )
    .await;
    assert_eq!(weekly["timezone"], "Africa/Johannesburg");
    assert_eq!(weekly["day_of_month"], "*");
    let daily = create(&ex, "/schedule", json!({"minute": "30", "hour": "9"})).await;
    // With and without the slash; pages with absolute links.
    for path in ["/schedule", "/schedule/"] {
        let (s, b) = ex.get(&format!("{path}?limit=1"), &admin).await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["count"], 2);
        assert_eq!(b["results"][0]["id"], weekly["id"]);
        assert_eq!(b["previous"], Value::Null);
        let next = b["next"].as_str().unwrap();
        assert!(
            next.starts_with("http://") && next.ends_with("/api/v1/schedule/?limit=1&offset=1"),
            "{next}"
        );
    }
    let (s, b) = ex.get(&format!("/schedule/{}/", id(&daily)), &admin).await;
    assert_eq!((s, &b["minute"]), (200, &json!("30")));
    // The seed's `Authorization: Token <token>` scheme (Django REST's) works as Bearer does.
    let r = ex
        .http
        .get(ex.url("/schedule/"))
        .header("authorization", format!("Token {admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Message sets: a unique short name, a schedule that exists, text or audio.
    let set_body = |name: &str, schedule: u64| json!({"short_name": name, "notes": "week one", "default_schedule": schedule, "content_type": "text"});
    let set = create(&ex, "/messageset/", set_body("baby-1", id(&weekly))).await;
    assert_eq!(set["next_set"], Value::Null);
    assert!(set["created_at"].is_string() && set["updated_at"].is_string());
    let (s, b) = ex
        .post("/messageset/", &admin, set_body("baby-1", id(&weekly)))
        .await;
    assert_eq!(s, 409, "{b}");
    let (s, b) = ex
        .post("/messageset/", &admin, set_body("baby-2", 999_999))
        .await;
    assert_eq!(
        (s, &b["error"]["field"]),
        (400, &json!("default_schedule")),
        "{b}"
    );
    let (s, b) = ex
        .post(
            "/messageset/",
            &admin,
            json!({"short_name": "x", "default_schedule": id(&weekly), "content_type": "video"}),
        )
        .await;
    assert_eq!(
        (s, &b["error"]["field"]),
        (400, &json!("content_type")),
        "{b}"
    );

    // Messages: unique per (set, sequence number, language); ISO 639-3.
    let msg = |n: u32, lang: &str, text: &str| json!({"messageset": id(&set), "sequence_number": n, "lang": lang, "text_content": text});
    let m1 = create(&ex, "/message/", msg(1, "eng", "Week 1")).await;
    create(&ex, "/message/", msg(2, "eng", "Week 2")).await;
    create(&ex, "/message/", msg(1, "zul", "Iviki 1")).await;
    let (s, b) = ex.post("/message/", &admin, msg(1, "eng", "again")).await;
    assert_eq!(s, 409, "{b}");
    let (s, b) = ex.post("/message/", &admin, msg(3, "english", "x")).await;
    assert_eq!((s, &b["error"]["field"]), (400, &json!("lang")), "{b}");
    let (s, b) = ex
        .get(&format!("/messageset/{}/messages/", id(&set)), &admin)
        .await;
    assert_eq!((s, &b["count"]), (200, &json!(3)), "{b}");
    // Updating and deleting.
    let (s, b) = ex
        .call(
            reqwest::Method::PUT,
            &format!("/message/{}/", id(&m1)),
            Some(&admin),
            Some(msg(1, "eng", "Week one")),
        )
        .await;
    assert_eq!((s, &b["text_content"]), (200, &json!("Week one")), "{b}");
    assert_eq!(b["created_at"], m1["created_at"]);
    let content = ex
        .http
        .get(ex.url(&format!("/message/{}/content/", id(&m1))))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(content.status(), 200);
    assert!(
        content.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(content.text().await.unwrap(), "Week one");
    let (s, _) = ex
        .call(
            reqwest::Method::DELETE,
            &format!("/schedule/{}/", id(&daily)),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, 204);
    assert_eq!(
        ex.get(&format!("/schedule/{}/", id(&daily)), &admin)
            .await
            .0,
        404
    );

    // Users: their own subscriptions only; the messages of sets they are subscribed to.
    let ann = token("ann", false);
    let (s, _) = ex.get("/messageset/", &ann).await;
    assert_eq!(s, 403);
    assert_eq!(ex.get(&format!("/message/{}/", id(&m1)), &ann).await.0, 403);
    let (s, b) = ex
        .post(
            "/subscriptions/",
            &ann,
            json!({"identity": "bob", "messageset": id(&set), "lang": "eng"}),
        )
        .await;
    assert_eq!(s, 403, "{b}");
    let (s, sub) = ex
        .post(
            "/subscriptions/",
            &ann,
            json!({"identity": "ann", "messageset": id(&set), "lang": "eng", "metadata": {"source": "clinic"}}),
        )
        .await;
    assert_eq!(s, 201, "{sub}");
    assert_eq!(sub["schedule"], weekly["id"], "the set's default schedule");
    assert_eq!(sub["next_sequence_number"], 1);
    assert_eq!(
        (sub["active"].clone(), sub["completed"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(sub["process_status"], 0);
    assert_eq!(sub["version"], 1);
    assert!(sub.get("_applied").is_none());
    assert_eq!(ex.get(&format!("/message/{}/", id(&m1)), &ann).await.0, 200);
    let (_, mine) = ex.get("/subscriptions/", &ann).await;
    assert_eq!(mine["count"], 1, "{mine}");
    let (_, theirs) = ex.get("/subscriptions/", &token("bob", false)).await;
    assert_eq!(theirs["count"], 0, "{theirs}");
    let (s, b) = ex
        .post(
            "/subscriptions/request",
            &admin,
            json!({"data": {"identity": "bob", "messageset": id(&set), "lang": "zul"}}),
        )
        .await;
    assert_eq!((s, &b["accepted"]), (201, &json!(true)), "{b}");
    let (s, bad) = ex.get("/subscriptions/?messageset=x", &admin).await;
    assert_eq!(
        (s, &bad["error"]["field"]),
        (400, &json!("messageset")),
        "{bad}"
    );
    let (_, bobs) = ex.get("/subscriptions/?identity=bob", &admin).await;
    assert_eq!(bobs["count"], 1, "{bobs}");
    assert_eq!(bobs["results"][0]["lang"], "zul");
}

/// A subscription walks its set one message per tick in its language (falling back to the
/// set's first language, and saying so), completes after the last and moves on to the next
/// set; an inactive one is not sent to; `send` sends the next one now. The stage messages
/// arrive as any message (inbox entry of type `stage_message`, live frame). A rebuild gives
/// the same read models and sends nothing.
#[tokio::test]
async fn subscriptions_walk_their_sets_on_their_schedule() {
    let ex = exchange(60).await;
    let admin = token("root", true);
    let zola = token("zola", false);
    let mut ws = ws_connect(&ex, &zola).await;
    // Every minute on the test clock: every second here.
    let minutely = create(&ex, "/schedule/", json!({"minute": "*"})).await;
    let never = create(
        &ex,
        "/schedule/",
        json!({"minute": "0", "hour": "0", "day_of_month": "31", "month_of_year": "2"}),
    )
    .await;
    let later = create(
        &ex,
        "/messageset/",
        json!({"short_name": "later", "default_schedule": id(&minutely)}),
    )
    .await;
    let first = create(
        &ex,
        "/messageset/",
        json!({"short_name": "first", "default_schedule": id(&minutely), "next_set": id(&later)}),
    )
    .await;
    for (set, n, lang, text) in [
        (&first, 1, "eng", "one"),
        (&first, 1, "zul", "kunye"),
        (&first, 2, "eng", "two"),
        (&later, 1, "eng", "after"),
    ] {
        create(
            &ex,
            "/message/",
            json!({"messageset": id(set), "sequence_number": n, "lang": lang, "text_content": text}),
        )
        .await;
    }
    let (s, sub) = ex
        .post(
            "/subscriptions/",
            &zola,
            json!({"identity": "zola", "messageset": id(&first), "lang": "zul"}),
        )
        .await;
    assert_eq!(s, 201, "{sub}");
    // An inactive one, and one on a schedule that never fires.
    let (_, idle) = ex
        .post(
            "/subscriptions/",
            &zola,
            json!({"identity": "zola", "messageset": id(&later), "lang": "eng", "active": false}),
        )
        .await;
    let (_, manual) = ex
        .post(
            "/subscriptions/",
            &admin,
            json!({"identity": "musa", "messageset": id(&first), "lang": "eng", "schedule": id(&never)}),
        )
        .await;

    // First: 1 in isiZulu, 2 in English (no isiZulu copy); then the next set's message.
    let inbox = ex.inbox_until(&zola, 3).await;
    let items = inbox["results"].as_array().unwrap();
    let texts: Vec<&str> = items
        .iter()
        .rev()
        .map(|n| n["msg"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["kunye", "two", "after"], "{inbox}");
    for n in items {
        assert_eq!(n["type"], "stage_message", "{n}");
        assert_eq!(n["sender"], "stage", "{n}");
    }
    let two = items.iter().find(|n| n["msg"] == "two").unwrap();
    assert_eq!(two["data"]["lang"], "eng", "{two}");
    assert_eq!(two["data"]["requested_lang"], "zul", "{two}");
    assert_eq!(two["data"]["lang_fallback"], true, "{two}");
    let one = items.iter().find(|n| n["msg"] == "kunye").unwrap();
    assert_eq!(one["data"].get("lang_fallback"), None, "{one}");
    assert_eq!(one["title"], "first");
    // Live, as any message.
    let frame = next_json(&mut ws).await;
    assert_eq!(frame["action"], "new", "{frame}");
    assert_eq!(frame["notification"]["msg"], "kunye", "{frame}");

    ex.caught_up().await;
    let (_, walked) = ex
        .get(
            &format!("/subscriptions/{}/", sub["id"].as_str().unwrap()),
            &zola,
        )
        .await;
    assert_eq!(walked["completed"], true, "{walked}");
    assert_eq!(walked["active"], false, "{walked}");
    assert_eq!(walked["process_status"], 2, "{walked}");
    let (_, mine) = ex.get("/subscriptions/", &zola).await;
    let follow: Vec<&Value> = mine["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["messageset"] == later["id"] && s["id"] != idle["id"])
        .collect();
    assert_eq!(follow.len(), 1, "{mine}");
    assert_eq!(follow[0]["completed"], true, "{mine}");
    assert_eq!(follow[0]["created_by"], "stage", "{mine}");
    // Completed: refused.
    let (s, b) = ex
        .post(
            &format!("/subscriptions/{}/send", sub["id"].as_str().unwrap()),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!((s, &b["accepted"]), (400, &json!(false)), "{b}");

    // The inactive one sent nothing; nor the one whose schedule never fires, until `send`.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ex.caught_up().await;
    assert_eq!(ex.get("/notifications", &zola).await.1["count"], 3);
    let musa = token("musa", false);
    assert_eq!(ex.get("/notifications", &musa).await.1["count"], 0);
    let (s, b) = ex
        .post(
            &format!("/subscriptions/{}/send/", manual["id"].as_str().unwrap()),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!((s, &b), (201, &json!({"accepted": true})), "{b}");
    let got = ex.inbox_until(&musa, 1).await;
    assert_eq!(got["results"][0]["msg"], "one", "{got}");
    let (_, m) = ex
        .get(
            &format!("/subscriptions/{}", manual["id"].as_str().unwrap()),
            &admin,
        )
        .await;
    assert_eq!(
        (m["next_sequence_number"].clone(), m["completed"].clone()),
        (json!(2), json!(false)),
        "{m}"
    );
    // Activated: it starts.
    let (s, b) = ex
        .call(
            reqwest::Method::PUT,
            &format!("/subscriptions/{}/", idle["id"].as_str().unwrap()),
            Some(&admin),
            Some(json!({"identity": "zola", "messageset": id(&later), "lang": "eng", "active": true})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    ex.inbox_until(&zola, 4).await;

    // A rebuild of the stream equals the live store, and sends nothing.
    ex.caught_up().await;
    let dir = tempfile::tempdir().unwrap();
    let rebuilt = SqliteStore::open(&dir.path().join("rebuilt.sqlite3")).unwrap();
    projections::rebuild(&ex.running().log, &rebuilt, 2)
        .await
        .unwrap();
    let users = ["zola", "musa"];
    assert_eq!(
        read_models(ex.running().store.as_ref(), &users, &[], &[]).await,
        read_models(&rebuilt, &users, &[], &[]).await
    );
    use projections::Store;
    for kind in [
        "schedule",
        "messageset",
        "message",
        "subscription",
        "subscriptions_of.zola",
    ] {
        let live = ex.running().store.stage_docs(kind, 1000, 0).await.unwrap();
        let again = rebuilt.stage_docs(kind, 1000, 0).await.unwrap();
        assert_eq!(live, again, "{kind}");
    }
    assert!(
        rebuilt.outbox(10).await.unwrap().is_empty(),
        "a rebuild queues no delivery"
    );
}

/// A whole `msgxc serve` killed -9 again and again while subscriptions are being walked
/// (mid-tick, mid-fold, mid-append) and restarted: every subscriber still gets every message
/// of the set exactly once, in order. Ticks due while it was down are caught up on restart.
#[tokio::test]
async fn kill_9_during_the_walk_neither_skips_nor_repeats_a_message() {
    let nats = testkit::TestNats::start();
    let data = tempfile::tempdir().unwrap();
    let port = exchange::natsd::free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let serve = || common::serve_process(&nats.url(), data.path(), &listen, &[]);
    let base = format!("http://{listen}/api/v1");
    let http = reqwest::Client::new();
    let up = || common::wait_until_up(&http, &base);
    let admin = token("root", true);
    let post = |path: &'static str, body: Value| {
        let (http, base, admin) = (http.clone(), base.clone(), admin.clone());
        async move {
            let r = http
                .post(format!("{base}/{path}"))
                .bearer_auth(&admin)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201, "{path}");
            r.json::<Value>().await.unwrap()
        }
    };
    let mut proc = serve();
    up().await;
    // Every second second.
    let seconds: Vec<String> = (0..60).step_by(2).map(|s| s.to_string()).collect();
    let schedule = post("schedule/", json!({"second": seconds.join(",")})).await;
    let set = post(
        "messageset/",
        json!({"short_name": "walk", "default_schedule": schedule["id"]}),
    )
    .await;
    const MESSAGES: usize = 6;
    for n in 1..=MESSAGES {
        post(
            "message/",
            json!({"messageset": set["id"], "sequence_number": n, "lang": "eng", "text_content": format!("m{n}")}),
        )
        .await;
    }
    let users: Vec<String> = (0..5).map(|i| format!("walker{i}")).collect();
    for u in &users {
        post(
            "subscriptions/",
            json!({"identity": u, "messageset": set["id"], "lang": "eng"}),
        )
        .await;
    }
    // Killed at uneven points in the walk, down for a tick or two each time.
    for pause in [2300, 1700, 2900, 1100] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        proc.0.kill().unwrap();
        proc.0.wait().unwrap();
        tokio::time::sleep(Duration::from_millis(pause / 2)).await;
        proc = serve();
        up().await;
    }
    let inbox = |uid: String| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.get(format!("{base}/notifications?limit=100"))
                .bearer_auth(token(&uid, false))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    for u in &users {
        loop {
            let got = inbox(u.clone()).await;
            if got["count"].as_u64() >= Some(MESSAGES as u64) {
                break;
            }
            assert!(Instant::now() < deadline, "{u}: {got}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Two more ticks: nothing beyond the set comes.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for u in &users {
        let got = inbox(u.clone()).await;
        let mut texts: Vec<&str> = got["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["msg"].as_str().unwrap())
            .collect();
        texts.reverse();
        let want: Vec<String> = (1..=MESSAGES).map(|n| format!("m{n}")).collect();
        assert_eq!(texts, want, "{u}: every message once, in order");
    }
    drop(proc);
}

/// Binary content: uploaded raw or as a multipart form, kept in the JetStream Object Store
/// (not in the event), served by `message/{id}/content/` with its content type; replaced by
/// `PUT`, gone after `DELETE`.
#[tokio::test]
async fn binary_content_is_stored_apart_and_served_with_its_type() {
    let ex = exchange(1).await;
    let admin = token("root", true);
    let audio: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let r = ex
        .http
        .post(ex.url("/binarycontent/"))
        .bearer_auth(&admin)
        .header("content-type", "audio/ogg")
        .body(audio.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let raw: Value = r.json().await.unwrap();
    assert_eq!(
        (raw["content_type"].clone(), raw["size"].clone()),
        (json!("audio/ogg"), json!(100_000))
    );
    // Multipart, the way Django REST clients post a FileField.
    let boundary = "XyZ123";
    let mut form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"content\"; filename=\"w1.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\n"
    )
    .into_bytes();
    form.extend_from_slice(b"ID3-mp3-bytes");
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let r = ex
        .http
        .post(ex.url("/binarycontent"))
        .bearer_auth(&admin)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mp3: Value = r.json().await.unwrap();
    assert_eq!(mp3["content_type"], "audio/mpeg");
    assert_eq!(mp3["size"], 13);
    let r = ex
        .http
        .post(ex.url("/binarycontent/"))
        .bearer_auth(&admin)
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Not in the event: the stream holds the record only.
    let stored = ex
        .running()
        .log
        .get(raw["id"].as_u64().unwrap())
        .await
        .unwrap();
    assert!(serde_json::to_vec(&stored.envelope).unwrap().len() < 2_000);

    let schedule = create(&ex, "/schedule/", json!({"minute": "0"})).await;
    let set = create(
        &ex,
        "/messageset/",
        json!({"short_name": "audio", "default_schedule": schedule["id"], "content_type": "audio"}),
    )
    .await;
    let m = create(
        &ex,
        "/message/",
        json!({"messageset": set["id"], "sequence_number": 1, "lang": "xho", "binary_content": raw["id"]}),
    )
    .await;
    let (s, b) = ex
        .post(
            "/message/",
            &admin,
            json!({"messageset": set["id"], "sequence_number": 2, "lang": "xho", "binary_content": 999_999}),
        )
        .await;
    assert_eq!(
        (s, &b["error"]["field"]),
        (400, &json!("binary_content")),
        "{b}"
    );
    let content = |n: u64| {
        let (ex, admin) = (&ex, admin.clone());
        async move {
            ex.http
                .get(ex.url(&format!("/message/{n}/content/")))
                .bearer_auth(&admin)
                .send()
                .await
                .unwrap()
        }
    };
    let r = content(id(&m)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "audio/ogg");
    assert_eq!(r.bytes().await.unwrap().to_vec(), audio);
    // Replaced, then deleted.
    let r = ex
        .http
        .put(ex.url(&format!("/binarycontent/{}/", id(&raw))))
        .bearer_auth(&admin)
        .header("content-type", "audio/wav")
        .body("RIFF")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let replaced: Value = r.json().await.unwrap();
    assert_eq!(replaced["created_at"], raw["created_at"]);
    let r = content(id(&m)).await;
    assert_eq!(r.headers()["content-type"], "audio/wav");
    assert_eq!(r.text().await.unwrap(), "RIFF");
    let (s, _) = ex
        .call(
            reqwest::Method::DELETE,
            &format!("/binarycontent/{}/", id(&mp3)),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (_, list) = ex.get("/binarycontent/", &admin).await;
    assert_eq!(list["count"], 1, "{list}");
    let store = ex
        .running()
        .log
        .jetstream()
        .get_object_store("MSGXC_CONTENT")
        .await
        .unwrap();
    assert!(
        store.get(mp3["content"].as_str().unwrap()).await.is_err(),
        "its bytes are gone"
    );
    assert!(
        store.get(raw["content"].as_str().unwrap()).await.is_err(),
        "replaced bytes are gone"
    );
}
