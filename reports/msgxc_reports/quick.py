"""Quick local queries over an export with DuckDB: no Spark, no JVM, seconds to start. Each
event type of the export is a view named after it (`message_sent`, `tracked`, ...), with the
Hive partition columns `type` and `day`; `messages` is both message kinds together.

    python -m msgxc_reports.quick --export DIR "SELECT day, count(*) AS n FROM message_sent GROUP BY day"
    python -m msgxc_reports.quick --export DIR --views

Columns are the export's: `event_seq`, `event_id`, `event_type`, `occurred_at`, `actor_uid`,
`actor_roles` and the event's data flattened, whose dotted names need double quotes
(`SELECT "audience.kind", count(*) FROM message_sent GROUP BY 1`). Rows print as JSON lines.
The exact reports (the funnel, experiments) are the PySpark jobs beside this one, which fold
the stream as the exchange does; this is for looking around.
"""

import argparse
import json
import os
import sys


def connect(export: str):
    """An in-memory DuckDB with a view per event type of the export (and `messages`)."""
    import duckdb

    con = duckdb.connect()
    kinds = sorted(k[len("type="):] for k in os.listdir(export) if k.startswith("type="))
    for kind in kinds:
        glob = os.path.join(export, f"type={kind}", "**", "*.parquet").replace("'", "''")
        con.execute(
            f'CREATE VIEW "{kind}" AS SELECT * FROM read_parquet(\'{glob}\', '
            "hive_partitioning = true, union_by_name = true)"
        )
    present = [k for k in ("message_sent", "message_published") if k in kinds]
    if present:
        con.execute(
            "CREATE VIEW messages AS "
            + " UNION ALL BY NAME ".join(f'SELECT * FROM "{k}"' for k in present)
        )
    return con


def query(con, sql: str) -> list:
    """The rows of a query, as dicts."""
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def views(con) -> list:
    """Each view and its columns."""
    out = []
    for (name,) in con.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY view_name"
    ).fetchall():
        cols = [r[0] for r in con.execute(f'DESCRIBE "{name}"').fetchall()]
        out.append({"view": name, "columns": cols})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--export", required=True, help="directory written by `msgxc export --format parquet`")
    p.add_argument("--views", action="store_true", help="list the views and their columns")
    p.add_argument("sql", nargs="?", help="the query")
    a = p.parse_args(argv)
    if not os.path.isdir(a.export):
        p.error(f"no export at {a.export}")
    con = connect(a.export)
    if a.views:
        rows = views(con)
    elif a.sql:
        import duckdb

        try:
            rows = query(con, a.sql)
        except duckdb.Error as e:
            print(f"quick: {e}", file=sys.stderr)
            return 2
    else:
        p.error("give a query, or --views")
    for r in rows:
        print(json.dumps(r, default=str, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
