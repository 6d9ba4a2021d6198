//! Per-provider pacing: a rate limit (GCRA, the token bucket's scheduling form: every send
//! reserves the next free slot, so waiters wake one by one at the provider's pace), a bound on
//! requests in flight, and a pause when the provider answers 429 with Retry-After.
//!
//! Hand-written rather than `governor`: the pause and the in-flight bound live beside the
//! bucket under one lock, and the whole of it is a few lines over tokio's timer.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// A channel's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Sends per second; `None` for no limit.
    pub rate: Option<f64>,
    /// Sends allowed at once after an idle period (the bucket's size).
    pub burst: u32,
    /// Requests in flight at most.
    pub in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rate: None,
            burst: 100,
            in_flight: 256,
        }
    }
}

impl Limits {
    /// FCM's default project quota: 600,000 messages per minute.
    pub const FCM_DEFAULT_RATE: f64 = 10_000.0;
}

pub struct Throttle {
    limits: Limits,
    /// The earliest instant the next send may start (GCRA's theoretical arrival time).
    next: Mutex<Option<Instant>>,
    slots: Semaphore,
}

impl Throttle {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            next: Mutex::new(None),
            slots: Semaphore::new(limits.in_flight.max(1)),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Waits for a free slot and for this send's turn under the rate and any pause. The
    /// permit is the slot: held until the request is answered.
    pub async fn acquire(&self) -> Option<SemaphorePermit<'_>> {
        let permit = self.slots.acquire().await.ok()?;
        if let Some(at) = self.reserve(Instant::now()) {
            tokio::time::sleep_until(at).await;
        }
        Some(permit)
    }

    /// Reserves the next slot; returns when it starts, if later than `now`.
    fn reserve(&self, now: Instant) -> Option<Instant> {
        let mut next = self.next.lock().ok()?;
        let Some(rate) = self.limits.rate.filter(|r| *r > 0.0) else {
            // No rate: only a pause delays.
            return next.filter(|at| *at > now);
        };
        let interval = Duration::from_secs_f64(1.0 / rate);
        // Unused capacity accumulates up to the burst.
        let earliest = now
            .checked_sub(interval.saturating_mul(self.limits.burst.max(1) - 1))
            .unwrap_or(now);
        let at = next.map_or(earliest, |n| n.max(earliest));
        *next = Some(at + interval);
        (at > now).then_some(at)
    }

    /// The provider asked to slow down: no send starts before `after` from now.
    pub fn pause(&self, after: Duration) {
        let until = Instant::now() + after;
        if let Ok(mut next) = self.next.lock() {
            *next = Some(next.map_or(until, |n| n.max(until)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_spaced_by_the_rate_after_the_burst() {
        let t = Throttle::new(Limits {
            rate: Some(100.0),
            burst: 2,
            in_flight: 10,
        });
        let now = Instant::now();
        // Idle before: two go at once, then one every 10 ms.
        assert_eq!(t.reserve(now), None);
        assert_eq!(t.reserve(now), None);
        let third = t.reserve(now).expect("third waits");
        assert_eq!(third - now, Duration::from_millis(10));
        let fourth = t.reserve(now).expect("fourth waits");
        assert_eq!(fourth - third, Duration::from_millis(10));
    }

    #[test]
    fn a_pause_delays_every_later_send_even_without_a_rate() {
        let t = Throttle::new(Limits::default());
        let now = Instant::now();
        assert_eq!(t.reserve(now), None);
        t.pause(Duration::from_secs(2));
        let at = t.reserve(now).expect("paused");
        assert!(at - now >= Duration::from_millis(1900));
    }
}
