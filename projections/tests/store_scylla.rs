//! The store conformance suite against ScyllaDB / Cassandra, when a CQL node is reachable:
//! `MSGXC_TEST_SCYLLA=host:9042 cargo test -p projections --test store_scylla`. Each case gets
//! its own keyspace (created by `migrate`, dropped afterwards). Without the variable every case
//! prints that it was not run: no CQL server can be installed on the project's own machines.

mod conformance;

use projections::scylla::{ScyllaConfig, ScyllaStore, migrate};

/// Drops the case's keyspace when the case ends.
struct Keyspace(ScyllaConfig);

impl Drop for Keyspace {
    fn drop(&mut self) {
        let config = self.0.clone();
        // Drop runs inside the test's runtime: use a thread with a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(projections::scylla::drop_keyspace(&config))
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop keyspace {}: {e}", self.0.keyspace);
        }
    }
}

async fn fresh() -> Option<(Keyspace, ScyllaStore)> {
    let Ok(node) = std::env::var("MSGXC_TEST_SCYLLA") else {
        eprintln!("MSGXC_TEST_SCYLLA is not set: the Scylla conformance case did not run");
        return None;
    };
    let keyspace = format!("msgxc_test_{}", uuid::Uuid::now_v7().simple());
    let config = ScyllaConfig::parse(&format!(
        "scylla://{node}/{keyspace}?replication_factor=1&consistency=one"
    ))
    .expect("store URL");
    migrate(&config).await.expect("migrate");
    // Twice: migrating is idempotent.
    migrate(&config).await.expect("second migrate");
    let store = ScyllaStore::open(&config).await.expect("open");
    Some((Keyspace(config), store))
}

conformance_cases!(fresh);
