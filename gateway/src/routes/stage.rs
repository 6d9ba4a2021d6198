//! Stage-based messaging, seed 002's API under `/api/v1/` (each path with and without the
//! trailing slash): `schedule/`, `messageset/`, `messageset/{id}/messages/`, `message/`,
//! `message/{id}/content/`, `subscriptions/`, `subscriptions/{id}/send`,
//! `subscriptions/request`. Lists page with `limit`/`offset` and absolute `next`/`previous`.
//!
//! Every create, update and delete is a `stage_record_saved` / `stage_record_deleted` event
//! (an integer id is the creating event's stream sequence); the answer comes once the
//! projection has it. Admins manage everything; a user reads and creates their own
//! subscriptions and reads the messages of sets they are subscribed to.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use exchange::Actor;
use exchange::events::{
    Event, StageKind, StageRecordDeleted, StageRecordSaved, StageSendRequested,
};
use exchange::stage::{Cron, MessageRecord, MessageSetRecord, ScheduleRecord, SubscriptionRecord};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, Paging};
use crate::state::AppState;

type Answer = (StatusCode, Json<Value>);

fn now() -> String {
    OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The record as the API shows it: without the fold's own keys (`_applied`).
fn shown(body: &str) -> Value {
    let mut v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.retain(|k, _| !k.starts_with('_'));
    }
    v
}

/// `scheme://host` of this request, for absolute page links (behind a proxy, its
/// `X-Forwarded-Proto` and `Host`).
pub(super) fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|s| *s == "https" || *s == "http")
        .unwrap_or("http");
    format!("{scheme}://{host}")
}

/// A page of `kind`'s records shown as `{"count","next","previous","results"}`, filtered by
/// `keep` (which then sees every record: the page is cut after the filter).
async fn page(
    state: &AppState,
    headers: &HeaderMap,
    path: &str,
    kind: &str,
    query: &HashMap<String, String>,
    keep: Option<&(dyn Fn(&Value) -> bool + Send + Sync)>,
) -> ApiResult<Json<Value>> {
    let paging = Paging::from_query(query)?;
    let (total, results) = match keep {
        None => {
            let offset = u32::try_from(paging.offset).unwrap_or(u32::MAX);
            let (total, docs) = state.store.stage_docs(kind, paging.limit, offset).await?;
            (
                total,
                docs.iter().map(|d| shown(&d.body)).collect::<Vec<_>>(),
            )
        }
        Some(keep) => {
            let (_, docs) = state.store.stage_docs(kind, u32::MAX, 0).await?;
            let all: Vec<Value> = docs
                .iter()
                .map(|d| shown(&d.body))
                .filter(|v| keep(v))
                .collect();
            let total = all.len() as u64;
            let results = all
                .into_iter()
                .skip(paging.offset as usize)
                .take(paging.limit as usize)
                .collect();
            (total, results)
        }
    };
    let (next, previous) = paging.links(&format!("{}/api/v1/{path}", base_url(headers)), total);
    Ok(Json(json!({
        "count": total,
        "next": next,
        "previous": previous,
        "results": results,
    })))
}

/// A page of the records of `kind` an index lists (`messages_of.<set>`, ...), in its order,
/// filtered by `keep`.
async fn indexed_page(
    state: &AppState,
    headers: &HeaderMap,
    path: &str,
    kind: StageKind,
    index: &str,
    query: &HashMap<String, String>,
    keep: &(dyn Fn(&Value) -> bool + Send + Sync),
) -> ApiResult<Json<Value>> {
    let paging = Paging::from_query(query)?;
    let (_, rows) = state.store.stage_docs(index, u32::MAX, 0).await?;
    let mut all = Vec::with_capacity(rows.len());
    for row in rows {
        // An index row names the record by id in its body, or is keyed by it.
        let id = if row.body.is_empty() {
            row.id
        } else {
            row.body
        };
        if let Some(r) = record(state, kind, &id).await?
            && keep(&r)
        {
            all.push(r);
        }
    }
    let total = all.len() as u64;
    let results: Vec<Value> = all
        .into_iter()
        .skip(paging.offset as usize)
        .take(paging.limit as usize)
        .collect();
    let (next, previous) = paging.links(&format!("{}/api/v1/{path}", base_url(headers)), total);
    Ok(Json(json!({
        "count": total,
        "next": next,
        "previous": previous,
        "results": results,
    })))
}

