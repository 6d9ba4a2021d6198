//! Statistics of experiment reports: the two-proportion z-test, the mixture sequential
//! probability ratio test (mSPRT) that stays valid however often a report is looked at, and
//! the chi-squared sample-ratio-mismatch check. Pure functions of counts.
//!
//! mSPRT (Johari, Pekelis, Walsh, "Always valid inference", 2017; the method behind
//! Optimizely's Stats Engine): with the difference of two rates `d`, its variance
//! `V = p1(1-p1)/n1 + p2(1-p2)/n2` and a normal mixture of effects with variance `tau²`, the
//! likelihood ratio is `Λ = sqrt(V/(V+tau²)) · exp(tau² d² / (2 V (V+tau²)))`. Under no
//! effect, Λ ever reaching `1/α` has probability at most α (Ville's inequality), so
//! `p = min(1, 1/Λ)` may be read at every look, and the interval
//! `d ± sqrt(V (V+tau²)/tau² · (ln((V+tau²)/V) − 2 ln α))` covers the true difference at
//! every look at once.

/// The mixture's variance of effects on a rate (an effect of about 5 points is typical).
pub const TAU_SQUARED: f64 = 0.0025;

/// Below this p-value the arms' sizes do not match their shares (sample ratio mismatch).
pub const SRM_ALPHA: f64 = 0.001;

/// The standard normal distribution function.
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// The complementary error function (fractional error below 1.2e-7: Numerical Recipes'
/// Chebyshev fit).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularized upper incomplete gamma function Q(a, x).
fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let front = (-x + a * x.ln() - ln_gamma(a)).exp();
    if x < a + 1.0 {
        // Series for P.
        let (mut sum, mut term, mut n) = (1.0 / a, 1.0 / a, a);
        for _ in 0..1_000 {
            n += 1.0;
            term *= x / n;
            sum += term;
            if term.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        (1.0 - sum * front).clamp(0.0, 1.0)
    } else {
        // Continued fraction for Q (modified Lentz).
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..1_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-15 {
                break;
            }
        }
        (front * h).clamp(0.0, 1.0)
    }
}

/// P(X >= x) for X chi-squared with `df` degrees of freedom.
pub fn chi_squared_sf(x: f64, df: f64) -> f64 {
    gamma_q(df / 2.0, x / 2.0)
}

/// One arm's successes against its users, compared with the control's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// Rate of the arm minus rate of the control.
    pub difference: f64,
    /// `difference` over the control's rate (`None` when the control's rate is 0).
    pub relative: Option<f64>,
    /// Two-sided p-value of the pooled two-proportion z-test (valid at one planned look).
    pub p_value: f64,
    /// Its 95% interval of the difference (unpooled).
    pub ci95: (f64, f64),
    /// mSPRT's always-valid p-value (valid at every look).
    pub always_valid_p: f64,
    /// mSPRT's always-valid 95% interval of the difference.
    pub always_valid_ci95: (f64, f64),
}

fn rate(x: u64, n: u64) -> f64 {
    if n == 0 { 0.0 } else { x as f64 / n as f64 }
}

/// Compares `x1` of `n1` (the arm) with `x0` of `n0` (the control) at level `alpha`.
pub fn compare(x1: u64, n1: u64, x0: u64, n0: u64, alpha: f64) -> Option<Comparison> {
    if n1 == 0 || n0 == 0 {
        return None;
    }
    let (p1, p0) = (rate(x1, n1), rate(x0, n0));
    let d = p1 - p0;
    let (n1f, n0f) = (n1 as f64, n0 as f64);
    let pooled = (x1 + x0) as f64 / (n1f + n0f);
    let se_pooled = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n0f)).sqrt();
    let p_value = if se_pooled > 0.0 {
        2.0 * (1.0 - normal_cdf((d / se_pooled).abs()))
    } else {
        1.0
    };
    let v = p1 * (1.0 - p1) / n1f + p0 * (1.0 - p0) / n0f;
    let z = z_of(alpha);
    let se = v.sqrt();
    let ci95 = (d - z * se, d + z * se);
    let (always_valid_p, always_valid_ci95) = if v > 0.0 {
        let t2 = TAU_SQUARED;
        let ln_lambda = 0.5 * (v / (v + t2)).ln() + t2 * d * d / (2.0 * v * (v + t2));
        let p = (-ln_lambda).exp().min(1.0);
        let half = (v * (v + t2) / t2 * (((v + t2) / v).ln() - 2.0 * alpha.ln())).sqrt();
        (p, (d - half, d + half))
    } else {
        (1.0, (d, d))
    };
    Some(Comparison {
        difference: d,
        relative: (p0 > 0.0).then(|| d / p0),
        p_value: p_value.clamp(0.0, 1.0),
        ci95,
        always_valid_p,
        always_valid_ci95,
    })
}

