"""Unit tests of the report library: the arm hash agrees with the exchange's (the same pinned
arms as `exchange::experiment`'s `arms_are_pinned_across_languages`), and the statistics
match their tables."""

import random
import unittest

from msgxc_reports import assign, stats

PINNED = ["v0", "v0", "v1", "v0", "v1", "v1", "v1", "v0", "v0", "v1", "v0", "holdout"]
L = "later"
PINNED_SHARE = [L, L, L, "v0", L, "v1", L, L, L, L, L, L]
PINNED_PROMOTED = ["v1", "v1", "v1", L, "v1", L, "v1", "v1", "v1", "v1", "v1", "v1"]


class AssignTest(unittest.TestCase):
    spec = {
        "id": "welcome-1",
        "variants": [{"name": "v0", "weight": 3}, {"name": "v1", "weight": 1}],
        "holdout": 10,
    }

    def test_arms_are_pinned_across_languages(self):
        self.assertEqual([assign.assign(self.spec, f"u{i}") for i in range(12)], PINNED)
        self.assertEqual(assign.bucket("welcome-1", "u0"), 639)
        staged = dict(self.spec, test_share=30)
        self.assertEqual([assign.assign(staged, f"u{i}") for i in range(12)], PINNED_SHARE)
        promoted = dict(staged, promoted="v1")
        self.assertEqual([assign.assign(promoted, f"u{i}") for i in range(12)], PINNED_PROMOTED)

    def test_shares(self):
        counts = {}
        for i in range(20000):
            a = assign.assign(self.spec, f"user-{i}")
            counts[a] = counts.get(a, 0) + 1
        names, shares = assign.arm_names(self.spec), assign.arm_shares(self.spec)
        self.assertEqual(names, ["holdout", "v0", "v1"])
        for n, s in zip(names, shares):
            self.assertAlmostEqual(counts[n] / 20000, s, delta=0.015)


class StatsTest(unittest.TestCase):
    def test_tables(self):
        self.assertAlmostEqual(stats.normal_cdf(1.959964), 0.975, places=6)
        self.assertAlmostEqual(stats.chi_squared_sf(3.841459, 1), 0.05, places=5)
        self.assertAlmostEqual(stats.chi_squared_sf(16.26624, 3), 0.001, places=6)
        self.assertAlmostEqual(stats.z_of(0.05), 1.959964, places=5)

    def test_repeated_looks_at_an_a_a_experiment(self):
        rng = random.Random(7)
        hits = 0
        for _ in range(100):
            x0 = x1 = n = 0
            hit = False
            for _ in range(25):
                for _ in range(200):
                    x0 += rng.random() < 0.1
                    x1 += rng.random() < 0.1
                n += 200
                hit |= stats.compare(x1, n, x0, n, 0.05)["always_valid_p"] < 0.05
            hits += hit
        self.assertLessEqual(hits / 100, 0.05)


if __name__ == "__main__":
    unittest.main()