async fn record(state: &AppState, kind: StageKind, id: &str) -> ApiResult<Option<Value>> {
    Ok(state
        .store
        .stage_doc(kind.as_str(), id)
        .await?
        .map(|d| shown(&d.body)))
}

async fn found(state: &AppState, kind: StageKind, id: &str) -> ApiResult<Value> {
    record(state, kind, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no {} {id}", kind.as_str())))
}

fn int_id(field: &str, v: &str) -> ApiResult<u64> {
    v.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::field(field, "must be a positive integer id"))
}

/// Appends a save and waits for the projection; the stored record.
async fn save(
    state: &AppState,
    actor: &Actor,
    kind: StageKind,
    id: Option<String>,
    record: Value,
) -> ApiResult<Value> {
    let event = Event::StageRecordSaved(StageRecordSaved {
        kind,
        id: id.clone().unwrap_or_default(),
        record,
    });
    let recorded = state.append_consistent(actor, event, None).await?;
    let id = id.unwrap_or_else(|| recorded.appended.seq.to_string());
    record_or_unavailable(state, kind, &id).await
}

async fn record_or_unavailable(state: &AppState, kind: StageKind, id: &str) -> ApiResult<Value> {
    record(state, kind, id)
        .await?
        .ok_or_else(|| ApiError::unavailable("stored but not projected yet; read it again"))
}

async fn remove(state: &AppState, actor: &Actor, kind: StageKind, id: &str) -> ApiResult<Response> {
    found(state, kind, id).await?;
    let event = Event::StageRecordDeleted(StageRecordDeleted {
        kind,
        id: id.to_owned(),
    });
    state.append_consistent(actor, event, None).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The existing record a reference names, or a 400 naming the field.
async fn referenced(state: &AppState, field: &str, kind: StageKind, id: u64) -> ApiResult<Value> {
    record(state, kind, &id.to_string())
        .await?
        .ok_or_else(|| ApiError::field(field, format!("no {} {id}", kind.as_str())))
}

/// One of the resources kept as JSON records (schedules, message sets, messages): the record a
/// request body makes, and who may read one.
pub trait Resource: Send + Sync + 'static {
    const KIND: StageKind;
    /// Its list's path, for page links.
    const PATH: &'static str;
    /// Whether a set's subscribers may read one (else admins only).
    const SUBSCRIBERS_READ: bool = false;
    type Body: serde::de::DeserializeOwned + Send;
    /// The record to save for `body` (id 0 on a create; `old`: the record it replaces).
    fn record(
        state: &AppState,
        body: Self::Body,
        id: u64,
        old: Option<&Value>,
    ) -> impl std::future::Future<Output = ApiResult<Value>> + Send;
}

pub struct Schedules;
pub struct MessageSets;
pub struct Messages;

impl Resource for Schedules {
    const KIND: StageKind = StageKind::Schedule;
    const PATH: &'static str = "schedule/";
    type Body = ScheduleBody;
    async fn record(
        _: &AppState,
        body: ScheduleBody,
        id: u64,
        _: Option<&Value>,
    ) -> ApiResult<Value> {
        schedule_record(body, id)
    }
}

impl Resource for MessageSets {
    const KIND: StageKind = StageKind::Messageset;
    const PATH: &'static str = "messageset/";
    type Body = MessageSetBody;
    async fn record(
        state: &AppState,
        body: MessageSetBody,
        id: u64,
        old: Option<&Value>,
    ) -> ApiResult<Value> {
        messageset_record(state, body, id, created_at_of(old)).await
    }
}

