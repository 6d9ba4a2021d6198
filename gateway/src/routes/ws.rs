//! `GET /connect`: a WebSocket that receives the caller's live frames.
//!
//! Server -> client: `{"action":"hello","uid","unread"}` once, then
//! `{"action":"new"|"read","notification":{...}}` per change. Client -> server:
//! `{"action":"ping"}` is answered with `{"action":"pong"}`; protocol pings keep idle
//! connections alive and detect dead ones.

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use exchange::Actor;
use exchange::events::AckStatus;
use serde_json::json;
use tokio::time::Instant;

use crate::auth::StreamCaller;
use crate::state::AppState;

/// Close code for a client that could not keep up (RFC 6455 1013, "try again later").
const CLOSE_SLOW: u16 = 1013;
/// Close code for a client over its frame rate (RFC 6455 1008, "policy violation").
const CLOSE_POLICY: u16 = 1008;
/// Close code when the connection cannot be set up (RFC 6455 1011, "internal error").
const CLOSE_UNAVAILABLE: u16 = 1011;

/// Which frames a connection speaks: this API's, or a seed's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Face {
    /// `/connect`: the hello frame, then the exchange's frames as they are.
    Own,
    /// Seed 004's `/ws/notifications`: no hello; `new` and `readed` in its shape
    /// (`routes::drf::translate`).
    Drf,
}

pub async fn connect(
    state: State<AppState>,
    caller: StreamCaller,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    open(state, caller, upgrade, Face::Own).await
}

/// Upgrades to a live connection speaking `face`.
pub async fn open(
    State(state): State<AppState>,
    StreamCaller(actor): StreamCaller,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    face: Face,
) -> Response {
    // A plain request (no WebSocket handshake) gets the JSON error shape as any other.
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(r) => {
            return crate::error::ApiError::bad_request(
                "not_a_websocket",
                format!(
                    "{}: open this route with a WebSocket handshake",
                    r.body_text()
                ),
            )
            .into_response();
        }
    };
    let Some(guard) = state
        .sockets
        .acquire(&actor.uid, state.config.max_sockets_per_user)
    else {
        return crate::error::ApiError::too_many(
            "too many live connections for this user; close one first",
            5,
        )
        .into_response();
    };
    // Small buffers: most connections are idle, and memory per connection is what limits scale.
    // Clients send little (pings, acks); a larger frame still arrives whole (the buffer grows
    // to the frame, up to the message limit).
    upgrade
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| async move {
            serve(state, actor, socket, face).await;
            drop(guard);
        })
}