/// The normal quantile of a two-sided level (1.96 for 0.05), by bisection of the CDF.
fn z_of(alpha: f64) -> f64 {
    let target = 1.0 - alpha / 2.0;
    let (mut lo, mut hi) = (0.0, 10.0);
    for _ in 0..80 {
        let mid = (lo + hi) / 2.0;
        if normal_cdf(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

/// The chi-squared goodness-of-fit test of observed arm sizes against their expected shares:
/// (statistic, p-value). `None` with fewer than two arms or no users.
pub fn sample_ratio(observed: &[u64], shares: &[f64]) -> Option<(f64, f64)> {
    let total: u64 = observed.iter().sum();
    let share_sum: f64 = shares.iter().sum();
    if observed.len() < 2 || observed.len() != shares.len() || total == 0 || share_sum <= 0.0 {
        return None;
    }
    let mut chi = 0.0;
    for (o, s) in observed.iter().zip(shares) {
        let expected = total as f64 * s / share_sum;
        if expected > 0.0 {
            chi += (*o as f64 - expected).powi(2) / expected;
        }
    }
    Some((chi, chi_squared_sf(chi, (observed.len() - 1) as f64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_functions_match_tables() {
        assert!((normal_cdf(1.959_964) - 0.975).abs() < 1e-6);
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(-2.575_829) - 0.005).abs() < 1e-6);
        // chi-squared critical values: 3.841 (1 df), 5.991 (2 df), 16.266 (3 df, 0.001).
        assert!((chi_squared_sf(3.841_459, 1.0) - 0.05).abs() < 1e-5);
        assert!((chi_squared_sf(5.991_465, 2.0) - 0.05).abs() < 1e-5);
        assert!((chi_squared_sf(16.266_24, 3.0) - 0.001).abs() < 1e-6);
        assert!((chi_squared_sf(0.5, 4.0) - 0.973_500_9).abs() < 1e-6);
        assert!((z_of(0.05) - 1.959_964).abs() < 1e-5);
    }

    #[test]
    fn a_clear_difference_is_significant_and_none_is_not() {
        let c = compare(650, 5_000, 500, 5_000, 0.05).unwrap();
        assert!((c.difference - 0.03).abs() < 1e-12);
        assert!(c.p_value < 1e-5, "{c:?}");
        assert!(c.ci95.0 > 0.0 && c.always_valid_ci95.0 < c.ci95.0);
        assert!(c.always_valid_p < 0.05, "{c:?}");
        let same = compare(500, 5_000, 500, 5_000, 0.05).unwrap();
        assert_eq!(same.difference, 0.0);
        assert!(same.p_value > 0.99 && same.always_valid_p == 1.0);
        assert!(compare(0, 0, 1, 10, 0.05).is_none());
    }

    #[test]
    fn sample_ratio_mismatch() {
        let (_, p) = sample_ratio(&[5_020, 4_980], &[0.5, 0.5]).unwrap();
        assert!(p > 0.5);
        let (_, p) = sample_ratio(&[5_300, 4_700], &[0.5, 0.5]).unwrap();
        assert!(p < SRM_ALPHA);
        let (_, p) = sample_ratio(&[1_000, 7_000, 2_000], &[0.1, 0.7, 0.2]).unwrap();
        assert!(p > 0.99);
    }

    /// A 50/50 experiment over 10,000 users splits within the sample-ratio check.
    #[test]
    fn ten_thousand_users_split_fifty_fifty_pass_the_sample_ratio_check() {
        use exchange::experiment::{Arm, Experiment, Variant};
        let variant = |name: &str| Variant {
            name: name.into(),
            weight: 1.0,
            msg: None,
            title: None,
            opts: None,
        };
        let e = Experiment {
            id: "split".into(),
            variants: vec![variant("A"), variant("B")],
            holdout: 0.0,
            test_share: 0.0,
            promoted: None,
        };
        let mut n = [0u64; 2];
        for i in 0..10_000 {
            if let Arm::Variant(v) = e.assign(&format!("user-{i}")) {
                n[v] += 1;
            }
        }
        let (_, p) = sample_ratio(&n, &e.arm_shares()).unwrap();
        assert!(p > SRM_ALPHA, "{n:?}: p = {p}");
    }

    /// An A/A experiment (no difference) looked at 50 times as users arrive: the always-valid
    /// p-value falls below 0.05 at some look in at most 5% of experiments, while the fixed
    /// z-test read at every look does far more often (why the report's "winner" uses mSPRT).
    #[test]
    fn repeated_looks_at_an_a_a_experiment_keep_false_positives_at_the_nominal_rate() {
        let mut rng = fastrand::Rng::with_seed(20_261_204);
        let (experiments, looks, per_look, rate) = (400, 50, 200, 0.1);
        let (mut sequential, mut peeking) = (0, 0);
        for _ in 0..experiments {
            let (mut x0, mut x1, mut n) = (0u64, 0u64, 0u64);
            let (mut s_hit, mut z_hit) = (false, false);
            for _ in 0..looks {
                for _ in 0..per_look {
                    x0 += u64::from(rng.f64() < rate);
                    x1 += u64::from(rng.f64() < rate);
                }
                n += per_look;
                let c = compare(x1, n, x0, n, 0.05).unwrap();
                s_hit |= c.always_valid_p < 0.05;
                z_hit |= c.p_value < 0.05;
            }
            sequential += usize::from(s_hit);
            peeking += usize::from(z_hit);
        }
        let (s, z) = (
            sequential as f64 / experiments as f64,
            peeking as f64 / experiments as f64,
        );
        assert!(s <= 0.05, "always-valid false positive rate {s}");
        assert!(z > 0.15, "peeking at the z-test should inflate it: {z}");
    }
}
