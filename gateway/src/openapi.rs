//! The OpenAPI 3.1 document of `/api/v1` (`GET /api/v1/openapi.json`) and its reference page
//! (`GET /api/v1/docs`).
//!
//! Request bodies and typed answers are described by the JSON Schema of the very types the
//! handlers deserialize and return (schemars, JSON Schema 2020-12, which OpenAPI 3.1 uses), so a
//! field added to a handler's type is in the document. Which operations exist, their parameters
//! and their success status are listed in [`OPERATIONS`]; `tests/openapi.rs` checks that list
//! against the router's source (every route documented, nothing documented that is not served)
//! and that every JSON answer has its type's schema, and CI runs schemathesis against a live
//! exchange (no 5xx, every answer matching the document).

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings};
use serde_json::{Map, Value, json};

use crate::routes::schemas;

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// No token.
    Open,
    /// Any signed-in user (some answers differ for admins).
    User,
    /// Admins only.
    Admin,
}

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// One operation of `/api/v1`.
pub struct Operation {
    pub method: &'static str,
    /// Under `/api/v1`, path parameters as `{name}`.
    pub path: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    pub auth: Auth,
    /// `(name, description)` of the query parameters it reads (all optional).
    pub query: &'static [(&'static str, &'static str)],
    pub body: Option<SchemaFn>,
    /// The success status and, when the handler returns a type, its schema.
    pub ok: (u16, Option<SchemaFn>),
    /// The success answer's media type other than JSON (`text/event-stream`, ...).
    pub media: Option<&'static str>,
    /// A 400 in the seed's own shape instead of the error shape.
    pub refused: Option<SchemaFn>,
    /// Another success status with the same answer (an idempotent repeat).
    pub also: Option<u16>,
}

fn of<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

const PAGING: &[(&str, &str)] = &[
    ("limit", "page size, 1 to 100 (default 20)"),
    ("offset", "entries to skip"),
];
const INBOX: &[(&str, &str)] = &[
    ("limit", "page size, 1 to 100 (default 20)"),
    ("offset", "entries to skip (not with cursor)"),
    (
        "cursor",
        "continue after this cursor (from an earlier answer), oldest first",
    ),
    (
        "status",
        "unread, read, archived or all (default: not archived)",
    ),
    ("readed", "seed 004: true (read) or false (unread)"),
    ("type", "a registered notification type"),
    ("sender", "the sender's uid"),
    ("level", "0 or 50"),
    ("thread", "a thread id"),
    ("since", "RFC 3339 time: entries at or after it"),
    ("before", "RFC 3339 time: entries before it"),
];
const STAGE_LIST: &[(&str, &str)] = &[("limit", "page size"), ("offset", "records to skip")];

macro_rules! op {
    ($method:literal $path:literal, $tag:literal, $auth:ident, $summary:literal,
     query: $query:expr, body: $body:expr, ok: $status:literal $(=> $ok:ty)?
     $(, media: $media:literal)? $(, refused: $refused:ty)? $(, also: $also:literal)?) => {
        Operation {
            method: $method,
            path: $path,
            tag: $tag,
            summary: $summary,
            auth: Auth::$auth,
            query: $query,
            body: $body,
            ok: ($status, op!(@ok $($ok)?)),
            media: op!(@media $($media)?),
            refused: op!(@ok $($refused)?),
            also: op!(@also $($also)?),
        }
    };
    (@also) => { None };
    (@also $s:literal) => { Some($s) };
    (@ok) => { None };
    (@ok $t:ty) => { Some(of::<$t> as SchemaFn) };
    (@media) => { None };
    (@media $m:literal) => { Some($m) };
}

macro_rules! body {
    ($t:ty) => {
        Some(of::<$t> as SchemaFn)
    };
}

