import os
import pickle
import warnings

import pytest
import torch

from tests.conftest import KerasStub
from torchcb import Trainer, sharded
from torchcb.callbacks import (
    BackupAndRestore,
    Callback,
    CSVLogger,
    EarlyStopping,
    LambdaCallback,
    ModelCheckpoint,
    TorchScheduler,
)


def _trainer(metrics=("accuracy",), **options):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.3), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    return Trainer(
        net, optimizer, loss="sparse_categorical_crossentropy", metrics=list(metrics), device="cpu", **options
    )


def _data():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=generator)
    return x, (x[:, 0] > 0).long()


class InterruptAt(Callback):
    """Raises once, after the given optimizer step, like a crash in the middle of training."""

    def __init__(self, step):
        super().__init__()
        self.step = step
        self.fired = False

    def on_train_batch_end(self, batch, logs=None):
        if not self.fired and self.model.optimizer.iterations == self.step:
            self.fired = True
            raise RuntimeError("interrupted")


def _same_weights(a, b):
    return all(torch.equal(a.module.state_dict()[k], v) for k, v in b.module.state_dict().items())


def _fit(trainer, tmp_path, extra, name, verbose=0):
    x, y = _data()
    scheduler = TorchScheduler(torch.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=1, gamma=0.9))
    callbacks = [*extra, EarlyStopping(monitor="val_loss", patience=2), scheduler, CSVLogger(tmp_path / f"{name}.csv")]
    return trainer.fit(x, y, batch_size=8, epochs=5, verbose=verbose, validation_split=0.25, callbacks=callbacks)


@pytest.mark.parametrize("save_freq", ["epoch", 1, 4])
@pytest.mark.parametrize("interrupt_at", [3, 6, 13, 20])
def test_resume_after_an_exception_is_bitwise_equal_to_an_uninterrupted_fit(tmp_path, save_freq, interrupt_at):
    reference = _trainer()
    reference_history = _fit(reference, tmp_path, [], "reference")

    trainer = _trainer()
    backup = BackupAndRestore(tmp_path / "backup", save_freq=save_freq)
    interrupt = InterruptAt(interrupt_at)
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit(trainer, tmp_path, [backup, interrupt], "resumed")
    torch.manual_seed(1234)  # the resumed run restores every random state itself
    history = _fit(_trainer(), tmp_path, [backup, interrupt], "resumed")

    resumed = history.model.module if hasattr(history.model, "module") else None
    assert resumed is not None
    for key, value in reference.module.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    assert history.epoch == reference_history.epoch
    assert history.history == reference_history.history
    assert (tmp_path / "resumed.csv").read_text() == (tmp_path / "reference.csv").read_text()
    assert not (tmp_path / "backup").exists()


def test_resume_at_an_epoch_end_steps_the_schedule_without_a_pytorch_ordering_warning(tmp_path):
    backup = BackupAndRestore(tmp_path / "backup", save_freq=1)
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit(_trainer(), tmp_path, [backup, InterruptAt(6)], "resumed")  # batch 6 ends the first epoch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _trainer()
        history = _fit(trainer, tmp_path, [backup, InterruptAt(6)], "resumed")
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    assert history.history["lr"] == pytest.approx([0.01 * 0.9**epoch for epoch in history.epoch])
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.9 ** len(history.epoch))


def test_resume_from_a_model_checkpoint_with_one_call(tmp_path):
    reference = _trainer()
    _fit(reference, tmp_path, [], "reference")

    first = _trainer()
    with pytest.raises(RuntimeError):
        _fit(first, tmp_path, [ModelCheckpoint(tmp_path / "last.pt"), InterruptAt(20)], "resumed")
    second = _trainer()
    assert second.load_checkpoint(tmp_path / "last.pt") == 3  # step 20 falls in the fourth epoch of 6 batches
    _fit(second, tmp_path, [ModelCheckpoint(tmp_path / "last.pt")], "resumed")
    for key, value in reference.module.state_dict().items():
        assert torch.equal(second.module.state_dict()[key], value), key


