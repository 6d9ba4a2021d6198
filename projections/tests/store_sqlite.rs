//! The store conformance suite against SQLite: a fresh database file per case.

mod conformance;

use projections::SqliteStore;

async fn fresh() -> Option<(tempfile::TempDir, SqliteStore)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("store.sqlite3")).expect("opening SQLite");
    Some((dir, store))
}

conformance_cases!(fresh);
