"""The funnel report from an export of the event log, in PySpark: recipients at each step
(sent -> provider-accepted -> delivered -> opened -> clicked -> converted), grouped by channel,
urgency, type and variant, with time-to-open percentiles: the same numbers as the exchange's
`GET /api/v1/reports/funnel` on the same stream.

    python -m msgxc_reports.funnel --export DIR [--report QUERY ...] [--master URL]

Each QUERY is the API's query string (`mid=...`, `experiment=...`, `since=...&until=...`,
`by=channel,urgency,type,variant`); one JSON object is printed per report, in order (without
any, one report of every message, ungrouped).

The job folds the stream as the exchange's projection does, from the events alone:

- the messages and their recipients as `msgxc_reports.stream` reads them; each recipient's copy
  from their experiment arm (the holdout and users outside a test share are sent nothing), its
  urgency and type the message's with the variant's options laid over;
- dispatch outcomes (`deliveries_settled`, `delivery_sent`, `delivery_failed`) of a message
  folded before them: the channels a provider was asked to reach a user on, and those it
  accepted;
- steps, each the first time: an acknowledgement (delivered; `opened` also opens), the
  explicit read that took an entry out of unread (delivered, opened; see
  `msgxc_reports.stream.opening_reads`), a tracked click naming the message
  (delivered, opened, clicked), a tracked conversion naming it, or without a mid for the
  newest entry the user had if it is within the event's `window` (converted). An
  acknowledgement or a tracked event naming a message counts for a user who had its entry
  then (not deleted before), or whose funnel row an earlier step had started;
- time to open: from the message's event to the first open, in whole microseconds.
"""

import argparse
import datetime as dt
import json
import sys
from urllib.parse import parse_qs

from . import assign as arms
from . import stream

STEPS = ["sent", "accepted", "delivered", "opened", "clicked", "converted"]
DIMS = ["channel", "urgency", "type", "variant"]
INBOX = "inbox"
URGENCY = {"very-low": 1, "low": 2, "normal": 3, "high": 4}


def _urgency(v, default):
    if v is None:
        return default
    if isinstance(v, str):
        return URGENCY.get(v, default)
    return int(v)


def copy_of(message: dict, variant):
    """(urgency, type) of the copy of `message` that variant `variant` (None: no experiment) gets."""
    urgency = _urgency(message["urgency"], 3)
    ntype = message["ntype"]
    for v in message["variants"] or []:
        if v["name"] == variant and v.get("opts"):
            urgency = _urgency(v["opts"].get("urgency", message["urgency"]), 3)
            ntype = v["opts"].get("type", ntype)
    return urgency, ntype