impl Resource for Messages {
    const KIND: StageKind = StageKind::Message;
    const PATH: &'static str = "message/";
    const SUBSCRIBERS_READ: bool = true;
    type Body = MessageBody;
    async fn record(
        state: &AppState,
        body: MessageBody,
        id: u64,
        old: Option<&Value>,
    ) -> ApiResult<Value> {
        message_record(state, body, id, created_at_of(old)).await
    }
}

fn created_at_of(old: Option<&Value>) -> Option<String> {
    old.and_then(|o| o["created_at"].as_str())
        .map(str::to_owned)
}

/// `GET <resource>/`: admins.
pub async fn list<R: Resource>(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    page(&state, &headers, R::PATH, R::KIND.as_str(), &q, None).await
}

/// `POST <resource>/`: admins; 201 with the record.
pub async fn create<R: Resource>(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<R::Body>,
) -> ApiResult<Answer> {
    caller.require_admin()?;
    let r = R::record(&state, body, 0, None).await?;
    let stored = save(&state, &caller.0, R::KIND, None, r).await?;
    Ok((StatusCode::CREATED, Json(stored)))
}

/// `GET <resource>/{id}/`: admins, and for messages the set's subscribers.
pub async fn one<R: Resource>(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    if !R::SUBSCRIBERS_READ && !actor.is_admin() {
        return Err(ApiError::forbidden("this call needs the admin role"));
    }
    int_id("id", &id)?;
    let r = found(&state, R::KIND, &id).await?;
    if R::SUBSCRIBERS_READ {
        let set = r["messageset"].as_u64().unwrap_or(0);
        if !may_read_set(&state, &actor, set).await? {
            return Err(ApiError::forbidden(
                "only admins and the set's subscribers may read its messages",
            ));
        }
    }
    Ok(Json(r))
}

/// `PUT <resource>/{id}/`: admins; the whole record again (its `created_at` kept).
pub async fn update<R: Resource>(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<R::Body>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let n = int_id("id", &id)?;
    let old = found(&state, R::KIND, &id).await?;
    let r = R::record(&state, body, n, Some(&old)).await?;
    Ok(Json(save(&state, &caller.0, R::KIND, Some(id), r).await?))
}

/// `DELETE <resource>/{id}/`: admins; 204.
pub async fn delete<R: Resource>(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    int_id("id", &id)?;
    remove(&state, &caller.0, R::KIND, &id).await
}

// ---- schedules ----

#[derive(Deserialize, schemars::JsonSchema)]
pub struct ScheduleBody {
    #[serde(default = "star")]
    minute: String,
    #[serde(default = "star")]
    hour: String,
    #[serde(default = "star")]
    day_of_week: String,
    #[serde(default = "star")]
    day_of_month: String,
    #[serde(default = "star")]
    month_of_year: String,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    second: Option<String>,
}

fn star() -> String {
    "*".into()
}

pub(crate) fn schedule_record(body: ScheduleBody, id: u64) -> ApiResult<Value> {
    let timezone = match body.timezone {
        Some(z) => exchange::local::canonical(&z)
            .map_err(|e| ApiError::field("timezone", e.to_string()))?,
        None => "UTC".into(),
    };
    let r = ScheduleRecord {
        id,
        minute: body.minute,
        hour: body.hour,
        day_of_week: body.day_of_week,
        day_of_month: body.day_of_month,
        month_of_year: body.month_of_year,
        timezone,
        second: body.second.unwrap_or_else(|| "0".into()),
    };
    Cron::parse(&r).map_err(|(field, message)| ApiError::field(field, message))?;
    serde_json::to_value(&r).map_err(|e| ApiError::internal(e.to_string()))
}

// ---- message sets ----

#[derive(Deserialize, schemars::JsonSchema)]
pub struct MessageSetBody {
    short_name: String,
    #[serde(default)]
    notes: Option<String>,
    #[serde(default)]
    next_set: Option<u64>,
    default_schedule: u64,
    #[serde(default = "text")]
    content_type: String,
}

fn text() -> String {
    "text".into()
}

