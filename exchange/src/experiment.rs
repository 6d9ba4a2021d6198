//! Experiments on a send: variants of one message, an optional holdout, and the deterministic,
//! sticky assignment of each recipient to one of them.
//!
//! A recipient's arm is a pure function of the experiment id, the variant list and the uid
//! (SHA-256 of the id and uid, mod 10,000, against the cumulative weights), so the fold, the
//! live hub and a rebuild all pick the same arm without storing or reading one, and a user
//! keeps their variant across sends of one experiment while its variants and weights stay the
//! same. The holdout draws from its own hash, so changing the holdout share moves no one
//! between variants.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::events::MessageOpts;

/// Buckets a user hashes into; weights and the holdout share are cut in these.
pub const BUCKETS: u64 = 10_000;

/// The arm name of the holdout group (not allowed as a variant name).
pub const HOLDOUT: &str = "holdout";

/// The arm name of users outside the test share (not allowed as a variant name).
pub const LATER: &str = "later";

/// The hash salt of the test share.
const TEST: &str = "test";

/// At most this many variants per experiment.
pub const MAX_VARIANTS: usize = 26;

/// A message's experiment: which variant each recipient gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Experiment {
    /// `opts.experiment` when given (reusable across sends), otherwise the message id.
    pub id: String,
    /// At least one; the first is the control when there is no holdout.
    pub variants: Vec<Variant>,
    /// Percent of recipients (0 <= holdout < 100) who get nothing but are measured.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub holdout: f64,
    /// Percent of a broadcast's audience (0 < share < 100) in the test; the rest get nothing
    /// until the experiment is promoted. 0: everyone is in it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub test_share: f64,
    /// Set on a promotion (`POST /experiments/{id}/promote`): everyone outside the test share
    /// gets this variant, and no one is measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted: Option<String>,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// One version of the message. Fields left out are the message's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Variant {
    pub name: String,
    /// Relative share of the non-holdout recipients (> 0).
    pub weight: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Options laid over the message's (top-level keys replace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opts: Option<Map<String, Value>>,
}

/// Which group a recipient is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arm {
    /// Gets nothing; measured.
    Holdout,
    /// Gets variant `i` (index into [`Experiment::variants`]).
    Variant(usize),
    /// Not in this send: outside the test share (they wait for the promotion), or, on the
    /// promotion, inside it (they were tested). Gets nothing; not measured.
    Later,
}

/// Why an experiment is refused (field, message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A valid experiment id: 1-128 characters of letters, digits and `_ - . :`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

fn bucket(parts: &[&str]) -> u64 {
    let mut h = Sha256::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update([0u8]);
        }
        h.update(p.as_bytes());
    }
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first) % BUCKETS
}

