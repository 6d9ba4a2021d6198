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
        "DELETE",
        "/messages/{sched}/schedule",
        "",
        [401, 404, 404, 404, 200],
    ),
    ("DELETE", "/messaging/{mid2}", "", [401, 403, 403, 204, 404]),
    ("DELETE", "/devices/{device}", "", [401, 404, 404, 204, 404]),
];

/// `(method, path)` of every route `gateway/src/routes/mod.rs` registers, path parameters as
/// `{name}`.
fn served_routes() -> BTreeSet<(String, String)> {
    let source = include_str!("../gateway/src/routes/mod.rs");
    let mut routes = BTreeSet::new();
    for call in source.split(".route(").skip(1) {
        let Some(path) = call.split('"').nth(1) else {
            continue;
        };
        // The handlers up to the end of this `.route(...)` call.
        let mut depth = 1;
        let mut end = call.len();
        for (i, c) in call.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        for method in ["get", "post", "put", "patch", "delete"] {
            let mut rest = &call[..end];
            while let Some(i) = rest.find(&format!("{method}(")) {
                let before = rest[..i].chars().last();
                if matches!(before, None | Some(' ' | '\n' | '.' | ',')) {
                    routes.insert((method.to_uppercase(), path.to_owned()));
                }
                rest = &rest[i + method.len()..];
            }
        }
    }
    routes
}

/// A table path in the router's form: known ids and names back to `{param}`.
fn route_of(path: &str) -> String {
    let path = path.split('?').next().unwrap_or(path);
    let generic: Vec<String> = path
        .split('/')
        .enumerate()
        .map(|(i, seg)| {
            let parent = path.split('/').nth(i - usize::from(i > 0)).unwrap_or("");
            match (parent, seg) {
                ("threads", s) if s.starts_with('{') => "{tid}".into(),
                ("by-alias", _) => "{alias}".into(),
                ("messages", s) if s.starts_with('{') => "{mid}".into(),
                ("messaging", s) if s.starts_with('{') => "{id}".into(),
                ("notifications", s) if s.starts_with('{') => "{id}".into(),
                ("devices", _) => "{id}".into(),
                ("experiments", _) => "{id}".into(),
                ("r", _) => "{token}".into(),
                ("blocks", _) => "{uid}".into(),
                ("deliveries", "x") => "{id}".into(),
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
    ex.inbox_until(&member, 3).await;

    let fill = |s: &str| {
        s.replace("{tid}", &tid)
            .replace("{closed}", &closed)
            .replace("{mid2}", &mid2)
            .replace("{mid}", &mid)
            .replace("{device}", &device)
            .replace("{sched}", &sched)
    };
    let mut wrong = Vec::new();
    for (method, path, body, want) in MATRIX {
        let path = fill(path);
        for (i, caller) in CALLERS.iter().enumerate() {
            let url = if path == "/metrics" || path.starts_with("/r/") {
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
            } else if status >= 400 && path != "/metrics" {
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