def test_full_checkpoint_holds_every_callback_state_after_the_round(tmp_path):
    trainer = _trainer()
    x, y = _data()
    trainer.fit(
        x,
        y,
        epochs=2,
        batch_size=8,
        verbose=0,
        validation_split=0.25,
        callbacks=[ModelCheckpoint(tmp_path / "m.pt"), EarlyStopping(patience=5), CSVLogger(tmp_path / "l.csv")],
    )
    from torchcb.checkpoint import safe_load

    state = safe_load(tmp_path / "m.pt")
    assert sorted(state["callbacks"]) == ["BaseLogger", "CSVLogger", "EarlyStopping", "History", "ModelCheckpoint"]
    # written after History had recorded the epoch, though ModelCheckpoint comes first in the list
    assert state["callbacks"]["History"]["epoch"] == [0, 1]
    assert state["epoch"] == 2 and state["batch"] == 0


def test_double_checkpoint_falls_back_to_the_previous_backup(tmp_path):
    trainer = _trainer()
    backup = BackupAndRestore(tmp_path / "backup", double_checkpoint=True, delete_checkpoint=False)
    x, y = _data()
    trainer.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[backup])
    assert sorted(os.listdir(tmp_path / "backup")) == ["latest.pt", "latest.pt.bkp"]
    (tmp_path / "backup" / "latest.pt").write_bytes(b"torn")
    resumed = _trainer()
    began = []

    class Began(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            began.append(epoch)

    with pytest.warns(RuntimeWarning, match="resuming from .*latest.pt.bkp"):
        history = resumed.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[backup, Began()])
    assert began == [1, 2]  # the .bkp copy was written after epoch 0
    assert history.epoch == [0, 1, 2]  # the restored History goes on


def test_user_files_in_the_backup_dir_are_kept(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    x, y = _data()
    _trainer().fit(x, y, epochs=1, verbose=0, callbacks=[BackupAndRestore(tmp_path)])
    assert os.listdir(tmp_path) == ["notes.txt"]


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_malicious_backup_is_refused_and_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "backup").mkdir()
    with open(tmp_path / "backup" / "latest.pt", "wb") as f:
        pickle.dump({"format": "torchcb.checkpoint", "module": Payload()}, f, protocol=2)
    steps = []
    trainer = _trainer()
    trainer.train_step = lambda batch: steps.append(1)
    with pytest.raises(ValueError, match="Refusing to load"):
        trainer.fit(*_data(), epochs=1, verbose=0, callbacks=[BackupAndRestore(tmp_path / "backup")])
    assert not (tmp_path / "pwned").exists() and steps == []


def test_an_unwritable_backup_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    steps = []
    trainer = _trainer()
    trainer.train_step = lambda batch: steps.append(1)
    with pytest.raises(PermissionError, match=r"BackupAndRestore backup_dir: cannot write to .*file/backup"):
        trainer.fit(*_data(), epochs=1, verbose=0, callbacks=[BackupAndRestore(blocker / "backup")])
    assert steps == []


@pytest.mark.parametrize("save_freq", ["batch", 0.15, 0, -3])
def test_invalid_arguments(save_freq):
    with pytest.raises(ValueError, match="Invalid value for argument save_freq"):
        BackupAndRestore("dir", save_freq=save_freq)
    with pytest.raises(ValueError, match="Empty `backup_dir` argument passed"):
        BackupAndRestore("")


def test_needs_torchcb_trainer(tmp_path):
    callback = BackupAndRestore(tmp_path)
    callback.set_model(KerasStub())
    with pytest.raises(ValueError, match="needs torchcb's Trainer"):
        callback.on_train_begin({})


def test_a_full_checkpoint_saved_at_train_end_holds_the_callback_states(tmp_path):
    class SaveAtEnd(Callback):
        def on_train_end(self, logs=None):
            self.model.save(tmp_path / "end.pt")

    from torchcb.checkpoint import safe_load

    _trainer().fit(*_data(), epochs=2, verbose=0, callbacks=[SaveAtEnd(), EarlyStopping(monitor="loss", patience=5)])
    state = safe_load(tmp_path / "end.pt")
    assert state["callbacks"]["History"]["epoch"] == [0, 1] and "EarlyStopping" in state["callbacks"]


