//! Live notices: frames for users' open WebSocket/SSE connections, sent over core NATS on
//! `msgxc.live.<uid>` after the projector has committed the change they describe.
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
        assert_eq!(routing_key_of("other.x"), None);
    }
}
