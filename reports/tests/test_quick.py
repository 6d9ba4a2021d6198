"""The DuckDB path: an export's event types as views, both message kinds in `messages`, the
Hive day column, and queries over dotted column names."""

import os
import tempfile
import unittest

import duckdb

from msgxc_reports import quick


def write(export: str, kind: str, day: str, select: str):
    d = os.path.join(export, f"type={kind}", f"day={day}")
    os.makedirs(d)
    duckdb.execute(f"COPY ({select}) TO '{os.path.join(d, 'part-1.parquet')}' (FORMAT parquet)")


class QuickTest(unittest.TestCase):
    def test_views_over_an_export(self):
        with tempfile.TemporaryDirectory() as export:
            write(export, "message_sent", "2026-12-01",
                  "SELECT 1 AS event_seq, 'message_sent' AS event_type, 'all' AS \"audience.kind\"")
            write(export, "message_sent", "2026-12-02",
                  "SELECT 3 AS event_seq, 'message_sent' AS event_type, 'user' AS \"audience.kind\"")
            write(export, "message_published", "2026-12-02",
                  "SELECT 2 AS event_seq, 'message_published' AS event_type, 'hi' AS msg")
            con = quick.connect(export)
            rows = quick.query(con, 'SELECT "audience.kind" AS k, CAST(day AS VARCHAR) AS day '
                                    "FROM message_sent ORDER BY event_seq")
            self.assertEqual(rows, [{"k": "all", "day": "2026-12-01"}, {"k": "user", "day": "2026-12-02"}])
            rows = quick.query(con, "SELECT event_type, count(*) AS n FROM messages GROUP BY 1 ORDER BY 1")
            self.assertEqual(rows, [{"event_type": "message_published", "n": 1},
                                    {"event_type": "message_sent", "n": 2}])
            names = [v["view"] for v in quick.views(con)]
            self.assertEqual(names, ["message_published", "message_sent", "messages"])
            self.assertEqual(quick.main(["--export", export, "SELEC"]), 2)


if __name__ == "__main__":
    unittest.main()
