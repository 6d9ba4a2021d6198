//! Frequency caps: at most `max` messages per user and channel in a rolling window (or per
//! user over the three push channels together, `push`), counted in JetStream KV
//! `MSGXC_CAPS` so every dispatcher sees the same counts.
//!
//! A counter is one KV entry per (user, counter): the recent sends as `[unix ms, mid]`,
//! updated by compare-and-set on the entry's revision. A message is counted once per user
//! however many devices of the channel it goes to, and a redelivered task finds its message
//! already counted (so it is not capped by its own earlier run). A slot is taken before the
//! send: a send that then fails still counts (the cap errs towards fewer messages).

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream::StorageType};
use base64::Engine;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::log::LogError;

pub const CAPS_BUCKET: &str = "MSGXC_CAPS";

/// The counter shared by APNs, FCM and Web Push when `push` is capped.
pub const PUSH: &str = "push";
const PUSH_CHANNELS: [&str; 3] = ["apns", "fcm", "webpush"];

/// At most `max` messages in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    pub max: u32,
    pub window: Duration,
}

impl Cap {
    /// `N/DURATION`, e.g. `3/1h`, `10/24h`, `1/30m`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let usage = || format!("{s:?}: expected N/DURATION, e.g. 3/1h");
        let (n, d) = s.trim().split_once('/').ok_or_else(usage)?;
        let max = n.trim().parse::<u32>().map_err(|_| usage())?;
        let window = crate::events::duration_seconds(&serde_json::Value::String(d.trim().into()))
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            .ok_or_else(usage)?;
        Ok(Self { max, window })
    }
}

impl std::fmt::Display for Cap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.window.as_secs();
        let (n, unit) = match s {
            s if s % 86_400 == 0 => (s / 86_400, "d"),
            s if s % 3600 == 0 => (s / 3600, "h"),
            s if s % 60 == 0 => (s / 60, "m"),
            s => (s, "s"),
        };
        write!(f, "{}/{n}{unit}", self.max)
    }
}

/// The configured caps: by channel name, or [`PUSH`] for the push channels together (a
/// channel's own cap wins over `push`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapSettings {
    pub by: HashMap<String, Cap>,
}

impl CapSettings {
    /// The counter `channel`'s sends count in, and its cap.
    pub fn of<'a>(&'a self, channel: &'a str) -> Option<(&'a str, Cap)> {
        if let Some(c) = self.by.get(channel) {
            return Some((channel, *c));
        }
        if PUSH_CHANNELS.contains(&channel) {
            return self.by.get(PUSH).map(|c| (PUSH, *c));
        }
        None
    }

    pub fn is_empty(&self) -> bool {
        self.by.is_empty()
    }

    fn longest(&self) -> Duration {
        self.by.values().map(|c| c.window).max().unwrap_or_default()
    }
}

/// The shared counters.
#[derive(Clone)]
pub struct Caps {
    kv: kv::Store,
    settings: CapSettings,
}

/// Compare-and-set rounds before a check gives up (it is then retried with the task).
const ROUNDS: usize = 16;

impl Caps {
    /// Opens (creating if needed) the counters bucket; `None` when no cap is configured.
    pub async fn open(
        js: &jetstream::Context,
        settings: CapSettings,
        replicas: usize,
    ) -> Result<Option<Self>, LogError> {
        if settings.is_empty() {
            return Ok(None);
        }
        let kv = match js.get_key_value(CAPS_BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: CAPS_BUCKET.into(),
                    description: "msgxc: recent sends per user and channel (frequency caps)".into(),
                    history: 1,
                    // An entry untouched for the longest window holds nothing that counts.
                    max_age: settings.longest().max(Duration::from_secs(60)),
                    storage: StorageType::File,
                    num_replicas: replicas.max(1),
                    ..Default::default()
                })
                .await
                .map_err(|e| LogError::Unavailable(format!("creating {CAPS_BUCKET}: {e}")))?,
        };
        Ok(Some(Self { kv, settings }))
    }

    pub fn settings(&self) -> &CapSettings {
        &self.settings
    }

    /// Takes a slot for message `mid` to `uid` in `counter` at `now`: `true` when the message
    /// may go (a free slot, or already counted), `false` when the cap is reached.
    pub async fn admit(
        &self,
        uid: &str,
        counter: &str,
        cap: Cap,
        mid: Uuid,
        now: OffsetDateTime,
    ) -> Result<bool, String> {
        let key = format!(
            "{counter}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uid)
        );
        let now_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
        let since = now_ms - cap.window.as_millis() as i64;
        let mid = mid.to_string();
        for _ in 0..ROUNDS {
            let entry = self
                .kv
                .entry(&key)
                .await
                .map_err(|e| format!("reading frequency cap: {e}"))?;
            let live = entry.as_ref().filter(|e| e.operation == kv::Operation::Put);
            let mut sends: Vec<(i64, String)> = live
                .and_then(|e| serde_json::from_slice(&e.value).ok())
                .unwrap_or_default();
            sends.retain(|(at, _)| *at > since);
            if sends.iter().any(|(_, m)| *m == mid) {
                return Ok(true);
            }
            if sends.len() >= cap.max as usize {
                return Ok(false);
            }
            sends.push((now_ms, mid.clone()));
            let value = serde_json::to_vec(&sends).map_err(|e| e.to_string())?;
            let written = match &entry {
                Some(e) => self
                    .kv
                    .update(&key, value.into(), e.revision)
                    .await
                    .map_err(|e| e.to_string()),
                None => self
                    .kv
                    .create(&key, value.into())
                    .await
                    .map_err(|e| e.to_string()),
            };
            match written {
                Ok(_) => return Ok(true),
                // Another dispatcher wrote it first: read again.
                Err(e) => tracing::debug!(counter, error = %e, "frequency cap raced; again"),
            }
        }
        Err(format!("frequency cap {counter}: too much contention"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_parse_print_and_pick_their_counter() {
        let c = Cap::parse("3/1h").unwrap();
        assert_eq!(
            c,
            Cap {
                max: 3,
                window: Duration::from_secs(3600)
            }
        );
        assert_eq!(c.to_string(), "3/1h");
        assert_eq!(Cap::parse(" 10 / 24h ").unwrap().to_string(), "10/1d");
        assert_eq!(Cap::parse("0/90s").unwrap().to_string(), "0/90s");
        for bad in ["3", "x/1h", "3/", "3/0s", "3/soon", "-1/1h"] {
            assert!(Cap::parse(bad).is_err(), "{bad}");
        }
        let settings = CapSettings {
            by: HashMap::from([
                ("push".into(), c),
                ("sms".into(), Cap::parse("1/1d").unwrap()),
            ]),
        };
        assert_eq!(settings.of("apns").map(|(k, _)| k), Some("push"));
        assert_eq!(settings.of("webpush").map(|(k, _)| k), Some("push"));
        assert_eq!(settings.of("sms").map(|(k, _)| k), Some("sms"));
        assert_eq!(settings.of("email"), None);
    }
}
