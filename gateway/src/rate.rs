//! Rate limits per key, in process memory: a fixed window ([`RateLimiter`], private messages)
//! and token buckets ([`Buckets`], writes per user and per client address). Each gateway
//! process counts on its own, so with N gateways a sender may reach N times the limit
//! (documented).

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

/// A token bucket's shape: `per_second` tokens refill each second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    /// Parses `100/1000` (per second / burst), `100` (burst = 10 s of it) or `0` (no limit).
    pub fn parse(s: &str) -> Result<Option<Self>, String> {
        let bad =
            || format!("invalid rate {s:?}: expected per_second[/burst], e.g. 100/1000, or 0");
        let (rate, burst) = match s.trim().split_once('/') {
            Some((r, b)) => (r.trim(), Some(b.trim())),
            None => (s.trim(), None),
        };
        let per_second: u32 = rate.parse().map_err(|_| bad())?;
        if per_second == 0 {
            return Ok(None);
        }
        let burst = match burst {
            Some(b) => b.parse::<u32>().map_err(|_| bad())?.max(1),
            None => per_second.saturating_mul(10),
        };
        Ok(Some(Self { per_second, burst }))
    }
}

/// Token buckets per key (GCRA: one instant per key, the time its bucket is full again).
#[derive(Clone, Default)]
pub struct Buckets {
    full_at: Arc<Mutex<HashMap<String, Instant>>>,
}

/// Keys remembered before full buckets are forgotten.
const BUCKET_KEYS: usize = 100_000;

impl Buckets {
    /// Takes one token of `key`'s bucket; `Err(retry_after)` when it is empty.
    pub fn take(&self, key: &str, rate: Rate) -> Result<(), Duration> {
        let now = Instant::now();
        let interval = Duration::from_secs(1) / rate.per_second.max(1);
        let capacity = interval * rate.burst.max(1);
        let Ok(mut full_at) = self.full_at.lock() else {
            return Ok(());
        };
        if full_at.len() > BUCKET_KEYS {
            full_at.retain(|_, t| *t > now);
        }
        let at = full_at
            .get(key)
            .copied()
            .filter(|t| *t > now)
            .unwrap_or(now);
        // Taking a token pushes "full again" one interval later; no more than the capacity.
        let next = at + interval;
        if next > now + capacity {
            return Err(next - (now + capacity));
        }
        full_at.insert(key.to_owned(), next);
        Ok(())
    }
}

/// One connection's own token bucket (no map, no lock: it lives in the connection's task).
#[derive(Debug, Clone, Copy)]
pub struct LocalBucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl LocalBucket {
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            tokens: f64::from(rate.burst),
            at: Instant::now(),
        }
    }

    /// Takes one token; false when the bucket is empty.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * f64::from(self.rate.per_second);
        self.tokens = (self.tokens + refill).min(f64::from(self.rate.burst));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Live connections open per user, and the guard that holds one.
#[derive(Clone, Default)]
pub struct SocketCounts {
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open connection of a user; dropping it closes the count.
pub struct SocketGuard {
    counts: SocketCounts,
    uid: String,
}

impl SocketCounts {
    /// Connections open, all users together.
    pub fn total(&self) -> usize {
        self.open.lock().map_or(0, |o| o.values().sum())
    }

    /// Counts one more connection of `uid`, or `None` when `max` are open already.
    pub fn acquire(&self, uid: &str, max: usize) -> Option<SocketGuard> {
        let mut open = self.open.lock().ok()?;
        let n = open.entry(uid.to_owned()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SocketGuard {
            counts: self.clone(),
            uid: uid.to_owned(),
        })
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if let Ok(mut open) = self.counts.open.lock()
            && let Some(n) = open.get_mut(&self.uid)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sockets_are_counted_per_user_until_dropped() {
        let c = SocketCounts::default();
        let a = c.acquire("ann", 2).unwrap();
        let _b = c.acquire("ann", 2).unwrap();
        assert!(c.acquire("ann", 2).is_none());
        assert!(c.acquire("bob", 2).is_some());
        drop(a);
        assert!(c.acquire("ann", 2).is_some());
    }

    use super::*;

    #[test]
    fn buckets_allow_the_burst_then_refill_at_the_rate() {
        let b = Buckets::default();
        let rate = Rate {
            per_second: 10,
            burst: 3,
        };
        for _ in 0..3 {
            assert!(b.take("a", rate).is_ok());
        }
        let retry = b.take("a", rate).unwrap_err();
        assert!(retry <= Duration::from_millis(100), "{retry:?}");
        assert!(b.take("b", rate).is_ok(), "keys are independent");
        std::thread::sleep(Duration::from_millis(120));
        assert!(
            b.take("a", rate).is_ok(),
            "one token back after an interval"
        );
        assert!(b.take("a", rate).is_err());
    }

    #[test]
    fn rates_parse() {
        assert_eq!(
            Rate::parse("100/1000"),
            Ok(Some(Rate {
                per_second: 100,
                burst: 1000
            }))
        );
        assert_eq!(
            Rate::parse("5"),
            Ok(Some(Rate {
                per_second: 5,
                burst: 50
            }))
        );
        assert_eq!(Rate::parse("0"), Ok(None));
        assert!(Rate::parse("fast").is_err());
        assert!(Rate::parse("10/x").is_err());
    }

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
