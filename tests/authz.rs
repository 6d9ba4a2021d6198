//! The authorization matrix: every route of the gateway against every kind of caller
//! (anonymous, another user, a subscriber, the owner, an admin), with the status each gets,
//! from one table. The routes are read from the router's source, so a route added without an
//! entry here fails this test.

mod common;

use std::collections::BTreeSet;

use common::{Exchange, token};
use reqwest::Method;
use serde_json::{Value, json};

/// The callers, in the order each row lists their statuses.
const CALLERS: [&str; 5] = ["anonymous", "other", "member", "owner", "admin"];

/// `(method, path, body, statuses)`. Placeholders: `{tid}` a thread owned by `owner` (open to
/// subscribe, closed to publish, alias `team:1`) that `member` belongs to, `{closed}` one
/// closed to both, `{mid}` the owner's message in it, `{mid2}` another, `{device}` the owner's
/// device, `{sched}` a message `admin` scheduled. Rows that change something come after the
/// rows that read it.
const MATRIX: &[(&str, &str, &str, [u16; 5])] = &[
    ("GET", "/ping", "", [200, 200, 200, 200, 200]),
    ("GET", "/health", "", [200, 200, 200, 200, 200]),
    // Outside /api/v1 (Prometheus' convention); routes are templates, no user data.
    ("GET", "/metrics", "", [200, 200, 200, 200, 200]),
    // Tracked links, outside /api/v1 too: no token needed, a forged one is refused.
    ("GET", "/r/forged", "", [400, 400, 400, 400, 400]),
    // The admin console's files (what it shows needs an admin's token for the API).
    ("GET", "/console", "", [200, 200, 200, 200, 200]),
    ("GET", "/console/app.js", "", [200, 200, 200, 200, 200]),
    ("GET", "/console/docs.js", "", [200, 200, 200, 200, 200]),
    // The OpenAPI document and its page: public, like the API's shape itself.
    ("GET", "/openapi.json", "", [200, 200, 200, 200, 200]),
    ("GET", "/docs", "", [200, 200, 200, 200, 200]),
    (
        "GET",
        "/webpush/vapid-public-key",
        "",
        [404, 404, 404, 404, 404],
    ),
    (
        "POST",
        "/enlist",
        r#"{"os":"email","email":"x@example.com"}"#,
        [401, 201, 201, 201, 201],
    ),
    ("GET", "/devices", "", [401, 200, 200, 200, 200]),
    ("GET", "/devices/channels", "", [401, 403, 403, 403, 200]),
    (
        "POST",
        "/threads",
        r#"{"name":"x"}"#,
        [401, 201, 201, 201, 201],
    ),
    ("GET", "/threads/{tid}", "", [401, 200, 200, 200, 200]),
    (
        "GET",
        "/threads/{tid}/messages",
        "",
        [401, 403, 200, 200, 200],
    ),
    (
        "GET",
        "/threads/by-alias/team:1",
        "",
        [401, 200, 200, 200, 200],
    ),
    (
        "POST",
        "/subscribe",
        r#"{"tid":"{closed}"}"#,
        [401, 403, 403, 200, 200],
    ),
    (
        "POST",
        "/unsubscribe",
        r#"{"tid":"{closed}"}"#,
        [401, 200, 200, 200, 200],
    ),
    (
        "POST",
        "/publish",
        r#"{"tid":"{tid}","msg":"hi"}"#,
        [401, 403, 403, 202, 202],
    ),
    (
        "POST",
        "/broadcast",
        r#"{"msg":"all"}"#,
        [401, 403, 403, 403, 202],
    ),
    (
        "POST",
        "/multicast",
        r#"{"msg":"m","uids":["zed"]}"#,
        [401, 403, 403, 403, 202],
    ),
    (
        "POST",
        "/send",
        r#"{"msg":"m","uid":"zed"}"#,
        [401, 403, 403, 403, 202],
    ),
    ("GET", "/notifications", "", [401, 200, 200, 200, 200]),
    ("GET", "/notifications/stats", "", [401, 200, 200, 200, 200]),
    (
        "GET",
        "/notifications/filter",
        "",
        [401, 200, 200, 200, 200],
    ),
    (
        "PATCH",
        "/notifications/filter",
        r#"{"types":{}}"#,
        [401, 200, 200, 200, 200],
    ),
    ("GET", "/types", "", [401, 200, 200, 200, 200]),
    (
        "POST",
        "/types",
        r#"{"name":"news","title":"News"}"#,
        [401, 403, 403, 403, 201],
    ),
    // Seed 003's face (outside /api/v1); "news" is registered by the row above.
    (
        "GET",
        "/compat/datahub/notifications",
        "",
        [401, 200, 200, 200, 200],
    ),
    (
        "POST",
        "/compat/datahub/notifications",
        r#"{"type":"news","receiver":"zed","data":{"content":"hi"}}"#,
        [401, 200, 200, 200, 200],
    ),
    (
        "POST",
        "/compat/datahub/notifications",
        r#"{"type":"admin_message","receiver":"zed","data":{}}"#,
        [401, 403, 403, 403, 400],
    ),
    (
        "GET",
        "/compat/datahub/notification_stat",
        "",
        [401, 200, 200, 200, 200],
    ),
    (
        "DELETE",
        "/compat/datahub/notification_stat",
        "",
        [401, 200, 200, 200, 200],
    ),
    // Seed 004's face: ids are the caller's own entries' positions ({seq}: the member's).
    (
        "GET",
        "/compat/drf/notifications",
        "",
        [401, 200, 200, 200, 200],
    ),
    (
        "PATCH",
        "/compat/drf/notifications",
        "[{seq}]",
        [401, 404, 200, 404, 404],
    ),
    (
        "GET",
        "/compat/drf/notifications/filter",
        "",
        [401, 200, 200, 200, 200],
    ),
    (
        "PATCH",
        "/compat/drf/notifications/filter",
        r#"{"types":{}}"#,
        [401, 200, 200, 200, 200],
    ),
    (
        "PATCH",
        "/compat/drf/notifications/{seq}",
        "",
        [401, 404, 200, 404, 404],
    ),
    (
        "DELETE",
        "/compat/drf/notifications/{seq}",
        "",
        [401, 404, 204, 404, 404],
    ),
    (
        "GET",
        "/compat/drf/ws/notifications",
        "",
        [401, 400, 400, 400, 400],
    ),
    (
        "POST",
        "/messages",
        r#"{"to":"zed","msg":"hi"}"#,
        [401, 202, 202, 202, 202],
    ),
    (
        "GET",
        "/messaging?target_type=team&target_id=1",
        "",
        [401, 403, 200, 200, 200],
    ),
    (
        "POST",
        "/messaging",
        r#"{"target_type":"team","target_id":"1","message":"hi"}"#,
        [401, 403, 201, 201, 201],
    ),
    ("GET", "/messaging/{mid}", "", [401, 403, 200, 200, 200]),
    (
        "GET",
        "/stats/messaging?target_type=team&target_id=1&group_by=day",
        "",
        [401, 403, 200, 200, 200],
    ),
    ("GET", "/blocks", "", [401, 200, 200, 200, 200]),
    ("PUT", "/blocks/zed", "", [401, 204, 204, 204, 204]),
    ("DELETE", "/blocks/zed", "", [401, 204, 204, 204, 204]),
    ("GET", "/connect", "", [401, 400, 400, 400, 400]),
    ("GET", "/stream", "", [401, 200, 200, 200, 200]),
    ("GET", "/preferences", "", [401, 200, 200, 200, 200]),
    ("PUT", "/preferences", "{}", [401, 200, 200, 200, 200]),
    (
        "GET",
        "/messages/{mid}/receipts",
        "",
        [401, 403, 403, 200, 200],
    ),
    ("GET", "/deliveries/failed", "", [401, 403, 403, 403, 200]),
    ("POST", "/deliveries/x/retry", "", [401, 403, 403, 403, 404]),
    ("GET", "/messages/scheduled", "", [401, 200, 200, 200, 200]),
    ("GET", "/experiments/exp-1", "", [401, 403, 403, 200, 200]),
    (
        "GET",
        "/reports/funnel?mid={mid}",
        "",
        [401, 403, 403, 200, 200],
    ),
    (
        "GET",
        "/reports/funnel?experiment=exp-1",
        "",
        [401, 403, 403, 200, 200],
    ),
    ("GET", "/reports/funnel", "", [401, 403, 403, 403, 200]),
    (
        "GET",
        "/presence?uids=member",
        "",
        [401, 403, 403, 403, 200],
    ),
    (
        "POST",
        "/experiments/exp-1/promote",
        r#"{"variant":"b"}"#,
        [401, 403, 403, 409, 409],
    ),
    (
        "POST",
        "/track",
        r#"{"event":"purchase"}"#,
        [401, 202, 202, 202, 202],
    ),
    (
        "POST",
        "/ack",
        r#"{"mid":"{mid}","status":"delivered"}"#,
        [401, 404, 202, 404, 404],
    ),
    (
        "PATCH",
        "/notifications",
        r#"{"ids":["{mid}"]}"#,
        [401, 200, 200, 200, 200],
    ),
    (
        "PATCH",
        "/notifications/{mid}",
        "",
        [401, 404, 200, 404, 404],
    ),
    (
        "POST",
        "/notifications/{mid}/archive",
        "",
        [401, 404, 200, 404, 404],
    ),
    (
        "DELETE",
        "/notifications/{mid}",
        "",
        [401, 404, 204, 404, 404],
    ),
    (
        "POST",
        "/notifications/read-all",
        "",
        [401, 200, 200, 200, 200],
    ),
    (
        "DELETE",
        "/notifications/stats",
        "",
        [401, 200, 200, 200, 200],
    ),
    (
        "POST",
        "/cancel",
        r#"{"mid":"{sched2}"}"#,
        [401, 404, 404, 404, 200],
    ),
    (
        "DELETE",
        "/messages/{sched}/schedule",
        "",
        [401, 404, 404, 404, 200],
    ),
    ("DELETE", "/messaging/{mid2}", "", [401, 403, 403, 204, 404]),
    ("DELETE", "/devices/{device}", "", [401, 404, 404, 204, 404]),
    // Seed 002 (stage-based messaging): `{schedule}`, `{set}` (with `{message}`) made by the
    // admin, `{subscription}` member's subscription to it; `...2` ones to delete.
    ("GET", "/schedule", "", [401, 403, 403, 403, 200]),
    (
        "POST",
        "/schedule",
        r#"{"minute":"0","hour":"9"}"#,
        [401, 403, 403, 403, 201],
    ),
    ("GET", "/schedule/{schedule}", "", [401, 403, 403, 403, 200]),
    (
        "PUT",
        "/schedule/{schedule}",
        r#"{"minute":"0","hour":"8"}"#,
        [401, 403, 403, 403, 200],
    ),
    ("GET", "/messageset", "", [401, 403, 403, 403, 200]),
    (
        "POST",
        "/messageset",
        r#"{"short_name":"authz-new","default_schedule":{schedule}}"#,
        [401, 403, 403, 403, 201],
    ),
    ("GET", "/messageset/{set}", "", [401, 403, 403, 403, 200]),
    (
        "PUT",
        "/messageset/{set}",
        r#"{"short_name":"authz-set","default_schedule":{schedule},"notes":"n"}"#,
        [401, 403, 403, 403, 200],
    ),
    (
        "GET",
        "/messageset/{set}/messages",
        "",
        [401, 403, 200, 403, 200],
    ),
    ("GET", "/message", "", [401, 403, 403, 403, 200]),
    (
        "POST",
        "/message",
        r#"{"messageset":{set},"sequence_number":9,"lang":"eng","text_content":"x"}"#,
        [401, 403, 403, 403, 201],
    ),
    ("GET", "/message/{message}", "", [401, 403, 200, 403, 200]),
    (
        "GET",
        "/message/{message}/content",
        "",
        [401, 403, 200, 403, 200],
    ),
    (
        "PUT",
        "/message/{message}",
        r#"{"messageset":{set},"sequence_number":1,"lang":"eng","text_content":"y"}"#,
        [401, 403, 403, 403, 200],
    ),
    ("GET", "/subscriptions", "", [401, 200, 200, 200, 200]),
    (
        "POST",
        "/subscriptions",
        r#"{"identity":"other","messageset":{set},"lang":"eng"}"#,
        [401, 201, 403, 403, 201],
    ),
    (
        "POST",
        "/subscriptions/request",
        r#"{"data":{"identity":"owner","messageset":{set},"lang":"eng"}}"#,
        [401, 403, 403, 403, 201],
    ),
    (
        "GET",
        "/subscriptions/{subscription}",
        "",
        [401, 404, 200, 404, 200],
    ),
    (
        "PUT",
        "/subscriptions/{subscription}",
        r#"{"identity":"member","messageset":{set},"lang":"eng"}"#,
        [401, 403, 403, 403, 200],
    ),
    (
        "POST",
        "/subscriptions/{subscription}/send",
        "",
        [401, 403, 403, 403, 201],
    ),
    (
        "DELETE",
        "/subscriptions/{subscription2}",
        "",
        [401, 403, 403, 403, 204],
    ),
    ("GET", "/binarycontent", "", [401, 403, 403, 403, 200]),
    ("POST", "/binarycontent", "abc", [401, 403, 403, 403, 201]),
    (
        "GET",
        "/binarycontent/{content}",
        "",
        [401, 403, 403, 403, 200],
    ),
    (
        "PUT",
        "/binarycontent/{content}",
        "def",
        [401, 403, 403, 403, 200],
    ),
    (
        "DELETE",
        "/binarycontent/{content2}",
        "",
        [401, 403, 403, 403, 204],
    ),
    (
        "DELETE",
        "/message/{message2}",
        "",
        [401, 403, 403, 403, 204],
    ),
    (
        "DELETE",
        "/messageset/{set2}",
        "",
        [401, 403, 403, 403, 204],
    ),
    (
        "DELETE",
        "/schedule/{schedule2}",
        "",
        [401, 403, 403, 403, 204],
    ),
];

