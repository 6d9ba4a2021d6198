//! A fixed-window rate limiter per key, in process memory. Each gateway process counts on its
//! own, so with N gateways a sender may reach N times the limit (documented).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
pub struct RateLimiter {
    windows: Arc<Mutex<HashMap<String, (Instant, u32)>>>,
}

impl RateLimiter {
    /// Counts one use by `key`; `Err(retry_after)` when `limit` uses happened in the current
    /// `window` already. A limit of 0 means unlimited.
    pub fn check(&self, key: &str, limit: u32, window: Duration) -> Result<(), Duration> {
        if limit == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let Ok(mut windows) = self.windows.lock() else {
            return Ok(());
        };
        if windows.len() > 100_000 {
            windows.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let entry = windows.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        if entry.1 >= limit {
            return Err(window.saturating_sub(now.duration_since(entry.0)));
        }
        entry.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_key_and_window() {
        let r = RateLimiter::default();
        let w = Duration::from_secs(60);
        assert!(r.check("a", 2, w).is_ok());
        assert!(r.check("a", 2, w).is_ok());
        let retry = r.check("a", 2, w).unwrap_err();
        assert!(retry <= w && retry > Duration::from_secs(50));
        assert!(r.check("b", 2, w).is_ok(), "keys are independent");
        assert!(r.check("a", 0, w).is_ok(), "0 = unlimited");
    }
}
