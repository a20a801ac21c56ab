"""FSDP2 under torchrun: 2 real gloo processes on the CPU (see tests/fsdp_worker.py)."""

import json
import os

import numpy as np
import pytest
import torch

from tests.test_distributed import _torchrun
from torchcb import sharded

WORKER = os.path.join(os.path.dirname(__file__), "fsdp_worker.py")

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not sharded.fsdp_available(),
    reason="FSDP2 (torch.distributed.fsdp.fully_shard) needs torch.distributed and torch 2.6 or later",
)


def _flat(weights):
    return np.concatenate([np.ravel(np.asarray(w, dtype=np.float64)) for w in weights])


def _close(a, b, atol=1e-6):
    return np.allclose(_flat(a), _flat(b), atol=atol)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    _torchrun(WORKER, out, args=("train",))
    return out, [json.loads((out / f"train{r}.json").read_text()) for r in (0, 1)]


def _save_then_resume(out, save, resume):
    """``save`` on 2 ranks, then ``resume`` on 1 process and on 2 ranks, all writing to ``out``."""
    _torchrun(WORKER, out, args=(save,))
    _torchrun(WORKER, out, processes=0, args=(resume,))
    _torchrun(WORKER, out, args=(resume,))
    return out


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """Saved after 2 epochs of 4 on 2 ranks; resumed on 1 process and on 2 ranks."""
    return _save_then_resume(tmp_path_factory.mktemp("resume"), "save", "resume")


def test_fsdp_trains_to_the_same_losses_and_weights_as_ddp(trained):
    _, ranks = trained
    for report in ranks:
        assert report["sharded"]
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert report["fsdp"][key] == pytest.approx(report["ddp"][key], rel=1e-6), key
        assert _close(report["fsdp_weights"], report["ddp_weights"])
    assert ranks[0]["fsdp"] == ranks[1]["fsdp"]


def test_a_module_its_user_sharded_is_used_as_it_is(trained):
    _, ranks = trained
    for report in ranks:
        assert report["user_sharded"]["loss"] == pytest.approx(report["ddp"]["loss"], rel=1e-6)


def test_evaluate_and_predict_run_with_uneven_shards(trained):
    _, ranks = trained
    assert ranks[0]["evaluate"] == ranks[1]["evaluate"]
    assert ranks[0]["evaluate"]["loss"] == pytest.approx(ranks[0]["fsdp"]["val_loss"][-1], rel=1e-6)
    assert ranks[0]["predict"] == ranks[1]["predict"] and len(ranks[0]["predict"]) == 5


def test_checkpoints_are_sharded_directories_written_by_every_rank(trained):
    out, _ = trained
    assert sorted(p.name for p in out.glob("ckpt-*")) == ["ckpt-1", "ckpt-2", "ckpt-3", "ckpt-4"]
    names = sorted(os.listdir(out / "ckpt-4"))
    assert names == [".metadata", "__0_0.distcp", "__1_0.distcp", "trainer_rank0.pt", "trainer_rank1.pt"]
    assert not [p for p in os.listdir(out) if p.endswith(".tmp") or p.endswith(".old")]


def test_weights_files_and_set_weights_under_fsdp(trained):
    out, ranks = trained
    for report in ranks:
        assert _close(report["load_weights_file"], report["fsdp_weights"], atol=0)
        assert _close(report["load_weights_dir"], report["fsdp_weights"], atol=0)
        assert _close(report["set_weights"], report["fsdp_weights"], atol=0)
    # one plain state_dict, loadable without torchcb
    state = torch.load(out / "weights.pt", weights_only=True)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    net.load_state_dict(state)
    assert _close([t.numpy() for t in net.state_dict().values()], ranks[0]["fsdp_weights"], atol=0)


def test_get_weights_gathers_on_rank_zero_only_when_asked(trained):
    _, ranks = trained
    assert ranks[0]["rank0_only_count"] == 4 and ranks[1]["rank0_only_count"] == 0
    assert [np.shape(w) for w in ranks[1]["fsdp_weights"]] == [(8, 4), (8,), (2, 8), (2,)]


def test_early_stopping_restores_the_best_weights_under_fsdp(trained):
    _, ranks = trained
    for report in ranks:
        stop = report["early_stopping"]
        assert len(stop["epochs"]) < 10
        assert _close(stop["restored"], stop["best"], atol=0)


def test_model_save_holds_every_ranks_epoch_sums(trained):
    # a ModelCheckpoint taken mid-epoch under DDP resumes to the uninterrupted History: its
    # epoch sums are both ranks' (rank 0's alone would give another epoch loss)
    _, ranks = trained
    for report in ranks:
        reference, resumed = report["ddp_mid"]["reference"], report["ddp_mid"]["resumed"]
        # the History is restored with the checkpoint: the whole run's epochs
        assert resumed["loss"] == pytest.approx(reference["loss"], rel=1e-6)
        assert resumed["accuracy"] == pytest.approx(reference["accuracy"], rel=1e-6)