/// Every operation of `/api/v1`.
pub static OPERATIONS: &[Operation] = &[
    op!("GET" "/ping", "service", Open, "Liveness and this process's role and channels",
        query: &[], body: None, ok: 200 => schemas::Ping),
    op!("GET" "/health", "service", Open, "Same as /ping",
        query: &[], body: None, ok: 200 => schemas::Ping),
    op!("GET" "/openapi.json", "service", Open, "This document",
        query: &[], body: None, ok: 200),
    op!("GET" "/docs", "service", Open, "This document, rendered",
        query: &[], body: None, ok: 200, media: "text/html"),
    op!("GET" "/webpush/vapid-public-key", "devices", Open, "The VAPID public key for Web Push subscriptions (404 without Web Push)",
        query: &[], body: None, ok: 200 => schemas::VapidKey),
    op!("POST" "/enlist", "devices", User, "Enlist one of the caller's devices (APNs, FCM, Web Push, SMS, e-mail)",
        query: &[], body: body!(schemas::EnlistBody), ok: 201 => projections::model::Device,
        also: 200),
    op!("GET" "/devices", "devices", User, "The caller's devices",
        query: &[], body: None, ok: 200 => schemas::List<projections::model::Device>),
    op!("GET" "/devices/channels", "devices", Admin, "Enlisted devices per channel, every user's",
        query: &[], body: None, ok: 200 => schemas::DeviceChannels),
    op!("DELETE" "/devices/{id}", "devices", User, "Remove one of the caller's devices",
        query: &[], body: None, ok: 204),
    op!("POST" "/threads", "threads", User, "Create a thread",
        query: &[], body: body!(crate::routes::threads::CreateThread), ok: 201 => schemas::ThreadCreated),
    op!("GET" "/threads/{tid}", "threads", User, "A thread",
        query: &[], body: None, ok: 200 => schemas::ThreadView),
    op!("GET" "/threads/{tid}/messages", "threads", User, "A thread's messages, newest first (members, the owner and admins)",
        query: &[("limit", "page size"), ("offset", "messages to skip"), ("sender", "by sender"), ("since", "RFC 3339"), ("before", "RFC 3339")],
        body: None, ok: 200 => schemas::Paged<projections::model::ThreadMessage>),
    op!("GET" "/threads/by-alias/{alias}", "threads", User, "The thread holding an alias",
        query: &[], body: None, ok: 200 => schemas::ThreadView),
    op!("POST" "/subscribe", "threads", User, "Subscribe a user to a thread",
        query: &[], body: body!(crate::routes::threads::ThreadRef), ok: 200 => schemas::Subscription),
    op!("POST" "/unsubscribe", "threads", User, "Unsubscribe a user from a thread",
        query: &[], body: body!(crate::routes::threads::ThreadRef), ok: 200 => schemas::Subscription),
    op!("POST" "/publish", "messages", User, "Publish a message to a thread's subscribers",
        query: &[], body: body!(crate::routes::messages::PublishBody), ok: 202 => schemas::Accepted),
    op!("POST" "/broadcast", "messages", Admin, "Send a message to every known user",
        query: &[], body: body!(crate::routes::messages::BroadcastBody), ok: 202 => schemas::Accepted),
    op!("POST" "/multicast", "messages", Admin, "Send a message to a list of users",
        query: &[], body: body!(crate::routes::messages::MulticastBody), ok: 202 => schemas::Accepted),
    op!("POST" "/send", "messages", Admin, "Send a message to one user",
        query: &[], body: body!(crate::routes::messages::SendBody), ok: 202 => schemas::Accepted),
    op!("POST" "/messages", "messages", User, "A private message from the caller to another user",
        query: &[], body: body!(crate::routes::private::PrivateBody), ok: 202 => schemas::Accepted),
    op!("GET" "/messages/scheduled", "messages", User, "Scheduled messages waiting to be sent (the caller's; any sender's for admins)",
        query: &[("sender", "admins: one sender's"), ("limit", "at most this many")], body: None,
        ok: 200 => schemas::ScheduledList),
    op!("DELETE" "/messages/{mid}/schedule", "messages", User, "Cancel a scheduled message",
        query: &[], body: None, ok: 200 => schemas::Cancelled),
    op!("POST" "/cancel", "messages", User, "Cancel a scheduled message (body form)",
        query: &[], body: body!(crate::routes::scheduled::CancelBody), ok: 200 => schemas::Cancelled),
    op!("GET" "/messages/{mid}/receipts", "deliveries", User, "A message's delivery receipts (its sender, the thread's owner, admins)",
        query: PAGING, body: None, ok: 200 => schemas::ReceiptsPage),
    op!("POST" "/ack", "deliveries", User, "Acknowledge that a device showed or opened a message",
        query: &[], body: body!(crate::routes::deliveries::AckBody), ok: 202 => schemas::Acked),
    op!("GET" "/deliveries/failed", "deliveries", Admin, "Dead letters, newest first",
        query: PAGING, body: None, ok: 200 => schemas::Paged<projections::model::FailedDelivery>),
    op!("POST" "/deliveries/{id}/retry", "deliveries", Admin, "Requeue a dead letter",
        query: &[], body: None, ok: 202 => schemas::Requeued),
    op!("GET" "/notifications", "inbox", User, "The caller's inbox: newest first, or after a cursor oldest first",
        query: INBOX, body: None, ok: 200 => schemas::InboxPage),
    op!("PATCH" "/notifications", "inbox", User, "Mark entries read",
        query: &[], body: body!(crate::routes::notifications::Ids), ok: 200 => schemas::ReadAnswer),
    op!("PATCH" "/notifications/{id}", "inbox", User, "Mark one entry read",
        query: &[], body: None, ok: 200 => projections::model::Notification),
    op!("DELETE" "/notifications/{id}", "inbox", User, "Delete one entry",
        query: &[], body: None, ok: 204),
    op!("POST" "/notifications/{id}/archive", "inbox", User, "Archive one entry",
        query: &[], body: None, ok: 200 => projections::model::Notification),
    op!("POST" "/notifications/read-all", "inbox", User, "Mark every entry read",
        query: &[], body: None, ok: 200 => schemas::Unread),
    op!("GET" "/notifications/stats", "inbox", User, "Unread and unseen counts (per type and level)",
        query: &[], body: None, ok: 200 => projections::model::InboxStats),
    op!("DELETE" "/notifications/stats", "inbox", User, "Mark every entry seen",
        query: &[], body: None, ok: 200 => projections::model::InboxStats),
    op!("GET" "/notifications/filter", "inbox", User, "The caller's notification type filter",
        query: &[], body: None, ok: 200 => schemas::TypeFilter),
    op!("PATCH" "/notifications/filter", "inbox", User, "Turn notification types on or off",
        query: &[], body: body!(crate::routes::preferences::FilterPatch), ok: 200 => schemas::TypeFilter),
    op!("GET" "/preferences", "inbox", User, "The caller's delivery preferences",
        query: &[], body: None, ok: 200 => exchange::events::Preferences),
    op!("PUT" "/preferences", "inbox", User, "Replace the caller's delivery preferences",
        query: &[], body: body!(exchange::events::Preferences), ok: 200 => exchange::events::Preferences),
    op!("GET" "/types", "types", User, "Registered notification types",
        query: &[], body: None, ok: 200 => schemas::List<projections::model::NotificationType>),
    op!("POST" "/types", "types", Admin, "Register a notification type",
        query: &[], body: body!(crate::routes::types::TypeBody), ok: 201 => projections::model::NotificationType),
    op!("GET" "/blocks", "private", User, "Users the caller blocks",
        query: &[], body: None, ok: 200 => schemas::List<String>),
    op!("PUT" "/blocks/{uid}", "private", User, "Block a user's private messages",
        query: &[], body: None, ok: 204),
    op!("DELETE" "/blocks/{uid}", "private", User, "Unblock a user",
        query: &[], body: None, ok: 204),
    op!("GET" "/messaging", "messaging", User, "Seed 000: a team's or user's messages",
        query: &[("target_type", "team or user"), ("target_id", "its id"), ("user", "by author"), ("verb", "by verb"),
            ("timestamp__gte", "RFC 3339 (also __gt, __lt, __lte)"), ("group_by", "counts by user, verb and/or day, month or year"),
            ("page", "page number"), ("page_size", "page size"), ("limit", "page size"), ("offset", "messages to skip")],
        body: None, ok: 200 => schemas::Paged<schemas::OnaRow>),
    op!("POST" "/messaging", "messaging", User, "Seed 000: post a message to a team or user",
        query: &[], body: body!(crate::routes::messaging::PostBody), ok: 201 => schemas::OnaMessage),
    op!("GET" "/messaging/{id}", "messaging", User, "Seed 000: one message",
        query: &[], body: None, ok: 200 => schemas::OnaMessage),
    op!("DELETE" "/messaging/{id}", "messaging", User, "Seed 000: delete a message (its sender or an admin)",
        query: &[], body: None, ok: 204),
    op!("GET" "/stats/messaging", "messaging", User, "Seed 000: message counts grouped by time and sender",
        query: &[("target_type", "team or user"), ("target_id", "its id"), ("group_by", "day, month or year")],
        body: None, ok: 200 => Vec<schemas::OnaStat>),
    op!("GET" "/connect", "live", User, "WebSocket: live inbox frames (an upgrade request)",
        query: &[("token", "the JWT, for clients that cannot set headers")], body: None, ok: 101),
    op!("GET" "/stream", "live", User, "Server-sent events: live inbox frames, resumable with Last-Event-ID",
        query: &[("token", "the JWT, for clients that cannot set headers"), ("last_event_id", "resume after this id")],
        body: None, ok: 200, media: "text/event-stream"),
    op!("GET" "/presence", "live", Admin, "Whether users are online, and their time online",
        query: &[("uids", "comma-separated uids"), ("days", "days of online time, 1 to 366 (default 7)")],
        body: None, ok: 200 => schemas::PresenceList),
    op!("POST" "/track", "experiments", User, "Record an experiment's conversion or click",
        query: &[], body: body!(crate::routes::experiments::TrackBody), ok: 202 => schemas::TrackedAnswer),
    op!("GET" "/experiments/{id}", "experiments", User, "An experiment's report (its sender, admins)",
        query: &[("metric", "delivered, opened, clicked or converted (default)"), ("alpha", "the level, between 0 and 0.5 (default 0.05)")],
        body: None, ok: 200 => schemas::ExperimentReport),
    op!("POST" "/experiments/{id}/promote", "experiments", Admin, "Send the winning variant to the rest of the audience",
        query: &[], body: body!(crate::routes::experiments::PromoteBody), ok: 202 => schemas::Accepted),
    op!("GET" "/reports/funnel", "experiments", User, "The funnel of a message, an experiment, or (admins) a period",
        query: &[("mid", "a message"), ("experiment", "an experiment"), ("since", "RFC 3339 (admins' range; default the last 7 days)"),
            ("until", "RFC 3339"), ("by", "comma-separated: channel, urgency, type, variant")],
        body: None, ok: 200 => schemas::FunnelAnswer),
    op!("GET" "/schedule", "stage", Admin, "Seed 002: schedules", query: STAGE_LIST, body: None,
        ok: 200 => schemas::Paged<exchange::stage::ScheduleRecord>),
    op!("POST" "/schedule", "stage", Admin, "Seed 002: create a schedule", query: &[],
        body: body!(crate::routes::stage::ScheduleBody), ok: 201 => exchange::stage::ScheduleRecord),
    op!("GET" "/schedule/{id}", "stage", Admin, "Seed 002: a schedule", query: &[], body: None,
        ok: 200 => exchange::stage::ScheduleRecord),
    op!("PUT" "/schedule/{id}", "stage", Admin, "Seed 002: replace a schedule", query: &[],
        body: body!(crate::routes::stage::ScheduleBody), ok: 200 => exchange::stage::ScheduleRecord),
    op!("DELETE" "/schedule/{id}", "stage", Admin, "Seed 002: delete a schedule", query: &[], body: None, ok: 204),
    op!("GET" "/messageset", "stage", Admin, "Seed 002: message sets", query: STAGE_LIST, body: None,
        ok: 200 => schemas::Paged<exchange::stage::MessageSetRecord>),
    op!("POST" "/messageset", "stage", Admin, "Seed 002: create a message set", query: &[],
        body: body!(crate::routes::stage::MessageSetBody), ok: 201 => exchange::stage::MessageSetRecord),
    op!("GET" "/messageset/{id}", "stage", Admin, "Seed 002: a message set", query: &[], body: None,
        ok: 200 => exchange::stage::MessageSetRecord),
    op!("PUT" "/messageset/{id}", "stage", Admin, "Seed 002: replace a message set", query: &[],
        body: body!(crate::routes::stage::MessageSetBody), ok: 200 => exchange::stage::MessageSetRecord),
    op!("DELETE" "/messageset/{id}", "stage", Admin, "Seed 002: delete a message set", query: &[], body: None, ok: 204),
    op!("GET" "/messageset/{id}/messages", "stage", User, "Seed 002: a message set's messages (subscribers, admins)",
        query: STAGE_LIST, body: None, ok: 200 => schemas::Paged<exchange::stage::MessageRecord>),
    op!("GET" "/message", "stage", Admin, "Seed 002: messages", query: STAGE_LIST, body: None,
        ok: 200 => schemas::Paged<exchange::stage::MessageRecord>),
    op!("POST" "/message", "stage", Admin, "Seed 002: create a message", query: &[],
        body: body!(crate::routes::stage::MessageBody), ok: 201 => exchange::stage::MessageRecord),
    op!("GET" "/message/{id}", "stage", User, "Seed 002: a message (subscribers, admins)", query: &[], body: None,
        ok: 200 => exchange::stage::MessageRecord),
    op!("PUT" "/message/{id}", "stage", Admin, "Seed 002: replace a message", query: &[],
        body: body!(crate::routes::stage::MessageBody), ok: 200 => exchange::stage::MessageRecord),
    op!("DELETE" "/message/{id}", "stage", Admin, "Seed 002: delete a message", query: &[], body: None, ok: 204),
    op!("GET" "/message/{id}/content", "stage", User, "Seed 002: a message's content: its text, or its binary content with that content's type",
        query: &[], body: None, ok: 200, media: "*/*"),
    op!("GET" "/binarycontent", "stage", Admin, "Seed 002: binary contents", query: STAGE_LIST, body: None,
        ok: 200 => schemas::Paged<schemas::BinaryContentRecord>),
    op!("POST" "/binarycontent", "stage", Admin, "Seed 002: upload binary content (multipart/form-data with a content file, or the raw bytes)",
        query: &[], body: None, ok: 201 => schemas::BinaryContentRecord),
    op!("GET" "/binarycontent/{id}", "stage", Admin, "Seed 002: a binary content's record", query: &[], body: None,
        ok: 200 => schemas::BinaryContentRecord),
    op!("PUT" "/binarycontent/{id}", "stage", Admin, "Seed 002: replace binary content (multipart/form-data or raw bytes)",
        query: &[], body: None, ok: 200 => schemas::BinaryContentRecord),
    op!("DELETE" "/binarycontent/{id}", "stage", Admin, "Seed 002: delete binary content", query: &[], body: None, ok: 204),
    op!("GET" "/subscriptions", "stage", User, "Seed 002: subscriptions (the caller's; all for admins)", query: STAGE_LIST,
        body: None, ok: 200 => schemas::Paged<exchange::stage::SubscriptionRecord>),
    op!("POST" "/subscriptions", "stage", User, "Seed 002: subscribe to a message set", query: &[],
        body: body!(crate::routes::stage::SubscriptionBody), ok: 201 => exchange::stage::SubscriptionRecord),
    op!("POST" "/subscriptions/request", "stage", Admin, "Seed 002: subscribe a user by request", query: &[],
        body: body!(crate::routes::stage::RequestBody), ok: 201 => schemas::StageAccepted),
    op!("GET" "/subscriptions/{id}", "stage", User, "Seed 002: a subscription", query: &[], body: None,
        ok: 200 => exchange::stage::SubscriptionRecord),
    op!("PUT" "/subscriptions/{id}", "stage", Admin, "Seed 002: replace a subscription", query: &[],
        body: body!(crate::routes::stage::SubscriptionBody), ok: 200 => exchange::stage::SubscriptionRecord),
    op!("DELETE" "/subscriptions/{id}", "stage", Admin, "Seed 002: end a subscription", query: &[], body: None, ok: 204),
    op!("POST" "/subscriptions/{id}/send", "stage", Admin, "Seed 002: send a subscription's next message now", query: &[], body: None,
        ok: 201 => schemas::StageAccepted,
        refused: schemas::StageSendRefused),
];