/// `(method, path)` of every route `gateway/src/routes/mod.rs` registers, and of the seed
/// faces' routers under their prefixes, path parameters as `{name}`.
fn served_routes() -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    common::routes_in(
        include_str!("../gateway/src/routes/mod.rs"),
        "",
        &mut routes,
    );
    common::routes_in(
        include_str!("../gateway/src/routes/datahub.rs"),
        "/compat/datahub",
        &mut routes,
    );
    common::routes_in(
        include_str!("../gateway/src/routes/drf.rs"),
        "/compat/drf",
        &mut routes,
    );
    routes
}

/// A table path in the router's form: known ids and names back to `{param}`.
fn route_of(path: &str) -> String {
    let path = path.split('?').next().unwrap_or(path);
    let generic: Vec<String> =
        path.split('/')
            .enumerate()
            .map(|(i, seg)| {
                let parent = path.split('/').nth(i - usize::from(i > 0)).unwrap_or("");
                match (parent, seg) {
                    ("threads", s) if s.starts_with('{') => "{tid}".into(),
                    ("by-alias", _) => "{alias}".into(),
                    ("messages", s) if s.starts_with('{') => "{mid}".into(),
                    ("messaging", s) if s.starts_with('{') => "{id}".into(),
                    ("notifications", s) if s.starts_with('{') => "{id}".into(),
                    ("notifications", s) if s.parse::<u64>().is_ok() => "{id}".into(),
                    ("devices", "channels") => seg.to_owned(),
                    ("devices", _) => "{id}".into(),
                    ("experiments", _) => "{id}".into(),
                    ("r", _) => "{token}".into(),
                    ("blocks", _) => "{uid}".into(),
                    ("deliveries", "x") => "{id}".into(),
                    (
                        "schedule" | "messageset" | "message" | "subscriptions" | "binarycontent",
                        s,
                    ) if s.starts_with('{') => "{id}".into(),
                    _ => seg.to_owned(),
                }
            })
            .collect();
    generic.join("/")
}