impl Experiment {
    /// Checks the shape (the gateway refuses anything else before it is an event).
    pub fn validate(&self) -> Result<(), Invalid> {
        if !valid_id(&self.id) {
            return Err(invalid(
                "opts.experiment",
                "1-128 letters, digits or _ - . :",
            ));
        }
        if self.variants.is_empty() || self.variants.len() > MAX_VARIANTS {
            return Err(invalid(
                "variants",
                format!("between 1 and {MAX_VARIANTS} variants"),
            ));
        }
        if !(self.holdout.is_finite() && (0.0..100.0).contains(&self.holdout)) {
            return Err(invalid("holdout", "a percent, at least 0 and below 100"));
        }
        if !(self.test_share.is_finite() && (0.0..100.0).contains(&self.test_share)) {
            return Err(invalid(
                "opts.test_share",
                "a percent of the audience, above 0 and below 100",
            ));
        }
        if let Some(p) = &self.promoted
            && (self.test_share == 0.0 || !self.variants.iter().any(|v| &v.name == p))
        {
            return Err(invalid(
                "variant",
                "a promotion names one of the variants of a test share",
            ));
        }
        if self.variants.len() == 1 && self.holdout == 0.0 {
            return Err(invalid(
                "variants",
                "one variant needs a holdout to compare against",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, v) in self.variants.iter().enumerate() {
            let field = format!("variants[{i}]");
            if v.name.trim().is_empty() || v.name.chars().count() > 64 {
                return Err(invalid(format!("{field}.name"), "1-64 characters"));
            }
            if v.name == HOLDOUT || v.name == LATER {
                return Err(invalid(
                    format!("{field}.name"),
                    "\"holdout\" and \"later\" name groups, not variants",
                ));
            }
            if !names.insert(v.name.as_str()) {
                return Err(invalid(format!("{field}.name"), "names must be distinct"));
            }
            if !(v.weight.is_finite() && v.weight > 0.0 && v.weight <= 1e6) {
                return Err(invalid(
                    format!("{field}.weight"),
                    "a number above 0 (at most 1000000)",
                ));
            }
            if let Some(opts) = &v.opts {
                for key in [
                    "experiment",
                    crate::events::DELIVER_AT,
                    "delay",
                    "type",
                    "test_share",
                ] {
                    if opts.contains_key(key) {
                        return Err(invalid(
                            format!("{field}.opts.{key}"),
                            "is the message's, not a variant's",
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The arm of `uid`: deterministic, and the same for every send of this experiment while
    /// its variants and weights are the same.
    pub fn assign(&self, uid: &str) -> Arm {
        let share = (self.test_share * (BUCKETS as f64) / 100.0).round() as u64;
        if share > 0 {
            let tested = bucket(&[&self.id, TEST, uid]) < share;
            match &self.promoted {
                Some(name) if !tested => {
                    return self
                        .variants
                        .iter()
                        .position(|v| &v.name == name)
                        .map_or(Arm::Later, Arm::Variant);
                }
                Some(_) => return Arm::Later,
                None if !tested => return Arm::Later,
                None => {}
            }
        }
        let holdout = (self.holdout * (BUCKETS as f64) / 100.0).round() as u64;
        if holdout > 0 && bucket(&[&self.id, HOLDOUT, uid]) < holdout {
            return Arm::Holdout;
        }
        let b = bucket(&[&self.id, uid]);
        let total: f64 = self.variants.iter().map(|v| v.weight).sum();
        let mut upper = 0.0;
        for (i, v) in self.variants.iter().enumerate() {
            upper += v.weight;
            let edge = (upper / total * BUCKETS as f64).floor() as u64;
            if b < edge {
                return Arm::Variant(i);
            }
        }
        Arm::Variant(self.variants.len().saturating_sub(1))
    }

    /// The arm's name (`holdout` or the variant's).
    pub fn arm_name(&self, arm: Arm) -> &str {
        match arm {
            Arm::Holdout => HOLDOUT,
            Arm::Variant(i) => self.variants.get(i).map_or("", |v| v.name.as_str()),
            Arm::Later => LATER,
        }
    }

    /// The arm named `name`.
    pub fn arm_named(&self, name: &str) -> Option<Arm> {
        if name == HOLDOUT && self.holdout > 0.0 {
            return Some(Arm::Holdout);
        }
        self.variants
            .iter()
            .position(|v| v.name == name)
            .map(Arm::Variant)
    }

    /// Every arm's name, the holdout (when there is one) first: the order reports use.
    pub fn arm_names(&self) -> Vec<&str> {
        let mut out = Vec::with_capacity(self.variants.len() + 1);
        if self.holdout > 0.0 {
            out.push(HOLDOUT);
        }
        out.extend(self.variants.iter().map(|v| v.name.as_str()));
        out
    }

    /// The expected share of each arm, in [`Experiment::arm_names`] order.
    pub fn arm_shares(&self) -> Vec<f64> {
        let h = self.holdout / 100.0;
        let total: f64 = self.variants.iter().map(|v| v.weight).sum();
        let mut out = Vec::with_capacity(self.variants.len() + 1);
        if self.holdout > 0.0 {
            out.push(h);
        }
        out.extend(self.variants.iter().map(|v| (1.0 - h) * v.weight / total));
        out
    }

    /// The message's options with a variant's `opts` laid over them (top-level keys replace);
    /// an error when the result is not valid options.
    pub fn lay_over(v: &Variant, opts: &MessageOpts) -> Result<MessageOpts, serde_json::Error> {
        let Some(over) = &v.opts else {
            return Ok(opts.clone());
        };
        let mut base = match serde_json::to_value(opts)? {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        base.extend(over.clone());
        serde_json::from_value(Value::Object(base))
    }

    /// Variant `i`'s text and options: the message's with the variant's fields laid over.
    pub fn content(&self, i: usize, msg: &str, opts: &MessageOpts) -> (String, MessageOpts) {
        let Some(v) = self.variants.get(i) else {
            return (msg.to_owned(), opts.clone());
        };
        let text = v.msg.clone().unwrap_or_else(|| msg.to_owned());
        // The gateway checked that the variant's options parse; anything else keeps the
        // message's own.
        let mut merged = Self::lay_over(v, opts).unwrap_or_else(|_| opts.clone());
        if let Some(t) = &v.title {
            merged.title = Some(t.clone());
        }
        (text, merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp(weights: &[f64], holdout: f64) -> Experiment {
        Experiment {
            id: "welcome-1".into(),
            variants: weights
                .iter()
                .enumerate()
                .map(|(i, w)| Variant {
                    name: format!("v{i}"),
                    weight: *w,
                    msg: Some(format!("text {i}")),
                    title: None,
                    opts: None,
                })
                .collect(),
            holdout,
            test_share: 0.0,
            promoted: None,
        }
    }

    #[test]
    fn a_fifty_fifty_split_of_ten_thousand_users_is_close_to_half() {
        let e = exp(&[1.0, 1.0], 0.0);
        let a = (0..10_000)
            .filter(|i| e.assign(&format!("user-{i}")) == Arm::Variant(0))
            .count();
        // 3 standard deviations of a fair split of 10,000 are 150.
        assert!(
            (4_850..=5_150).contains(&a),
            "{a} of 10000 in the first arm"
        );
    }

    #[test]
    fn weights_and_holdout_set_the_shares() {
        let e = exp(&[3.0, 1.0], 10.0);
        let mut counts = [0usize; 3];
        for i in 0..20_000 {
            match e.assign(&format!("u{i}")) {
                Arm::Holdout => counts[0] += 1,
                Arm::Variant(v) => counts[v + 1] += 1,
                Arm::Later => panic!("no test share here"),
            }
        }
        let shares = e.arm_shares();
        for (c, s) in counts.iter().zip(&shares) {
            let got = *c as f64 / 20_000.0;
            assert!((got - s).abs() < 0.015, "{counts:?} against {shares:?}");
        }
        assert_eq!(e.arm_names(), vec!["holdout", "v0", "v1"]);
    }

    #[test]
    fn assignment_is_sticky_and_the_holdout_share_moves_no_one_between_variants() {
        let a = exp(&[1.0, 1.0], 5.0);
        let b = exp(&[1.0, 1.0], 20.0);
        for i in 0..2_000 {
            let uid = format!("u{i}");
            assert_eq!(a.assign(&uid), a.clone().assign(&uid));
            if let (Arm::Variant(x), Arm::Variant(y)) = (a.assign(&uid), b.assign(&uid)) {
                assert_eq!(x, y, "{uid}");
            }
        }
    }

    #[test]
    fn content_lays_the_variant_over_the_message() {
        let mut e = exp(&[1.0, 1.0], 0.0);
        e.variants[1].title = Some("B title".into());
        e.variants[1].opts = Some(
            serde_json::json!({"url": "https://b.example/", "urgency": 4})
                .as_object()
                .cloned()
                .unwrap(),
        );
        let base = MessageOpts {
            title: Some("A title".into()),
            ttl: Some(60),
            ..Default::default()
        };
        let (msg, opts) = e.content(1, "base", &base);
        assert_eq!(msg, "text 1");
        assert_eq!(opts.title.as_deref(), Some("B title"));
        assert_eq!(opts.url.as_deref(), Some("https://b.example/"));
        assert_eq!(opts.ttl, Some(60));
        assert_eq!(opts.urgency, Some(crate::events::Urgency::High));
        let (msg, opts) = e.content(0, "base", &base);
        assert_eq!(
            (msg.as_str(), opts.title.as_deref()),
            ("text 0", Some("A title"))
        );
    }

    #[test]
    fn a_test_share_holds_back_the_rest_and_its_promotion_reaches_exactly_them() {
        let mut e = exp(&[1.0, 1.0], 10.0);
        e.test_share = 30.0;
        let mut promoted = e.clone();
        promoted.promoted = Some("v1".into());
        assert!(promoted.validate().is_ok());
        let mut later = 0;
        for i in 0..10_000 {
            let uid = format!("u{i}");
            match (e.assign(&uid), promoted.assign(&uid)) {
                (Arm::Later, Arm::Variant(1)) => later += 1,
                (Arm::Later, other) => panic!("{uid}: held back, then {other:?}"),
                (_, Arm::Later) => {}
                (tested, other) => panic!("{uid}: {tested:?} in the test, then {other:?}"),
            }
        }
        assert!(
            (6_800..=7_200).contains(&later),
            "{later} of 10000 held back"
        );
        let mut bad = promoted.clone();
        bad.promoted = Some("nope".into());
        assert_eq!(bad.validate().unwrap_err().field, "variant");
        bad.test_share = 100.0;
        assert_eq!(bad.validate().unwrap_err().field, "opts.test_share");
    }

    /// The same arms as `reports/tests/test_assign_stats.py` pins for the analysts' library.
    #[test]
    fn arms_are_pinned_across_languages() {
        let e = exp(&[3.0, 1.0], 10.0);
        let got: Vec<&str> = (0..12)
            .map(|i| e.arm_name(e.assign(&format!("u{i}"))))
            .collect();
        assert_eq!(
            got,
            [
                "v0", "v0", "v1", "v0", "v1", "v1", "v1", "v0", "v0", "v1", "v0", "holdout"
            ]
        );
        assert_eq!(bucket(&["welcome-1", "u0"]), 639);
        let mut staged = e.clone();
        staged.test_share = 30.0;
        let names = |e: &Experiment| -> Vec<String> {
            (0..12)
                .map(|i| e.arm_name(e.assign(&format!("u{i}"))).to_owned())
                .collect()
        };
        let l = "later";
        assert_eq!(names(&staged), [l, l, l, "v0", l, "v1", l, l, l, l, l, l]);
        staged.promoted = Some("v1".into());
        assert_eq!(
            names(&staged),
            [
                "v1", "v1", "v1", l, "v1", l, "v1", "v1", "v1", "v1", "v1", "v1"
            ]
        );
    }

    #[test]
    fn validation() {
        assert!(exp(&[1.0, 1.0], 0.0).validate().is_ok());
        assert!(exp(&[1.0], 10.0).validate().is_ok());
        assert_eq!(exp(&[1.0], 0.0).validate().unwrap_err().field, "variants");
        assert_eq!(
            exp(&[1.0, 0.0], 0.0).validate().unwrap_err().field,
            "variants[1].weight"
        );
        assert_eq!(
            exp(&[1.0, 1.0], 100.0).validate().unwrap_err().field,
            "holdout"
        );
        let mut e = exp(&[1.0, 1.0], 0.0);
        e.variants[1].name = "v0".into();
        assert_eq!(e.validate().unwrap_err().field, "variants[1].name");
        e.variants[1].name = "holdout".into();
        assert!(e.validate().is_err());
        e.variants[1].name = "b".into();
        e.id = "bad id".into();
        assert_eq!(e.validate().unwrap_err().field, "opts.experiment");
    }
}