def test_a_save_asked_for_in_on_train_error_is_written(tmp_path):
    from torchcb.checkpoint import safe_load

    class SaveOnError(Callback):
        def on_train_error(self, error):
            self.model.save(tmp_path / "crash.pt")

    trainer = _trainer()
    with pytest.raises(RuntimeError, match="interrupted"):
        trainer.fit(*_data(), batch_size=8, epochs=3, verbose=0, callbacks=[SaveOnError(), InterruptAt(5)])
    assert safe_load(tmp_path / "crash.pt")["step"] == 5
    loaded = _trainer()
    loaded.load_checkpoint(tmp_path / "crash.pt")
    assert _same_weights(loaded, trainer)


def test_a_save_in_a_begin_hook_holds_the_state_of_that_moment(tmp_path):
    from torchcb.checkpoint import safe_load

    after_epoch = {}

    class SaveAtBegins(Callback):
        def on_train_begin(self, logs=None):
            self.model.save(tmp_path / "begin.pt")

        def on_epoch_begin(self, epoch, logs=None):
            self.model.save(tmp_path / f"epoch{epoch}.pt")

        def on_epoch_end(self, epoch, logs=None):
            after_epoch[epoch] = {k: v.clone() for k, v in self.model.module.state_dict().items()}

    trainer = _trainer()
    initial = {k: v.clone() for k, v in trainer.module.state_dict().items()}
    trainer.fit(*_data(), batch_size=8, epochs=2, verbose=0, callbacks=[SaveAtBegins()])  # 8 batches an epoch
    begin, second = safe_load(tmp_path / "begin.pt"), safe_load(tmp_path / "epoch1.pt")
    assert begin["step"] == 0 and all(torch.equal(begin["module"][k], v) for k, v in initial.items())
    assert second["step"] == 8 and second["epoch"] == 1
    assert all(torch.equal(second["module"][k], v) for k, v in after_epoch[0].items())


def test_a_run_that_had_decided_to_stop_stops_again_when_resumed(tmp_path):
    class DiesInTrainEnd(Callback):
        def on_train_end(self, logs=None):
            raise RuntimeError("killed before the backup was deleted")

    def callbacks(*extra):
        stop = EarlyStopping(monitor="loss", min_delta=10.0, patience=1, restore_best_weights=True)
        return [*extra, stop, BackupAndRestore(tmp_path / "backup")]

    first = _trainer()
    with pytest.raises(RuntimeError, match="killed"):
        first.fit(*_data(), batch_size=8, epochs=10, verbose=0, callbacks=callbacks(DiesInTrainEnd()))
    assert (tmp_path / "backup" / "latest.pt").exists()
    again = _trainer()
    batches = []
    counter = LambdaCallback(on_train_batch_end=lambda batch, logs: batches.append(batch))
    history = again.fit(*_data(), batch_size=8, epochs=10, verbose=0, callbacks=callbacks(counter))
    assert batches == [] and history.epoch == [0, 1]  # EarlyStopping had stopped after epoch 1
    assert not (tmp_path / "backup").exists()
    reference = _trainer()
    reference.fit(*_data(), batch_size=8, epochs=10, verbose=0, callbacks=callbacks()[:1])
    assert _same_weights(again, reference)  # the best weights, restored at the end as in one run


class InterruptAfterBatches(InterruptAt):
    """Raises once, after the given number of batches (mid accumulation group: no optimizer step)."""

    def on_train_batch_end(self, batch, logs=None):
        self.step -= 1
        if self.step == 0:
            raise RuntimeError("interrupted")


@pytest.mark.parametrize("interrupt_at", [2, 5, 7, 13])
def test_accumulated_gradients_resume_bitwise_mid_group(tmp_path, interrupt_at):
    # 6 batches an epoch, groups of 4: steps after batches 4 and 6 (a partial group at the epoch's end)
    reference = _trainer(accumulate_steps=4)
    reference_history = _fit(reference, tmp_path, [], "reference")
    backup = BackupAndRestore(tmp_path / "backup", save_freq=1)
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit(_trainer(accumulate_steps=4), tmp_path, [backup, InterruptAfterBatches(interrupt_at)], "resumed")
    resumed = _trainer(accumulate_steps=4)
    history = _fit(resumed, tmp_path, [backup], "resumed")
    assert _same_weights(resumed, reference)
    assert history.history == reference_history.history


