//! The funnel report (`GET /api/v1/reports/funnel`): recipients of a set of messages at each
//! step, sent -> provider-accepted -> delivered -> opened -> clicked -> converted, grouped by
//! channel, urgency, type and variant, with time-to-open percentiles.
//!
//! The unit is one recipient of one message. `sent` counts the users who got an inbox entry
//! (the holdout and users whose preferences turn the type off are not sent anything);
//! `accepted` those a provider accepted it for on at least one device; `delivered` those whose
//! client confirmed it (an acknowledgement, reading the entry, a click); `opened` an `opened`
//! acknowledgement, reading the entry or a click; `clicked` a wrapped link's redirect;
//! `converted` a tracked event naming the message, or without a mid the newest message the
//! user had within the event's attribution window (once per recipient). Every rate is over
//! `sent`.
//!
//! Grouped by `channel`, a recipient counts in the row of each channel a provider was asked
//! to reach them on (for `sent`: they were tried there; for `accepted`: that channel's provider
//! accepted; later steps wherever they happened), and recipients no provider was asked about
//! (inbox and live sockets only) in the row [`INBOX`].
//!
//! Time to open is from the send (the message's event) to the first open, in whole
//! microseconds, as seconds; p50 and p90 by nearest rank.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::model::{FunnelEntry, FunnelMessage};

/// The steps, in order.
pub const STEPS: [&str; 6] = [
    "sent",
    "accepted",
    "delivered",
    "opened",
    "clicked",
    "converted",
];

/// The channel row of recipients no provider was asked to reach.
pub const INBOX: &str = "inbox";

/// A dimension a report can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Channel,
    Urgency,
    Type,
    Variant,
}

impl Dim {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "channel" => Dim::Channel,
            "urgency" => Dim::Urgency,
            "type" => Dim::Type,
            "variant" => Dim::Variant,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Dim::Channel => "channel",
            Dim::Urgency => "urgency",
            Dim::Type => "type",
            Dim::Variant => "variant",
        }
    }
}

/// One dimension's value in a row's key: ordered null first, then numbers, then text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    Null,
    Num(u8),
    Text(String),
}

impl Part {
    fn of(s: Option<&str>) -> Self {
        s.map_or(Part::Null, |s| Part::Text(s.to_owned()))
    }

    fn json(&self) -> Value {
        match self {
            Part::Null => Value::Null,
            Part::Num(n) => Value::from(*n),
            Part::Text(s) => Value::from(s.as_str()),
        }
    }
}

/// Time from send to first open (seconds), over a row's opened recipients.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct TimeToOpen {
    pub n: u64,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
}

/// One row of the report: its dimension values, counts per step, rates over `sent`.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct FunnelRow {
    #[serde(flatten)]
    pub key: Map<String, Value>,
    #[serde(flatten)]
    pub counts: BTreeMap<&'static str, u64>,
    /// Each step after `sent` over `sent` (null when nothing was sent).
    pub rates: BTreeMap<&'static str, Option<f64>>,
    pub time_to_open: TimeToOpen,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct FunnelReport {
    pub by: Vec<&'static str>,
    /// Messages the report covers.
    pub messages: u64,
    pub steps: [&'static str; 6],
    /// Every recipient once (whatever the grouping).
    pub total: FunnelRow,
    /// One per group, ordered by the dimensions in `by` order (null first, then numbers,
    /// then text).
    pub rows: Vec<FunnelRow>,
}

#[derive(Debug, Default)]
struct Acc {
    counts: [u64; 6],
    opens_us: Vec<i64>,
}

impl Acc {
    /// One recipient past `sent` (their steps after `accepted`).
    fn reached(&mut self, sent_us: i64, e: &FunnelEntry) {
        let steps = [e.delivered_at, e.opened_at, e.clicked_at, e.converted_at];
        for (i, at) in steps.iter().enumerate() {
            if at.is_some() {
                self.counts[2 + i] += 1;
            }
        }
        if let Some(at) = e.opened_at {
            self.opens_us.push((micros(at) - sent_us).max(0));
        }
    }

    fn row(mut self, key: Map<String, Value>) -> FunnelRow {
        self.opens_us.sort_unstable();
        let rank = |q: usize| -> Option<f64> {
            let n = self.opens_us.len();
            if n == 0 {
                return None;
            }
            let i = (n * q).div_ceil(100).max(1) - 1;
            Some(self.opens_us[i] as f64 / 1e6)
        };
        let sent = self.counts[0];
        FunnelRow {
            key,
            counts: STEPS.iter().copied().zip(self.counts).collect(),
            rates: STEPS[1..]
                .iter()
                .zip(&self.counts[1..])
                .map(|(s, n)| (*s, (sent > 0).then(|| *n as f64 / sent as f64)))
                .collect(),
            time_to_open: TimeToOpen {
                n: self.opens_us.len() as u64,
                p50: rank(50),
                p90: rank(90),
            },
        }
    }
}

fn micros(at: time::OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos().div_euclid(1_000)).unwrap_or(i64::MAX)
}

