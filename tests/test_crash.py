"""Real processes killed with SIGKILL: what was written survives, and training resumes exactly.

The default run makes a few kills; `nox -s crash` (TORCHCB_KILL_TRIALS=50) makes many.
"""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from torchcb.checkpoint import safe_load

WORKER = os.path.join(os.path.dirname(__file__), "crash_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRIALS = int(os.environ.get("TORCHCB_KILL_TRIALS", "5"))
FULL_KEYS = {"format", "format_version", "module", "optimizer", "epoch", "batch", "step", "rng", "callbacks"}

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")


def _start(*args):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, WORKER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _wait_for_step(process, step, timeout=120):
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        if line.startswith("step ") and int(line.split()[1]) >= step:
            return
        if time.monotonic() > deadline:
            break
    process.kill()
    raise AssertionError(f"the worker did not reach step {step}: {process.stderr.read()[-2000:]}")


def _kill(process):
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stdout.close()
    process.stderr.close()


def test_files_survive_kill_9_at_random_moments(tmp_path):
    rng = random.Random(0)
    for _ in range(TRIALS):
        worker = _start("churn", str(tmp_path))
        # files are written in the background, at most two snapshots behind: by step 3 each
        # of the three targets has been written once, so each must exist from then on
        _wait_for_step(worker, 3)
        time.sleep(rng.uniform(0.0, 1.0))  # the moment of the kill is what is random
        _kill(worker)
        names = sorted(os.listdir(tmp_path))
        assert "model.pt" in names and "weights.pt" in names
        assert FULL_KEYS <= set(safe_load(tmp_path / "model.pt"))
        assert FULL_KEYS <= set(safe_load(tmp_path / "backup" / "latest.pt"))
        weights = safe_load(tmp_path / "weights.pt")
        assert set(weights) == {"0.weight", "0.bias", "3.weight", "3.bias"}
        # a write cut short leaves at most its own temporary file, which the next write removes
        temporaries = [n for n in names + os.listdir(tmp_path / "backup") if n.endswith(".tmp")]
        assert len(temporaries) <= 3, temporaries


def _run_to_end(directory, epochs):
    worker = _start("train", str(directory), str(epochs))
    out, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err[-2000:]


def test_a_killed_run_resumes_bitwise_equal_to_an_uninterrupted_one(tmp_path):
    epochs = 4  # 9 batches an epoch
    _run_to_end(tmp_path / "reference", epochs)
    reference = torch.load(tmp_path / "reference" / "final.pt", weights_only=True)
    reference_csv = (tmp_path / "reference" / "log.csv").read_text()
    rng = random.Random(1)
    for trial in range(2):
        directory = tmp_path / f"killed{trial}"
        worker = _start("train", str(directory), str(epochs))
        _wait_for_step(worker, rng.randint(3, 30))
        _kill(worker)
        assert (directory / "backup" / "latest.pt").exists()
        _run_to_end(directory, epochs)  # the same command again resumes from the backup
        final = torch.load(directory / "final.pt", weights_only=True)
        assert all(torch.equal(final[k], reference[k]) for k in reference)
        assert (directory / "log.csv").read_text() == reference_csv  # no gap, no duplicate row
        assert not (directory / "backup").exists()  # deleted once training ended
