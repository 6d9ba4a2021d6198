//! The store conformance suite against the Scylla backend over `MemoryCql`, the in-process
//! stand-in for a CQL node: the backend's own statements, batching, flushes and reads, with
//! Cassandra's upsert, ordering, slice, compare-and-set and batch-timestamp semantics. What it
//! cannot show (the driver, the wire protocol, a cluster) only `store_scylla.rs` against a
//! real node does.

mod conformance;

use projections::ScyllaStore;

async fn fresh() -> Option<((), ScyllaStore)> {
    let store = ScyllaStore::in_memory().await.expect("in-memory CQL node");
    Some(((), store))
}

conformance_cases!(fresh);
