//! Who has a live connection: gateways refresh `MSGXC_PRESENCE[<uid token>]` with the current
//! time while a user has an open WebSocket; the dispatcher treats a user as present when the
//! stamp is recent. No explicit "offline" write is needed (several gateways may serve one user);
//! a closed connection simply stops refreshing.

use std::time::Duration;

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
