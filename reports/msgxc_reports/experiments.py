"""The experiment table from an export of the event log, in PySpark: users per arm at each step
(exposed, delivered, opened, clicked, converted) and each arm against the control, the same
numbers as the exchange's `GET /api/v1/experiments/{id}` on the same stream.

    python -m msgxc_reports.experiments --export DIR [--experiment ID] [--master URL]

Local mode (`local[*]`) by default; `--master spark://host:7077` (or `yarn`, `k8s://...`) runs
it on a cluster reading DIR from storage the cluster sees. Prints one JSON object per
experiment.

The job folds the stream as the exchange's projection does, from the events alone:

- a message's recipients: a send's or multicast's users; a broadcast's every user known
  before it (the actor of any earlier event, a thread's owner, a subscriber, a send's
  recipient, and its own actor); a thread message's subscribers at the time except the sender;
  then without those whose preferences turn the message's type off (unless it is mandatory at
  level 50);
- each recipient's arm from the hash (`msgxc_reports.assign`); a user is exposed once per
  experiment, by the first of its messages that reached them, and keeps that arm; users
  outside a broadcast's test share are not in it, and its promotion exposes no one;
- steps, each counted once per user and only after their exposure: delivered (a provider
  accepted a push, the app acknowledged, the user read the entry or clicked), opened (an
  `opened` acknowledgement, reading the entry, a click), clicked (`tracked` `click`),
  converted (any other `tracked` event). A tracked event with a `mid` counts for that
  message's experiment; without one for each experiment the user was exposed to within the
  event's `window` (seconds) before it. Reading an entry counts only for users who have it
  (not the holdout), at its first read.

Not modelled (the exchange counts no open then, this job does): an explicit read of an entry
that `read-all` marked read, or that was archived or deleted, before it.
"""

import argparse
import json
import os
import sys

from . import assign as arms
from . import stats

STEPS = ["exposed", "delivered", "opened", "clicked", "converted"]


def session(master: str):
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return (
        SparkSession.builder.master(master)
        .appName("msgxc-experiments")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "8")
        .getOrCreate()
    )


def _load(spark, export: str, kind: str):
    path = os.path.join(export, f"type={kind}")
    if not os.path.isdir(path) and "://" not in export:
        return None
    return spark.read.option("mergeSchema", "true").parquet(path)


def _col(df, name: str):
    from pyspark.sql import functions as F

    if df is not None and name in df.columns:
        return F.col(f"`{name}`")
    return F.lit(None)