def _micros(t) -> int:
    """Microseconds since the epoch of an aware datetime."""
    delta = t - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class Funnel:
    """The per-recipient tables of a stream, from which each report is a grouping."""

    def __init__(self, spark, export: str):
        from pyspark.sql import functions as F
        from pyspark.sql import types as T
        from pyspark.sql.window import Window

        self.spark = spark
        load = lambda kind: stream.load(spark, export, kind)  # noqa: E731
        col = stream.col
        m = stream.messages(spark, export)
        self.messages = {}
        if m is None:
            self.copies = self.reached = None
            return
        for r in m.select("mid", "seq", F.unix_micros("at").alias("at_us"), "experiment", "variants",
                          "holdout", "test_share", "promoted", "urgency", "ntype").collect():
            self.messages[r["mid"]] = {
                "mid": r["mid"],
                "seq": r["seq"],
                "at_us": r["at_us"],
                "experiment": r["experiment"],
                "variants": json.loads(r["variants"]) if r["variants"] else None,
                "urgency": r["urgency"],
                "ntype": r["ntype"],
                "spec": None if r["experiment"] is None else {
                    "id": r["experiment"],
                    "variants": json.loads(r["variants"]),
                    "holdout": r["holdout"] or 0.0,
                    "test_share": r["test_share"] or 0.0,
                    "promoted": r["promoted"],
                },
            }
        specs = spark.sparkContext.broadcast({k: v["spec"] for k, v in self.messages.items()})
        # The arm of a user in a message: "" without an experiment.
        arm = F.udf(
            lambda mid, uid: "" if specs.value.get(mid) is None else arms.assign(specs.value[mid], uid),
            T.StringType(),
        )
        got_arm = lambda df: (  # noqa: E731
            df.withColumn("arm", arm("mid", "uid"))
            .where(~F.col("arm").isin(arms.HOLDOUT, arms.LATER))
            .withColumn("variant", F.when(F.col("arm") == "", None).otherwise(F.col("arm")))
            .drop("arm")
        )
        mat = m.select("mid", F.col("seq").alias("mseq"), F.col("at").alias("mat"))

        # Who got an entry of each message, with their copy.
        got = got_arm(stream.recipients(spark, export, m)).select(
            "mid", "uid", "variant", F.col("seq").alias("rseq")
        )
        got = got.join(mat.select("mid", "mat"), "mid")
        # Kept: every report groups these two tables.
        self.copies = got.groupBy("mid", "variant").agg(F.count("*").alias("sent")).cache()

        # When an entry stopped existing (deleted), per user and message.
        deleted = load("notifications_deleted")
        if deleted is not None and "ids" in deleted.columns:
            gone = deleted.select(
                col(deleted, "uid").alias("uid"),
                F.explode(F.from_json(col(deleted, "ids"), T.ArrayType(T.StringType()))).alias("mid"),
                F.col("event_seq").alias("dseq"),
            ).groupBy("uid", "mid").agg(F.min("dseq").alias("dseq"))
            entries = got.join(gone, ["uid", "mid"], "left")
        else:
            entries = got.withColumn("dseq", F.lit(None).cast("long"))
        alive = lambda seq: (F.col("rseq") < seq) & (F.col("dseq").isNull() | (F.col("dseq") >= seq))  # noqa: E731

        # Step events: (mid, uid, sseq, sat, step, check).
        events = []

        def add(df, steps, check):
            for s in steps:
                events.append(df.select("mid", "uid", "sseq", "sat", F.lit(s).alias("step"), F.lit(check).alias("check")))

        acked = load("delivery_acked")
        if acked is not None:
            a = acked.select(
                col(acked, "mid").cast("string").alias("mid"), col(acked, "uid").alias("uid"),
                F.col("event_seq").alias("sseq"), F.col("occurred_at").alias("sat"),
                col(acked, "status").alias("status"),
            )
            add(a, ["delivered"], True)
            add(a.where(F.col("status") == "opened"), ["opened"], True)
        tracked = load("tracked")
        if tracked is not None:
            t = tracked.select(
                col(tracked, "mid").cast("string").alias("mid"), col(tracked, "uid").alias("uid"),
                F.col("event_seq").alias("sseq"), F.col("occurred_at").alias("sat"),
                col(tracked, "event").alias("event"), col(tracked, "window").cast("long").alias("window"),
            )
            named = t.where(F.col("mid").isNotNull())
            add(named.where(F.col("event") == "click"), ["delivered", "opened", "clicked"], True)
            add(named.where(F.col("event") != "click"), ["converted"], True)
            # Without a mid: the user's newest entry then, if within the window.
            free = t.where(F.col("mid").isNull()).drop("mid")
            cand = free.join(entries.select("uid", "mid", "rseq", "dseq", "mat"), "uid").where(alive(F.col("sseq")))
            newest = Window.partitionBy("uid", "sseq").orderBy(F.col("rseq").desc())
            cand = cand.withColumn("r", F.row_number().over(newest)).where(F.col("r") == 1)
            cand = cand.where(
                (F.col("mat") <= F.col("sat"))
                & (F.col("sat").cast("double") - F.col("mat").cast("double") <= F.col("window"))
            )
            add(cand.where(F.col("event") != "click"), ["converted"], False)
            add(cand.where(F.col("event") == "click"), ["delivered", "opened", "clicked"], False)
        # The explicit read that took an entry out of unread.
        r = stream.opening_reads(spark, export, stream.with_entry_keys(got, m))
        if r is not None:
            add(r, ["delivered", "opened"], False)

        steps = None
        if events:
            ev = events[0]
            for e in events[1:]:
                ev = ev.unionByName(e)
            ev = ev.join(entries.select("uid", "mid", "rseq", "dseq", "variant"), ["uid", "mid"], "left")
            ok = (~F.col("check")) | (F.col("rseq").isNotNull() & alive(F.col("sseq")))
            start = ev.where(ok).groupBy("mid", "uid").agg(F.min("sseq").alias("start"))
            ev = ev.join(start, ["mid", "uid"]).where(F.col("sseq") >= F.col("start"))
            firsts = Window.partitionBy("mid", "uid", "step").orderBy("sseq")
            ev = ev.withColumn("n", F.row_number().over(firsts)).where(F.col("n") == 1)
            steps = ev.groupBy("mid", "uid").agg(
                F.lit(True).alias("has_steps"),
                F.first("variant", ignorenulls=True).alias("svariant"),
                *[F.max(F.when(F.col("step") == s, True)).alias(s) for s in STEPS[2:]],
                F.max(F.when(F.col("step") == "opened", F.unix_micros("sat"))).alias("opened_us"),
            )

        # Dispatch outcomes of a message folded before them.
        outcomes = []
        settled = load("deliveries_settled")
        if settled is not None and "deliveries" in settled.columns:
            item = T.ArrayType(T.StructType([
                T.StructField("uid", T.StringType()),
                T.StructField("channel", T.StringType()),
                T.StructField("status", T.StringType()),
            ]))
            outcomes.append(
                settled.select(
                    col(settled, "mid").cast("string").alias("mid"), F.col("event_seq").alias("oseq"),
                    F.explode(F.from_json(col(settled, "deliveries"), item)).alias("d"),
                ).where(F.col("d.status").isin("sent", "failed"))  # held/suppressed: no provider asked
                .select("mid", "oseq", F.col("d.uid").alias("uid"), F.col("d.channel").alias("channel"),
                        (F.col("d.status") == "sent").alias("accepted"))
            )
        for kind, accepted in (("delivery_sent", True), ("delivery_failed", False)):
            df = load(kind)
            if df is not None:
                outcomes.append(df.select(
                    col(df, "mid").cast("string").alias("mid"), F.col("event_seq").alias("oseq"),
                    col(df, "uid").alias("uid"), col(df, "channel").alias("channel"),
                    F.lit(accepted).alias("accepted"),
                ))
        channels = None
        if outcomes:
            o = outcomes[0]
            for x in outcomes[1:]:
                o = o.unionByName(x)
            o = got_arm(o.join(mat, "mid").where(F.col("mseq") < F.col("oseq")))
            channels = o.groupBy("mid", "uid").agg(
                F.first("variant", ignorenulls=True).alias("cvariant"),
                F.array_sort(F.collect_set("channel")).alias("channels"),
                F.array_sort(F.collect_set(F.when(F.col("accepted"), F.col("channel")))).alias("accepted"),
            )

        # One row per recipient past `sent`.
        empty = F.array().cast("array<string>")
        if steps is not None and channels is not None:
            reached = steps.join(channels, ["mid", "uid"], "full")
            # A recipient's steps row names their variant; only without one do the channels.
            variant = F.when(F.col("has_steps").isNotNull(), F.col("svariant")).otherwise(F.col("cvariant"))
        elif steps is not None:
            reached = steps.withColumn("channels", empty).withColumn("accepted", empty)
            variant = F.col("svariant")
        elif channels is not None:
            reached = channels
            for s in STEPS[2:]:
                reached = reached.withColumn(s, F.lit(None).cast("boolean"))
            reached = reached.withColumn("opened_us", F.lit(None).cast("long"))
            variant = F.col("cvariant")
        else:
            reached = None
        if reached is not None:
            reached = reached.withColumn("variant", variant).select(
                "mid", "uid", "variant",
                F.coalesce(F.col("channels"), empty).alias("channels"),
                F.coalesce(F.col("accepted"), empty).alias("accepted"),
                *[F.coalesce(F.col(s), F.lit(False)).alias(s) for s in STEPS[2:]],
                "opened_us",
            )
        self.reached = None if reached is None else reached.cache()

    def report(self, query: str = "") -> dict:
        """The report for one API query string."""
        from pyspark.sql import functions as F

        q = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        by = []
        for d in (x.strip() for x in q.get("by", "").split(",")):
            if d and d not in by:
                if d not in DIMS:
                    raise SystemExit(f"by: unknown dimension {d!r}")
                by.append(d)
        since, until = _instant(q.get("since")), _instant(q.get("until"))
        if "mid" in q:
            scope = [q["mid"]] if q["mid"] in self.messages else []
        elif q.get("experiment"):
            scope = [k for k, v in self.messages.items() if v["experiment"] == q["experiment"]]
        else:
            until = until or dt.datetime.now(dt.timezone.utc)
            since = since or until - dt.timedelta(days=7)
            scope = list(self.messages)

        def in_range(mid):
            at = self.messages[mid]["at_us"]
            return (since is None or at >= _micros(since)) and (until is None or at < _micros(until))

        scope = [mid for mid in scope if in_range(mid)]
        groups, total = {}, _acc()
        if scope:
            picked = self.spark.createDataFrame([(mid,) for mid in scope], "mid string")
            copies = self.copies.join(picked, "mid").collect()
            made = {(c["mid"], c["variant"]) for c in copies}
            reached = [] if self.reached is None else self.reached.join(picked, "mid").collect()
            tried = {}
            for r in reached:
                if r["channels"]:
                    tried[(r["mid"], r["variant"])] = tried.get((r["mid"], r["variant"]), 0) + 1
            for c in copies:
                total["counts"][0] += c["sent"]
                channel = INBOX if "channel" in by else None
                g = groups.setdefault(self._key(by, made, c["mid"], c["variant"], channel), _acc())
                g["counts"][0] += c["sent"] - (tried.get((c["mid"], c["variant"]), 0) if "channel" in by else 0)
            for r in reached:
                sent_us = self.messages[r["mid"]]["at_us"]
                accepted = len(r["accepted"]) > 0
                total["counts"][1] += int(accepted)
                _reached(total, sent_us, r)
                if "channel" not in by:
                    g = groups.setdefault(self._key(by, made, r["mid"], r["variant"], None), _acc())
                    g["counts"][1] += int(accepted)
                    _reached(g, sent_us, r)
                elif not r["channels"]:
                    g = groups.setdefault(self._key(by, made, r["mid"], r["variant"], INBOX), _acc())
                    _reached(g, sent_us, r)
                else:
                    for ch in r["channels"]:
                        g = groups.setdefault(self._key(by, made, r["mid"], r["variant"], ch), _acc())
                        g["counts"][0] += 1
                        g["counts"][1] += int(ch in r["accepted"])
                        _reached(g, sent_us, r)
        rows = [
            _row(dict(zip(by, key)), acc)
            for key, acc in sorted(groups.items(), key=lambda kv: [_order(p) for p in kv[0]])
            if any(acc["counts"])
        ]
        return {
            "by": by,
            "messages": len(scope),
            "steps": STEPS,
            "total": _row({}, total),
            "rows": rows,
        }

    def _key(self, by, made, mid, variant, channel):
        # A copy that reached nobody has no record: the default urgency and no type.
        urgency, ntype = copy_of(self.messages[mid], variant) if (mid, variant) in made else (3, None)
        values = {"channel": channel, "urgency": urgency, "type": ntype, "variant": variant}
        return tuple(values[d] for d in by)


