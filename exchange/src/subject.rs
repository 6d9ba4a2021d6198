//! NATS subject layout. Events: `msgxc.ev.<aggregate>.<id>.<kind>`; scheduled sends waiting to
//! fire: `msgxc.sched.<mid>`; live notices: `msgxc.live.<uid>`. Ids become single subject tokens through [`token`].
//!
//! Consumers filter by kind (`msgxc.ev.*.*.message_published`), by aggregate type
//! (`msgxc.ev.thread.>`) or by one aggregate (`msgxc.ev.user.alice.>`).

use base64::Engine;

use crate::events::Aggregate;

/// Every event subject starts with this prefix; the stream captures `msgxc.ev.>`.
pub const EVENTS_PREFIX: &str = "msgxc.ev";
/// The stream's subject filter.
pub const EVENTS_WILDCARD: &str = "msgxc.ev.>";
/// Scheduled sends wait in the same stream under `msgxc.sched.<mid>` (a JetStream message
/// schedule each); they are not events, and every reader of events filters on
/// [`EVENTS_WILDCARD`]. When one fires, nats-server stores its event under the event's subject.
pub const SCHEDULES_PREFIX: &str = "msgxc.sched";
pub const SCHEDULES_WILDCARD: &str = "msgxc.sched.>";
/// Live notices for connected clients (core NATS, not stored).
pub const LIVE_PREFIX: &str = "msgxc.live";
pub const LIVE_WILDCARD: &str = "msgxc.live.>";

/// The subject an event is stored under.
pub fn event_subject(aggregate: Aggregate, id: &str, kind: &str) -> String {
    format!(
        "{EVENTS_PREFIX}.{}.{}.{kind}",
        aggregate.as_str(),
        token(id)
    )
}

/// The subject a scheduled message waits under until it fires.
pub fn schedule_subject(mid: uuid::Uuid) -> String {
    format!("{SCHEDULES_PREFIX}.{mid}")
}

/// The subject for live notices to one user.
pub fn live_subject(uid: &str) -> String {
    format!("{LIVE_PREFIX}.{}", token(uid))
}

/// Encodes an id as one subject token. Ids made only of `[A-Za-z0-9_-]` (UUIDs, most user ids)
/// are used as they are, so subjects stay readable; anything else (dots, spaces, wildcards,
/// non-ASCII, or a leading `~`) becomes `~` + unpadded base64url of its UTF-8 bytes.
pub fn token(id: &str) -> String {
    let plain = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        id.to_owned()
    } else {
        format!(
            "~{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.as_bytes())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_stay_readable() {
        assert_eq!(token("alice"), "alice");
        assert_eq!(
            token("0190f5a2-6c1e-7c3b-8d2e-000000000000"),
            "0190f5a2-6c1e-7c3b-8d2e-000000000000"
        );
    }

    #[test]
    fn unsafe_ids_become_one_token() {
        for id in ["a.b", "a b", "*", ">", "", "~x", "ünï", "user@example.com"] {
            let t = token(id);
            assert!(t.starts_with('~'), "{id} -> {t}");
            assert!(
                !t.contains(['.', ' ', '*', '>']),
                "{id} -> {t} is not a single token"
            );
        }
        assert_ne!(token("a.b"), token("a_b"));
    }

    #[test]
    fn event_subject_layout() {
        assert_eq!(
            event_subject(Aggregate::User, "bob", "device_enlisted"),
            "msgxc.ev.user.bob.device_enlisted"
        );
    }
}
