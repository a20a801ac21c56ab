import logging

import pytest

from tests.conftest import KerasStub, drive, make_data, make_trainer
from torchcb import utils
from torchcb.callbacks import (
    EarlyStopping,
    LearningRateScheduler,
    ModelCheckpoint,
    ReduceLROnPlateau,
    TerminateOnNaN,
)


@pytest.fixture
def interactive_logging_restored():
    yield
    utils.enable_interactive_logging()


def _every_callback_message(tmp_path):
    """Runs each built-in callback that has a verbose message, so that it speaks once or more."""
    drive(EarlyStopping(patience=0, verbose=1, restore_best_weights=True), [1.0, 0.5, 0.6])
    drive(ReduceLROnPlateau(patience=0, verbose=1), [1.0, 1.5], model=KerasStub())
    drive(LearningRateScheduler(lambda epoch: 0.01, verbose=1), [1.0])
    make_trainer().fit(
        *make_data(8),
        epochs=2,
        verbose=0,
        validation_split=0.25,
        callbacks=[ModelCheckpoint(str(tmp_path / "best.pt"), save_best_only=True, mode="max", verbose=1)],
    )
    nan = TerminateOnNaN(check_every=1)
    nan.set_model(KerasStub())
    nan.on_train_batch_end(3, {"loss": float("nan")})


EXPECTED = [
    "Epoch 00003: early stopping",
    "Restoring model weights from the end of the best epoch: 2.",
    "Epoch 00002: ReduceLROnPlateau reducing learning rate to",
    "Epoch 00001: LearningRateScheduler setting learning rate to 0.01.",
    "Epoch 00001: val_loss improved from -inf to",
    "Batch 3: Invalid loss, terminating training",
]


def test_callback_messages_go_to_stdout_by_default(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="torchcb")
    assert utils.is_interactive_logging_enabled()
    _every_callback_message(tmp_path)
    out = capsys.readouterr().out
    assert all(message in out for message in EXPECTED)
    assert [r for r in caplog.records if r.name == "torchcb"] == []


def test_after_disable_interactive_logging_they_go_to_the_torchcb_logger(
    tmp_path, capsys, caplog, interactive_logging_restored
):
    caplog.set_level(logging.INFO, logger="torchcb")
    utils.disable_interactive_logging()
    assert not utils.is_interactive_logging_enabled()
    _every_callback_message(tmp_path)
    assert capsys.readouterr().out == ""
    records = [r for r in caplog.records if r.name == "torchcb"]
    assert {r.levelno for r in records} == {logging.INFO}
    logged = [r.getMessage() for r in records]
    assert all(any(line.startswith(message) for line in logged) for message in EXPECTED)
    assert not any(line.startswith("\n") for line in logged)  # a record is a line of its own

    utils.enable_interactive_logging()
    caplog.clear()
    drive(EarlyStopping(patience=0, verbose=1), [1.0, 1.5])
    assert "Epoch 00002: early stopping" in capsys.readouterr().out
    assert [r for r in caplog.records if r.name == "torchcb"] == []


def test_the_switch_has_keras_3s_names():
    keras_utils = pytest.importorskip("keras.utils")
    for name in ("disable_interactive_logging", "enable_interactive_logging", "is_interactive_logging_enabled"):
        assert callable(getattr(keras_utils, name)) and callable(getattr(utils, name))


@pytest.mark.parametrize("verbose", [1, 2])
def test_the_progress_bar_follows_the_switch_too(verbose, capsys, caplog, interactive_logging_restored):
    caplog.set_level(logging.INFO, logger="torchcb")
    utils.disable_interactive_logging()
    make_trainer().fit(*make_data(12), batch_size=4, epochs=2, verbose=verbose)
    assert capsys.readouterr().out == ""
    logged = [r.getMessage() for r in caplog.records if r.name == "torchcb"]
    assert [line for line in logged if line.startswith("Epoch ")] == ["Epoch 1/2", "Epoch 2/2"]
    bars = [line for line in logged if not line.startswith("Epoch ")]
    assert len(bars) == 2 and all("loss:" in line and "\b" not in line and "\r" not in line for line in bars)
    if verbose == 1:
        assert all(line.startswith("12/12 [==============================]") for line in bars)
