import math

import numpy as np
import pytest
import torch

from tests.conftest import Recorder
from torchcb import Trainer
from torchcb.callbacks import Callback, TerminateOnNaN
from torchcb.logs import device_reads


def _exploding_trainer():
    net = torch.nn.Linear(1, 1)
    return Trainer(net, torch.optim.SGD(net.parameters(), lr=1e30), loss="mse", device="cpu")


def _data():
    x = np.full((40, 1), 1e10, dtype=np.float32)
    return x, x * 3


def _first_bad_batch(out):
    return int(out.split("Batch ")[1].split(":")[0])


def test_check_every_1_stops_at_the_first_invalid_loss_as_keras_does(capsys):
    trainer = _exploding_trainer()
    rec = Recorder()
    history = trainer.fit(*_data(), batch_size=4, epochs=5, verbose=0, callbacks=[TerminateOnNaN(check_every=1), rec])
    out = capsys.readouterr().out
    batch = _first_bad_batch(out)
    assert f"Batch {batch}: Invalid loss, terminating training" in out
    assert rec.count("on_train_batch_end") == batch + 1
    assert len(history.history["loss"]) == 1
    loss = history.history["loss"][0]
    assert math.isnan(loss) or math.isinf(loss)


def test_grouped_check_reports_the_first_bad_batch_and_stops_within_its_epoch(capsys):
    trainer = _exploding_trainer()
    rec = Recorder()
    losses = []

    class Losses(Callback):
        def on_epoch_end(self, epoch, logs=None):
            losses.append(logs["loss"])

    history = trainer.fit(*_data(), batch_size=4, epochs=5, verbose=0, callbacks=[TerminateOnNaN(), rec, Losses()])
    batch = _first_bad_batch(capsys.readouterr().out)
    assert rec.count("on_train_batch_end") == 10  # the 10 batches of the epoch, under the 32 of a group
    assert len(history.epoch) == 1 and batch < 10


def test_a_bad_loss_in_the_last_batch_is_never_hidden(capsys):
    class NanAtLast(Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 9:
                logs.update_raw({"loss": torch.tensor(float("nan"))})

    net = torch.nn.Linear(1, 1)
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.01), loss="mse", device="cpu")
    x = np.ones((40, 1), dtype=np.float32)
    history = trainer.fit(x, x, batch_size=4, epochs=3, verbose=0, callbacks=[NanAtLast(), TerminateOnNaN()])
    assert "Batch 9: Invalid loss, terminating training" in capsys.readouterr().out
    assert len(history.epoch) == 1


def test_reads_back_once_per_group_of_batches():
    net = torch.nn.Linear(1, 1)
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.01), loss="mse", device="cpu")
    x = np.ones((256, 1), dtype=np.float32)
    with device_reads() as without:
        trainer.fit(x, x, batch_size=4, epochs=1, verbose=0)
    with device_reads() as with_callback:
        trainer.fit(x, x, batch_size=4, epochs=1, verbose=0, callbacks=[TerminateOnNaN(check_every=16)])
    assert with_callback.count - without.count == 64 // 16


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


def test_large_finite_losses_whose_sum_overflows_are_not_invalid(capsys):
    class Stub:
        stop_training = False

    callback = TerminateOnNaN(check_every=2)
    callback.set_model(Stub())
    for batch in range(2):  # each is finite in float32; their float32 sum is inf
        callback.on_train_batch_end(batch, {"loss": torch.tensor(3e38)})
    assert not callback.model.stop_training
    callback.on_train_batch_end(2, {"loss": torch.tensor(3e38)})
    callback.on_train_batch_end(3, {"loss": torch.tensor(float("-inf"))})
    assert callback.model.stop_training
    assert "Batch 3: Invalid loss" in capsys.readouterr().out


def test_check_every_must_be_positive():
    with pytest.raises(ValueError, match="check_every must be an int >= 1"):
        TerminateOnNaN(check_every=0)


@pytest.mark.parametrize("raise_error", [False, True])
def test_nan_weights_never_replace_a_good_checkpoint(tmp_path, capsys, raise_error):
    from tests.conftest import make_data, make_trainer
    from torchcb.callbacks import BackupAndRestore, ModelCheckpoint
    from torchcb.checkpoint import safe_load

    good = {}

    class PoisonAt(Callback):
        """Makes the weights NaN before optimizer step 7: that batch's loss, and every later one, is NaN."""

        def on_train_batch_begin(self, batch, logs=None):
            if self.model.optimizer.iterations == 6:
                good.update({k: v.clone() for k, v in self.model.module.state_dict().items()})
                with torch.no_grad():
                    self.model.module[0].weight.fill_(float("nan"))

    writers = [
        ModelCheckpoint(tmp_path / "weights.pt", save_freq=1, save_weights_only=True),
        ModelCheckpoint(tmp_path / "full.pt", save_freq=1),
        ModelCheckpoint(tmp_path / "epoch.pt"),  # at the epoch's end, after the stop
        BackupAndRestore(tmp_path / "backup", save_freq=1, delete_checkpoint=False),
    ]
    trainer = make_trainer()
    callbacks = [PoisonAt(), *writers, TerminateOnNaN(raise_error=raise_error)]  # checks 32 batches at a time
    if raise_error:
        with pytest.raises(RuntimeError, match="NaN or Inf loss encountered at batch 6"):
            trainer.fit(*make_data(64), batch_size=4, epochs=3, verbose=0, callbacks=callbacks)
    else:
        history = trainer.fit(*make_data(64), batch_size=4, epochs=3, verbose=0, callbacks=callbacks)
        assert len(history.epoch) == 1
        assert capsys.readouterr().out.count("Batch 6: Invalid loss, terminating training") == 1
    files = {
        "weights.pt": safe_load(tmp_path / "weights.pt"),
        "full.pt": safe_load(tmp_path / "full.pt")["module"],
        "backup": safe_load(tmp_path / "backup" / "latest.pt")["module"],
    }
    for name, weights in files.items():  # the state after step 6, the last good one
        assert all(torch.equal(weights[k], v) for k, v in good.items()), name
    assert not (tmp_path / "epoch.pt").exists()