def test_a_fit_cut_off_mid_group_leaves_no_gradient_to_the_next_fit():
    class CtrlC(Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:  # two batches of a group of four: no optimizer step yet
                raise KeyboardInterrupt

    trainer = _trainer(accumulate_steps=4)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(*_data(), batch_size=8, epochs=1, verbose=0, callbacks=[CtrlC()])
    twin = _trainer(accumulate_steps=4)
    twin.module.load_state_dict(trainer.module.state_dict())
    twin.optimizer.load_state_dict(trainer.optimizer.state_dict())
    for run in (trainer, twin):
        torch.manual_seed(5)
        run.fit(*_data(), batch_size=8, epochs=1, verbose=0)
    assert _same_weights(trainer, twin)


def test_stateful_metrics_resume_mid_epoch_with_their_state(tmp_path):
    torchmetrics = pytest.importorskip("torchmetrics")

    class MeanOfLogits(torchmetrics.MeanMetric):  # a metric of the predictions, kept as a running mean
        def update(self, y_pred, y_true):
            super().update(y_pred.mean())

    def metrics():
        return [torchmetrics.classification.MulticlassAccuracy(num_classes=2), MeanOfLogits()]

    reference_history = _fit(_trainer(metrics=metrics()), tmp_path, [], "reference")
    backup = BackupAndRestore(tmp_path / "backup", save_freq=1)
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit(_trainer(metrics=metrics()), tmp_path, [backup, InterruptAt(10)], "resumed")
    history = _fit(_trainer(metrics=metrics()), tmp_path, [backup], "resumed")
    assert history.history == reference_history.history
    assert (tmp_path / "resumed.csv").read_text() == (tmp_path / "reference.csv").read_text()


class Began(Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


@pytest.mark.parametrize("verbose", [0, 1, 2])
def test_a_run_resumed_mid_epoch_opens_that_epoch_and_ends_as_an_uninterrupted_one(tmp_path, capsys, verbose):
    from torchcb.callbacks import LearningRateScheduler

    def fit(trainer, extra, name):
        halve = LearningRateScheduler(lambda epoch, lr: lr * 0.5)  # set again in a resumed on_epoch_begin: no effect
        return _fit(trainer, tmp_path, [*extra, halve], name, verbose=verbose)

    reference = _trainer()
    reference_history = fit(reference, [], "reference")
    backup = BackupAndRestore(tmp_path / "backup", save_freq=1)
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(_trainer(), [backup, InterruptAt(9)], "resumed")  # 6 batches an epoch: in the second, at batch 2
    capsys.readouterr()
    began = Began()
    resumed = _trainer()
    history = fit(resumed, [backup, began], "resumed")
    assert began.epochs == [1, 2, 3, 4]  # the resumed epoch opens too
    assert _same_weights(resumed, reference)
    assert history.history == reference_history.history  # its averages hold the batches before the interruption
    lines = capsys.readouterr().out.splitlines()
    if verbose:
        assert lines[0] == "Epoch 2/5" and len(lines) == 8
    if verbose == 1:  # samples: the bar counts the 48 training samples of the epoch, not the 24 left
        assert lines[1].startswith("48/48 [==============================] - ")
        assert f"- loss: {reference_history.history['loss'][1]:.4f} - " in lines[1]


class WaitForWrites(Callback):
    """Lets each background write land before the next batch: the writer skips a snapshot still queued
    when a newer one of the same file comes, which would make the previous backup any older one."""

    def on_train_batch_end(self, batch, logs=None):
        self.model.trainer.wait_for_writes()


def _interrupt(kind, where, after):
    """A callback that raises ``kind`` at the end of optimizer step ``after`` or of epoch ``after``."""

    class Raise(Callback):
        def on_train_batch_end(self, batch, logs=None):
            if where == "batch" and self.model.optimizer.iterations == after:
                raise kind("interrupted")

        def on_epoch_end(self, epoch, logs=None):
            if where == "epoch" and epoch == after:
                raise kind("interrupted")

    return Raise()


@pytest.mark.parametrize("kind", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("where", ["batch", "epoch"])
def test_a_backup_asked_for_in_the_round_a_later_callback_raises_in_is_written(tmp_path, kind, where):
    from torchcb.checkpoint import safe_load

    # 8 batches an epoch; the interruption comes at step 11 (epoch 1, batch 2) or at epoch 1's end
    save_freq = 1 if where == "batch" else "epoch"
    backup = BackupAndRestore(tmp_path / "backup", save_freq=save_freq)
    checkpoint = ModelCheckpoint(tmp_path / "last.pt", save_freq=save_freq)
    with pytest.raises(kind, match="interrupted"):
        _trainer().fit(
            *_data(),
            batch_size=8,
            epochs=4,
            verbose=0,
            callbacks=[backup, checkpoint, WaitForWrites(), _interrupt(kind, where, 11 if where == "batch" else 1)],
        )
    latest = safe_load(tmp_path / "backup" / "latest.pt")
    if where == "batch":
        assert (latest["epoch"], latest["batch"], latest["step"]) == (1, 3, 11)
    else:
        assert (latest["epoch"], latest["batch"], latest["step"]) == (2, 0, 16)
    assert safe_load(tmp_path / "last.pt")["step"] == latest["step"]
    previous = safe_load(tmp_path / "backup" / "latest.pt.bkp")  # the backup before it is kept
    assert previous["step"] == (10 if where == "batch" else 8)

    batches = []
    counter = LambdaCallback(on_train_batch_end=lambda batch, logs: batches.append(batch))
    _trainer().fit(*_data(), batch_size=8, epochs=4, verbose=0, callbacks=[backup, counter])
    assert len(batches) == 32 - latest["step"]  # nothing is trained twice


@pytest.mark.parametrize("check_every", [1, 32])
def test_a_backup_asked_for_when_terminate_on_nan_raises_keeps_the_last_good_one(tmp_path, check_every):
    from torchcb.callbacks import TerminateOnNaN
    from torchcb.checkpoint import safe_load

    good = {}

    class PoisonAt(Callback):  # NaN weights before step 7: its loss is NaN
        def on_train_batch_begin(self, batch, logs=None):
            if self.model.optimizer.iterations == 6:
                good.update({k: v.clone() for k, v in self.model.module.state_dict().items()})
                with torch.no_grad():
                    self.model.module[0].weight.fill_(float("nan"))

    backup = BackupAndRestore(tmp_path / "backup", save_freq=1)
    callbacks = [PoisonAt(), backup, TerminateOnNaN(raise_error=True, check_every=check_every), WaitForWrites()]
    with pytest.raises(RuntimeError, match="NaN or Inf loss encountered at batch 6"):
        _trainer().fit(*_data(), batch_size=8, epochs=2, verbose=0, callbacks=callbacks)
    latest, previous = safe_load(tmp_path / "backup" / "latest.pt"), safe_load(tmp_path / "backup" / "latest.pt.bkp")
    assert latest["step"] == 6 and previous["step"] == 5  # the NaN step is not written
    assert all(torch.equal(latest["module"][k], v) for k, v in good.items())


def test_a_backup_that_fails_while_a_callback_raises_is_reported_chained_to_it(tmp_path, monkeypatch):
    import torchcb.checkpoint

    def failing_write(path, state, keep_previous=None):
        raise OSError(f"cannot write {path}")

    monkeypatch.setattr(torchcb.checkpoint, "write_checkpoint", failing_write)
    backup = BackupAndRestore(tmp_path / "backup", save_freq="epoch")
    with pytest.raises((OSError, KeyboardInterrupt)) as raised:  # caught here whichever leaves fit
        _trainer().fit(
            *_data(), batch_size=8, epochs=2, verbose=0, callbacks=[backup, _interrupt(KeyboardInterrupt, "epoch", 0)]
        )
    assert isinstance(raised.value, OSError) and "latest.pt" in str(raised.value)  # not dropped in silence
    assert isinstance(raised.value.__context__, KeyboardInterrupt)


def test_a_truncated_latest_backup_falls_back_to_the_previous_one_and_none_readable_raises(tmp_path):
    from torchcb.checkpoint import CheckpointError

    backup = BackupAndRestore(tmp_path / "backup", delete_checkpoint=False)  # double_checkpoint not needed
    x, y = _data()
    _trainer().fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[backup])
    latest, previous = tmp_path / "backup" / "latest.pt", tmp_path / "backup" / "latest.pt.bkp"
    assert sorted(os.listdir(tmp_path / "backup")) == ["latest.pt", "latest.pt.bkp"]
    kept = previous.read_bytes()
    latest.write_bytes(latest.read_bytes()[: len(kept) // 2])  # truncated
    began = Began()
    with pytest.warns(RuntimeWarning) as warned:
        history = _trainer().fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[backup, began])
    message = str(warned[0].message)
    assert (
        f"could not read the latest backup {latest}" in message
        and f"resuming from the previous one, {previous}" in message
    )
    assert began.epochs == [1, 2]  # the previous backup was written after epoch 0
    assert history.epoch == [0, 1, 2]

    for path in (latest, previous):
        path.write_bytes(kept[:100])
    with pytest.raises(CheckpointError, match=f"no readable backup in .*backup: {latest} .*; {previous} "):
        _trainer().fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[backup])


@pytest.mark.skipif(not sharded.fsdp_available(), reason="strategy='fsdp' needs torch 2.6 or later")
def test_a_damaged_sharded_backup_falls_back_to_the_previous_directory_without_double_checkpoint(tmp_path):
    from torchcb.checkpoint import CheckpointError

    backup = BackupAndRestore(tmp_path / "backup", delete_checkpoint=False)  # double_checkpoint unset
    x, y = _data()
    _trainer(strategy="fsdp").fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[backup])
    latest, previous = tmp_path / "backup" / "latest.pt", tmp_path / "backup" / "latest.pt.bkp"
    assert sharded.is_checkpoint_dir(latest) and sharded.is_checkpoint_dir(previous)
    for file in latest.iterdir():
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # truncated
    began = Began()
    with pytest.warns(RuntimeWarning, match=f"could not read the latest backup {latest} .*previous one, {previous}"):
        _trainer(strategy="fsdp").fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[backup, began])
    assert began.epochs == [1, 2]  # the previous backup was written after epoch 0
    assert (backup._current_epoch, backup._last_batch_seen) == (3, 0)

    for folder in (latest, previous):
        for file in folder.iterdir():
            file.write_bytes(b"torn")
    with (
        pytest.raises(CheckpointError, match=f"no readable backup in .*backup: {previous} "),
        pytest.warns(RuntimeWarning),
    ):
        _trainer(strategy="fsdp").fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[backup])


