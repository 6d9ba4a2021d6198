"""What the report jobs share: reading an export (`msgxc export --format parquet`), the messages
it holds and who received each, folded from the events alone as the exchange's projection does.

- a message is the first `message_sent` / `message_published` event of its id, unless its
  schedule was cancelled before it fired;
- its recipients: a send's or multicast's users; a broadcast's every user known before it (the
  actor of any earlier event, a thread's owner, a subscriber, a send's recipient, and its own
  actor); a thread message's subscribers at the time except the sender; then without those
  whose preferences turn the message's type off (unless it is mandatory at level 50).
"""

import json
import os
import sys


def session(master: str, name: str):
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return (
        SparkSession.builder.master(master)
        .appName(name)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "8")
        .getOrCreate()
    )


def load(spark, export: str, kind: str):
    """The events of one type, or None when the export has none."""
    path = os.path.join(export, f"type={kind}")
    if not os.path.isdir(path) and "://" not in export:
        return None
    return spark.read.option("mergeSchema", "true").parquet(path)


def col(df, name: str):
    """A flattened column, null when the export has no such column."""
    from pyspark.sql import functions as F

    if df is not None and name in df.columns:
        return F.col(f"`{name}`")
    return F.lit(None)


def kinds(export: str) -> list:
    return [
        k[len("type="):]
        for k in (os.listdir(export) if "://" not in export else [])
        if k.startswith("type=")
    ]


def messages(spark, export: str):
    """Every message the projection folds, one row each, or None when there is none."""
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window

    parts = []
    for kind in ("message_sent", "message_published"):
        df = load(spark, export, kind)
        if df is None:
            continue
        parts.append(
            df.select(
                F.col("event_seq").alias("seq"),
                F.col("event_id").alias("mid"),
                F.col("occurred_at").alias("at"),
                F.lit(kind).alias("kind"),
                col(df, "tid").cast("string").alias("tid"),
                col(df, "sender").cast("string").alias("sender"),
                col(df, "audience.kind").cast("string").alias("audience"),
                col(df, "audience.uid").cast("string").alias("audience_uid"),
                col(df, "audience.uids").cast("string").alias("audience_uids"),
                col(df, "experiment.id").cast("string").alias("experiment"),
                col(df, "experiment.variants").cast("string").alias("variants"),
                col(df, "experiment.holdout").cast("double").alias("holdout"),
                col(df, "experiment.test_share").cast("double").alias("test_share"),
                col(df, "experiment.promoted").cast("string").alias("promoted"),
                col(df, "opts.type").cast("string").alias("ntype"),
                col(df, "opts.level").cast("long").alias("level"),
                col(df, "opts.mandatory").cast("boolean").alias("mandatory"),
                col(df, "opts.urgency").cast("long").alias("urgency"),
            )
        )
    if not parts:
        return None
    m = parts[0]
    for other in parts[1:]:
        m = m.unionByName(other)
    first = Window.partitionBy("mid").orderBy("seq")
    m = m.withColumn("r", F.row_number().over(first)).where(F.col("r") == 1).drop("r")
    cancelled = load(spark, export, "schedule_cancelled")
    if cancelled is not None:
        c = cancelled.select(col(cancelled, "mid").cast("string").alias("cmid"), F.col("event_seq").alias("cseq"))
        gone = m.join(c, (m.mid == c.cmid) & (c.cseq < m.seq)).select("mid").distinct()
        m = m.join(gone, "mid", "left_anti")
    return m