/// Folds messages and their recipients into a report.
#[derive(Debug)]
pub struct FunnelBuilder {
    by: Vec<Dim>,
    messages: u64,
    total: Acc,
    groups: BTreeMap<Vec<Part>, Acc>,
}

impl FunnelBuilder {
    /// A report grouped by `by` (in that order; repeated dimensions count once).
    pub fn new(by: &[Dim]) -> Self {
        let mut dims = Vec::new();
        for d in by {
            if !dims.contains(d) {
                dims.push(*d);
            }
        }
        Self {
            by: dims,
            messages: 0,
            total: Acc::default(),
            groups: BTreeMap::new(),
        }
    }

    fn key(&self, m: &FunnelMessage, variant: Option<&str>, channel: Option<&str>) -> Vec<Part> {
        // A copy that reached nobody has no record: the default urgency and no type.
        let copy = m.copy(variant);
        self.by
            .iter()
            .map(|d| match d {
                Dim::Channel => Part::of(channel),
                Dim::Urgency => Part::Num(copy.map_or(3, |c| c.urgency)),
                Dim::Type => Part::of(copy.and_then(|c| c.ntype.as_deref())),
                Dim::Variant => Part::of(variant),
            })
            .collect()
    }

    /// Adds one message and its recipients past `sent` ([`crate::Store::funnel_entries`]).
    pub fn add(&mut self, m: &FunnelMessage, entries: &[FunnelEntry]) {
        self.messages += 1;
        let sent_us = micros(m.sent_at);
        let by_channel = self.by.contains(&Dim::Channel);
        for c in &m.copies {
            self.total.counts[0] += c.sent;
            // Without channels every recipient of the copy is sent in its group; with them,
            // only those no provider was tried for are in the inbox row (the others count in
            // their channels' rows below).
            let tried = if by_channel {
                entries
                    .iter()
                    .filter(|e| e.variant == c.variant && !e.channels.is_empty())
                    .count() as u64
            } else {
                0
            };
            let channel = by_channel.then_some(INBOX);
            let key = self.key(m, c.variant.as_deref(), channel);
            self.groups.entry(key).or_default().counts[0] += c.sent.saturating_sub(tried);
        }
        for e in entries {
            let accepted = !e.accepted.is_empty();
            self.total.counts[1] += u64::from(accepted);
            self.total.reached(sent_us, e);
            let variant = e.variant.as_deref();
            if !by_channel {
                let g = self.groups.entry(self.key(m, variant, None)).or_default();
                g.counts[1] += u64::from(accepted);
                g.reached(sent_us, e);
                continue;
            }
            if e.channels.is_empty() {
                let key = self.key(m, variant, Some(INBOX));
                self.groups.entry(key).or_default().reached(sent_us, e);
                continue;
            }
            for ch in &e.channels {
                let key = self.key(m, variant, Some(ch));
                let g = self.groups.entry(key).or_default();
                g.counts[0] += 1;
                g.counts[1] += u64::from(e.accepted.contains(ch));
                g.reached(sent_us, e);
            }
        }
    }

    pub fn finish(self) -> FunnelReport {
        let names: Vec<&'static str> = self.by.iter().map(|d| d.name()).collect();
        // Rows with nothing in them (an inbox row whose recipients were all tried elsewhere).
        let rows = self
            .groups
            .into_iter()
            .filter(|(_, acc)| acc.counts.iter().any(|n| *n > 0))
            .map(|(key, acc)| {
                let key = names
                    .iter()
                    .zip(&key)
                    .map(|(n, p)| ((*n).to_owned(), p.json()))
                    .collect();
                acc.row(key)
            })
            .collect();
        FunnelReport {
            by: names,
            messages: self.messages,
            steps: STEPS,
            total: self.total.row(Map::new()),
            rows,
        }
    }
}

