//! Routes live notices from NATS to this process's open client connections.
//!
//! Each connection gets a bounded queue. A notice never waits for a slow client: when a queue
//! is full the connection is dropped from the hub (its task then closes the socket), and the
//! client resynchronises from its inbox when it reconnects.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use exchange::live;

#[derive(Clone, Default)]
pub struct Hub {
    inner: Arc<HubInner>,
}

/// One open connection's id and frame queue.
type Conn = (u64, mpsc::Sender<Bytes>);

#[derive(Default)]
struct HubInner {
    /// routing key (subject token of the uid) -> connections
    conns: RwLock<HashMap<String, Vec<Conn>>>,
    next_id: AtomicU64,
}

/// A registered connection; dropping it unregisters.
pub struct Registration {
    hub: Hub,
    key: String,
    id: u64,
    pub frames: mpsc::Receiver<Bytes>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.remove(&self.key, self.id);
    }
}

impl Hub {
    /// Registers a connection of `uid` with a queue of `buffer` frames.
    pub fn register(&self, uid: &str, buffer: usize) -> Registration {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let key = live::routing_key(uid);
        if let Ok(mut conns) = self.inner.conns.write() {
            conns.entry(key.clone()).or_default().push((id, tx));
        }
        Registration {
            hub: self.clone(),
            key,
            id,
            frames: rx,
        }
    }

    fn remove(&self, key: &str, id: u64) {
        if let Ok(mut conns) = self.inner.conns.write()
            && let Some(list) = conns.get_mut(key)
        {
            list.retain(|(i, _)| *i != id);
            if list.is_empty() {
                conns.remove(key);
            }
        }
    }

    /// Number of open connections (for health output and tests).
    pub fn connections(&self) -> usize {
        self.inner
            .conns
            .read()
            .map(|c| c.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    /// Hands one frame to every connection registered under `key`.
    pub fn dispatch(&self, key: &str, frame: &Bytes) {
        let mut slow = Vec::new();
        if let Ok(conns) = self.inner.conns.read()
            && let Some(list) = conns.get(key)
        {
            for (id, tx) in list {
                if tx.try_send(frame.clone()).is_err() {
                    slow.push(*id);
                }
            }
        }
        for id in slow {
            tracing::info!(key, conn = id, "dropping a slow or closed live connection");
            self.remove(key, id);
        }
    }

    /// Subscribes to all live notices and dispatches them until the subscription ends.
    pub async fn run(self, nats: async_nats::Client) -> Result<(), async_nats::SubscribeError> {
        let mut sub = nats.subscribe(exchange::subject::LIVE_WILDCARD).await?;
        while let Some(msg) = sub.next().await {
            if let Some(key) = live::routing_key_of(msg.subject.as_str()) {
                self.dispatch(key, &msg.payload);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slow_connections_are_dropped_without_blocking_others() {
        let hub = Hub::default();
        let mut fast = hub.register("u", 8);
        let slow = hub.register("u", 1);
        let key = live::routing_key("u");
        for i in 0..3u8 {
            hub.dispatch(&key, &Bytes::from(vec![i]));
            // the fast client keeps up
            assert_eq!(fast.frames.recv().await.unwrap(), Bytes::from(vec![i]));
        }
        assert_eq!(hub.connections(), 1, "the slow one is gone");
        drop(slow);
        drop(fast);
        assert_eq!(hub.connections(), 0);
    }
}
