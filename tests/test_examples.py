"""The examples are stories a user tells: they must keep running and keep their promises."""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest
import torch

from torchcb import sharded

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_reaches_95_percent_and_reloads_its_best_checkpoint(tmp_path, capsys):
    pytest.importorskip("sklearn")
    start = time.monotonic()
    result = _load("quickstart").main(str(tmp_path / "runs"))
    assert time.monotonic() - start < 60
    history = result["history"]
    assert max(history["val_accuracy"]) >= 0.95
    assert result["test"]["accuracy"] >= 0.95
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["best.pt", "log.csv", "tensorboard"]
    rows = (tmp_path / "runs" / "log.csv").read_text().splitlines()
    assert rows[0] == "epoch,accuracy,loss,lr,val_accuracy,val_loss" and len(rows) == len(history["loss"]) + 1
    out = capsys.readouterr().out
    assert "Epoch 1/" in out and "test accuracy of the best checkpoint" in out


def test_loss_history_seed_example_records_one_loss_per_batch(capsys):
    losses = _load("loss_history").main()
    assert len(losses) == 20 * 8  # 20 epochs of ceil(1000 / 128) batches
    assert all(isinstance(loss, float) for loss in losses)


def test_json_lines_seed_example_streams_one_object_per_epoch(tmp_path, capsys):
    lines = _load("json_lines").main(str(tmp_path / "loss_log.json"))
    assert [line["epoch"] for line in lines] == [0, 1, 2, 3, 4]
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert capsys.readouterr().out.startswith("0\n1\n2\n3\n0\n")


def test_ddp_example_runs_as_a_plain_script_too(tmp_path, capsys):
    pytest.importorskip("sklearn")
    history = _load("ddp").main(str(tmp_path / "ddp"))
    assert max(history["val_accuracy"]) >= 0.93
    assert "1 process(es)" in capsys.readouterr().out


@pytest.mark.skipif(not sharded.fsdp_available(), reason="strategy='fsdp' needs torch 2.6 or later")
def test_fsdp_example_runs_as_a_plain_script_and_exports_a_plain_state_dict(tmp_path, capsys):
    pytest.importorskip("sklearn")
    history = _load("fsdp").main(str(tmp_path / "fsdp"))
    assert max(history["val_accuracy"]) >= 0.93
    assert "1 process(es)" in capsys.readouterr().out
    assert (tmp_path / "fsdp" / "best" / ".metadata").exists() and (tmp_path / "fsdp" / "best_full.pt").exists()


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_the_distributed_examples_run_under_torchrun_on_two_ranks(name, tmp_path):
    pytest.importorskip("sklearn")
    if not torch.distributed.is_available() or (name == "fsdp" and not sharded.fsdp_available()):
        pytest.skip("needs torch.distributed (and torch 2.6 or later for strategy='fsdp')")
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run = subprocess.run(
        [*command, str(EXAMPLES / f"{name}.py")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    found = re.search(r"2 process\(es\), best validation accuracy ([0-9.]+)", run.stdout)
    assert found is not None and float(found.group(1)) >= 0.93, run.stdout[-2000:]
    if name == "fsdp":  # the sharded best checkpoint, exported to one plain state_dict
        plain = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
        plain.load_state_dict(torch.load(tmp_path / "runs" / "fsdp" / "best_full.pt", weights_only=True))
        assert (tmp_path / "runs" / "fsdp" / "best" / ".metadata").exists()
