import math

import numpy as np
import pytest
import torch

from tests.conftest import Recorder
from torchcb import Trainer
from torchcb.callbacks import TerminateOnNaN


def _exploding_trainer():
    net = torch.nn.Linear(1, 1)
    return Trainer(net, torch.optim.SGD(net.parameters(), lr=1e30), loss="mse", device="cpu")


def _data():
    x = np.full((40, 1), 1e10, dtype=np.float32)
    return x, x * 3


def test_stops_at_the_first_invalid_loss_and_ends_the_epoch(capsys):
    trainer = _exploding_trainer()
    rec = Recorder()
    history = trainer.fit(*_data(), batch_size=4, epochs=5, verbose=0, callbacks=[TerminateOnNaN(), rec])
    out = capsys.readouterr().out
    batch = int(out.split("Batch ")[1].split(":")[0])
    assert f"Batch {batch}: Invalid loss, terminating training" in out
    assert rec.count("on_train_batch_end") == batch + 1
    assert len(history.history["loss"]) == 1
    loss = history.history["loss"][0]
    assert math.isnan(loss) or math.isinf(loss)


def test_raise_error_raises_and_no_train_end_runs():
    trainer = _exploding_trainer()
    rec = Recorder()
    with pytest.raises(RuntimeError, match="NaN or Inf loss encountered at batch"):
        trainer.fit(*_data(), batch_size=4, epochs=5, verbose=0, callbacks=[TerminateOnNaN(raise_error=True), rec])
    assert rec.count("on_train_end") == 0


def test_driven_by_hand_with_a_stub_model():
    class Stub:
        stop_training = False

    callback = TerminateOnNaN()
    callback.set_model(Stub())
    callback.on_batch_end(0, {"loss": 1.0})
    assert not callback.model.stop_training
    callback.on_batch_end(1, {"loss": float("inf")})
    assert callback.model.stop_training