@pytest.mark.parametrize("save_freq", ["epoch", 1])
def test_progress_is_readable_as_in_keras_3(tmp_path, save_freq):
    backup = BackupAndRestore(tmp_path / "backup", save_freq=save_freq)
    assert (backup._current_epoch, backup._last_batch_seen) == (0, 0)
    with pytest.raises(RuntimeError, match="interrupted"):  # 8 batches an epoch: epoch 1, batch 2
        _trainer().fit(*_data(), batch_size=8, epochs=3, verbose=0, callbacks=[backup, InterruptAt(11)])
    assert backup._current_epoch == 1
    assert backup._last_batch_seen == (2 if save_freq == 1 else 0)  # Keras 3 follows batches only when saving on them
    seen = []

    class Look(Callback):
        def on_train_begin(self, logs=None):
            seen.append((backup._current_epoch, backup._last_batch_seen))

    _trainer().fit(*_data(), batch_size=8, epochs=3, verbose=0, callbacks=[backup, Look()])
    assert seen == [(1, 2)] if save_freq == 1 else seen == [(1, 0)]  # where the resumed run goes on from
    assert (backup._current_epoch, backup._last_batch_seen) == (3, 0)


def test_a_queued_backup_is_never_dropped_for_a_newer_one_so_bkp_is_the_previous_backup(tmp_path, monkeypatch):
    import threading

    from tests.test_checkpoint import _slow_background_writes
    from torchcb.checkpoint import safe_load

    gate = threading.Event()
    _slow_background_writes(monkeypatch, gate)  # epoch 0's write waits; epochs 1 and 2 queue behind it

    class Release(Callback):
        def on_train_end(self, logs=None):
            gate.set()

    backup = BackupAndRestore(tmp_path / "backup", delete_checkpoint=False)
    _trainer().fit(*_data(), batch_size=8, epochs=3, verbose=0, callbacks=[backup, Release()])
    assert safe_load(tmp_path / "backup" / "latest.pt")["epoch"] == 3
    assert safe_load(tmp_path / "backup" / "latest.pt.bkp")["epoch"] == 2  # epoch 1's backup, not skipped