class GroupsSeen(TerminateOnNaN):
    """TerminateOnNaN that records how fit hands it the batches (it keeps the batch hooks it inherits)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.groups, self.single = [], 0

    def on_train_batch_group_end(self, first_batch, outputs):
        self.groups.append((first_batch, [float(values["loss"]) for values in outputs]))
        super().on_train_batch_group_end(first_batch, outputs)


class BatchByBatch(GroupsSeen):
    """A subclass that overrides the Keras batch hook: it must be called batch by batch."""

    def on_batch_end(self, batch, logs=None):
        self.single += 1
        super().on_batch_end(batch, logs)


def _losses_of_each_batch(trainer, x):
    losses = []

    class Losses(Callback):
        def on_train_batch_end(self, batch, logs=None):
            losses.append(logs["loss"])

    return losses, Losses()


@pytest.mark.parametrize("verbose", [0, 1])
def test_fit_hands_it_the_step_losses_in_groups_of_check_every(verbose, capsys):
    net = torch.nn.Linear(1, 1)
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.01), loss="mse", device="cpu")
    x = np.linspace(0, 1, 40, dtype=np.float32).reshape(-1, 1)
    seen = GroupsSeen(check_every=4)
    losses, recorder = _losses_of_each_batch(trainer, x)
    trainer.fit(x, x, batch_size=2, epochs=2, verbose=verbose, shuffle=False, callbacks=[seen, recorder])
    # 20 batches an epoch: groups of 4 from batches 0, 4, ..., 16, then the next epoch's
    assert [first for first, _ in seen.groups] == [0, 4, 8, 12, 16] * 2
    assert [loss for _, group in seen.groups for loss in group] == pytest.approx(losses, rel=1e-6)
    assert seen.single == 0


def test_an_epoch_end_and_a_checkpoint_take_the_batches_of_a_partial_group(tmp_path):
    from torchcb.callbacks import ModelCheckpoint

    net = torch.nn.Linear(1, 1)
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.01), loss="mse", device="cpu")
    x = np.ones((20, 1), dtype=np.float32)
    seen = GroupsSeen(check_every=4)
    checkpoint = ModelCheckpoint(tmp_path / "w.pt", save_freq=3)  # a write after batches 2 and 5 (and 8)
    trainer.fit(x, x, batch_size=2, epochs=1, verbose=0, callbacks=[seen, checkpoint])
    assert [(first, len(group)) for first, group in seen.groups] == [(0, 3), (3, 3), (6, 3), (9, 1)]


def test_a_subclass_that_overrides_the_batch_hook_and_a_callback_that_changes_the_logs_before_it_get_batches():
    net = torch.nn.Linear(1, 1)
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.01), loss="mse", device="cpu")
    x = np.ones((8, 1), dtype=np.float32)
    overridden = BatchByBatch(check_every=4)
    trainer.fit(x, x, batch_size=2, epochs=1, verbose=0, callbacks=[overridden])
    assert overridden.single == 4 and overridden.groups == []

    class ChangesLogs(Callback):
        def on_train_batch_end(self, batch, logs=None):
            logs["loss"] = 0.0

    after_a_change = GroupsSeen(check_every=4)
    before_it = GroupsSeen(check_every=4)
    trainer.fit(x, x, batch_size=2, epochs=1, verbose=0, callbacks=[before_it, ChangesLogs(), after_a_change])
    assert len(before_it.groups) == 1 and after_a_change.groups == []


def test_a_step_that_returns_plain_numbers_is_checked_in_groups_too(capsys):
    class PlainLosses(Trainer):
        def train_step(self, batch):
            outputs = super().train_step(batch)
            return {"loss": float("nan") if self.state.batch == 5 else float(outputs["loss"])}

    net = torch.nn.Linear(1, 1)
    trainer = PlainLosses(net, torch.optim.SGD(net.parameters(), lr=0.01), loss="mse", device="cpu")
    x = np.ones((40, 1), dtype=np.float32)
    rec = Recorder()
    trainer.fit(x, x, batch_size=2, epochs=3, verbose=0, callbacks=[TerminateOnNaN(check_every=4), rec])
    assert "Batch 5: Invalid loss, terminating training" in capsys.readouterr().out
    assert rec.count("on_train_batch_end") == 8  # the group of batches 4 to 7 was checked after batch 7