def known_users(spark, export: str):
    """(uid, first_seq): each user the projection knows, from the first event that made them known."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    parts = []
    for kind in kinds(export):
        df = load(spark, export, kind)
        parts.append(df.select(F.col("actor_uid").alias("uid"), F.col("event_seq").alias("seq")))
        if kind == "thread_created":
            parts.append(df.select(col(df, "owner").alias("uid"), F.col("event_seq").alias("seq")))
        if kind == "subscribed":
            parts.append(df.select(col(df, "uid").alias("uid"), F.col("event_seq").alias("seq")))
        if kind == "message_sent":
            parts.append(
                df.where(col(df, "audience.kind") == "user").select(
                    col(df, "audience.uid").alias("uid"), F.col("event_seq").alias("seq")
                )
            )
            if "audience.uids" in df.columns:
                parts.append(
                    df.where(col(df, "audience.kind") == "users").select(
                        F.explode(F.from_json(col(df, "audience.uids"), T.ArrayType(T.StringType()))).alias("uid"),
                        F.col("event_seq").alias("seq"),
                    )
                )
    known = parts[0]
    for p in parts[1:]:
        known = known.unionByName(p)
    return known.where(F.col("uid").isNotNull()).groupBy("uid").agg(F.min("seq").alias("first_seq"))


def recipients(spark, export: str, m):
    """(seq, mid, uid): who each message of `m` reached, before experiment arms."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T
    from pyspark.sql.window import Window

    known = known_users(spark, export)
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
    out = listed.unionByName(single).unionByName(everyone)
    subs, unsubs = load(spark, export, "subscribed"), load(spark, export, "unsubscribed")
    if subs is not None:
        membership = subs.select(
            col(subs, "tid").cast("string").alias("tid"),
            col(subs, "uid").alias("uid"),
            F.col("event_seq").alias("mseq"),
            F.lit(True).alias("member"),
        )
        if unsubs is not None:
            membership = membership.unionByName(
                unsubs.select(
                    col(unsubs, "tid").cast("string").alias("tid"),
                    col(unsubs, "uid").alias("uid"),
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
        out = out.unionByName(members)

    # Preferences: a typed message skips users who turned its type off (mandatory excepted).
    out = out.join(m.select("mid", "ntype", "level", "mandatory"), "mid")
    prefs = load(spark, export, "preferences_set")
    if prefs is not None:
        type_cols = [c for c in prefs.columns if c.startswith("preferences.types.")]
        if type_cols:
            stacked = None
            for c in type_cols:
                part = prefs.select(
                    col(prefs, "uid").alias("puid"),
                    F.col("event_seq").alias("pseq"),
                    F.lit(c[len("preferences.types."):]).alias("ptype"),
                    F.col(f"`{c}`").cast("boolean").alias("on"),
                )
                stacked = part if stacked is None else stacked.unionByName(part)
            every = prefs.select(col(prefs, "uid").alias("puid"), F.col("event_seq").alias("pseq"))
            # Each preferences_set replaces the whole set: a type it does not name is on.
            candidates = out.where(F.col("ntype").isNotNull()).join(
                every, (every.puid == out.uid) & (every.pseq < out.seq)
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
            out = out.join(off, ["mid", "uid"], "left_anti")
    return out.select("seq", "mid", "uid").distinct()


def copy_type(ntype, variants_json, variant):
    """The notification type of the copy of a message that `variant` gets: the message's, or
    the variant's `opts.type` laid over it."""
    if variant and variants_json:
        for v in json.loads(variants_json):
            if v.get("name") == variant and isinstance(v.get("opts"), dict) and "type" in v["opts"]:
                return v["opts"]["type"]
    return ntype


def with_entry_keys(entries, m):
    """`entries` (mid, uid, ..., variant) with each entry's type (`etype`: its copy's) and
    thread (`etid`), what `read-all` filters on."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    typ = F.udf(copy_type, T.StringType())
    keys = m.select("mid", F.col("ntype").alias("_nt"), F.col("variants").alias("_vs"), F.col("tid").alias("etid"))
    return entries.join(keys, "mid").withColumn("etype", typ("_nt", "_vs", "variant")).drop("_nt", "_vs")


def opening_reads(spark, export: str, entries):
    """(uid, mid, sseq, sat): the explicit reads that opened an entry. `entries` holds
    (uid, mid, rseq, etype, etid): who had which entry from which position. A read opens the
    entry when it is the first event to take it out of unread: an explicit read, an archive,
    a `read-all` whose type and thread filters match it, or a delete."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T
    from pyspark.sql.window import Window

    outs = []
    for kind, what in (("notifications_read", "read"), ("notifications_archived", "archive"),
                       ("notifications_deleted", "delete")):
        df = load(spark, export, kind)
        if df is None or "ids" not in df.columns:
            continue
        outs.append(df.select(
            col(df, "uid").alias("uid"),
            F.explode(F.from_json(col(df, "ids"), T.ArrayType(T.StringType()))).alias("mid"),
            F.col("event_seq").alias("sseq"), F.col("occurred_at").alias("sat"), F.lit(what).alias("what"),
        ))
    if not outs or outs[0] is None:
        return None
    mine = entries.select("uid", "mid", "rseq", "etype", "etid")
    events = outs[0]
    for o in outs[1:]:
        events = events.unionByName(o)
    events = events.join(mine, ["uid", "mid"])
    every = load(spark, export, "inbox_read_all")
    if every is not None:
        ra = every.select(
            col(every, "uid").alias("uid"), col(every, "type").cast("string").alias("ftype"),
            col(every, "tid").cast("string").alias("ftid"),
            F.col("event_seq").alias("sseq"), F.col("occurred_at").alias("sat"),
        )
        matched = ra.join(mine, "uid").where(
            (F.col("ftype").isNull() | (F.col("ftype") == F.col("etype")))
            & (F.col("ftid").isNull() | (F.col("ftid") == F.col("etid")))
        ).select("uid", "mid", "sseq", "sat", F.lit("all").alias("what"), "rseq", "etype", "etid")
        events = events.unionByName(matched)
    events = events.where(F.col("sseq") > F.col("rseq"))
    first = Window.partitionBy("uid", "mid").orderBy("sseq")
    return (
        events.withColumn("n", F.row_number().over(first))
        .where((F.col("n") == 1) & (F.col("what") == "read"))
        .select("uid", "mid", "sseq", "sat")
    )
