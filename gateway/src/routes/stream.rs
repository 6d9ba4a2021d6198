//! `GET /stream`: the caller's live inbox changes as Server-Sent Events, for clients without
//! WebSockets. Each event's id is its feed position; a client reconnecting with
//! `Last-Event-ID` (header, or `?last_event_id=`) first receives every change it missed (from
//! the durable change feed, kept 7 days), then live ones, without gaps or repeats.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use bytes::Bytes;
use futures::Stream;
use projections::fold::Position;
use serde_json::json;

use crate::auth::StreamCaller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Most missed changes replayed on resume; beyond it the client is told to resync.
const MAX_BACKLOG: u32 = 10_000;

fn position_of(frame: &[u8]) -> Option<Position> {
    let v: serde_json::Value = serde_json::from_slice(frame).ok()?;
    Position::parse(v.get("position")?.as_str()?)
}

/// Keeps a frame for ordered sending unless it was sent already.
fn hold(held: &mut BTreeMap<Position, Bytes>, high: Position, frame: Bytes) {
    if let Some(position) = position_of(&frame)
        && position > high
    {
        held.insert(position, frame);
    }
}

fn event_of(frame: &str, position: Position) -> Event {
    let action = serde_json::from_str::<serde_json::Value>(frame)
        .ok()
        .and_then(|v| v.get("action").and_then(|a| a.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "message".into());
    Event::default()
        .id(position.to_string())
        .event(action)
        .data(frame)
}

pub async fn stream(
    State(state): State<AppState>,
    StreamCaller(actor): StreamCaller,
    headers: HeaderMap,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query.get("last_event_id").cloned())
        .map(|s| {
            Position::parse(&s).ok_or_else(|| {
                ApiError::field("Last-Event-ID", "is not an event id of this stream")
            })
        })
        .transpose()?;
    let guard = state
        .sockets
        .acquire(&actor.uid, state.config.max_sockets_per_user)
        .ok_or_else(|| {
            ApiError::too_many(
                "too many live connections for this user; close one first",
                5,
            )
        })?;
    // Listen first, then read the backlog: a change committed in between is in one of the two,
    // and positions drop the overlap.
    let mut registration = Box::pin(state.hub.connect(
        &actor.uid,
        state.config.socket_buffer,
        state.store.as_ref(),
    ))
    .await?;
    let mut marks = state.hub.marks();
    let backlog = match last {
        Some(p) => {
            state
                .store
                .changes_after(&actor.uid, p, MAX_BACKLOG + 1)
                .await?
        }
        None => Vec::new(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        // The connection counts as open until this task ends (the client went away).
        let _guard = guard;
        let resync = || {
            let body = json!({ "action": "resync", "reason": "too many missed changes; reload the inbox" });
            Event::default().event("resync").data(body.to_string())
        };
        let mut high = last.unwrap_or_default();
        if backlog.len() > MAX_BACKLOG as usize {
            let _ = tx.send(resync()).await;
            return;
        }
        for (position, frame) in backlog {
            high = high.max(position);
            if tx.send(event_of(&frame, position)).await.is_err() {
                return;
            }
        }
        // New entries' frames come from the hub's own routing of the stream, other changes
        // from the projector after its commit: two ordered paths. A frame is held until both
        // have passed its stream position, then sent in feed order, so positions only grow
        // and a resumed stream neither skips nor repeats a change.
        let mut held: BTreeMap<Position, Bytes> = BTreeMap::new();
        loop {
            tokio::select! {
                frame = registration.frames.recv() => match frame {
                    Some(f) => hold(&mut held, high, f),
                    None => break, // the hub dropped a slow client: it resumes with Last-Event-ID
                },
                changed = marks.changed() => if changed.is_err() { break },
            }
            // Marks first, then what is queued: every frame a mark covers was queued before it.
            let m = *marks.borrow_and_update();
            while let Some(f) = registration.frames.try_recv() {
                hold(&mut held, high, f);
            }
            if held.len() > MAX_BACKLOG as usize {
                let _ = tx.send(resync()).await;
                return;
            }
            let ready = m.routed.min(m.committed);
            while let Some(entry) = held.first_entry() {
                if entry.key().seq > ready {
                    break;
                }
                let (position, frame) = entry.remove_entry();
                high = position;
                let text = String::from_utf8_lossy(&frame);
                if tx.send(event_of(&text, position)).await.is_err() {
                    return;
                }
            }
        }
    });
    let events = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