def table(spark, export: str, only: str = None) -> list:
    """Every experiment's table (or only `only`'s), as the report's JSON objects."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T
    from pyspark.sql.window import Window

    load = lambda kind: _load(spark, export, kind)  # noqa: E731
    sent, published = load("message_sent"), load("message_published")
    messages = []
    for df, kind in ((sent, "message_sent"), (published, "message_published")):
        if df is None or "experiment.id" not in df.columns:
            continue
        messages.append(
            df.where(_col(df, "experiment.id").isNotNull()).select(
                F.col("event_seq").alias("seq"),
                F.col("event_id").alias("mid"),
                F.col("occurred_at").alias("at"),
                F.lit(kind).alias("kind"),
                _col(df, "tid").cast("string").alias("tid"),
                _col(df, "sender").cast("string").alias("sender"),
                _col(df, "audience.kind").cast("string").alias("audience"),
                _col(df, "audience.uid").cast("string").alias("audience_uid"),
                _col(df, "audience.uids").cast("string").alias("audience_uids"),
                _col(df, "experiment.id").cast("string").alias("experiment"),
                _col(df, "experiment.variants").cast("string").alias("variants"),
                _col(df, "experiment.holdout").cast("double").alias("holdout"),
                _col(df, "experiment.test_share").cast("double").alias("test_share"),
                _col(df, "experiment.promoted").cast("string").alias("promoted"),
                _col(df, "opts.type").cast("string").alias("ntype"),
                _col(df, "opts.level").cast("long").alias("level"),
                _col(df, "opts.mandatory").cast("boolean").alias("mandatory"),
            )
        )
    if not messages:
        return []
    m = messages[0]
    for other in messages[1:]:
        m = m.unionByName(other)
    # A promotion measures no one (the tested users keep their arms; the rest are not in it).
    m = m.where(F.col("promoted").isNull())
    if only is not None:
        m = m.where(F.col("experiment") == only)
    if m.limit(1).count() == 0:
        return []

    # Users known to the projection, from the first event that made them known.
    kinds = [
        k[len("type="):]
        for k in (os.listdir(export) if "://" not in export else [])
        if k.startswith("type=")
    ]
    known_parts = []
    for kind in kinds:
        df = load(kind)
        known_parts.append(df.select(F.col("actor_uid").alias("uid"), F.col("event_seq").alias("seq")))
        if kind == "thread_created":
            known_parts.append(df.select(_col(df, "owner").alias("uid"), F.col("event_seq").alias("seq")))
        if kind == "subscribed":
            known_parts.append(df.select(_col(df, "uid").alias("uid"), F.col("event_seq").alias("seq")))
        if kind == "message_sent":
            known_parts.append(
                df.where(_col(df, "audience.kind") == "user").select(
                    _col(df, "audience.uid").alias("uid"), F.col("event_seq").alias("seq")
                )
            )
            if "audience.uids" in df.columns:
                known_parts.append(
                    df.where(_col(df, "audience.kind") == "users").select(
                        F.explode(F.from_json(_col(df, "audience.uids"), T.ArrayType(T.StringType()))).alias("uid"),
                        F.col("event_seq").alias("seq"),
                    )
                )
    known = known_parts[0]
    for p in known_parts[1:]:
        known = known.unionByName(p)
    known = known.where(F.col("uid").isNotNull()).groupBy("uid").agg(F.min("seq").alias("first_seq"))

    # Recipients of each experiment message, before preferences.
    listed = m.where(F.col("audience") == "users").select(
        "seq", "mid", F.explode(F.from_json("audience_uids", T.ArrayType(T.StringType()))).alias("uid")
    ).distinct()
    single = m.where(F.col("audience") == "user").select("seq", "mid", F.col("audience_uid").alias("uid"))
    everyone = (
        m.where(F.col("audience") == "all")
        .select("seq", "mid")
        .join(known, known.first_seq <= F.col("seq"))
        .select("seq", "mid", "uid")
    )
    recipients = listed.unionByName(single).unionByName(everyone)
    subs, unsubs = load("subscribed"), load("unsubscribed")
    if subs is not None:
        membership = subs.select(
            _col(subs, "tid").cast("string").alias("tid"),
            _col(subs, "uid").alias("uid"),
            F.col("event_seq").alias("mseq"),
            F.lit(True).alias("member"),
        )
        if unsubs is not None:
            membership = membership.unionByName(
                unsubs.select(
                    _col(unsubs, "tid").cast("string").alias("tid"),
                    _col(unsubs, "uid").alias("uid"),
                    F.col("event_seq").alias("mseq"),
                    F.lit(False).alias("member"),
                )
            )
        thread_msgs = m.where(F.col("kind") == "message_published").select("seq", "mid", "tid", "sender")
        state = thread_msgs.join(membership, "tid").where(F.col("mseq") < F.col("seq"))
        latest = Window.partitionBy("mid", "uid").orderBy(F.col("mseq").desc())
        members = (
            state.withColumn("rank", F.row_number().over(latest))
            .where((F.col("rank") == 1) & F.col("member") & (F.col("uid") != F.col("sender")))
            .select("seq", "mid", "uid")
        )
        recipients = recipients.unionByName(members)

    # Preferences: a typed message skips users who turned its type off (mandatory excepted).
    recipients = recipients.join(m.select("mid", "ntype", "level", "mandatory"), "mid")
    prefs = load("preferences_set")
    if prefs is not None:
        type_cols = [c for c in prefs.columns if c.startswith("preferences.types.")]
        if type_cols:
            stacked = None
            for c in type_cols:
                part = prefs.select(
                    _col(prefs, "uid").alias("puid"),
                    F.col("event_seq").alias("pseq"),
                    F.lit(c[len("preferences.types."):]).alias("ptype"),
                    F.col(f"`{c}`").cast("boolean").alias("on"),
                )
                stacked = part if stacked is None else stacked.unionByName(part)
            every = prefs.select(_col(prefs, "uid").alias("puid"), F.col("event_seq").alias("pseq"))
            # Each preferences_set replaces the whole set: a type it does not name is on.
            candidates = recipients.where(F.col("ntype").isNotNull()).join(
                every, (every.puid == recipients.uid) & (every.pseq < recipients.seq)
            )
            w = Window.partitionBy("mid", "uid").orderBy(F.col("pseq").desc())
            current = candidates.withColumn("r", F.row_number().over(w)).where(F.col("r") == 1)
            off = (
                current.join(
                    stacked,
                    (stacked.puid == current.puid)
                    & (stacked.pseq == current.pseq)
                    & (stacked.ptype == current.ntype),
                )
                .where(F.col("on") == F.lit(False))
                .where(~(F.coalesce(F.col("mandatory"), F.lit(False)) & (F.coalesce(F.col("level"), F.lit(0)) >= 50)))
                .select("mid", "uid")
            )
            recipients = recipients.join(off, ["mid", "uid"], "left_anti")
    recipients = recipients.select("seq", "mid", "uid").distinct()

    # Arms and first exposures.
    spec_of = {
        r["mid"]: {
            "id": r["experiment"],
            "variants": json.loads(r["variants"]),
            "holdout": r["holdout"] or 0.0,
            "test_share": r["test_share"] or 0.0,
        }
        for r in m.select("mid", "experiment", "variants", "holdout", "test_share").collect()
    }
    spec_bc = spark.sparkContext.broadcast(spec_of)
    arm_udf = F.udf(lambda mid, uid: arms.assign(spec_bc.value[mid], uid), T.StringType())
    reached = (
        recipients.join(m.select("mid", "experiment", "at"), "mid")
        .withColumn("arm", arm_udf("mid", "uid"))
        .where(F.col("arm") != arms.LATER)
    )
    first = Window.partitionBy("experiment", "uid").orderBy("seq")
    exposed = (
        reached.withColumn("r", F.row_number().over(first))
        .where(F.col("r") == 1)
        .select("experiment", "uid", "arm", F.col("seq").alias("xseq"), F.col("at").alias("xat"), "mid")
    )
    mid_exp = m.select(F.col("mid").alias("emid"), F.col("experiment").alias("eexp"))
    # Who has an entry of each message (reading it can open it).
    entries = reached.where(F.col("arm") != arms.HOLDOUT).select(F.col("mid").alias("rmid"), F.col("uid").alias("ruid"))

    # Steps: (uid, seq, mid or null, step) and, for tracked events without a mid, their window.
    steps = []

    def add(df, mid_col, step, uid_col="uid", where=None):
        d = df if where is None else df.where(where)
        steps.append(
            d.select(
                _col(d, uid_col).alias("uid"),
                F.col("event_seq").alias("sseq"),
                F.col("occurred_at").alias("sat"),
                mid_col.cast("string").alias("smid"),
                F.lit(step).alias("step"),
                F.lit(None).cast("long").alias("window"),
            )
        )

    settled = load("deliveries_settled")
    if settled is not None and "deliveries" in settled.columns:
        item = T.ArrayType(T.StructType([T.StructField("uid", T.StringType()), T.StructField("status", T.StringType())]))
        ex = settled.select(
            "event_seq", "occurred_at", _col(settled, "mid").alias("mid"),
            F.explode(F.from_json(_col(settled, "deliveries"), item)).alias("d"),
        ).where(F.col("d.status") != "failed").select("event_seq", "occurred_at", "mid", F.col("d.uid").alias("uid"))
        add(ex, F.col("mid"), "delivered")
    for kind in ("delivery_sent",):
        df = load(kind)
        if df is not None:
            add(df, _col(df, "mid"), "delivered")
    acked = load("delivery_acked")
    if acked is not None:
        add(acked, _col(acked, "mid"), "delivered")
        add(acked, _col(acked, "mid"), "opened", where=_col(acked, "status") == "opened")
    read = load("notifications_read")
    if read is not None and "ids" in read.columns:
        ids = read.select(
            "event_seq", "occurred_at", _col(read, "uid").alias("uid"),
            F.explode(F.from_json(_col(read, "ids"), T.ArrayType(T.StringType()))).alias("mid"),
        )
        # Only a user's own entries, and only the first read of each (later ones change nothing).
        ids = ids.join(entries, (ids.mid == entries.rmid) & (ids.uid == entries.ruid))
        w = Window.partitionBy("uid", "mid").orderBy("event_seq")
        ids = ids.withColumn("r", F.row_number().over(w)).where(F.col("r") == 1)
        for s in ("delivered", "opened"):
            add(ids, F.col("mid"), s)
    tracked = load("tracked")
    if tracked is not None:
        for s, cond in (
            ("delivered", _col(tracked, "event") == "click"),
            ("opened", _col(tracked, "event") == "click"),
            ("clicked", _col(tracked, "event") == "click"),
            ("converted", _col(tracked, "event") != "click"),
        ):
            d = tracked.where(cond)
            steps.append(
                d.select(
                    _col(d, "uid").alias("uid"),
                    F.col("event_seq").alias("sseq"),
                    F.col("occurred_at").alias("sat"),
                    _col(d, "mid").cast("string").alias("smid"),
                    F.lit(s).alias("step"),
                    _col(d, "window").cast("long").alias("window"),
                )
            )
    reached_steps = None
    if steps:
        all_steps = steps[0]
        for s in steps[1:]:
            all_steps = all_steps.unionByName(s)
        with_mid = (
            all_steps.where(F.col("smid").isNotNull())
            .join(mid_exp, F.col("smid") == F.col("emid"))
            .withColumnRenamed("eexp", "experiment")
            .drop("mid")
            .join(exposed.drop("mid"), ["experiment", "uid"])
            .where(F.col("xseq") < F.col("sseq"))
            .select("experiment", "uid", "step")
        )
        windowed = all_steps.where(F.col("smid").isNull()).join(exposed.drop("mid"), "uid").where(
            (F.col("xseq") < F.col("sseq"))
            & (F.col("xat") <= F.col("sat"))
            & (F.col("sat").cast("double") - F.col("xat").cast("double") <= F.col("window"))
        ).select("experiment", "uid", "step")
        reached_steps = with_mid.unionByName(windowed).distinct()

    counts = {}
    for r in exposed.groupBy("experiment", "arm").count().collect():
        counts.setdefault(r["experiment"], {}).setdefault(r["arm"], dict.fromkeys(STEPS, 0))["exposed"] = r["count"]
    if reached_steps is not None:
        arm_of = exposed.select("experiment", "uid", "arm")
        for r in reached_steps.join(arm_of, ["experiment", "uid"]).groupBy("experiment", "arm", "step").count().collect():
            counts.setdefault(r["experiment"], {}).setdefault(r["arm"], dict.fromkeys(STEPS, 0))[r["step"]] = r["count"]

    first_spec = {}
    for r in m.orderBy("seq").select("experiment", "mid").collect():
        first_spec.setdefault(r["experiment"], spec_of[r["mid"]])
    return [report(e, first_spec[e], counts.get(e, {})) for e in sorted(first_spec)]


def report(experiment: str, spec: dict, counts: dict, metric: str = "converted", alpha: float = 0.05) -> dict:
    """The report's arms, comparisons, sample-ratio check and winner from per-arm counts."""
    names = arms.arm_names(spec)
    shares = arms.arm_shares(spec)
    rows = [dict(counts.get(n, dict.fromkeys(STEPS, 0)), name=n) for n in names]
    level = alpha / max(len(rows) - 1, 1)
    srm = stats.sample_ratio([r["exposed"] for r in rows], shares)
    mismatch = srm is not None and srm[1] < stats.SRM_ALPHA
    winner, best = None, None
    control = rows[0]
    for i, r in enumerate(rows):
        r["expected_share"] = shares[i]
        r["control"] = i == 0
        if i > 0:
            c = stats.compare(r[metric], r["exposed"], control[metric], control["exposed"], level)
            if c is not None:
                c["significant"] = c["always_valid_p"] < level
                r["against_control"] = c
                if c["significant"] and c["difference"] > 0 and (best is None or c["difference"] > best):
                    winner, best = r["name"], c["difference"]
    return {
        "id": experiment,
        "metric": metric,
        "control": names[0],
        "arms": rows,
        "sample_ratio": None if srm is None else {"chi_squared": srm[0], "p_value": srm[1], "mismatch": mismatch},
        "winner": None if mismatch else winner,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--export", required=True, help="directory written by `msgxc export --format parquet`")
    p.add_argument("--experiment", help="only this experiment")
    p.add_argument("--master", default="local[*]", help="Spark master (default local[*])")
    a = p.parse_args(argv)
    spark = session(a.master)
    spark.sparkContext.setLogLevel("ERROR")
    try:
        for r in table(spark, a.export, a.experiment):
            print(json.dumps(r, sort_keys=True))
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