async fn messageset_record(
    state: &AppState,
    body: MessageSetBody,
    id: u64,
    created_at: Option<String>,
) -> ApiResult<Value> {
    let name = body.short_name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::field("short_name", "must be 1-100 characters"));
    }
    if let Some(n) = &body.notes
        && n.chars().count() > 10_000
    {
        return Err(ApiError::field("notes", "must be at most 10000 characters"));
    }
    if body.content_type != "text" && body.content_type != "audio" {
        return Err(ApiError::field("content_type", "must be text or audio"));
    }
    if let Some(taken) = state.store.stage_doc("messageset_name", &name).await?
        && taken.body != id.to_string()
    {
        return Err(ApiError::conflict(
            "short_name_taken",
            format!("a message set named {name} exists (id {})", taken.body),
        ));
    }
    referenced(
        state,
        "default_schedule",
        StageKind::Schedule,
        body.default_schedule,
    )
    .await?;
    if let Some(next) = body.next_set {
        if next == id {
            return Err(ApiError::field("next_set", "a set cannot follow itself"));
        }
        referenced(state, "next_set", StageKind::Messageset, next).await?;
    }
    let now = now();
    let r = MessageSetRecord {
        id,
        short_name: name,
        notes: body.notes,
        next_set: body.next_set,
        default_schedule: body.default_schedule,
        content_type: body.content_type,
        created_at: created_at.unwrap_or_else(|| now.clone()),
        updated_at: now,
    };
    serde_json::to_value(&r).map_err(|e| ApiError::internal(e.to_string()))
}

/// Whether `actor` may read the messages of set `set`: an admin, or a user subscribed to it.
async fn may_read_set(state: &AppState, actor: &Actor, set: u64) -> ApiResult<bool> {
    if actor.is_admin() {
        return Ok(true);
    }
    let (_, mine) = state
        .store
        .stage_docs(&format!("subscriptions_of.{}", actor.uid), u32::MAX, 0)
        .await?;
    for d in mine {
        if let Some(s) = record(state, StageKind::Subscription, &d.id).await?
            && s["messageset"] == json!(set)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

pub async fn messageset_messages(
    State(state): State<AppState>,
    Caller(actor): Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let set = int_id("id", &id)?;
    found(&state, StageKind::Messageset, &id).await?;
    if !may_read_set(&state, &actor, set).await? {
        return Err(ApiError::forbidden(
            "only admins and the set's subscribers may read its messages",
        ));
    }
    // By sequence number, then language.
    indexed_page(
        &state,
        &headers,
        &format!("messageset/{set}/messages/"),
        StageKind::Message,
        &format!("messages_of.{set}"),
        &q,
        &|_| true,
    )
    .await
}

// ---- messages ----

#[derive(Deserialize, schemars::JsonSchema)]
pub struct MessageBody {
    messageset: u64,
    sequence_number: u32,
    lang: String,
    #[serde(default)]
    text_content: Option<String>,
    #[serde(default)]
    binary_content: Option<u64>,
}

/// ISO 639-3 (three lowercase letters), optionally with a region as the seed's data uses
/// (`eng_ZA`).
fn check_lang(v: &str) -> ApiResult<()> {
    let (code, region) = match v.split_once('_') {
        Some((c, r)) => (c, Some(r)),
        None => (v, None),
    };
    let ok = code.len() == 3
        && code.bytes().all(|b| b.is_ascii_lowercase())
        && region.is_none_or(|r| r.len() == 2 && r.bytes().all(|b| b.is_ascii_uppercase()));
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            "lang",
            "must be an ISO 639-3 code such as eng (optionally with a region: eng_ZA)",
        ))
    }
}

