//! Live notices: frames for users' open WebSocket/SSE connections, sent over core NATS on
//! `msgxc.live.<uid>` after the projector has committed the change they describe (read,
//! archived, deleted; a new entry's frame is built by each gateway's hub from the event
//! itself). After each batch's notices the projector publishes its checkpoint on
//! [`APPLIED_SUBJECT`], so a hub knows which committed changes it has seen.
//!
//! They are derived data, not events: at most once, never stored, never sent during replay.
//! A client that missed one catches up from its inbox.

use bytes::Bytes;

use crate::subject;

/// One frame for one user. `frame` is the JSON text the client receives unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveNotice {
    pub uid: String,
    pub frame: Bytes,
}

/// Publishes notices on core NATS. Errors are logged, not returned: live frames are best effort
/// and the data they describe is already committed.
pub async fn publish(client: &async_nats::Client, notices: Vec<LiveNotice>) {
    for n in notices {
        if let Err(e) = client.publish(subject::live_subject(&n.uid), n.frame).await {
            tracing::warn!(uid = %n.uid, error = %e, "live notice not published");
        }
    }
}

/// The projector's checkpoint after each batch (payload: the sequence in decimal). Two tokens
/// after the prefix, so it is never a user's subject.
pub const APPLIED_SUBJECT: &str = "msgxc.live._.applied";

/// Publishes the checkpoint after a batch's notices (same connection, so it arrives after them).
pub async fn publish_applied(client: &async_nats::Client, checkpoint: u64) {
    if let Err(e) = client
        .publish(APPLIED_SUBJECT, checkpoint.to_string().into())
        .await
    {
        tracing::warn!(checkpoint, error = %e, "applied mark not published");
    }
}

/// The checkpoint an applied mark carries.
pub fn applied_of(subject: &str, payload: &[u8]) -> Option<u64> {
    (subject == APPLIED_SUBJECT)
        .then(|| std::str::from_utf8(payload).ok()?.parse().ok())
        .flatten()
}

/// The subject token under which a user's live notices arrive; routing keys for connection hubs.
pub fn routing_key(uid: &str) -> String {
    subject::token(uid)
}

/// Extracts the routing key from a live subject (`msgxc.live.<key>`).
pub fn routing_key_of(subject: &str) -> Option<&str> {
    subject
        .strip_prefix(subject::LIVE_PREFIX)
        .and_then(|rest| rest.strip_prefix('.'))
        .filter(|k| !k.is_empty() && !k.contains('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_key_round_trip() {
        for uid in ["alice", "a.b@example.com", "*"] {
            let s = subject::live_subject(uid);
            assert_eq!(routing_key_of(&s), Some(routing_key(uid).as_str()));
        }
        assert_eq!(routing_key_of("msgxc.live."), None);
        assert_eq!(routing_key_of(APPLIED_SUBJECT), None);
        assert_eq!(applied_of(APPLIED_SUBJECT, b"17"), Some(17));
        assert_eq!(applied_of("msgxc.live.x", b"17"), None);
        assert_eq!(routing_key_of("other.x"), None);
    }
}
