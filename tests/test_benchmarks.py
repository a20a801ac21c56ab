"""The benchmark suite keeps running, and torchcb keeps its parity with the hand loops.

Speed is not asserted here (one repeat on a shared machine says nothing); the benchmark's
own table does that. What is asserted is what must hold in every run: every variant,
every seed callback included, trains to the final loss of the hand loop it is compared
with (same seed, same batch order).
"""

import pathlib
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
    assert sorted(variants) == ["all", "all_noshuffle", "bare", "bare_noshuffle", "hand", "hand_views", "verbose1"]
    against = {name: cells[2].strip() for name, cells in variants.items()}
    assert against["bare_noshuffle"] == against["all_noshuffle"] == "hand_views" and against["all"] == "hand"
    losses = {name: float(cells[7]) for name, cells in variants.items()}
    for name, loss in losses.items():
        assert loss == losses[against[name]], (name, losses)
    assert losses["hand"] != losses["hand_views"]  # two batch orders, two trainings
    assert all(float(cells[3].replace(",", "")) > 0 for cells in rows)  # throughput was measured
    assert "final loss differs" not in out.stdout
    # a line per run as it goes: the warm-up and the repeat, each variant once
    assert sum(line.startswith("W1 ") for line in out.stderr.splitlines()) == 2 * len(variants)
