"""The benchmark suite keeps running, and torchcb keeps its parity with the hand loops.

Speed is not asserted here (one repeat on a shared machine says nothing); the benchmark's
own table does that. What is asserted is what must hold in every run: every variant,
every seed callback included, trains to the final loss of the hand loop it is compared
with (same seed, same batch order).
"""

import importlib.util
import pathlib
import random
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"


def test_every_variant_runs_and_reaches_its_hand_loops_final_loss():
    out = subprocess.run(
        [sys.executable, str(BENCH), "--workloads", "W1", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode in (0, 1), out.stderr  # 1: a target missed on one noisy repeat
    rows = [line.split("|")[1:-1] for line in out.stdout.splitlines() if line.startswith("| W1 |")]
    variants = {cells[1].strip(): cells for cells in rows}
    assert sorted(variants) == [
        "all",
        "all_noshuffle",
        "bare",
        "bare_ema",
        "bare_noshuffle",
        "hand",
        "hand_views",
        "verbose1",
    ]
    against = {name: cells[2].strip() for name, cells in variants.items()}
    assert against["bare_noshuffle"] == against["all_noshuffle"] == "hand_views" and against["all"] == "hand"
    losses = {name: float(cells[8]) for name, cells in variants.items()}
    for name, loss in losses.items():
        assert loss == losses[against[name]], (name, losses)
    assert losses["hand"] != losses["hand_views"]  # two batch orders, two trainings
    assert all(float(cells[3].replace(",", "")) > 0 for cells in rows)  # throughput was measured
    for cells in rows:  # one repeat: the median's interval is that repeat's ratio
        low, high = (float(v) for v in cells[5].split("–"))
        assert low == high == float(cells[4]), cells
    assert "final loss differs" not in out.stdout
    # a line per run as it goes: the warm-up and the repeat, each variant once
    assert sum(line.startswith("W1 ") for line in out.stderr.splitlines()) == 2 * len(variants)


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_median_interval_holds_the_true_median_95_times_in_100():
    median_interval = _bench_module().median_interval
    values = [float(v) for v in range(21, 0, -1)]
    assert median_interval(values) == (6.0, 16.0)  # the 6th smallest and the 6th largest of 21
    assert median_interval([0.9]) == (0.9, 0.9)
    rng = random.Random(0)
    trials, held, widths = 4000, 0, []
    for _ in range(trials):  # 21 paired ratios from a skewed distribution whose median is 1.0
        ratios = [rng.lognormvariate(0.0, 0.2) for _ in range(21)]
        low, high = median_interval(ratios)
        held += low <= 1.0 <= high
        widths.append(high - low)
    assert 0.95 <= held / trials <= 0.99  # 97.3% for n = 21, not the whole range's ~100%
    assert max(widths) < 0.6  # far narrower than the range of 21 such ratios
