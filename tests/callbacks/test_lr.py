import math

import numpy as np
import pytest
import torch

from tests.conftest import KerasStub, make_data, make_trainer
from torchcb import Trainer
from torchcb.callbacks import LearningRateScheduler, ReduceLROnPlateau


def _lr_trace(callback, values, lr=0.1):
    model = KerasStub(lr=lr)
    trace = []

    class Trace:
        pass

    callback.set_model(model)
    callback.set_params({"epochs": len(values), "do_validation": True})
    callback.on_train_begin({})
    for epoch, value in enumerate(values):
        callback.on_epoch_begin(epoch, {})
        logs = {"val_loss": value}
        callback.on_epoch_end(epoch, logs)
        trace.append((logs.get("lr"), model.optimizer.lr))
    return trace


# ---------------------------------------------------------------- ReduceLROnPlateau


def test_reduce_lr_cooldown_trace_matches_keras():
    # patience 1, cooldown 2, no improvement after the first epoch: reductions at epochs 1 and 3
    trace = _lr_trace(ReduceLROnPlateau(factor=0.1, patience=1, cooldown=2), [1.0, 1.0, 1.0, 1.0])
    assert [after for _, after in trace] == pytest.approx([0.1, 0.01, 0.01, 0.001])
    assert [logged for logged, _ in trace] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01]
    )  # the rate before the epoch's change


def test_reduce_lr_patience_and_min_delta():
    callback = ReduceLROnPlateau(factor=0.5, patience=2, min_delta=0.1)
    trace = _lr_trace(callback, [1.0, 0.95, 0.92, 0.5, 0.45, 0.44])
    assert [after for _, after in trace] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.05, 0.025])


def test_reduce_lr_stops_at_min_lr_compared_in_float32():
    trace = _lr_trace(ReduceLROnPlateau(factor=0.5, patience=0, min_lr=0.001), [1.0] * 6, lr=0.004)
    assert [after for _, after in trace] == pytest.approx([0.004, 0.002, 0.001, 0.001, 0.001, 0.001])


def test_reduce_lr_arguments():
    with pytest.raises(ValueError, match="ReduceLROnPlateau does not support a factor >= 1.0. Got 1.5"):
        ReduceLROnPlateau(factor=1.5)
    with pytest.warns(
        DeprecationWarning, match="`epsilon` argument is deprecated and will be removed, use `min_delta` instead."
    ):
        callback = ReduceLROnPlateau(epsilon=0.5)
    assert callback.min_delta == -0.5 and not hasattr(callback, "epsilon")  # signed for np.less, as in Keras
    with pytest.raises(TypeError, match="unexpected arguments: factr"):
        ReduceLROnPlateau(factr=0.5)


def test_reduce_lr_missing_monitor_warns_and_still_logs_lr():
    callback = ReduceLROnPlateau(monitor="val_acc")
    callback.set_model(KerasStub())
    callback.on_train_begin({})
    logs = {"loss": 1.0}
    with pytest.warns(
        RuntimeWarning,
        match="Reduce LR on plateau conditioned on metric `val_acc` which is not available. Available metrics are: loss",
    ):
        callback.on_epoch_end(0, logs)
    assert logs["lr"] == 0.1


def test_reduce_lr_verbose_message(capsys):
    _lr_trace(ReduceLROnPlateau(factor=0.5, patience=0, verbose=1), [1.0, 1.0])
    assert "\nEpoch 00002: ReduceLROnPlateau reducing learning rate to 0.05.\n" in capsys.readouterr().out


def test_reduce_lr_state_is_reset_between_fits():
    callback = ReduceLROnPlateau(factor=0.5, patience=1)
    _lr_trace(callback, [0.1, 0.1])
    trace = _lr_trace(callback, [5.0, 4.0])
    assert [after for _, after in trace] == [0.1, 0.1]


def test_reduce_lr_end_to_end_keeps_param_group_ratios_and_logs_lr():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    optimizer = torch.optim.SGD(
        [{"params": net[0].parameters(), "lr": 0.1}, {"params": net[1].parameters(), "lr": 0.02}]
    )
    trainer = Trainer(net, optimizer, loss="sparse_categorical_crossentropy", device="cpu")
    history = trainer.fit(
        *make_data(8),
        epochs=3,
        verbose=0,
        callbacks=[ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0)],
    )
    # epoch 0 improves on inf; each later epoch halves the rate, logged before the change
    assert history.history["lr"] == pytest.approx([0.1, 0.1, 0.05])
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.025, 0.005])


# ---------------------------------------------------------------- LearningRateScheduler


def test_scheduler_two_and_one_argument_forms():
    assert [
        after for _, after in _lr_trace(LearningRateScheduler(lambda epoch, lr: lr / 2), [0, 0, 0])
    ] == pytest.approx([0.05, 0.025, 0.0125])
    assert [
        after for _, after in _lr_trace(LearningRateScheduler(lambda epoch: 0.1 * (epoch + 1)), [0, 0])
    ] == pytest.approx([0.1, 0.2])

    def with_default(epoch, lr=None):
        return 0.3 if lr is not None else 0.7

    assert _lr_trace(LearningRateScheduler(with_default), [0])[0][1] == 0.3


def test_scheduler_type_error_inside_the_schedule_is_not_swallowed():
    def broken(epoch, lr):
        return lr + "fast"

    with pytest.raises(TypeError, match="unsupported operand"):
        _lr_trace(LearningRateScheduler(broken), [0])


@pytest.mark.parametrize("value", [np.float32(0.25), np.float64(0.25), torch.tensor(0.25), 0.25])
def test_scheduler_accepts_real_numbers(value):
    assert _lr_trace(LearningRateScheduler(lambda epoch: value), [0])[0][1] == 0.25


@pytest.mark.parametrize("value", [1, "0.1", None, float("nan"), torch.tensor([0.1, 0.2])])
def test_scheduler_rejects_anything_else(value):
    with pytest.raises(ValueError, match='The output of the "schedule" function should be float. Got: '):
        _lr_trace(LearningRateScheduler(lambda epoch: value), [0])


def test_scheduler_needs_an_lr_attribute():
    class NoLr:
        stop_training = False
        optimizer = object()

    callback = LearningRateScheduler(lambda epoch: 0.1)
    callback.set_model(NoLr())
    with pytest.raises(ValueError, match='Optimizer must have a "lr" attribute.'):
        callback.on_epoch_begin(0, {})


def test_scheduler_seed_example_end_to_end(capsys):
    # The tf.keras blog post: keep the rate for 10 epochs, then decay it by exp(-0.1) per epoch.
    def scheduler(epoch, lr):
        if epoch < 10:
            return lr
        return lr * torch.exp(torch.tensor(-0.1))

    trainer = make_trainer(lr=0.01)
    history = trainer.fit(*make_data(8), epochs=15, verbose=0, callbacks=[LearningRateScheduler(scheduler, verbose=1)])
    expected = [0.01] * 10 + [0.01 * math.exp(-0.1 * k) for k in range(1, 6)]
    assert history.history["lr"] == pytest.approx(expected, rel=1e-6)
    assert "\nEpoch 00011: LearningRateScheduler setting learning rate to 0.009048" in capsys.readouterr().out


def test_scheduler_epoch_is_absolute_with_initial_epoch():
    seen = []
    trainer = make_trainer()
    trainer.fit(
        *make_data(8),
        epochs=5,
        initial_epoch=3,
        verbose=0,
        callbacks=[LearningRateScheduler(lambda e, lr: seen.append(e) or lr)],
    )
    assert seen == [3, 4]
