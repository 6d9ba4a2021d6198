//! The checked-in JSON Schemas in `schema/events/` must equal what the Rust types generate.
//! Regenerate with `MSGXC_UPDATE_SCHEMA=1 cargo test -p exchange --test schema_drift`.

use std::path::PathBuf;

use exchange::events::Event;
use exchange::schema::{event_schemas, render};

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schema/events")
}

#[test]
fn checked_in_schemas_match_the_types() {
    let dir = schema_dir();
    let update = std::env::var_os("MSGXC_UPDATE_SCHEMA").is_some();
    let mut drifted = Vec::new();
    for (name, schema) in event_schemas() {
        let path = dir.join(&name);
        let want = render(&schema);
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &want).unwrap();
            continue;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            drifted.push(name);
        }
    }
    assert!(
        drifted.is_empty(),
        "schema/events drifted from the Rust types: {drifted:?}; regenerate with \
         MSGXC_UPDATE_SCHEMA=1 cargo test -p exchange --test schema_drift and review the diff"
    );
}

#[test]
fn every_kind_has_a_schema_file_and_the_envelope_names_it() {
    let schemas = event_schemas();
    let envelope = render(&schemas[0].1);
    for kind in Event::KINDS {
        assert!(
            schemas.iter().any(|(n, _)| n == &format!("{kind}.json")),
            "{kind} has no schema file"
        );
        assert!(envelope.contains(kind), "envelope schema lacks {kind}");
    }
}
