//! The OpenAPI document (issue 17): served at `/api/v1/openapi.json`, OpenAPI 3.1, listing
//! exactly the routes the router serves under `/api/v1` (read from the router's source, as the
//! authorization matrix does), every reference resolving, the typed answers' schemas those of
//! the handlers' types; and its reference page. Schemathesis checks live answers against it in
//! `scripts/api-conformance.sh`.

mod common;

use std::collections::BTreeSet;

use common::{Exchange, token};
use serde_json::{Value, json};

/// `(METHOD, path)` of the `.route(...)` calls of the API router in `gateway/src/routes/mod.rs`
/// (the routes nested under `/api/v1`: `router`'s `api` and `stage_routes`).
fn api_routes() -> BTreeSet<(String, String)> {
    let source = include_str!("../gateway/src/routes/mod.rs");
    // The API's routes are registered before the top-level router is built.
    let api = &source[..source
        .find("let cors = cors_layer")
        .expect("router source layout")];
    let mut routes = BTreeSet::new();
    common::routes_in(api, "/api/v1", &mut routes);
    routes
}

fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "$ref" {
                    if let Some(r) = v.as_str() {
                        out.push(r);
                    }
                } else {
                    refs(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_document_lists_every_served_route_and_its_references_resolve() {
    let ex = Exchange::start().await;
    let http = reqwest::Client::new();
    let resp = http.get(ex.url("/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["jsonSchemaDialect"],
        "https://json-schema.org/draft/2020-12/schema"
    );

    let served = api_routes();
    assert!(served.len() > 80, "{served:?}");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            documented.insert((method.to_uppercase(), path.clone()));
            assert!(op["summary"].as_str().is_some_and(|s| !s.is_empty()));
            // Every JSON answer is described by the handler's type.
            for (status, r) in op["responses"].as_object().unwrap() {
                assert!(
                    r.get("x-msgxc-untyped").is_none(),
                    "{method} {path} {status}: the handler's answer has no type"
                );
            }
            assert!(op["responses"]["default"].is_object(), "{method} {path}");
            // Path parameters are declared.
            for seg in path.split('/') {
                if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    assert!(
                        op["parameters"].as_array().is_some_and(|ps| ps
                            .iter()
                            .any(|p| p["name"] == name
                                && p["in"] == "path"
                                && p["required"] == true)),
                        "{method} {path}: {name}"
                    );
                }
            }
        }
    }
    let missing: Vec<_> = served.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(missing.is_empty(), "served, not documented: {missing:?}");
    assert!(extra.is_empty(), "documented, not served: {extra:?}");

    // Every reference resolves to a component schema.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("reference outside components: {r}"));
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "unresolved {r}"
        );
    }
    // The typed answers and bodies are the handlers' types: a field of each is there.
    let schemas = &doc["components"]["schemas"];
    let publish = &doc["paths"]["/api/v1/publish"]["post"];
    let body_ref = publish["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .unwrap();
    let body = &schemas[body_ref.rsplit('/').next().unwrap()];
    for field in ["tid", "msg", "opts", "variants", "type", "title", "level"] {
        assert!(body["properties"][field].is_object(), "PublishBody.{field}");
    }
    assert_eq!(body["required"], json!(["tid", "msg"]));
    assert!(schemas["Accepted"]["properties"]["mid"].is_object());
    assert!(schemas["Error"]["properties"]["error"].is_object());
    assert!(schemas["InboxPage"]["properties"]["results"].is_object());
    assert!(schemas["Notification"]["properties"]["status"].is_object());
    assert_eq!(
        doc["paths"]["/api/v1/broadcast"]["post"]["security"],
        json!([{"bearer": []}])
    );
    assert!(doc["paths"]["/api/v1/ping"]["get"]["security"].is_null());

    // Answers of typed operations have the documented fields (schemathesis checks them all).
    let admin = token("root", true);
    let (s, sent) = ex
        .post("/send", &admin, json!({"uid": "alice", "msg": "hi"}))
        .await;
    assert_eq!(s, 202);
    let accepted = schemas["Accepted"]["properties"].as_object().unwrap();
    for k in sent.as_object().unwrap().keys() {
        assert!(accepted.contains_key(k), "Accepted lacks {k}");
    }
    let page = ex.inbox_until(&token("alice", false), 1).await;
    let documented: BTreeSet<&String> = schemas["InboxPage"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    let answered: BTreeSet<&String> = page.as_object().unwrap().keys().collect();
    assert_eq!(documented, answered);
    let entry = &page["results"][0];
    let fields = schemas["Notification"]["properties"].as_object().unwrap();
    for k in entry.as_object().unwrap().keys() {
        assert!(fields.contains_key(k), "Notification lacks {k}");
    }
    let (s, err) = ex.get("/notifications?status=nope", &admin).await;
    assert_eq!(s, 400);
    assert_eq!(err["error"]["field"], "status");
}

#[tokio::test]
async fn the_reference_page_renders_the_document_from_this_origin() {
    let ex = Exchange::start().await;
    let http = reqwest::Client::new();
    let page = http.get(ex.url("/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"src="/console/docs.js""#));
    let base = ex.url("").replace("/api/v1", "");
    let script = http
        .get(format!("{base}/console/docs.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 200);
    assert!(
        script
            .text()
            .await
            .unwrap()
            .contains("/api/v1/openapi.json")
    );
}

/// The served document.
async fn document(ex: &Exchange) -> Value {
    reqwest::get(ex.url("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The JSON schema of an operation's answer with `status`.
fn answer_schema(doc: &Value, path: &str, method: &str, status: &str) -> Value {
    doc["paths"][format!("/api/v1{path}")][method]["responses"][status]["content"]
        ["application/json"]["schema"]
        .clone()
}

/// Every key an answer holds is a property of its schema, and every required property is
/// there (one level; references resolved).
fn conforms(doc: &Value, schema: &Value, answer: &Value, what: &str) {
    let schema = match schema["$ref"].as_str() {
        Some(r) => &doc["components"]["schemas"][r.rsplit('/').next().unwrap()],
        None => schema,
    };
    let props = schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{what}: no properties in {schema}"));
    let answer = answer
        .as_object()
        .unwrap_or_else(|| panic!("{what}: {answer}"));
    for k in answer.keys() {
        assert!(props.contains_key(k), "{what}: {k} is not documented");
    }
    for r in schema["required"].as_array().into_iter().flatten() {
        assert!(
            answer.contains_key(r.as_str().unwrap()),
            "{what}: required {r} missing"
        );
    }
}

/// Seed 002's records as answered, against the document's schemas for them.
#[tokio::test]
async fn seed_002_records_match_their_documented_schemas() {
    let ex = Exchange::start().await;
    let doc = document(&ex).await;
    let admin = token("root", true);
    let ok = |path: &str, method: &str, status: &str| answer_schema(&doc, path, method, status);
    let (s, schedule) = ex
        .post("/schedule", &admin, json!({"minute": "30", "hour": "9"}))
        .await;
    assert_eq!(s, 201, "{schedule}");
    conforms(&doc, &ok("/schedule", "post", "201"), &schedule, "schedule");
    let (s, set) = ex
        .post(
            "/messageset",
            &admin,
            json!({"short_name": "week-1", "default_schedule": schedule["id"], "content_type": "text"}),
        )
        .await;
    assert_eq!(s, 201, "{set}");
    conforms(&doc, &ok("/messageset", "post", "201"), &set, "message set");
    let (s, message) = ex
        .post(
            "/message",
            &admin,
            json!({"messageset": set["id"], "sequence_number": 1, "lang": "eng_ZA", "text_content": "hi"}),
        )
        .await;
    assert_eq!(s, 201, "{message}");
    conforms(&doc, &ok("/message", "post", "201"), &message, "message");
    let upload = reqwest::Client::new()
        .post(ex.url("/binarycontent"))
        .bearer_auth(&admin)
        .header("content-type", "audio/mpeg")
        .body(vec![1u8, 2, 3])
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 201);
    let content: Value = upload.json().await.unwrap();
    conforms(
        &doc,
        &ok("/binarycontent", "post", "201"),
        &content,
        "binary content",
    );
    for (path, name) in [
        ("/binarycontent", "binary contents"),
        ("/schedule", "schedules"),
        ("/messageset", "message sets"),
        ("/message", "messages"),
    ] {
        let (s, page) = ex.get(path, &admin).await;
        assert_eq!(s, 200, "{page}");
        let schema = ok(path, "get", "200");
        conforms(&doc, &schema, &page, name);
        let paged = &doc["components"]["schemas"]
            [schema["$ref"].as_str().unwrap().rsplit('/').next().unwrap()];
        conforms(
            &doc,
            &paged["properties"]["results"]["items"],
            &page["results"][0],
            name,
        );
    }
}

/// An experiment's report and a funnel report as answered, against their documented schemas.
#[tokio::test]
async fn the_reports_match_their_documented_schemas() {
    let ex = Exchange::start().await;
    let doc = document(&ex).await;
    let admin = token("root", true);
    let uids: Vec<String> = (0..5).map(|i| format!("u{i:02}")).collect();
    let (s, sent) = ex
        .post(
            "/multicast",
            &admin,
            json!({
                "uids": uids,
                "msg": "hello",
                "variants": [{"name": "A", "weight": 1}, {"name": "B", "weight": 1, "msg": "B"}],
                "holdout": 20,
                "opts": {"experiment": "doc-check"},
            }),
        )
        .await;
    assert_eq!(s, 202, "{sent}");
    let schema = |path: &str| answer_schema(&doc, path, "get", "200");
    let component = |schema: &Value| {
        doc["components"]["schemas"][schema["$ref"].as_str().unwrap().rsplit('/').next().unwrap()]
            .clone()
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let report = loop {
        let (s, b) = ex.get("/experiments/doc-check", &admin).await;
        if s == 200 && b["arms"].as_array().is_some_and(|a| a.len() == 3) {
            break b;
        }
        assert!(tokio::time::Instant::now() < deadline, "no report: {s} {b}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let report_schema = schema("/experiments/{id}");
    conforms(&doc, &report_schema, &report, "experiment report");
    let arms = component(&report_schema)["properties"]["arms"]["items"].clone();
    for arm in report["arms"].as_array().unwrap() {
        conforms(&doc, &arms, arm, "arm");
    }
    let mid = sent["mid"].as_str().unwrap();
    let (s, funnel) = ex
        .get(&format!("/reports/funnel?mid={mid}&by=variant"), &admin)
        .await;
    assert_eq!(s, 200, "{funnel}");
    let funnel_schema = component(&schema("/reports/funnel"));
    for k in funnel.as_object().unwrap().keys() {
        assert!(
            funnel_schema["properties"][k].is_object(),
            "funnel report: {k} is not documented"
        );
    }
    for r in funnel_schema["required"].as_array().unwrap() {
        assert!(funnel.get(r.as_str().unwrap()).is_some(), "funnel: {r}");
    }
}
