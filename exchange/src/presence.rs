//! Who has a live connection: gateways refresh `MSGXC_PRESENCE[<uid token>]` with the current
//! time while a user has an open WebSocket; the dispatcher treats a user as present when the
//! stamp is recent. No explicit "offline" write is needed (several gateways may serve one user);
//! a closed connection simply stops refreshing.
//!
//! The dispatcher asks about every recipient of a batch; it reads a local copy of the bucket
//! ([`Presence::follow`], kept current by a watch) instead of one request per recipient.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;

use async_nats::jetstream::{self, kv, stream::StorageType};

use crate::log::LogError;
use crate::subject::token;

pub const PRESENCE_BUCKET: &str = "MSGXC_PRESENCE";

#[derive(Clone)]
pub struct Presence {
    kv: kv::Store,
    /// A stamp older than this means "not connected".
    fresh_for: Duration,
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Presence {
    /// Opens (creating if needed) the presence bucket with `replicas` copies. `refresh` is how
    /// often gateways stamp connected users; stamps stay fresh for 2.5 refresh periods.
    pub async fn open(
        js: &jetstream::Context,
        refresh: Duration,
        replicas: usize,
    ) -> Result<Self, LogError> {
        let fresh_for = refresh.mul_f64(2.5);
        let kv = match js.get_key_value(PRESENCE_BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: PRESENCE_BUCKET.into(),
                    description: "msgxc: users with a live connection (refreshed stamps)".into(),
                    history: 1,
                    max_age: fresh_for.max(Duration::from_secs(1)) * 2,
                    storage: StorageType::Memory,
                    num_replicas: replicas.max(1),
                    ..Default::default()
                })
                .await
                .map_err(|e| LogError::Unavailable(format!("creating {PRESENCE_BUCKET}: {e}")))?,
        };
        Ok(Self { kv, fresh_for })
    }

    /// Stamps `uid` as connected now.
    pub async fn touch(&self, uid: &str) {
        if let Err(e) = self
            .kv
            .put(token(uid), now_millis().to_string().into())
            .await
        {
            tracing::debug!(error = %e, "presence stamp not written");
        }
    }

    /// Whether `uid` had a live connection within the freshness window.
    pub async fn is_present(&self, uid: &str) -> bool {
        match self.kv.get(token(uid)).await {
            Ok(Some(v)) => std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|at| {
                    now_millis().saturating_sub(at) <= self.fresh_for.as_millis() as u64
                }),
            _ => false,
        }
    }
}

impl Presence {
    /// A local copy of the stamps, kept current by a watch of the bucket until dropped.
    pub fn follow(&self) -> PresenceView {
        let stamps = Arc::new(RwLock::new(HashMap::new()));
        let task = tokio::spawn(watch(self.kv.clone(), stamps.clone()));
        PresenceView {
            stamps,
            fresh_for: self.fresh_for,
            _task: Arc::new(Abort(task)),
        }
    }
}

/// Follows the bucket from its current values on; re-watches after an interruption.
async fn watch(kv: kv::Store, stamps: Arc<RwLock<HashMap<String, u64>>>) {
    loop {
        match kv.watch_with_history(">").await {
            Ok(mut entries) => {
                while let Some(entry) = entries.next().await {
                    let Ok(entry) = entry else { break };
                    let at = match entry.operation {
                        kv::Operation::Put => std::str::from_utf8(&entry.value)
                            .ok()
                            .and_then(|s| s.parse::<u64>().ok()),
                        _ => None,
                    };
                    if let Ok(mut map) = stamps.write() {
                        match at {
                            Some(at) => map.insert(entry.key, at),
                            None => map.remove(&entry.key),
                        };
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "presence watch not started"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

struct Abort(tokio::task::JoinHandle<()>);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The dispatcher's view of who is connected (see [`Presence::follow`]). Cheap to clone.
#[derive(Clone)]
pub struct PresenceView {
    stamps: Arc<RwLock<HashMap<String, u64>>>,
    fresh_for: Duration,
    /// The watch, stopped when the last clone is dropped.
    _task: Arc<Abort>,
}

impl PresenceView {
    /// Whether `uid`'s last stamp is within the freshness window.
    pub fn is_present(&self, uid: &str) -> bool {
        let now = now_millis();
        self.stamps.read().is_ok_and(|map| {
            map.get(&token(uid))
                .is_some_and(|at| now.saturating_sub(*at) <= self.fresh_for.as_millis() as u64)
        })
    }
}
