//! Test harness: starts a real nats-server (>= 2.10) per test on a free port with a temporary
//! JetStream store, so tests run in parallel and leave nothing behind, and finds or starts the
//! real Cassandra node the CQL store tests share (one keyspace per test).
//!
//! - `cassandra`: the CQL node of a test run (shared, or one per test process)
//! - `providers`: local servers speaking the push providers' real protocols

pub mod cassandra;
pub mod providers;

use std::path::{Path, PathBuf};

pub use exchange::natsd::NatsServer;

/// A nats-server owned by one test; stopped and its store deleted on drop.
pub struct TestNats {
    pub server: NatsServer,
    // Dropped after `server` (field order), so the store goes once the process is gone.
    _dir: tempfile::TempDir,
}

impl TestNats {
    /// Starts a server. Panics with instructions when no suitable binary is installed: tests
    /// must not pass by skipping.
    pub fn start() -> Self {
        let bin = nats_server_bin();
        let dir = tempfile::tempdir().expect("temp dir for JetStream");
        let server = NatsServer::start(&bin, &dir.path().join("js"), None)
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        Self { server, _dir: dir }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn store_dir(&self) -> &Path {
        self.server.store_dir()
    }
}

/// The nats-server binary for tests (`MSGXC_NATS_SERVER_BIN`, the project's `.tools`, PATH).
pub fn nats_server_bin() -> PathBuf {
    let explicit = std::env::var_os("MSGXC_NATS_SERVER_BIN").map(PathBuf::from);
    exchange::natsd::find_binary(explicit.as_deref()).unwrap_or_else(|e| {
        panic!("{e}\nrun scripts/setup-tools.sh (scripts/test.sh does it for you)")
    })
}