async fn message_record(
    state: &AppState,
    body: MessageBody,
    id: u64,
    created_at: Option<String>,
) -> ApiResult<Value> {
    if body.sequence_number == 0 {
        return Err(ApiError::field("sequence_number", "must be 1 or more"));
    }
    check_lang(&body.lang)?;
    if let Some(t) = &body.text_content
        && t.chars().count() > state.config.max_message_chars
    {
        return Err(ApiError::field(
            "text_content",
            format!(
                "must be at most {} characters",
                state.config.max_message_chars
            ),
        ));
    }
    if body.text_content.is_none() && body.binary_content.is_none() {
        return Err(ApiError::field(
            "text_content",
            "give text_content or binary_content",
        ));
    }
    referenced(state, "messageset", StageKind::Messageset, body.messageset).await?;
    if let Some(b) = body.binary_content {
        referenced(state, "binary_content", StageKind::Binarycontent, b).await?;
    }
    let key = format!("{:010}.{}", body.sequence_number, body.lang);
    if let Some(taken) = state
        .store
        .stage_doc(&format!("messages_of.{}", body.messageset), &key)
        .await?
        && taken.body != id.to_string()
    {
        return Err(ApiError::conflict(
            "message_exists",
            format!(
                "message set {} has message {} in {} already (id {})",
                body.messageset, body.sequence_number, body.lang, taken.body
            ),
        ));
    }
    let now = now();
    let r = MessageRecord {
        id,
        messageset: body.messageset,
        sequence_number: body.sequence_number,
        lang: body.lang,
        text_content: body.text_content,
        binary_content: body.binary_content,
        created_at: created_at.unwrap_or_else(|| now.clone()),
        updated_at: now,
    };
    serde_json::to_value(&r).map_err(|e| ApiError::internal(e.to_string()))
}

/// `GET message/{id}/content/`: a text message's text (`text/plain`).
pub async fn message_content(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    int_id("id", &id)?;
    let m = found(&state, StageKind::Message, &id).await?;
    let set = m["messageset"].as_u64().unwrap_or(0);
    if !may_read_set(&state, &actor, set).await? {
        return Err(ApiError::forbidden(
            "only admins and the set's subscribers may read its messages",
        ));
    }
    if let Some(b) = m["binary_content"].as_u64() {
        let content = found(&state, StageKind::Binarycontent, &b.to_string()).await?;
        let name = content["content"].as_str().unwrap_or_default();
        let kind = content["content_type"]
            .as_str()
            .unwrap_or("application/octet-stream")
            .to_owned();
        let bytes = read_object(&state, name).await?;
        return Ok(([(header::CONTENT_TYPE, kind)], bytes).into_response());
    }
    match m["text_content"].as_str() {
        Some(t) => Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            t.to_owned(),
        )
            .into_response()),
        None => Err(ApiError::not_found("this message has no content")),
    }
}

// ---- binary content (bytes in the JetStream Object Store, not in events) ----

/// The Object Store bucket of seed 002's binary content.
pub const CONTENT_BUCKET: &str = "MSGXC_CONTENT";

async fn content_store(
    state: &AppState,
) -> ApiResult<async_nats::jetstream::object_store::ObjectStore> {
    let js = state.log.jetstream();
    if let Ok(s) = js.get_object_store(CONTENT_BUCKET).await {
        return Ok(s);
    }
    // As many replicas as the event stream.
    let replicas = match js.get_stream(state.log.stream_name()).await {
        Ok(mut s) => s.info().await.map_or(1, |i| i.config.num_replicas),
        Err(_) => 1,
    };
    js.create_object_store(async_nats::jetstream::object_store::Config {
        bucket: CONTENT_BUCKET.into(),
        description: Some("msgxc: seed 002 binary content".into()),
        num_replicas: replicas.max(1),
        ..Default::default()
    })
    .await
    .map_err(|e| ApiError::unavailable(format!("the content store is unavailable: {e}")))
}

async fn read_object(state: &AppState, name: &str) -> ApiResult<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let store = content_store(state).await?;
    let mut object = store
        .get(name)
        .await
        .map_err(|e| ApiError::unavailable(format!("reading content {name}: {e}")))?;
    let mut bytes = Vec::new();
    object
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| ApiError::unavailable(format!("reading content {name}: {e}")))?;
    Ok(bytes)
}

