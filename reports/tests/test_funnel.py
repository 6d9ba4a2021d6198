"""Unit tests of the funnel job's row arithmetic: the same ranks, rates, ordering and copy
options as `projections::funnel` in the exchange (the whole job is compared with the online
report in `tests/reports.rs`)."""

import unittest

from msgxc_reports import funnel


class FunnelRowTest(unittest.TestCase):
    def test_ranks_rates_and_an_empty_row(self):
        acc = funnel._acc()
        acc["counts"] = [10, 2, 2, 2, 1, 1]
        acc["opens"] = [60_000_000, 10_000_000]
        row = funnel._row({"channel": "sms"}, acc)
        self.assertEqual(row["channel"], "sms")
        self.assertEqual(row["sent"], 10)
        self.assertEqual(row["rates"]["opened"], 0.2)
        self.assertEqual(row["time_to_open"], {"n": 2, "p50": 10.0, "p90": 60.0})
        empty = funnel._row({}, funnel._acc())
        self.assertIsNone(empty["rates"]["accepted"])
        self.assertEqual(empty["time_to_open"], {"n": 0, "p50": None, "p90": None})

    def test_nearest_rank_of_many(self):
        acc = funnel._acc()
        acc["counts"][0] = 100
        acc["opens"] = list(range(1, 101))
        t = funnel._row({}, acc)["time_to_open"]
        self.assertEqual((t["p50"], t["p90"]), (50 / 1e6, 90 / 1e6))

    def test_keys_order_null_then_numbers_then_text(self):
        parts = ["b", None, 4, "a", 3]
        self.assertEqual(sorted(parts, key=funnel._order), [None, 3, 4, "a", "b"])

    def test_a_variant_s_options_lay_over_the_message_s(self):
        message = {
            "urgency": 2,
            "ntype": "promo",
            "variants": [
                {"name": "A", "weight": 1},
                {"name": "B", "weight": 1, "opts": {"urgency": "high", "type": "news"}},
            ],
        }
        self.assertEqual(funnel.copy_of(message, "A"), (2, "promo"))
        self.assertEqual(funnel.copy_of(message, "B"), (4, "news"))
        plain = {"urgency": None, "ntype": None, "variants": None}
        self.assertEqual(funnel.copy_of(plain, None), (3, None))


if __name__ == "__main__":
    unittest.main()