def _instant(v):
    if v is None:
        return None
    try:
        t = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise SystemExit(f"not a time: {v!r}")
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _order(p):
    if p is None:
        return (0, 0, "")
    if isinstance(p, int):
        return (1, p, "")
    return (2, 0, p)


def _acc():
    return {"counts": [0] * 6, "opens": []}


def _reached(acc, sent_us, r):
    for i, s in enumerate(STEPS[2:]):
        if r[s]:
            acc["counts"][2 + i] += 1
    if r["opened_us"] is not None:
        acc["opens"].append(max(r["opened_us"] - sent_us, 0))


def _row(key: dict, acc: dict) -> dict:
    opens = sorted(acc["opens"])

    def rank(q):
        if not opens:
            return None
        return opens[max(-(-(len(opens) * q) // 100), 1) - 1] / 1e6

    sent = acc["counts"][0]
    row = dict(key)
    row.update(zip(STEPS, acc["counts"]))
    row["rates"] = {s: (n / sent if sent > 0 else None) for s, n in zip(STEPS[1:], acc["counts"][1:])}
    row["time_to_open"] = {"n": len(opens), "p50": rank(50), "p90": rank(90)}
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--export", required=True, help="directory written by `msgxc export --format parquet`")
    p.add_argument("--report", action="append", default=[], help="an API query string (repeatable)")
    p.add_argument("--master", default="local[*]", help="Spark master (default local[*])")
    a = p.parse_args(argv)
    spark = stream.session(a.master, "msgxc-funnel")
    spark.sparkContext.setLogLevel("ERROR")
    try:
        f = Funnel(spark, a.export)
        for q in a.report or [""]:
            print(json.dumps(f.report(q), sort_keys=True))
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
