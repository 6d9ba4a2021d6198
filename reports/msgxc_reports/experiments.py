"""The experiment table from an export of the event log, in PySpark: users per arm at each step
(exposed, delivered, opened, clicked, converted) and each arm against the control, the same
numbers as the exchange's `GET /api/v1/experiments/{id}` on the same stream.

    python -m msgxc_reports.experiments --export DIR [--experiment ID] [--master URL]

Local mode (`local[*]`) by default; `--master spark://host:7077` (or `yarn`, `k8s://...`) runs
it on a cluster reading DIR from storage the cluster sees. Prints one JSON object per
experiment.

The job folds the stream as the exchange's projection does, from the events alone:

- the messages and each one's recipients as `msgxc_reports.stream` reads them;
- each recipient's arm from the hash (`msgxc_reports.assign`); a user is exposed once per
  experiment, by the first of its messages that reached them, and keeps that arm; users
  outside a broadcast's test share are not in it, and its promotion exposes no one;
- steps, each counted once per user and only after their exposure: delivered (a provider
  accepted a push, the app acknowledged, the user read the entry or clicked), opened (an
  `opened` acknowledgement, reading the entry, a click), clicked (`tracked` `click`),
  converted (any other `tracked` event). A tracked event with a `mid` counts for that
  message's experiment; without one for each experiment the user was exposed to within the
  event's `window` (seconds) before it. Reading an entry counts only for users who have it
  (not the holdout), when the read is what took it out of unread (not after a `read-all`
  that matched it, an archive or a delete: `msgxc_reports.stream.opening_reads`).
"""

import argparse
import json
import sys

from . import assign as arms
from . import stats, stream

STEPS = ["exposed", "delivered", "opened", "clicked", "converted"]


def table(spark, export: str, only: str = None) -> list:
    """Every experiment's table (or only `only`'s), as the report's JSON objects."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T
    from pyspark.sql.window import Window

    load = lambda kind: stream.load(spark, export, kind)  # noqa: E731
    m = stream.messages(spark, export)
    if m is None:
        return []
    m = m.where(F.col("experiment").isNotNull())
    # A promotion measures no one (the tested users keep their arms; the rest are not in it).
    m = m.where(F.col("promoted").isNull())
    if only is not None:
        m = m.where(F.col("experiment") == only)
    if m.limit(1).count() == 0:
        return []
    recipients = stream.recipients(spark, export, m)

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
    entries = stream.with_entry_keys(
        reached.where(F.col("arm") != arms.HOLDOUT).select(
            "mid", "uid", F.col("seq").alias("rseq"), F.col("arm").alias("variant")
        ),
        m,
    )

    # Steps: (uid, seq, mid or null, step) and, for tracked events without a mid, their window.
    steps = []

    def add(df, mid_col, step, uid_col="uid", where=None):
        d = df if where is None else df.where(where)
        steps.append(
            d.select(
                stream.col(d, uid_col).alias("uid"),
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
            "event_seq", "occurred_at", stream.col(settled, "mid").alias("mid"),
            F.explode(F.from_json(stream.col(settled, "deliveries"), item)).alias("d"),
        ).where(F.col("d.status") == "sent").select("event_seq", "occurred_at", "mid", F.col("d.uid").alias("uid"))
        add(ex, F.col("mid"), "delivered")
    for kind in ("delivery_sent",):
        df = load(kind)
        if df is not None:
            add(df, stream.col(df, "mid"), "delivered")
    acked = load("delivery_acked")
    if acked is not None:
        add(acked, stream.col(acked, "mid"), "delivered")
        add(acked, stream.col(acked, "mid"), "opened", where=stream.col(acked, "status") == "opened")
    # Only a user's own entries, read while unread (later reads change nothing).
    ids = stream.opening_reads(spark, export, entries)
    if ids is not None:
        ids = ids.withColumnRenamed("sseq", "event_seq").withColumnRenamed("sat", "occurred_at")
        for s in ("delivered", "opened"):
            add(ids, F.col("mid"), s)
    tracked = load("tracked")
    if tracked is not None:
        for s, cond in (
            ("delivered", stream.col(tracked, "event") == "click"),
            ("opened", stream.col(tracked, "event") == "click"),
            ("clicked", stream.col(tracked, "event") == "click"),
            ("converted", stream.col(tracked, "event") != "click"),
        ):
            d = tracked.where(cond)
            steps.append(
                d.select(
                    stream.col(d, "uid").alias("uid"),
                    F.col("event_seq").alias("sseq"),
                    F.col("occurred_at").alias("sat"),
                    stream.col(d, "mid").cast("string").alias("smid"),
                    F.lit(s).alias("step"),
                    stream.col(d, "window").cast("long").alias("window"),
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
    spark = stream.session(a.master, "msgxc-experiments")
    spark.sparkContext.setLogLevel("ERROR")
    try:
        for r in table(spark, a.export, a.experiment):
            print(json.dumps(r, sort_keys=True))
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
