"""Two real processes under torchrun, with gloo on 127.0.0.1 (see tests/ddp_worker.py)."""

import json
import os
import subprocess
import sys

import pytest
import torch

WORKER = os.path.join(os.path.dirname(__file__), "ddp_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


def _torchrun(worker, out, processes=2, args=(), check=True):
    """``worker *args OUT`` in ``processes`` real processes under torchrun (gloo on 127.0.0.1); 0 runs it alone."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "GLOO_SOCKET_IFNAME": "lo"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes else []
    # a hang fails the test at the timeout instead of blocking the suite
    run = subprocess.run(
        [sys.executable, *launcher, worker, *args, str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    if check:
        assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _torchrun(WORKER, out, processes=0)  # the single-process reference
    ddp = _torchrun(WORKER, out)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return out, json.loads((out / "reference.json").read_text()), ranks, ddp.stdout


def test_history_is_identical_on_both_ranks(runs):
    _, _, ranks, _ = runs
    assert ranks[0]["history"] == ranks[1]["history"]
    assert sorted(ranks[0]["history"]) == ["accuracy", "loss", "val_accuracy", "val_loss"]


def test_one_set_of_files_and_one_progress_bar(runs):
    out, _, _, stdout = runs
    assert sorted(p.name for p in out.glob("ckpt-*.pt")) == ["ckpt-1.pt", "ckpt-2.pt", "ckpt-3.pt"]
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0] == "epoch,accuracy,loss,val_accuracy,val_loss" and [r.split(",")[0] for r in rows[1:]] == [
        "0",
        "1",
        "2",
    ]
    assert stdout.count("Epoch 1/3") == 1  # rank 0 prints
    from torchcb.checkpoint import safe_load

    state = safe_load(out / "ckpt-3.pt")  # a checkpoint from the 2-rank run loads in one process
    assert set(state["module"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_weights_equal_single_process_training_on_the_same_global_batch(runs):
    out, reference, ranks, _ = runs
    single = torch.load(out / "weights_1_0.pt", weights_only=True)
    for rank in (0, 1):
        weights = torch.load(out / f"weights_2_{rank}.pt", weights_only=True)
        for key, value in single.items():
            assert torch.allclose(weights[key], value, atol=1e-6), key
    for rank in (0, 1):
        assert ranks[rank]["evaluate"] == pytest.approx(reference["evaluate"], rel=1e-5)
        # predict runs the whole input on every rank, in input order
        assert torch.allclose(torch.tensor(ranks[rank]["predict"]), torch.tensor(reference["predict"]), atol=1e-6)


def test_early_stopping_stops_both_ranks_at_the_same_epoch(runs):
    _, _, ranks, _ = runs
    assert ranks[0]["early_stopping_epochs"] == ranks[1]["early_stopping_epochs"] == [0, 1]


def test_a_stop_on_one_rank_stops_every_rank_without_a_hang(runs):
    _, _, ranks, _ = runs
    assert ranks[0]["stop_one_rank"] == ranks[1]["stop_one_rank"] == {"epochs": [0], "batches": 2}


def test_backup_and_restore_resumes_a_two_rank_run(runs):
    out, _, ranks, _ = runs
    for rank in (0, 1):
        resumed = ranks[rank]["resumed"]
        assert resumed["began"] == [2, 3]  # the backup after epoch 1 is where both ranks resume
        assert resumed["epochs"] == [0, 1, 2, 3]
    assert ranks[0]["resumed"]["loss"] == ranks[1]["resumed"]["loss"]
    assert not (out / "backup").exists()


def test_ranks_with_backups_on_separate_disks_resume_from_rank_0s(runs):
    out, _, ranks, _ = runs
    for rank in (0, 1):
        assert ranks[rank]["separate_disks"]["began"] == [2, 3]  # rank 1 had none: it got rank 0's
        assert ranks[rank]["separate_disks"]["epochs"] == [0, 1, 2, 3]
    assert ranks[0]["separate_disks"]["loss"] == ranks[1]["separate_disks"]["loss"]
    assert ranks[0]["separate_disks"]["loss"] == ranks[0]["resumed"]["loss"]  # as with one shared directory
    assert not (out / "backup_rank0").exists()


def test_a_mid_epoch_resume_keeps_the_sums_and_metric_states_of_every_rank(runs):
    _, _, ranks, _ = runs
    for rank in (0, 1):
        reference, resumed = ranks[rank]["mid_epoch"]["reference"], ranks[rank]["mid_epoch"]["resumed"]
        assert sorted(resumed) == ["loss", "multiclass_accuracy"]
        for key in reference:
            assert resumed[key] == pytest.approx(reference[key], rel=1e-9, abs=1e-12), key


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="two NCCL ranks need two GPUs")
def test_two_ranks_on_two_gpus_reduce_with_nccl(tmp_path):
    _torchrun(os.path.join(os.path.dirname(__file__), "ddp_cuda_worker.py"), tmp_path)
    ranks = [json.loads((tmp_path / f"cuda_rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["device"] for r in ranks] == ["cuda:0", "cuda:1"]
    assert all("nccl" in r["backend"] for r in ranks)
    assert ranks[0]["history"] == ranks[1]["history"] and ranks[0]["weights"] == ranks[1]["weights"]


def test_the_backend_follows_the_device_and_too_few_gpus_fail_clearly():
    from torchcb.distributed import backend_for, gpu_shortage

    assert backend_for("cpu", cuda_available=True) == "gloo"  # CPU ranks on a GPU machine
    assert backend_for(None, cuda_available=False) == "gloo"
    assert backend_for("cuda", cuda_available=True) == "cpu:gloo,cuda:nccl"
    assert gpu_shortage(None, processes=2, gpus=1).startswith("torchrun started 2 processes on this machine")
    assert gpu_shortage("cuda", processes=4, gpus=2) is not None
    assert gpu_shortage("cpu", processes=4, gpus=1) is None  # asked for the CPU: runs there
    assert gpu_shortage("cuda:0", processes=4, gpus=1) is None  # a device the user chose
    assert gpu_shortage(None, processes=2, gpus=0) is None  # no GPU at all: the CPU