/// The uploaded bytes and their content type: a multipart form's `content` file, or the raw
/// body with its `Content-Type`.
async fn upload(
    state: &AppState,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> ApiResult<(bytes::Bytes, String)> {
    let limit = state.config.max_content_bytes;
    let wait = state.config.body_timeout;
    let raw = tokio::time::timeout(wait, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the upload did not arrive within {wait:?}"),
            )
        })?
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the upload is larger than {limit} bytes (MSGXC_MAX_CONTENT_BYTES)"),
            )
        })?;
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let (bytes, kind) = if kind.starts_with("multipart/form-data") {
        let boundary = multer::parse_boundary(&kind)
            .map_err(|e| ApiError::bad_request("invalid_multipart", e.to_string()))?;
        let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(raw) });
        let mut form = multer::Multipart::new(stream, boundary);
        let bad = |e: multer::Error| ApiError::bad_request("invalid_multipart", e.to_string());
        let mut file = None;
        while let Some(field) = form.next_field().await.map_err(bad)? {
            if field.name() == Some("content") {
                let kind = field
                    .content_type()
                    .map_or("application/octet-stream".to_owned(), |m| m.to_string());
                file = Some((field.bytes().await.map_err(bad)?, kind));
                break;
            }
        }
        file.ok_or_else(|| ApiError::field("content", "the form has no content file"))?
    } else {
        (raw, kind)
    };
    if bytes.is_empty() {
        return Err(ApiError::field("content", "the upload is empty"));
    }
    if kind.len() > 200 || kind.chars().any(char::is_control) {
        return Err(ApiError::field("content_type", "is not a media type"));
    }
    Ok((bytes, kind))
}

/// Stores the bytes under a new object name; the record to save.
async fn content_record(
    state: &AppState,
    headers: &HeaderMap,
    body: axum::body::Body,
    id: u64,
    created_at: Option<String>,
) -> ApiResult<Value> {
    let (bytes, kind) = upload(state, headers, body).await?;
    let name = Uuid::now_v7().to_string();
    let store = content_store(state).await?;
    store
        .put(name.as_str(), &mut bytes.as_ref())
        .await
        .map_err(|e| ApiError::unavailable(format!("storing the content: {e}")))?;
    let now = now();
    let record = super::schemas::BinaryContentRecord {
        id,
        content: name,
        content_type: kind.to_string(),
        size: bytes.len(),
        created_at: created_at.unwrap_or_else(|| now.clone()),
        updated_at: now,
    };
    serde_json::to_value(record).map_err(|e| ApiError::internal(e.to_string()))
}

pub async fn binarycontents(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    page(
        &state,
        &headers,
        "binarycontent/",
        "binarycontent",
        &q,
        None,
    )
    .await
}