/// The report over `messages`, reading each one's recipients from `store`.
pub async fn report(
    store: &dyn crate::Store,
    messages: &[FunnelMessage],
    by: &[Dim],
) -> crate::StoreResult<FunnelReport> {
    let mut b = FunnelBuilder::new(by);
    for m in messages {
        let entries = store.funnel_entries(m.mid).await?;
        b.add(m, &entries);
    }
    Ok(b.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FunnelCopy, FunnelStep};
    use time::macros::datetime;
    use uuid::Uuid;

    fn message(copies: &[(&str, u64)]) -> FunnelMessage {
        FunnelMessage {
            mid: Uuid::nil(),
            sender: "admin".into(),
            sent_at: datetime!(2026-12-01 10:00 UTC),
            experiment: Some("e".into()),
            copies: copies
                .iter()
                .map(|(v, n)| FunnelCopy {
                    variant: Some((*v).into()),
                    urgency: 3,
                    ntype: None,
                    sent: *n,
                })
                .collect(),
            held_out: 0,
        }
    }

    fn entry(uid: &str, variant: &str, channels: &[&str], accepted: &[&str]) -> FunnelEntry {
        let mut e = FunnelEntry::new(Uuid::nil(), uid, Some(variant.into()));
        for c in channels {
            e.dispatched(c, accepted.contains(c));
        }
        e
    }

    #[test]
    fn counts_rates_and_percentiles() {
        let m = message(&[("A", 4), ("B", 6)]);
        let mut a = entry("a1", "A", &["apns"], &["apns"]);
        a.reach(FunnelStep::Opened, datetime!(2026-12-01 10:00:10 UTC));
        a.reach(FunnelStep::Delivered, datetime!(2026-12-01 10:00:10 UTC));
        let mut b = entry("b1", "B", &["apns", "email"], &["email"]);
        b.reach(FunnelStep::Opened, datetime!(2026-12-01 10:01:00 UTC));
        b.reach(FunnelStep::Converted, datetime!(2026-12-01 11:00 UTC));
        let mut c = entry("b2", "B", &[], &[]);
        c.reach(FunnelStep::Delivered, datetime!(2026-12-01 10:00:01 UTC));

        let mut f = FunnelBuilder::new(&[]);
        f.add(&m, &[a.clone(), b.clone(), c.clone()]);
        let r = f.finish();
        assert_eq!(r.total.counts["sent"], 10);
        assert_eq!(r.total.counts["accepted"], 2);
        assert_eq!(r.total.counts["delivered"], 2);
        assert_eq!(r.total.counts["opened"], 2);
        assert_eq!(r.total.counts["converted"], 1);
        assert_eq!(r.total.rates["opened"], Some(0.2));
        assert_eq!(r.total.time_to_open.n, 2);
        assert_eq!(r.total.time_to_open.p50, Some(10.0));
        assert_eq!(r.total.time_to_open.p90, Some(60.0));
        assert_eq!(r.rows.len(), 1);
        assert_eq!(r.rows[0], r.total);

        let mut f = FunnelBuilder::new(&[Dim::Channel, Dim::Variant, Dim::Channel]);
        f.add(&m, &[a, b, c]);
        let r = f.finish();
        assert_eq!(r.by, vec!["channel", "variant"]);
        let row = |ch: &str, v: &str| {
            r.rows
                .iter()
                .find(|x| x.key["channel"] == ch && x.key["variant"] == v)
                .unwrap_or_else(|| panic!("no row {ch} {v}"))
        };
        // A: one of four tried on APNs; B: one tried on two channels, five never tried.
        assert_eq!(row("inbox", "A").counts["sent"], 3);
        assert_eq!(row("apns", "A").counts["sent"], 1);
        assert_eq!(row("apns", "A").counts["accepted"], 1);
        assert_eq!(row("apns", "B").counts["accepted"], 0);
        assert_eq!(row("email", "B").counts["accepted"], 1);
        assert_eq!(row("email", "B").counts["converted"], 1);
        assert_eq!(row("inbox", "B").counts["sent"], 5);
        assert_eq!(row("inbox", "B").counts["delivered"], 1);
        assert_eq!(r.total.counts["sent"], 10);
        // Rows in key order: channel first, then variant.
        let keys: Vec<_> = r
            .rows
            .iter()
            .map(|x| format!("{}/{}", x.key["channel"], x.key["variant"]))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn an_empty_report_has_no_rates() {
        let r = FunnelBuilder::new(&[Dim::Urgency]).finish();
        assert_eq!(r.messages, 0);
        assert_eq!(r.total.counts["sent"], 0);
        assert_eq!(r.total.rates["opened"], None);
        assert_eq!(r.total.time_to_open.p50, None);
        assert!(r.rows.is_empty());
    }
}
