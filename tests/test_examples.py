"""The examples are stories a user tells: they must keep running and keep their promises."""

import importlib.util
import pathlib
import time

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_reaches_95_percent_validation_accuracy_in_under_a_minute(tmp_path, monkeypatch, capsys):
    pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    history = _load("quickstart").main()
    assert time.monotonic() - start < 60
    assert max(history["val_accuracy"]) >= 0.95
    assert "Epoch 1/" in capsys.readouterr().out


def test_loss_history_seed_example_records_one_loss_per_batch(capsys):
    losses = _load("loss_history").main()
    assert len(losses) == 20 * 8  # 20 epochs of ceil(1000 / 128) batches
    assert all(isinstance(loss, float) for loss in losses)


def test_json_lines_seed_example_streams_one_object_per_epoch(tmp_path, capsys):
    lines = _load("json_lines").main(str(tmp_path / "loss_log.json"))
    assert [line["epoch"] for line in lines] == [0, 1, 2, 3, 4]
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert capsys.readouterr().out.startswith("0\n1\n2\n3\n0\n")