/// `POST binarycontent/`: a multipart form with a `content` file, or the raw bytes.
pub async fn create_binarycontent(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Answer> {
    caller.require_admin()?;
    let r = content_record(&state, &headers, body, 0, None).await?;
    let stored = save(&state, &caller.0, StageKind::Binarycontent, None, r).await?;
    Ok((StatusCode::CREATED, Json(stored)))
}

pub async fn binarycontent(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    int_id("id", &id)?;
    Ok(Json(found(&state, StageKind::Binarycontent, &id).await?))
}

/// `PUT binarycontent/{id}/`: new bytes for the same record (the old object is removed).
pub async fn update_binarycontent(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let n = int_id("id", &id)?;
    let old = found(&state, StageKind::Binarycontent, &id).await?;
    let created = old["created_at"].as_str().map(str::to_owned);
    let r = content_record(&state, &headers, body, n, created).await?;
    let stored = save(&state, &caller.0, StageKind::Binarycontent, Some(id), r).await?;
    forget_object(&state, &old).await;
    Ok(Json(stored))
}

pub async fn delete_binarycontent(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    int_id("id", &id)?;
    let old = found(&state, StageKind::Binarycontent, &id).await?;
    let answer = remove(&state, &caller.0, StageKind::Binarycontent, &id).await?;
    forget_object(&state, &old).await;
    Ok(answer)
}

/// Removes a replaced or deleted record's bytes (after its event: a crash in between leaves
/// an unreferenced object, never a record without its bytes).
async fn forget_object(state: &AppState, record: &Value) {
    let Some(name) = record["content"].as_str() else {
        return;
    };
    if let Ok(store) = content_store(state).await
        && let Err(e) = store.delete(name).await
    {
        tracing::warn!(object = name, error = %e, "old content not removed");
    }
}

// ---- subscriptions ----

#[derive(Deserialize, schemars::JsonSchema)]
pub struct SubscriptionBody {
    identity: String,
    messageset: u64,
    #[serde(default)]
    next_sequence_number: Option<u32>,
    lang: String,
    #[serde(default)]
    active: Option<bool>,
    #[serde(default)]
    completed: Option<bool>,
    #[serde(default)]
    schedule: Option<u64>,
    #[serde(default)]
    process_status: Option<i8>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    version: Option<i64>,
}

async fn subscription_record(
    state: &AppState,
    actor: &Actor,
    body: SubscriptionBody,
    id: Uuid,
    old: Option<&Value>,
) -> ApiResult<Value> {
    super::validate::uid("identity", &body.identity)?;
    if !actor.is_admin() && body.identity != actor.uid {
        return Err(ApiError::forbidden(
            "a user may only subscribe themselves (identity = their uid)",
        ));
    }
    check_lang(&body.lang)?;
    let set = referenced(state, "messageset", StageKind::Messageset, body.messageset).await?;
    let schedule = match body.schedule {
        Some(s) => s,
        None => set["default_schedule"].as_u64().unwrap_or(0),
    };
    referenced(state, "schedule", StageKind::Schedule, schedule).await?;
    let next = body.next_sequence_number.unwrap_or(1);
    if next == 0 {
        return Err(ApiError::field("next_sequence_number", "must be 1 or more"));
    }
    let status = body.process_status.unwrap_or(0);
    if !(-2..=2).contains(&status) {
        return Err(ApiError::field(
            "process_status",
            "must be -2, -1, 0, 1 or 2",
        ));
    }
    let metadata = body.metadata.unwrap_or_else(|| json!({}));
    if !metadata.is_object() {
        return Err(ApiError::field("metadata", "must be a JSON object"));
    }
    let now = now();
    let r = SubscriptionRecord {
        id,
        identity: body.identity,
        version: body.version.unwrap_or(1),
        messageset: body.messageset,
        next_sequence_number: next,
        lang: body.lang,
        active: body.active.unwrap_or(true),
        completed: body.completed.unwrap_or(false),
        schedule,
        process_status: status,
        metadata,
        created_at: old
            .and_then(|o| o["created_at"].as_str())
            .map_or_else(|| now.clone(), str::to_owned),
        updated_at: now,
        created_by: old
            .and_then(|o| o["created_by"].as_str().map(str::to_owned))
            .or_else(|| Some(actor.uid.clone())),
        updated_by: Some(actor.uid.clone()),
        applied: 0,
        sent: 0,
    };
    serde_json::to_value(&r).map_err(|e| ApiError::internal(e.to_string()))
}

async fn own_subscription(state: &AppState, actor: &Actor, id: &str) -> ApiResult<Value> {
    let uuid: Uuid = id
        .parse()
        .map_err(|_| ApiError::field("id", "must be a UUID"))?;
    let s = found(state, StageKind::Subscription, &uuid.to_string()).await?;
    if !actor.is_admin() && s["identity"] != json!(actor.uid) {
        return Err(ApiError::not_found(format!("no subscription {id}")));
    }
    Ok(s)
}

pub async fn subscriptions(
    State(state): State<AppState>,
    Caller(actor): Caller,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    // Filters as Django REST's on the seed: identity, messageset, active, completed.
    let identity = if actor.is_admin() {
        q.get("identity").cloned()
    } else {
        Some(actor.uid.clone())
    };
    let set = q
        .get("messageset")
        .map(|v| int_id("messageset", v))
        .transpose()?;
    let flag = |k: &str| -> ApiResult<Option<bool>> {
        q.get(k)
            .map(|v| match v.as_str() {
                "true" | "True" | "1" => Ok(true),
                "false" | "False" | "0" => Ok(false),
                _ => Err(ApiError::field(k, "must be true or false")),
            })
            .transpose()
    };
    let (active, completed) = (flag("active")?, flag("completed")?);
    let keep = move |v: &Value| {
        set.is_none_or(|s| v["messageset"] == json!(s))
            && active.is_none_or(|a| v["active"] == json!(a))
            && completed.is_none_or(|c| v["completed"] == json!(c))
    };
    match identity {
        // One user's: through their index, not every subscription.
        Some(uid) => {
            indexed_page(
                &state,
                &headers,
                "subscriptions/",
                StageKind::Subscription,
                &format!("subscriptions_of.{uid}"),
                &q,
                &keep,
            )
            .await
        }
        None => {
            page(
                &state,
                &headers,
                "subscriptions/",
                "subscription",
                &q,
                Some(&keep),
            )
            .await
        }
    }
}

pub async fn create_subscription(
    State(state): State<AppState>,
    Caller(actor): Caller,
    JsonBody(body): JsonBody<SubscriptionBody>,
) -> ApiResult<Answer> {
    let id = Uuid::now_v7();
    let r = subscription_record(&state, &actor, body, id, None).await?;
    let stored = save(
        &state,
        &actor,
        StageKind::Subscription,
        Some(id.to_string()),
        r,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(stored)))
}