async fn serve(state: AppState, actor: Actor, mut socket: WebSocket, face: Face) {
    let registration = Box::pin(state.hub.connect(
        &actor.uid,
        state.config.socket_buffer,
        state.store.as_ref(),
    ))
    .await;
    let mut registration = match registration {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(uid = %actor.uid, error = %e, "live connection refused: routing state unavailable");
            let _ = socket
                .send(Message::Close(Some(CloseFrame {
                    code: CLOSE_UNAVAILABLE,
                    reason: "store unavailable; try again".into(),
                })))
                .await;
            return;
        }
    };
    // Rare paths are boxed: an idle connection's future is as large as its largest await, and
    // there are many idle connections.
    // Seed 004's socket has no hello frame: its counts are not read.
    if face == Face::Own {
        let unread = Box::pin(state.store.inbox_counts(&actor.uid))
            .await
            .map(|c| c.unread)
            .unwrap_or(0);
        let hello = json!({ "action": "hello", "uid": actor.uid, "unread": unread }).to_string();
        if socket.send(Message::Text(hello.into())).await.is_err() {
            return;
        }
    }
    // Seed 004's type ids, read when its first frame needs them.
    let mut drf_types = None;
    if let Some(p) = &state.presence {
        Box::pin(p.touch(&actor.uid)).await;
    }
    let started_at = time::OffsetDateTime::now_utc();
    let ping_every = state.config.ping_interval.max(Duration::from_millis(100));
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    let mut last_heard = Instant::now();
    let mut budget = state
        .config
        .socket_frame_rate
        .map(crate::rate::LocalBucket::new);
    loop {
        tokio::select! {
            frame = registration.frames.recv() => match frame {
                Some(bytes) => {
                    let bytes = match face {
                        Face::Own => bytes,
                        Face::Drf => match Box::pin(crate::routes::drf::translate(
                            &state, &actor.uid, &mut drf_types, &bytes,
                        )).await {
                            Some(t) => t.into(),
                            None => continue,
                        },
                    };
                    let Ok(text) = Utf8Bytes::try_from(bytes) else { continue };
                    if socket.send(Message::Text(text)).await.is_err() {
                        break;
                    }
                }
                None => {
                    // The hub dropped us: we fell too far behind.
                    let _ = socket.send(Message::Close(Some(CloseFrame {
                        code: CLOSE_SLOW,
                        reason: "too slow; reconnect and resync from the inbox".into(),
                    }))).await;
                    break;
                }
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(msg)) => {
                    last_heard = Instant::now();
                    if budget.as_mut().is_some_and(|b| !b.take()) {
                        tracing::debug!(uid = %actor.uid, "closing a WebSocket over its frame rate");
                        let _ = socket.send(Message::Close(Some(CloseFrame {
                            code: CLOSE_POLICY,
                            reason: "too many frames; slow down".into(),
                        }))).await;
                        break;
                    }
                    match msg {
                        Message::Text(t) => {
                            if let Some(reply) = Box::pin(answer(&state, &actor, t.as_str())).await
                                && socket.send(Message::Text(reply.into())).await.is_err()
                            {
                                break;
                            }
                        }
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
                _ => break,
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > ping_every * 3 {
                    tracing::debug!(uid = %actor.uid, "closing a silent WebSocket");
                    break;
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
                if let Some(p) = &state.presence {
                    Box::pin(p.touch(&actor.uid)).await;
                }
            }
        }
    }
    // Online time: the session lasted until the connection was last heard from.
    let ended_at = time::OffsetDateTime::now_utc()
        - time::Duration::try_from(last_heard.elapsed()).unwrap_or(time::Duration::ZERO);
    let event = exchange::Event::SessionEnded(exchange::events::SessionEnded {
        uid: actor.uid.clone(),
        started_at,
        ended_at: ended_at.max(started_at),
        transport: "websocket".into(),
    });
    if let Err(e) = Box::pin(state.append(&actor, event, None)).await {
        tracing::warn!(uid = %actor.uid, error = %e.message, "session end not recorded");
    }
}

/// Replies to a client text frame, if it calls for one.
async fn answer(state: &AppState, actor: &Actor, text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    match v.get("action").and_then(|a| a.as_str()) {
        Some("ping") => Some(json!({ "action": "pong" }).to_string()),
        Some("ack") => Some(ack(state, actor, &v).await),
        Some(other) => Some(
            json!({ "action": "error", "error": { "code": "unknown_action", "message": format!("unknown action {other}") } })
                .to_string(),
        ),
        None => None,
    }
}

/// `{"action":"ack","mid":"...","status":"delivered"|"opened"}`: a receipt for the live channel.
async fn ack(state: &AppState, actor: &Actor, v: &serde_json::Value) -> String {
    let mid = v
        .get("mid")
        .and_then(|m| m.as_str())
        .and_then(|m| uuid::Uuid::parse_str(m).ok());
    let status = match v
        .get("status")
        .and_then(|s| s.as_str())
        .unwrap_or("delivered")
    {
        "delivered" => Some(AckStatus::Delivered),
        "opened" => Some(AckStatus::Opened),
        _ => None,
    };
    let (Some(mid), Some(status)) = (mid, status) else {
        return json!({ "action": "error", "error": { "code": "invalid_ack", "message": "ack needs a mid (UUID) and status delivered or opened" } }).to_string();
    };
    match crate::routes::deliveries::record_ack(state, actor, mid, status, None, "websocket".into())
        .await
    {
        Ok(()) => json!({ "action": "acked", "mid": mid, "status": status.as_str() }).to_string(),
        Err(e) => json!({ "action": "error", "error": { "code": e.code, "message": e.message } })
            .to_string(),
    }
}