fn parameters(op: &Operation) -> Vec<Value> {
    let mut out = Vec::new();
    for seg in op.path.split('/') {
        if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            out.push(json!({
                "name": name, "in": "path", "required": true, "schema": {"type": "string"},
            }));
        }
    }
    for (name, description) in op.query {
        out.push(json!({
            "name": name, "in": "query", "required": false,
            "description": description, "schema": {"type": "string"},
        }));
    }
    out
}

fn operation(op: &Operation, g: &mut SchemaGenerator) -> Value {
    let mut o = Map::new();
    o.insert("tags".into(), json!([op.tag]));
    o.insert("summary".into(), json!(op.summary));
    o.insert(
        "operationId".into(),
        json!(format!(
            "{}{}",
            op.method.to_lowercase(),
            op.path
                .split(['/', '{', '}', '-', '.'])
                .filter(|s| !s.is_empty())
                .map(|s| {
                    let mut c = s.chars();
                    c.next()
                        .map(|f| f.to_uppercase().chain(c).collect::<String>())
                        .unwrap_or_default()
                })
                .collect::<String>()
        )),
    );
    if op.auth != Auth::Open {
        o.insert("security".into(), json!([{"bearer": []}]));
    }
    if op.auth == Auth::Admin {
        o.insert(
            "description".into(),
            json!("Admins only (a token with the `admin` role)."),
        );
    }
    let params = parameters(op);
    if !params.is_empty() {
        o.insert("parameters".into(), Value::Array(params));
    }
    if let Some(body) = op.body {
        o.insert(
            "requestBody".into(),
            json!({
                "required": true,
                "content": {"application/json": {"schema": body(g)}},
            }),
        );
    }
    let (status, schema) = op.ok;
    let ok = match (status, schema, op.media) {
        (204, _, _) => json!({"description": "Done; no body."}),
        (101, _, _) => json!({"description": "Switching to the WebSocket protocol."}),
        (_, _, Some(media)) => json!({
            "description": "Success.",
            "content": {media: {"schema": {"type": "string"}}},
        }),
        (_, Some(schema), None) => json!({
            "description": "Success.",
            "content": {"application/json": {"schema": schema(g)}},
        }),
        (_, None, None) if op.path == "/openapi.json" => json!({
            "description": "This document (OpenAPI 3.1).",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }),
        // Every JSON answer names its type (tests/openapi.rs fails on this mark).
        (_, None, None) => json!({
            "description": "Success (a JSON object; its schema is not generated).",
            "x-msgxc-untyped": true,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }),
    };
    let error = json!({
        "description": "The request was refused or failed: `{\"error\":{\"code\",\"message\"}}`.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    });
    let mut responses = json!({ status.to_string(): ok.clone(), "default": error });
    if let Some(also) = op.also {
        responses[also.to_string()] = ok;
    }
    if let Some(refused) = op.refused {
        responses["400"] = json!({
            "description": "Refused, in the seed's own shape.",
            "content": {"application/json": {"schema": refused(g)}},
        });
    }
    o.insert("responses".into(), responses);
    Value::Object(o)
}

/// The document, built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut settings = SchemaSettings::draft2020_12();
        settings.definitions_path = "/components/schemas".into();
        settings.meta_schema = None;
        let mut g = settings.into_generator();
        let mut paths = Map::new();
        for op in OPERATIONS {
            let entry = paths
                .entry(format!("/api/v1{}", op.path))
                .or_insert_with(|| json!({}));
            entry[op.method.to_lowercase()] = operation(op, &mut g);
        }
        let error = g.subschema_for::<schemas::ErrorBody>();
        let mut components = g.take_definitions(true);
        if let Some(name) = error
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.rsplit('/').next())
            && name != "Error"
            && let Some(s) = components.remove(name)
        {
            components.insert("Error".into(), s);
        }
        json!({
            "openapi": "3.1.0",
            "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
            "info": {
                "title": "msgxc",
                "version": env!("CARGO_PKG_VERSION"),
                "description": "An event-sourced message exchange: every accepted write is an \
                    event in NATS JetStream (a 2xx means it is durably stored); reads come \
                    from projections of the event log.",
                "license": {"name": "MIT", "identifier": "MIT"},
            },
            "servers": [{"url": "/"}],
            "tags": [],
            "paths": paths,
            "components": {
                "schemas": components,
                "securitySchemes": {
                    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                },
            },
        })
    })
}

/// `GET /api/v1/openapi.json`.
pub async fn json() -> Response {
    static BODY: OnceLock<Vec<u8>> = OnceLock::new();
    let body = BODY.get_or_init(|| serde_json::to_vec_pretty(document()).unwrap_or_default());
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.as_slice(),
    )
        .into_response()
}

/// `GET /api/v1/docs`: the document rendered by a page of our own (its script is
/// `/console/docs.js`; no third-party code, nothing fetched from elsewhere).
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                crate::routes::console::POLICY,
            ),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../console/docs.html"),
    )
        .into_response()
}