pub async fn subscription(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(own_subscription(&state, &actor, &id).await?))
}

pub async fn update_subscription(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SubscriptionBody>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let old = own_subscription(&state, &caller.0, &id).await?;
    let uuid: Uuid = id
        .parse()
        .map_err(|_| ApiError::field("id", "must be a UUID"))?;
    let r = subscription_record(&state, &caller.0, body, uuid, Some(&old)).await?;
    Ok(Json(
        save(
            &state,
            &caller.0,
            StageKind::Subscription,
            Some(uuid.to_string()),
            r,
        )
        .await?,
    ))
}

pub async fn delete_subscription(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let s = own_subscription(&state, &caller.0, &id).await?;
    let id = s["id"].as_str().unwrap_or_default().to_owned();
    remove(&state, &caller.0, StageKind::Subscription, &id).await
}

/// `POST subscriptions/{id}/send`: its next message now. 201 `{"accepted": true}`; 400
/// `{"accepted": false, "reason"}` for an unknown, inactive or completed subscription.
pub async fn send_subscription(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Answer> {
    caller.require_admin()?;
    let refuse = |reason: String| {
        Ok((
            StatusCode::BAD_REQUEST,
            Json(json!(super::schemas::StageSendRefused {
                accepted: false,
                reason
            })),
        ))
    };
    let Ok(uuid) = id.parse::<Uuid>() else {
        return refuse(format!("{id} is not a subscription id"));
    };
    let Some(s) = record(&state, StageKind::Subscription, &uuid.to_string()).await? else {
        return refuse(format!("no subscription {id}"));
    };
    if s["completed"] == json!(true) {
        return refuse("the subscription is completed".into());
    }
    if s["active"] != json!(true) {
        return refuse("the subscription is not active".into());
    }
    let event = Event::StageSendRequested(StageSendRequested { subscription: uuid });
    state.append_consistent(&caller.0, event, None).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!(super::schemas::StageAccepted {
            accepted: true,
            id: None
        })),
    ))
}

#[derive(Deserialize, schemars::JsonSchema)]
pub struct RequestBody {
    data: SubscriptionBody,
}

/// `POST subscriptions/request {"data": {subscription}}`: the seed's webhook for a new
/// registration. 201 `{"accepted": true}`.
pub async fn request_subscription(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<RequestBody>,
) -> ApiResult<Answer> {
    caller.require_admin()?;
    let id = Uuid::now_v7();
    let r = subscription_record(&state, &caller.0, body.data, id, None).await?;
    save(
        &state,
        &caller.0,
        StageKind::Subscription,
        Some(id.to_string()),
        r,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!(super::schemas::StageAccepted {
            accepted: true,
            id: Some(id)
        })),
    ))
}
