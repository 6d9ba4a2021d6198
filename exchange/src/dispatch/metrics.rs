//! What the dispatcher counts for `GET /metrics`: provider calls by channel, lane and outcome,
//! with their latency, dead letters by channel, and deliveries the recipients' rules held or
//! suppressed. Registered into the process's registry by
//! whoever serves the metrics.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SendLabels {
    channel: &'static str,
    lane: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabels {
    channel: &'static str,
    lane: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeadLabels {
    channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    channel: &'static str,
    rule: &'static str,
}

fn send_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
}

/// Cheap to clone: the families share their counters.
#[derive(Clone)]
pub struct DispatchMetrics {
    sends: Family<SendLabels, Counter>,
    latency: Family<ChannelLabels, Histogram, fn() -> Histogram>,
    dead: Family<DeadLabels, Counter>,
    stopped: Family<RuleLabels, Counter>,
}

impl Default for DispatchMetrics {
    fn default() -> Self {
        Self {
            sends: Family::default(),
            latency: Family::new_with_constructor(send_histogram),
            dead: Family::default(),
            stopped: Family::default(),
        }
    }
}

impl DispatchMetrics {
    /// Adds these metrics to `registry` (named `<prefix>_dispatch_*`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "dispatch_sends",
            "Provider calls by channel, urgency lane and outcome (accepted, retry, throttled, device_gone, rejected)",
            self.sends.clone(),
        );
        registry.register(
            "dispatch_send_seconds",
            "Time of one provider call, by channel and urgency lane",
            self.latency.clone(),
        );
        registry.register(
            "dispatch_dead_letters",
            "Deliveries this dispatcher gave up on (no retry follows), by channel",
            self.dead.clone(),
        );
        registry.register(
            "dispatch_stopped",
            "Deliveries not sent now by the recipient's rules, by channel and rule (quiet_hours: held until the window ends; frequency_cap: suppressed)",
            self.stopped.clone(),
        );
    }

    /// One delivery held (`quiet_hours`) or suppressed (`frequency_cap`).
    pub(crate) fn stopped(&self, channel: &'static str, rule: &'static str) {
        self.stopped
            .get_or_create(&RuleLabels { channel, rule })
            .inc();
    }

    /// Labels are static strings: counting a send allocates nothing.
    pub(crate) fn send(
        &self,
        channel: &'static str,
        lane: &'static str,
        outcome: &Outcome,
        took: Duration,
    ) {
        let outcome = match outcome {
            Outcome::Accepted { .. } => "accepted",
            Outcome::Retry { .. } => "retry",
            Outcome::Throttled { .. } => "throttled",
            Outcome::DeviceGone { .. } => "device_gone",
            Outcome::Rejected { .. } => "rejected",
        };
        self.sends
            .get_or_create(&SendLabels {
                channel,
                lane,
                outcome,
            })
            .inc();
        self.latency
            .get_or_create(&ChannelLabels { channel, lane })
            .observe(took.as_secs_f64());
    }

    /// One delivery dead-lettered.
    pub(crate) fn dead_letter(&self, channel: &str) {
        self.dead
            .get_or_create(&DeadLabels {
                channel: channel.to_owned(),
            })
            .inc();
    }
}