def test_a_syncing_metric_computes_once_an_epoch_on_every_rank(trained):
    _, ranks = trained
    assert ranks[0]["computes"]["count"] == ranks[1]["computes"]["count"] == 2  # 4 batches an epoch, 2 epochs
    assert ranks[0]["computes"]["history"] == ranks[1]["computes"]["history"]
    assert ranks[0]["computes"]["history"]["counted"] == pytest.approx(ranks[0]["ddp"]["accuracy"][:2])


@pytest.mark.parametrize("world", [1, 2])
def test_resume_at_another_world_size_equals_the_uninterrupted_run(resumed, world):
    uninterrupted = json.loads((resumed / "uninterrupted0.json").read_text())
    for rank in range(world):
        report = json.loads((resumed / f"resumed_{world}_{rank}.json").read_text())
        # the checkpoint holds the History of the run that saved it: the resumed run goes on with it
        assert report["epoch"] == 2 and report["epochs"] == [0, 1, 2, 3]
        assert _close(report["weights"], uninterrupted["weights"], atol=1e-6)
        assert report["history"]["loss"] == pytest.approx(uninterrupted["history"]["loss"], rel=1e-6)


@pytest.fixture(scope="module")
def ema_resumed(tmp_path_factory):
    """use_ema and decay, saved after epoch 2 of 4 on 2 ranks; resumed on 1 process and on 2 ranks."""
    return _save_then_resume(tmp_path_factory.mktemp("ema"), "ema_save", "ema_resume")


@pytest.mark.parametrize("world", [1, 2])
def test_the_weight_average_and_decay_resume_from_a_sharded_checkpoint(ema_resumed, world):
    uninterrupted = json.loads((ema_resumed / "ema_uninterrupted0.json").read_text())
    assert not _close(uninterrupted["average"], uninterrupted["weights"])  # the average is not the weights
    for rank in range(world):
        report = json.loads((ema_resumed / f"ema_resumed_{world}_{rank}.json").read_text())
        assert report["decay"] == pytest.approx(0.01)
        assert _close(report["average"], uninterrupted["average"], atol=1e-6)
        assert _close(report["weights"], uninterrupted["weights"], atol=1e-6)


def test_the_weight_average_is_sharded_in_the_checkpoint_not_in_the_rank_files(ema_resumed):
    from torch.distributed.checkpoint import FileSystemReader

    saved = FileSystemReader(str(ema_resumed / "ema-2")).read_metadata().state_dict_metadata
    assert {k for k in saved if k.startswith("ema.")} == {"ema.0.weight", "ema.0.bias", "ema.2.weight", "ema.2.bias"}
    for rank in (0, 1):
        small = torch.load(ema_resumed / "ema-2" / f"trainer_rank{rank}.pt", weights_only=True)
        assert small["ema"] == {"updates": 8, "swapped": False}


def test_export_full_gives_a_plain_state_dict(resumed, tmp_path):
    from torchcb import export_full

    export_full(resumed / "half", tmp_path / "full.pt")
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    net.load_state_dict(torch.load(tmp_path / "full.pt", weights_only=True))
    half = json.loads((resumed / "half0.json").read_text())
    assert _close([t.numpy() for t in net.state_dict().values()], half["weights"], atol=0)


def test_a_rank_killed_mid_write_leaves_the_previous_backup_to_resume_from(tmp_path):
    run = _torchrun(WORKER, tmp_path, args=("kill",), check=False)
    assert run.returncode != 0 and "SIGKILL" in run.stderr
    backup = tmp_path / "backup"
    assert (backup / "latest.pt" / ".metadata").exists()  # the second epoch's backup, whole
    assert [p for p in os.listdir(backup) if p.endswith(".tmp")]  # the torn third one, beside it
    _torchrun(WORKER, tmp_path, args=("after_kill",))
    for rank in (0, 1):
        report = json.loads((tmp_path / f"after_kill{rank}.json").read_text())
        assert report["began"] == [2, 3]
    assert not backup.exists()  # removed at the end of the finished run


def test_the_export_command_writes_the_same_file(resumed, tmp_path):
    import subprocess
    import sys

    from torchcb import export_full

    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    run = subprocess.run(
        [sys.executable, "-m", "torchcb.export", str(resumed / "half"), str(tmp_path / "cli.pt")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    export_full(resumed / "half", tmp_path / "api.pt")
    cli, api = (torch.load(tmp_path / n, weights_only=True) for n in ("cli.pt", "api.pt"))
    assert cli.keys() == api.keys() and all(torch.equal(cli[k], api[k]) for k in cli)
