//! msgxc read side: the `Store` trait, its SQLite and Scylla backends and the projector workers
//! that fold the JetStream event log into read models (threads, subscriptions, devices, inboxes).
//!
//! - `fold`: the deterministic fold over the `FoldTarget` operations every backend provides
//! - `funnel`: the funnel report (steps per channel, urgency, type, variant; time to open)
//! - `live`: who a message reaches and its `new` frame, from the event alone (the live hub's)
//! - `model`: the read models
//! - `projector`: the projector worker (durable consumer, lease, outbox relay) and `rebuild`
//! - `scylla`: the Scylla/Cassandra backend
//! - `sqlite`: the SQLite backend
//! - `stage`: the fold of stage-based messaging (seed 002): records, index rows, due sends
//! - `stats`: the statistics of experiment reports (z-test, mSPRT, sample-ratio check)
//! - `store`: the `Store` trait

pub mod fold;
pub mod funnel;
pub mod live;
pub mod model;
pub mod projector;
pub mod scylla;
pub mod sqlite;
pub mod stage;
pub mod stats;
pub mod store;

pub use projector::{Projector, ProjectorSettings, rebuild};
pub use scylla::{ScyllaConfig, ScyllaStore};
pub use sqlite::SqliteStore;
pub use store::{Applied, ApplyOptions, SequencedEvent, Store, StoreError, StoreResult};