#[tokio::test]
async fn every_route_answers_every_kind_of_caller_as_the_table_says() {
    // The table covers exactly the routes the gateway serves.
    let table: BTreeSet<(String, String)> = MATRIX
        .iter()
        .map(|(m, p, _, _)| (m.to_string(), route_of(p)))
        .collect();
    let served = served_routes();
    let missing: Vec<_> = served.difference(&table).collect();
    let stale: Vec<_> = table.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "routes without a row in MATRIX: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "rows for routes the gateway does not serve: {stale:?}"
    );

    let ex = Exchange::start().await;
    let tokens: Vec<Option<String>> = vec![
        None,
        Some(token("other", false)),
        Some(token("member", false)),
        Some(token("owner", false)),
        Some(token("root", true)),
    ];
    let (owner, member, admin) = (
        tokens[3].clone().unwrap(),
        tokens[2].clone().unwrap(),
        tokens[4].clone().unwrap(),
    );
    let (s, b) = ex
        .post(
            "/threads",
            &owner,
            json!({"name": "team", "open_subscribe": true, "open_publish": false, "alias": "team:1"}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let tid = b["tid"].as_str().unwrap().to_owned();
    let closed = ex.thread(&owner, false, false).await;
    assert_eq!(
        ex.post("/subscribe", &member, json!({"tid": tid})).await.0,
        200
    );
    let publish = |msg: &'static str| {
        let (ex, owner, tid) = (&ex, owner.clone(), tid.clone());
        async move {
            let (s, b) = ex
                .post("/publish", &owner, json!({"tid": tid, "msg": msg}))
                .await;
            assert_eq!(s, 202, "{b}");
            b["mid"].as_str().unwrap().to_owned()
        }
    };
    let mid = publish("first").await;
    let mid2 = publish("second").await;
    // An experiment of the owner's (`exp-1`).
    let (s, b) = ex
        .post(
            "/publish",
            &owner,
            json!({"tid": tid, "msg": "third", "opts": {"experiment": "exp-1"},
                   "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1, "msg": "3rd"}]}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let (s, b) = ex
        .post(
            "/enlist",
            &owner,
            json!({"os": "sms", "phone": "+14155550100"}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let device = b["id"].as_str().unwrap().to_owned();
    let (s, b) = ex
        .post(
            "/send",
            &admin,
            json!({"uid": "zed", "msg": "later", "opts": {"delay": "1h"}}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let sched = b["mid"].as_str().unwrap().to_owned();
    let (s, b) = ex
        .post(
            "/send",
            &admin,
            json!({"uid": "zed", "msg": "later too", "opts": {"delay": "1h"}}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let sched2 = b["mid"].as_str().unwrap().to_owned();
    ex.inbox_until(&member, 3).await;
    // The member's newest entry (the third message) by seed 004's numeric id.
    let drf_list: Value = ex
        .http
        .get(format!(
            "{}/compat/drf/notifications",
            ex.base.trim_end_matches("/api/v1")
        ))
        .bearer_auth(&member)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        drf_list["results"][0]["event"]["message"]
            .as_str()
            .is_some_and(|m| m == "third" || m == "3rd"),
        "{drf_list}"
    );
    let seq = drf_list["results"][0]["id"].to_string();
    // Seed 002's records.
    let created = |path: &'static str, body: Value, who: String| {
        let ex = &ex;
        async move {
            let (s, b) = ex.post(path, &who, body).await;
            assert_eq!(s, 201, "{path}: {b}");
            match &b["id"] {
                Value::String(id) => id.clone(),
                id => id.to_string(),
            }
        }
    };
    let schedule = created(
        "/schedule/",
        json!({"minute": "0", "hour": "9"}),
        admin.clone(),
    )
    .await;
    let schedule2 = created("/schedule/", json!({"minute": "0"}), admin.clone()).await;
    let set_body = |name: &str| json!({"short_name": name, "default_schedule": schedule.parse::<u64>().unwrap()});
    let set = created("/messageset/", set_body("authz-set"), admin.clone()).await;
    let set2 = created("/messageset/", set_body("authz-gone"), admin.clone()).await;
    let set_id: u64 = set.parse().unwrap();
    let message = created(
        "/message/",
        json!({"messageset": set_id, "sequence_number": 1, "lang": "eng", "text_content": "hello"}),
        admin.clone(),
    )
    .await;
    let message2 = created(
        "/message/",
        json!({"messageset": set_id, "sequence_number": 2, "lang": "eng", "text_content": "bye"}),
        admin.clone(),
    )
    .await;
    let upload = |bytes: &'static str| {
        let (ex, admin) = (&ex, admin.clone());
        async move {
            let r = ex
                .http
                .post(ex.url("/binarycontent/"))
                .bearer_auth(&admin)
                .header("content-type", "audio/ogg")
                .body(bytes)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            r.json::<Value>().await.unwrap()["id"].to_string()
        }
    };
    let content = upload("OggS").await;
    let content2 = upload("OggS2").await;
    let sub_body = json!({"identity": "member", "messageset": set_id, "lang": "eng"});
    let subscription = created("/subscriptions/", sub_body.clone(), member.clone()).await;
    let subscription2 = created("/subscriptions/", sub_body, admin.clone()).await;

    let fill = |s: &str| {
        s.replace("{content2}", &content2)
            .replace("{content}", &content)
            .replace("{schedule2}", &schedule2)
            .replace("{schedule}", &schedule)
            .replace("{set2}", &set2)
            .replace("{set}", &set)
            .replace("{message2}", &message2)
            .replace("{message}", &message)
            .replace("{subscription2}", &subscription2)
            .replace("{subscription}", &subscription)
            .replace("{tid}", &tid)
            .replace("{closed}", &closed)
            .replace("{mid2}", &mid2)
            .replace("{mid}", &mid)
            .replace("{device}", &device)
            .replace("{sched2}", &sched2)
            .replace("{sched}", &sched)
            .replace("{seq}", &seq)
    };
    let mut wrong = Vec::new();
    for (method, path, body, want) in MATRIX {
        let path = fill(path);
        for (i, caller) in CALLERS.iter().enumerate() {
            let outside_api = path == "/metrics"
                || ["/r/", "/compat/", "/console"]
                    .iter()
                    .any(|p| path.starts_with(p));
            let url = if outside_api {
                format!("{}{path}", ex.base.trim_end_matches("/api/v1"))
            } else {
                ex.url(&path)
            };
            let mut req = ex
                .http
                .request(Method::from_bytes(method.as_bytes()).unwrap(), url);
            if let Some(t) = &tokens[i] {
                req = req.bearer_auth(t);
            }
            if !body.is_empty() {
                req = req
                    .header("content-type", "application/json")
                    .body(fill(body));
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            if status != want[i] {
                let text = resp.text().await.unwrap_or_default();
                wrong.push(format!(
                    "{method} {path} as {caller}: {status} (table: {}) {text}",
                    want[i]
                ));
            } else if status >= 400 && path != "/metrics" && !path.starts_with("/console") {
                // Every refusal is the JSON error shape.
                let v: Value = resp.json().await.unwrap_or_default();
                if v["error"]["code"].as_str().is_none() {
                    wrong.push(format!(
                        "{method} {path} as {caller}: {status} without the error shape: {v}"
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} cells differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
