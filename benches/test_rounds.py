"""The table `rounds.py --summarize` prints, from run files whose figures are known.

    python3 -m unittest discover -s benches -p 'test_*.py'
"""

import contextlib
import io
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import rounds  # noqa: E402


def ours(pp, tg, read_gbps, mem_read):
    return [
        {"test": "pp128", "threads": 1, "mean_tps": pp, "model_bytes": 7},
        {"test": "tg64", "threads": 1, "mean_tps": tg, "read_gbps": read_gbps, "model_bytes": 7},
        {"test": "mem-read", "threads": 1, "read_gbps": mem_read},
    ]


def ik(pp, tg):
    # Two rows per test, as `--fa 0,1` gives: the better one counts.
    return [{"test": t, "threads": 1, "mean_tps": v * f, "flash_attn": fa}
            for t, v in (("pp128", pp), ("tg64", tg)) for fa, f in ((0, 0.9), (1, 1.0))]


class Summarize(unittest.TestCase):
    def table(self, files):
        with tempfile.TemporaryDirectory() as directory:
            for name, rows in files.items():
                with open(os.path.join(directory, name), "w") as f:
                    json.dump(rows, f)
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                rounds.summarize(directory, 1.2)
            return out.getvalue()

    def test_medians_ratios_and_rounds_reaching_the_target(self):
        table = self.table({
            "r1-ours-d700.json": ours(100.0, 50.0, 8.0, 10.0),
            "r1-ik-d700.json": ik(85.0, 40.0),
            "r2-ours-d700.json": ours(110.0, 40.0, 9.0, 10.0),
            "r2-ik-d700.json": ik(90.0, 40.0),
            # A round with one engine only is not a comparison: left out.
            "r3-ours-d700.json": ours(1.0, 1.0, 1.0, 10.0),
        })
        # pp: 100 / 85 = 1.176 and 110 / 90 = 1.222, median 1.199, one round at 1.2x.
        self.assertIn("| d700 | 1 | pp128 | 105.0 (100.0-110.0) | 87.5 (85.0-90.0) | 1.199x "
                      "| 1/2 |  |", table)
        # tg: 50 / 40 = 1.25 and 40 / 40 = 1.0; 80% and 90% of mem-read.
        self.assertIn("| d700 | 1 | tg64 | 45.0 (40.0-50.0) | 40.0 (40.0-40.0) | 1.125x "
                      "| 1/2 | 80-90% |", table)
        self.assertIn("- d700 t1 pp128: 1.176, 1.222", table)
        self.assertLess(table.index("| pp128 |"), table.index("| tg64 |"))

    def test_a_file_that_is_not_bench_json_is_named(self):
        with self.assertRaises(SystemExit) as exit:
            self.table({"r1-ours-d700.json": [{"test": "pp128"}], "r1-ik-d700.json": ik(1, 1)})
        self.assertIn("r1-ours-d700.json", str(exit.exception))


if __name__ == "__main__":
    unittest.main()
