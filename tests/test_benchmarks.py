"""The benchmark suite keeps running, and torchcb keeps its parity with the hand loops.

Speed is not asserted here (one repeat on a shared machine says nothing); the benchmark's
own table does that. What is asserted is what must hold in every run: every variant,
the nine callbacks included, trains to the final loss of the hand loop it is compared
with (same seed, same batch order), and the output says so in named fields.
"""

import importlib.util
import json
import math
import pathlib
import random
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"
W1_VARIANTS = ["all", "all_noshuffle", "bare", "bare_ema", "bare_noshuffle", "hand", "hand_views", "verbose1"]


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _markdown_rows(stdout):
    """The table's rows as dicts keyed by its header's column names."""
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def test_every_variant_runs_and_reaches_its_hand_loops_final_loss(tmp_path):
    report = tmp_path / "bench.json"
    out = subprocess.run(
        [sys.executable, str(BENCH), "--workloads", "W1", "--repeats", "1", "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr  # it ran, and every final loss matched
    document = json.loads(report.read_text())
    assert document["repeats"] == 1 and document["loss_mismatches"] == []
    rows = {row["variant"]: row for row in document["rows"]}
    assert sorted(rows) == W1_VARIANTS
    assert rows["hand"]["against"] is None and rows["hand_views"]["against"] is None
    assert rows["bare_noshuffle"]["against"] == rows["all_noshuffle"]["against"] == "hand_views"
    assert rows["bare"]["against"] == rows["verbose1"]["against"] == rows["all"]["against"] == "hand"
    for name, row in rows.items():
        hand = rows[row["against"] or name]
        assert row["reached_hand_loss"] and row["final_loss"] == hand["final_loss"], (name, row)
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0, row
        assert row["samples_per_s"] > 0 and row["peak_mib"] > 0, row
        assert row["ci_low"] == row["ci_high"] == row["ratio"], row  # one repeat: the interval is its ratio
    assert rows["hand"]["ratio"] == rows["hand_views"]["ratio"] == 1.0
    assert rows["hand"]["final_loss"] != rows["hand_views"]["final_loss"]  # two batch orders, two trainings
    assert {name for name, row in rows.items() if row["target"] is not None} == {
        "bare",
        "all",
        "bare_noshuffle",
        "all_noshuffle",
    }
    # the printed table holds the same rows, read by its column names
    table = {row["variant"]: row for row in _markdown_rows(out.stdout)}
    assert sorted(table) == W1_VARIANTS
    assert all(float(table[name]["final loss"]) == round(rows[name]["final_loss"], 6) for name in rows)
    assert all(table[name]["against"] == (rows[name]["against"] or "") for name in rows)
    # a line per run as it goes: the warm-up and the repeat, each variant once
    assert sum(line.startswith("W1 ") for line in out.stderr.splitlines()) == 2 * len(W1_VARIANTS)


def _row(variant, against, ratio, target, final_loss, hand_final_loss):
    return {
        "workload": "W1",
        "variant": variant,
        "against": against,
        "ratio": ratio,
        "ci_low": ratio - 0.05,
        "ci_high": ratio + 0.05,
        "target": target,
        "met_target": None if target is None else ratio >= target,
        "final_loss": final_loss,
        "hand_final_loss": hand_final_loss,
        "reached_hand_loss": abs(final_loss - hand_final_loss) <= 1e-6,
    }


def test_the_exit_status_says_whether_parity_held_and_targets_count_only_when_required():
    bench = _bench_module()
    hand = _row("hand", None, 1.0, None, 2.5, 2.5)
    slow = _row("bare", "hand", 0.5, 0.97, 2.5, 2.5)
    fast = _row("bare", "hand", 1.1, 0.97, 2.5, 2.5)
    drifted = _row("all", "hand", 1.0, None, 2.4, 2.5)
    assert bench.exit_status([hand, fast]) == bench.exit_status([hand, fast], require_targets=True) == 0
    assert bench.exit_status([hand, slow]) == 0  # a missed target is reported, not an error, unless required
    assert bench.missed_targets([hand, slow]) == ["W1 bare (ratio 0.500 < 0.97; 95% CI 0.450–0.550)"]
    assert bench.exit_status([hand, slow], require_targets=True) == 4
    assert bench.exit_status([hand, fast, drifted]) == 3  # a final loss that differs outranks any target
    assert bench.loss_mismatches([hand, drifted]) == ["W1 all (final loss 2.400000, the hand loop's 2.500000)"]


def test_summarize_pairs_each_run_with_its_hand_loop_in_the_same_repeat():
    bench = _bench_module()
    runs = {
        "hand": [{"samples": 100, "seconds": s, "loss": 1.0, "peak_mib": 10} for s in (1.0, 2.0, 1.0)],
        "bare": [{"samples": 100, "seconds": s, "loss": 1.0, "peak_mib": 12} for s in (1.0, 2.0, 0.5)],
    }
    rows = {row["variant"]: row for row in bench.summarize("W1", runs, 3)}
    assert rows["bare"]["ratio"] == 1.0  # ratios 1, 1, 2: a slow repeat hit both sides
    assert (rows["bare"]["ratio_min"], rows["bare"]["ratio_max"]) == (1.0, 2.0)
    assert rows["bare"]["samples_per_s"] == 100.0 and rows["bare"]["peak_mib"] == 12
    assert rows["bare"]["target"] == 0.97 and rows["bare"]["met_target"] is True
    assert rows["bare"]["reached_hand_loss"] and rows["hand"]["against"] is None


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
