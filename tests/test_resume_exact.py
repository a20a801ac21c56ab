"""Resuming from a full checkpoint trains on exactly as a run never interrupted: every weight bit for bit."""

import math

import pytest
import torch

from torchcb import Trainer
from torchcb import backend as K
from torchcb.callbacks import BackupAndRestore, Callback, ModelCheckpoint, ReduceLROnPlateau, TorchScheduler
from torchcb.checkpoint import CheckpointError

EPOCHS, SAVED_AT = 4, 2
BATCH_SIZE = 4  # 30 samples: 8 batches an epoch, the last one of 2


def _data():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(30, 4, generator=generator), torch.randn(30, 1, generator=generator)


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.2), torch.nn.Tanh(), torch.nn.Linear(8, 1))


class _Interrupt(Callback):
    """Raises as the ``at``-th batch of the run (1-based, over every epoch) begins."""

    def __init__(self, at):
        super().__init__()
        self.at, self.seen = at, 0

    def on_train_batch_begin(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            raise KeyboardInterrupt


def _plain(value):
    """Whether ``value`` is made only of tensors, numbers, strings, None, lists, tuples and dicts."""
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (torch.Tensor, bool, int, float, str))


def _checked(path):
    state = torch.load(path, weights_only=True)
    assert _plain(state)
    return state


def _resumed(build, route, tmp_path):
    """Train to ``EPOCHS`` once uninterrupted and once through ``route``; returns both trainers.

    ``build(configure)`` makes a trainer and its callbacks with the same initial weights;
    with ``configure=False`` it is a fresh trainer that leaves the hyperparameters at
    torch's defaults: the checkpoint must bring them back.
    """
    x, y = _data()
    fit = {"batch_size": BATCH_SIZE, "verbose": 0}
    uninterrupted, callbacks = build(True)
    torch.manual_seed(7)
    uninterrupted.fit(x, y, epochs=EPOCHS, callbacks=callbacks, **fit)

    first, callbacks = build(True)
    fresh, fresh_callbacks = build(False)
    torch.manual_seed(7)
    path = tmp_path / "checkpoint.pt"
    if route == "model.save after fit":
        first.fit(x, y, epochs=SAVED_AT, callbacks=callbacks, **fit)
        first.model.save(path)
    elif route == "ModelCheckpoint":
        checkpoint = ModelCheckpoint(str(path), save_weights_only=False)
        first.fit(x, y, epochs=SAVED_AT, callbacks=[*callbacks, checkpoint], **fit)
    else:  # BackupAndRestore, interrupted mid-epoch, resumed at the batch after its last backup
        backup_dir = tmp_path / "backup"
        with pytest.raises(KeyboardInterrupt):
            first.fit(
                x, y, epochs=EPOCHS, callbacks=[*callbacks, BackupAndRestore(backup_dir, save_freq=3), _Interrupt(14)],
                **fit,
            )  # fmt: skip
        assert _checked(backup_dir / "latest.pt")["batch"] == 4  # the backup of the 12th batch: epoch 2, batch 4
        fresh.fit(x, y, epochs=EPOCHS, callbacks=[*fresh_callbacks, BackupAndRestore(backup_dir, save_freq=3)], **fit)
        return uninterrupted, fresh
    assert _checked(path)["epoch"] == SAVED_AT
    assert fresh.load_checkpoint(path) == SAVED_AT
    fresh.fit(x, y, epochs=EPOCHS, callbacks=fresh_callbacks, **fit)
    return uninterrupted, fresh


def _assert_same_weights(a, b):
    state_a, state_b = a.module.state_dict(), b.module.state_dict()
    assert list(state_a) == list(state_b)
    assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)
    assert a.model.optimizer.iterations == b.model.optimizer.iterations == EPOCHS * 8


ROUTES = ["model.save after fit", "ModelCheckpoint", "BackupAndRestore mid-epoch"]


