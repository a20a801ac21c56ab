import io
import re
import sys

import numpy as np
import pytest

from tests.conftest import make_data, make_trainer
from torchcb.callbacks import BackupAndRestore, Callback, ProgbarLogger
from torchcb.logs import device_reads


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _fit(verbose, samples=40, batch_size=4, epochs=2, **kwargs):
    trainer = make_trainer()
    x, y = make_data(samples)
    return trainer.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=verbose, **kwargs)


def test_pipe_gets_one_finished_line_per_epoch_in_keras_format(capsys):
    history = _fit(1, validation_split=0.2)
    out = capsys.readouterr().out
    assert "\b" not in out and "\r" not in out
    lines = out.splitlines()
    assert lines[0] == "Epoch 1/2" and lines[2] == "Epoch 2/2" and len(lines) == 4
    pattern = (
        r"^32/32 \[==============================\] - \d+s \d+(us|ms|s)/step - loss: (\d\.\d{4}) - accuracy: (\d\.\d{4})"
        r" - val_loss: (\d\.\d{4}) - val_accuracy: (\d\.\d{4})$"
    )
    match = re.match(pattern, lines[3])
    assert match, lines[3]
    assert float(match.group(2)) == pytest.approx(history.history["loss"][1], abs=1e-4)
    assert float(match.group(5)) == pytest.approx(history.history["val_accuracy"][1], abs=1e-4)


def test_verbose_2_is_one_line_per_epoch(capsys):
    _fit(2, epochs=3)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6
    assert re.match(r"^ - \d+s - loss: \d\.\d{4} - accuracy: \d\.\d{4}$", lines[1]), lines[1]


def test_steps_mode_counts_batches(capsys):
    trainer = make_trainer()
    x, y = make_data(40)
    trainer.fit(x, y, batch_size=4, epochs=1, verbose=1, callbacks=[ProgbarLogger(count_mode="steps")])
    assert capsys.readouterr().out.splitlines()[1].startswith("10/10 [")


def test_unknown_count_mode():
    with pytest.raises(ValueError, match="Unknown `count_mode`: batches"):
        ProgbarLogger(count_mode="batches")


def test_terminal_redraws_in_place_with_eta_and_reads_once_per_redraw(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(ProgbarLogger, "interval", 0.0)  # redraw at every batch
    with device_reads() as reads:
        _fit(1, samples=40, batch_size=4, epochs=1)
    out = terminal.getvalue()
    redraws = out.count("\r")
    assert redraws == 9 + 1  # batches 1..9 redraw, then the final line
    assert "ETA:" in out and "\b" in out
    assert " 4/40 [==>" in out
    assert out.endswith("\n") and out.count("\n") == 2
    # each redraw reads the pending batch in one transfer, plus the epoch averages
    assert reads.count == 9 + 1


def test_terminal_redraws_at_most_every_interval(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(ProgbarLogger, "interval", 3600.0)
    _fit(1, samples=400, batch_size=4, epochs=1)
    out = terminal.getvalue()
    assert out.count("\r") <= 2  # at most the first redraw and the final line


def test_evaluate_shows_a_bar_when_verbose(capsys):
    trainer = make_trainer()
    x, y = make_data(12)
    trainer.evaluate(x, y, batch_size=4, verbose=1)
    out = capsys.readouterr().out
    assert re.match(r"^3/3 \[=+\] - \d+s \d+(us|ms|s)/step - loss: \d\.\d{4} - accuracy: \d\.\d{4}\n$", out), out
    trainer.evaluate(x, y, verbose=0)
    assert capsys.readouterr().out == ""


def test_small_values_use_exponent_format(capsys):
    from torchcb.callbacks.progbar import Progbar

    bar = Progbar(target=2, dynamic=False)
    bar.update(2, [("loss", 0.0001234)], finalize=True)
    assert "loss: 1.2340e-04" in capsys.readouterr().out


def test_verbose_0_prints_nothing(capsys):
    _fit(0)
    assert capsys.readouterr().out == ""


def test_unknown_target_shows_unknown(capsys):
    from torchcb.callbacks.progbar import Progbar

    bar = Progbar(target=None, dynamic=True)
    bar.update(5, [("loss", 1.0)])
    assert "5/Unknown" in capsys.readouterr().out
    np.testing.assert_equal(bar.target, None)


class _InterruptAt(Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if self.model.optimizer.iterations == self.step:
            raise RuntimeError("interrupted")


def _interrupted_then_resumed(tmp_path, monkeypatch, first_verbose, progbar=None):
    """40 samples in batches of 4, interrupted after batch 5 of the first epoch, resumed on a terminal."""
    x, y = make_data(40)
    backup = BackupAndRestore(tmp_path / "backup", save_freq=1)
    with pytest.raises(RuntimeError, match="interrupted"):
        make_trainer().fit(x, y, batch_size=4, epochs=1, verbose=first_verbose, callbacks=[backup, _InterruptAt(6)])
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(ProgbarLogger, "interval", 0.0)  # redraw at every batch
    callbacks = [backup] + ([progbar] if progbar else [])
    history = make_trainer().fit(x, y, batch_size=4, epochs=1, verbose=1, callbacks=callbacks)
    return terminal.getvalue(), history


def test_a_bar_resumed_mid_epoch_starts_at_the_batch_it_resumes_from(tmp_path, monkeypatch):
    out, history = _interrupted_then_resumed(tmp_path, monkeypatch, first_verbose=1)
    assert out.startswith("Epoch 1/1\n")
    # batches 6..8 redraw (samples 28, 32, 36 of 40), then the final line
    counts = re.findall(r"\r\s*(\d+)/40 \[", out)
    assert counts == ["28", "32", "36", "40"]
    assert "\r28/40 [====================>.........] - ETA: " in out
    final = out.rsplit("\r", 1)[1]
    assert re.match(r"40/40 \[=+\] - \d+s \d+(us|ms|s)/step - loss: \d\.\d{4} - accuracy: \d\.\d{4}", final), final
    assert f"loss: {history.history['loss'][0]:.4f}" in final  # the epoch's average over all 10 batches


def test_a_bar_resumed_from_a_run_without_one_counts_from_the_batch_too(tmp_path, monkeypatch):
    out, _ = _interrupted_then_resumed(tmp_path, monkeypatch, first_verbose=0, progbar=ProgbarLogger("steps"))
    assert re.findall(r"\r\s*(\d+)/10 \[", out) == ["7", "8", "9", "10"]
