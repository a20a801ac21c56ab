import json

import numpy as np
import pytest
import torch

from tests.conftest import make_trainer
from torchcb.callbacks import BackupAndRestore, Callback, ModelCheckpoint, TerminateOnNaN
from torchcb.logs import EpochTotals, KerasLogs, Logs, device_reads


def test_logs_read_all_tensors_in_one_transfer_on_first_value_read():
    logs = Logs(batch=0, size=4)
    logs.update_raw({"loss": torch.tensor(0.5), "accuracy": torch.tensor(0.25)})
    with device_reads() as reads:
        assert "loss" in logs and len(logs) == 4 and sorted(logs) == ["accuracy", "batch", "loss", "size"]
        assert reads.count == 0  # keys never touch the device
        assert logs["accuracy"] == 0.25
        assert logs.get("loss") == 0.5
        assert dict(logs) == {"batch": 0, "size": 4, "loss": 0.5, "accuracy": 0.25}
    assert reads.count == 1


@pytest.mark.parametrize(
    "read",
    [
        lambda logs: dict(logs),
        lambda logs: {**logs},
        lambda logs: json.dumps(logs),
        lambda logs: list(logs.items()),
        lambda logs: list(logs.values()),
        lambda logs: logs.copy(),
        lambda logs: repr(logs),
    ],
)
def test_every_way_of_reading_gives_numpy_scalars_as_keras_2_and_floats_as_keras_3(read):
    logs = Logs(batch=1)
    logs.update_raw({"loss": torch.tensor(1.5)})
    read(logs)
    value = dict.__getitem__(logs, "loss")
    assert type(value) is np.float64 and value == 1.5 and value[()] == 1.5 and isinstance(value, float)
    assert json.loads(json.dumps({"loss": value})) == {"loss": 1.5}
    keras_logs = KerasLogs()
    keras_logs.update_raw({"loss": torch.tensor(1.5)})
    read(keras_logs)
    assert type(dict.__getitem__(keras_logs, "loss")) is float


def test_raw_leaves_tensors_on_the_device():
    logs = Logs()
    loss = torch.tensor(2.0)
    logs.update_raw({"loss": loss})
    with device_reads() as reads:
        assert logs.raw("loss") is loss
    assert reads.count == 0


def test_epoch_totals_weight_by_size_fold_and_keep_stateful_last_values():
    totals = EpochTotals(last_value={"auc"}, skip=("size",))
    totals.fold_every = 3
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    sizes = [2, 2, 2, 2, 1]
    for value, size in zip(values, sizes):
        totals.add({"loss": torch.tensor(value), "auc": torch.tensor(value / 10), "size": size}, size)
    with device_reads() as reads:
        result = totals.result()
    assert reads.count == 1
    assert result["loss"] == pytest.approx(sum(v * s for v, s in zip(values, sizes)) / 9)
    assert result["auc"] == pytest.approx(0.5)
    assert "size" not in result


def test_epoch_totals_average_a_key_over_the_batches_that_log_it_and_reset_for_the_next_epoch():
    totals = EpochTotals()
    totals.fold_every = 2
    totals.add({"loss": torch.tensor(1.0)}, 4)
    totals.add({"loss": torch.tensor(2.0), "extra": torch.tensor(10.0)}, 2)
    totals.add({"loss": torch.tensor(3.0), "extra": 20.0}, 1)  # a plain number among tensors
    assert totals.seen == 7
    result = totals.result()
    assert result["loss"] == pytest.approx((4 + 4 + 3) / 7)
    assert result["extra"] == pytest.approx((20 + 20) / 3)  # only the two batches that logged it
    totals.reset()
    assert totals.seen == 0 and totals.result() == {}
    totals.add({"loss": torch.tensor(5.0)}, 1)
    assert totals.result() == {"loss": 5.0}


class ReadsEveryBatch(Callback):
    def on_batch_end(self, batch, logs=None):
        logs["loss"]


@pytest.mark.parametrize("verbose", [0, 2])
def test_a_fit_epoch_reads_the_device_a_constant_number_of_times(verbose, capsys):
    counts = {}
    for samples in (64, 512):
        trainer = make_trainer()
        x = np.random.rand(samples, 4).astype(np.float32)
        y = np.random.randint(0, 2, samples)
        with device_reads() as reads:
            trainer.fit(x, y, batch_size=8, epochs=2, verbose=verbose, validation_split=0.25)
        counts[samples] = reads.count
    assert counts[64] == counts[512]
    assert counts[64] <= 2 * 3  # per epoch: train averages, validation averages, nothing per batch


def test_a_callback_that_reads_the_loss_costs_one_read_per_batch():
    trainer = make_trainer()
    x = np.random.rand(64, 4).astype(np.float32)
    y = np.random.randint(0, 2, 64)
    with device_reads() as reads:
        trainer.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[ReadsEveryBatch()])
    # one per batch (loss and accuracy together), and one for the epoch averages, summed on the device
    assert reads.count == 8 + 1


def _epoch_only_callbacks(directory):
    from torchcb.callbacks import (
        CSVLogger,
        EarlyStopping,
        History,
        LambdaCallback,
        LearningRateScheduler,
        ReduceLROnPlateau,
        TensorBoard,
    )

    return [
        EarlyStopping(monitor="loss"),
        CSVLogger(directory / "log.csv"),
        ReduceLROnPlateau(monitor="loss"),
        LearningRateScheduler(lambda epoch, lr: lr),
        TensorBoard(directory / "tb", write_graph=False),
        LambdaCallback(on_epoch_end=lambda epoch, logs: logs["loss"]),
        History(),
    ]


@pytest.mark.parametrize(
    "name, make, per_epoch",
    [
        # what the README says each callback costs, beyond fit's one read an epoch
        ("epoch-level callbacks", _epoch_only_callbacks, lambda batches: 0),
        ("TerminateOnNaN", lambda d: [TerminateOnNaN()], lambda b: b // 32),
        (
            "ModelCheckpoint every 16 batches",
            lambda d: [ModelCheckpoint(d / "m.pt", save_freq=16)],
            lambda b: b // 16,
        ),
        (
            "BackupAndRestore each epoch",
            lambda d: [BackupAndRestore(d / "backup")],
            lambda b: 1,
        ),
    ],
)
def test_what_each_callback_costs_in_device_reads(tmp_path, name, make, per_epoch):
    for batches in (32, 128):
        trainer = make_trainer()
        x = np.random.rand(batches * 4, 4).astype(np.float32)
        y = np.random.randint(0, 2, batches * 4)
        with device_reads() as reads:
            trainer.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=make(tmp_path / str(batches)))
        assert reads.count == 2 * (1 + per_epoch(batches)), (name, batches)