@pytest.mark.parametrize("route", ROUTES)
def test_sgd_with_keras_2_decay_resumes_bit_for_bit(route, tmp_path):
    def build(configure):
        net = _net()
        trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.01), loss="mse", device="cpu")
        if configure:  # Keras 2's SGD(lr=0.1, momentum=0.9, decay=0.05), through the model facade
            optimizer = trainer.model.optimizer
            K.set_value(optimizer.lr, 0.1)
            optimizer.momentum = 0.9
            K.set_value(optimizer.decay, 0.05)
        return trainer, []

    uninterrupted, resumed = _resumed(build, route, tmp_path)
    _assert_same_weights(uninterrupted, resumed)
    assert K.get_value(resumed.model.optimizer.decay) == 0.05
    assert resumed.optimizer.param_groups[0]["momentum"] == 0.9 and float(resumed.model.optimizer.lr) == 0.1


@pytest.mark.parametrize("route", ROUTES)
def test_adam_with_its_keras_2_arguments_resumes_bit_for_bit(route, tmp_path):
    def build(configure):
        net = _net()
        trainer = Trainer(net, torch.optim.Adam(net.parameters()), loss="mse", device="cpu")
        if configure:  # Keras 2's Adam(lr=0.02, beta_1=0.8, epsilon=1e-6, decay=0.01)
            optimizer = trainer.model.optimizer
            optimizer.lr = 0.02
            optimizer.beta_1 = 0.8
            K.set_value(optimizer.epsilon, 1e-6)
            optimizer.decay = 0.01
        return trainer, []

    uninterrupted, resumed = _resumed(build, route, tmp_path)
    _assert_same_weights(uninterrupted, resumed)
    group = resumed.optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (0.02, (0.8, 0.999), 1e-6)
    assert float(resumed.model.optimizer.decay) == 0.01
    assert torch.equal(
        uninterrupted.optimizer.state_dict()["state"][0]["exp_avg"],
        resumed.optimizer.state_dict()["state"][0]["exp_avg"],
    )


class _ShapedCosine(torch.optim.lr_scheduler.CosineAnnealingLR):
    """Holds a function in its state_dict, as OneCycleLR's ``anneal_func`` before torch 2.4."""

    def __init__(self, optimizer, T_max):
        self.shape = math.cos
        super().__init__(optimizer, T_max=T_max)


@pytest.mark.parametrize(
    "scheduler",
    [
        lambda optimizer: TorchScheduler(torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=3)),
        lambda optimizer: TorchScheduler(
            torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.3, total_steps=EPOCHS * 8), interval="batch"
        ),
        lambda optimizer: ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0),
        lambda optimizer: TorchScheduler(_ShapedCosine(optimizer, T_max=EPOCHS)),
    ],
    ids=["CosineAnnealingLR", "OneCycleLR per batch", "ReduceLROnPlateau", "a function in the scheduler's state"],
)
def test_a_learning_rate_schedule_saved_after_fit_resumes_bit_for_bit(scheduler, tmp_path):
    # fit(epochs=2); model.save(path) -- then, in a new trainer, load_checkpoint(path); fit(epochs=4):
    # the schedule goes on from where the first fit left it, not from its start
    def build(configure):
        net = _net()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.5)
        return Trainer(net, optimizer, loss="mse", device="cpu"), [scheduler(optimizer)]

    uninterrupted, resumed = _resumed(build, "model.save after fit", tmp_path)
    _assert_same_weights(uninterrupted, resumed)
    assert resumed.optimizer.param_groups[0]["lr"] == uninterrupted.optimizer.param_groups[0]["lr"]
    assert resumed.history.history["lr"] == uninterrupted.history.history["lr"]


def test_the_decay_in_a_checkpoint_is_checked_and_one_without_it_keeps_the_trainers(tmp_path):
    net = _net()
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", device="cpu")
    trainer.model.optimizer.decay = 0.5
    trainer.model.save(tmp_path / "full.pt")
    state = torch.load(tmp_path / "full.pt", weights_only=True)
    assert state["decay"] == 0.5

    trainer.model.optimizer.decay = 0.25
    del state["decay"]  # as torchcb wrote it before the decay was saved
    torch.save(state, tmp_path / "older.pt")
    trainer.load_checkpoint(tmp_path / "older.pt")
    assert float(trainer.model.optimizer.decay) == 0.25

    state["decay"] = -1.0
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt.*decay must be a number >= 0, got -1\.0"):
        trainer.load_checkpoint(tmp_path / "bad.pt")
    trainer.load_checkpoint(tmp_path / "full.pt")
    assert float(trainer.model.optimizer.decay) == 0.5
