//! msgxc read side: the `Store` trait, its SQLite and Scylla backends and the projector workers
//! that fold the JetStream event log into read models (threads, subscriptions, devices, inboxes).

pub mod fold;
pub mod model;
pub mod projector;
pub mod scylla;
pub mod sqlite;
pub mod store;

pub use projector::{Projector, ProjectorSettings, rebuild};
pub use scylla::{ScyllaConfig, ScyllaStore};
pub use sqlite::SqliteStore;
pub use store::{Applied, ApplyOptions, SequencedEvent, Store, StoreError, StoreResult};
