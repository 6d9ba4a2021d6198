"""The experiment report's statistics, computed as `projections::stats` computes them (the same
approximations, so the offline and online figures agree to rounding): the pooled
two-proportion z-test, mSPRT's always-valid p-value and interval, and the chi-squared
sample-ratio check."""

import math

TAU_SQUARED = 0.0025
SRM_ALPHA = 0.001


def erfc(x: float) -> float:
    z = abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277))))))))
    r = t * math.exp(poly)
    return r if x >= 0.0 else 2.0 - r


def normal_cdf(z: float) -> float:
    return 0.5 * erfc(-z / math.sqrt(2.0))


_LANCZOS = [
    0.9999999999998099, 676.5203681218851, -1259.1392167224028, 771.3234287776531,
    -176.6150291621406, 12.507343278686905, -0.13857109526572012, 9.984369578019572e-6,
    1.5056327351493116e-7,
]


def ln_gamma(x: float) -> float:
    if x < 0.5:
        return math.log(math.pi / math.sin(math.pi * x)) - ln_gamma(1.0 - x)
    x -= 1.0
    a = _LANCZOS[0]
    t = x + 7.5
    for i in range(1, 9):
        a += _LANCZOS[i] / (x + i)
    return 0.5 * math.log(2.0 * math.pi) + (x + 0.5) * math.log(t) - t + math.log(a)


def gamma_q(a: float, x: float) -> float:
    if x <= 0.0:
        return 1.0
    front = math.exp(-x + a * math.log(x) - ln_gamma(a))
    if x < a + 1.0:
        total = term = 1.0 / a
        n = a
        for _ in range(1000):
            n += 1.0
            term *= x / n
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return min(max(1.0 - total * front, 0.0), 1.0)
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        if abs(d) < tiny:
            d = tiny
        c = b + an / c
        if abs(c) < tiny:
            c = tiny
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return min(max(front * h, 0.0), 1.0)


def chi_squared_sf(x: float, df: float) -> float:
    return gamma_q(df / 2.0, x / 2.0)


def z_of(alpha: float) -> float:
    target = 1.0 - alpha / 2.0
    lo, hi = 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2.0
        if normal_cdf(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def compare(x1: int, n1: int, x0: int, n0: int, alpha: float):
    """The arm (`x1` of `n1`) against the control (`x0` of `n0`), or None without users."""
    if n1 == 0 or n0 == 0:
        return None
    p1, p0 = x1 / n1, x0 / n0
    d = p1 - p0
    pooled = (x1 + x0) / (n1 + n0)
    se_pooled = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n0))
    p_value = 2.0 * (1.0 - normal_cdf(abs(d / se_pooled))) if se_pooled > 0.0 else 1.0
    v = p1 * (1.0 - p1) / n1 + p0 * (1.0 - p0) / n0
    z = z_of(alpha)
    se = math.sqrt(v)
    if v > 0.0:
        t2 = TAU_SQUARED
        ln_lambda = 0.5 * math.log(v / (v + t2)) + t2 * d * d / (2.0 * v * (v + t2))
        always_p = min(math.exp(-ln_lambda), 1.0)
        half = math.sqrt(v * (v + t2) / t2 * (math.log((v + t2) / v) - 2.0 * math.log(alpha)))
        always_ci = [d - half, d + half]
    else:
        always_p, always_ci = 1.0, [d, d]
    return {
        "difference": d,
        "relative_lift": d / p0 if p0 > 0.0 else None,
        "p_value": min(max(p_value, 0.0), 1.0),
        "ci": [d - z * se, d + z * se],
        "always_valid_p": always_p,
        "always_valid_ci": always_ci,
    }


def sample_ratio(observed: list, shares: list):
    total = sum(observed)
    share_sum = sum(shares)
    if len(observed) < 2 or len(observed) != len(shares) or total == 0 or share_sum <= 0.0:
        return None
    chi = 0.0
    for o, s in zip(observed, shares):
        expected = total * s / share_sum
        if expected > 0.0:
            chi += (o - expected) ** 2 / expected
    return chi, chi_squared_sf(chi, len(observed) - 1)
