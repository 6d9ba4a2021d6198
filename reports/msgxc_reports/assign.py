"""Experiment arms: SHA-256 of the experiment id and the uid (NUL-separated), its first 8 bytes
big-endian, mod 10,000, against the cumulative weights; the holdout from its own hash. The
same function as `exchange::experiment::Experiment::assign` in the exchange."""

import hashlib
import math

BUCKETS = 10_000
HOLDOUT = "holdout"
# Users outside a broadcast's test share (or, on its promotion, inside it): not in that send.
LATER = "later"


def bucket(*parts: str) -> int:
    digest = hashlib.sha256(b"\0".join(p.encode() for p in parts)).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def assign(spec: dict, uid: str) -> str:
    """The arm name of `uid` in an experiment
    `{"id", "variants": [{"name","weight"}], "holdout", "test_share", "promoted"}`."""
    share = math.floor(float(spec.get("test_share") or 0.0) * BUCKETS / 100.0 + 0.5)
    if share > 0:
        tested = bucket(spec["id"], "test", uid) < share
        promoted = spec.get("promoted")
        if promoted is not None:
            if tested or not any(v["name"] == promoted for v in spec["variants"]):
                return LATER
            return promoted
        if not tested:
            return LATER
    # Rounded half away from zero, as Rust's f64::round.
    holdout = math.floor(float(spec.get("holdout") or 0.0) * BUCKETS / 100.0 + 0.5)
    if holdout > 0 and bucket(spec["id"], HOLDOUT, uid) < holdout:
        return HOLDOUT
    b = bucket(spec["id"], uid)
    variants = spec["variants"]
    total = sum(float(v["weight"]) for v in variants)
    upper = 0.0
    for v in variants:
        upper += float(v["weight"])
        if b < math.floor(upper / total * BUCKETS):
            return v["name"]
    return variants[-1]["name"]


def arm_names(spec: dict) -> list:
    names = [HOLDOUT] if float(spec.get("holdout") or 0.0) > 0 else []
    return names + [v["name"] for v in spec["variants"]]


def arm_shares(spec: dict) -> list:
    h = float(spec.get("holdout") or 0.0) / 100.0
    total = sum(float(v["weight"]) for v in spec["variants"])
    shares = [h] if h > 0 else []
    return shares + [(1.0 - h) * float(v["weight"]) / total for v in spec["variants"]]
