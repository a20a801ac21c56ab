"""keras.callbacks objects (Keras 3, KERAS_BACKEND=torch) passed to Trainer.fit.

Skipped when keras is not installed; `nox -s keras` (and .ci/run) install it and run these.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras", reason="keras is not installed (pip install 'torchcb[keras]')")
if keras.backend.backend() != "torch":
    pytest.skip("these tests need KERAS_BACKEND=torch", allow_module_level=True)

from tests.callbacks.test_remote_monitor import Server  # noqa: E402
from tests.conftest import make_data, make_trainer  # noqa: E402
from torchcb import Trainer  # noqa: E402
from torchcb.callbacks import Callback  # noqa: E402


def _data(n=64):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=generator)
    return x, (x[:, 0] > 0).long()


def test_early_stopping_in_auto_mode_restores_the_best_weights():
    trainer = make_trainer(lr=0.5)
    weights = []

    class Snapshot(Callback):
        def on_epoch_end(self, epoch, logs=None):
            weights.append(trainer.model.get_weights())

    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=2, restore_best_weights=True)
    history = trainer.fit(
        *_data(), batch_size=8, epochs=30, verbose=0, validation_split=0.5, callbacks=[stop, Snapshot()]
    )
    assert len(history.epoch) < 30 and stop.stopped_epoch > 0
    best = stop.best_epoch
    assert history.history["val_accuracy"][best] == max(history.history["val_accuracy"][: stop.stopped_epoch + 1])
    assert all(np.array_equal(a, b) for a, b in zip(trainer.model.get_weights(), weights[best]))


def test_reduce_lr_on_plateau_and_learning_rate_scheduler_set_the_torch_rate():
    trainer = make_trainer(lr=0.1)
    history = trainer.fit(
        *_data(),
        epochs=4,
        verbose=0,
        callbacks=[
            keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5),
            keras.callbacks.ReduceLROnPlateau(monitor="loss", min_delta=10.0, patience=0, factor=0.5),
        ],
    )
    # the scheduler halves at every epoch's start; the plateau halves at every epoch's end after
    # the first, after logging the rate the epoch ran with
    assert history.history["learning_rate"] == pytest.approx([0.05, 0.025, 0.00625, 0.0015625])
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.00078125)


def test_model_checkpoint_writes_torch_files_that_load_back(tmp_path):
    trainer = make_trainer()
    x, y = _data()
    trainer.fit(
        x,
        y,
        epochs=2,
        verbose=0,
        validation_split=0.25,
        callbacks=[
            keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), monitor="val_loss", save_best_only=True),
            keras.callbacks.ModelCheckpoint(str(tmp_path / "last.weights.h5"), save_weights_only=True),
        ],
    )
    saved = trainer.model.get_weights()
    fresh = make_trainer()
    fresh.model.load_weights(tmp_path / "last.weights.h5")
    assert all(np.array_equal(a, b) for a, b in zip(fresh.model.get_weights(), saved))
    fresh.model.load_weights(tmp_path / "best.keras")  # a full torchcb checkpoint under a Keras name
    with pytest.raises(ValueError, match="must end in `.keras`"):
        keras.callbacks.ModelCheckpoint(str(tmp_path / "model.pt"))


def test_csv_logger_history_lambda_and_terminate_on_nan(tmp_path):
    seen = []
    history = keras.callbacks.History()
    trainer = make_trainer()
    returned = trainer.fit(
        *_data(),
        epochs=3,
        verbose=0,
        callbacks=[
            keras.callbacks.CSVLogger(str(tmp_path / "log.csv")),
            keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append((epoch, sorted(logs)))),
            keras.callbacks.TerminateOnNaN(),
            history,
        ],
    )
    assert returned is history and len(history.history["loss"]) == 3
    assert seen == [(e, ["accuracy", "loss"]) for e in range(3)]
    rows = (tmp_path / "log.csv").read_text().splitlines()
    # Keras 3's own CSVLogger adds val_ columns (NA) even without validation, as it does in Keras
    assert rows[0] == "epoch,accuracy,loss,val_accuracy,val_loss" and len(rows) == 4
    assert float(rows[3].split(",")[2]) == pytest.approx(history.history["loss"][2])
    assert rows[3].split(",")[3:] == ["NA", "NA"]


def test_terminate_on_nan_stops_training():
    net = torch.nn.Linear(1, 1)
    from torchcb import Trainer

    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=1e30), loss="mse", device="cpu")
    x = np.full((40, 1), 1e10, dtype=np.float32)
    history = trainer.fit(x, x, batch_size=4, epochs=5, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN()])
    assert len(history.epoch) == 1


def test_keras_progbar_replaces_torchcb_s(capsys):
    make_trainer().fit(*_data(), epochs=1, verbose=1, callbacks=[keras.callbacks.ProgbarLogger()])
    out = capsys.readouterr().out
    assert "━" in out  # Keras 3's bar, and only one bar
    assert "[====" not in out


def test_remote_monitor_posts_the_payload():
    server = Server()
    try:
        history = make_trainer().fit(
            *_data(),
            epochs=2,
            verbose=0,
            callbacks=[keras.callbacks.RemoteMonitor(root=server.root, send_as_json=True)],
        )
    finally:
        server.close()
    payloads = [json.loads(r["body"]) for r in server.requests]
    assert [p["epoch"] for p in payloads] == [0, 1]
    assert payloads[1]["loss"] == pytest.approx(history.history["loss"][1])


def test_a_users_keras_callback_sees_model_params_and_logs():
    seen = {}

    class Mine(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["params"] = dict(self.params)

        def on_train_batch_end(self, batch, logs=None):
            seen.setdefault("batch_keys", sorted(logs))

        def on_epoch_end(self, epoch, logs=None):
            seen["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            seen["weights"] = len(self.model.get_weights())
            self.model.stop_training = True

    history = make_trainer().fit(*make_data(16), batch_size=4, epochs=5, verbose=0, callbacks=[Mine()])
    assert seen["params"]["epochs"] == 5 and seen["params"]["steps"] == 4
    assert seen["batch_keys"] == ["accuracy", "loss"]  # Keras 3 batch logs: no batch or size keys
    assert seen["lr"] == pytest.approx(0.05) and seen["weights"] == 4
    assert history.epoch == [0]


def test_tensorboard_points_to_torchcb_s_own():
    with pytest.raises(ValueError, match="use torchcb.callbacks.TensorBoard"):
        make_trainer().fit(*make_data(8), verbose=0, callbacks=[keras.callbacks.TensorBoard()])


def test_keras_is_imported_only_when_a_keras_callback_is_passed():
    code = (
        "import sys, torch; from torchcb import Trainer; from torchcb.callbacks import EarlyStopping; "
        "net = torch.nn.Linear(2, 1); t = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss='mse'); "
        "t.fit(torch.randn(8, 2), torch.randn(8, 1), verbose=0, callbacks=[EarlyStopping(monitor='loss')]); "
        "print('keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_keras_example_runs(tmp_path, capsys):
    pytest.importorskip("sklearn")
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "examples", "keras_callbacks.py")
    spec = importlib.util.spec_from_file_location("keras_callbacks_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    history = module.main(str(tmp_path / "keras"))
    assert max(history["val_accuracy"]) >= 0.95
    assert "best val_accuracy" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "keras").iterdir()) == ["best.keras", "log.csv"]


def test_keras_3_callbacks_get_keras_3_params_and_running_means_as_floats():
    seen = {"keras": [], "torchcb": []}

    class KerasOne(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["params"] = dict(self.params)

        def on_train_batch_end(self, batch, logs=None):
            seen["keras"].append(dict(logs))

    class TorchcbOne(Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen["torchcb"].append(dict(logs))

    history = make_trainer().fit(
        *make_data(16), batch_size=4, epochs=2, verbose=0, callbacks=[KerasOne(), TorchcbOne()]
    )
    assert seen["params"] == {"verbose": 0, "epochs": 2, "steps": 4}
    keras_logs, torchcb_logs = seen["keras"], seen["torchcb"]
    assert all(sorted(logs) == ["accuracy", "loss"] and type(logs["loss"]) is float for logs in keras_logs)
    for epoch in (0, 1):
        own = torchcb_logs[4 * epoch : 4 * epoch + 4]  # each batch's own value (Keras 2)
        for end in range(4):  # Keras 3: the mean over the epoch so far
            expected = sum(b["loss"] * b["size"] for b in own[: end + 1]) / sum(b["size"] for b in own[: end + 1])
            assert keras_logs[4 * epoch + end]["loss"] == pytest.approx(expected, rel=1e-12)
        assert keras_logs[4 * epoch + 3]["loss"] == pytest.approx(history.history["loss"][epoch], rel=1e-12)
        assert keras_logs[4 * epoch + 3]["accuracy"] == pytest.approx(history.history["accuracy"][epoch], rel=1e-12)


def test_running_means_stay_on_the_device_until_a_keras_callback_reads_them():
    from torchcb.logs import device_reads

    class CountsBatches(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.batches = getattr(self, "batches", 0) + 1

    counts = {}
    for samples in (32, 256):
        counter = CountsBatches()
        with device_reads() as reads:
            make_trainer().fit(*make_data(samples), batch_size=4, epochs=1, verbose=0, callbacks=[counter])
        assert counter.batches == samples // 4
        counts[samples] = reads.count
    assert counts[32] == counts[256] == 1  # the epoch averages only


def test_hooks_are_chosen_as_keras_chooses_them():
    class SetsItsHookLater(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.seen = []
            self.on_train_batch_end = lambda batch, logs=None: self.seen.append(batch)

    class DeclinesBatchHooks(keras.callbacks.Callback):
        calls = 0

        def on_train_batch_end(self, batch, logs=None):
            DeclinesBatchHooks.calls += 1

        def _implements_train_batch_hooks(self):
            return False

    later = SetsItsHookLater()
    make_trainer().fit(*make_data(16), batch_size=4, epochs=2, verbose=0, callbacks=[later, DeclinesBatchHooks()])
    assert later.seen == [0, 1, 2, 3] * 2  # set on the instance in on_train_begin, and called
    assert DeclinesBatchHooks.calls == 0  # it said it implements no batch hook


def _ema_trainer(use_ema=True):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9)
    return Trainer(
        net, optimizer, loss="sparse_categorical_crossentropy", device="cpu", use_ema=use_ema, ema_momentum=0.8
    )


@pytest.mark.parametrize("swap_on_epoch", [False, True])
def test_keras_swap_ema_weights_gives_the_val_loss_of_torchcb_s(swap_on_epoch):
    from torchcb.callbacks import SwapEMAWeights

    runs = {}
    for name, swap in (
        ("torchcb", SwapEMAWeights(swap_on_epoch=swap_on_epoch)),
        ("keras", keras.callbacks.SwapEMAWeights(swap_on_epoch=swap_on_epoch)),
        ("none", None),
    ):
        trainer = _ema_trainer()
        history = trainer.fit(
            *_data(), batch_size=8, epochs=3, verbose=0, validation_split=0.25, callbacks=[swap] if swap else []
        )
        runs[name] = (history.history, trainer.module.state_dict())
    assert runs["keras"][0] == runs["torchcb"][0]
    assert runs["keras"][0]["val_loss"] != runs["none"][0]["val_loss"]  # the raw weights' val_loss differs
    assert runs["keras"][0]["loss"] == runs["none"][0]["loss"]  # training went on from the raw weights
    for key, value in runs["torchcb"][1].items():
        assert torch.equal(runs["keras"][1][key], value), key


def test_keras_swap_ema_weights_without_use_ema_names_the_argument():
    with pytest.raises(ValueError, match="use_ema=True"):
        _ema_trainer(use_ema=False).fit(*_data(), verbose=0, callbacks=[keras.callbacks.SwapEMAWeights()])


class _Epochs(Callback):
    """The epoch numbers the hooks see; raises at the start of epoch ``fail_at`` (once)."""

    def __init__(self, fail_at=None):
        super().__init__()
        self.fail_at, self.begun = fail_at, []

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.fail_at:
            raise RuntimeError("interrupted")
        self.begun.append(epoch)


def test_keras_backup_and_restore_interrupted_resumes_at_the_epoch_it_recorded(tmp_path):
    backup_dir = str(tmp_path / "backup")
    reference = _ema_trainer()
    reference_history = reference.fit(*_data(), batch_size=8, epochs=4, verbose=0, validation_split=0.25)

    interrupted = _ema_trainer()
    with pytest.raises(RuntimeError, match="interrupted"):
        interrupted.fit(
            *_data(), batch_size=8, epochs=4, verbose=0, validation_split=0.25,
            callbacks=[keras.callbacks.BackupAndRestore(backup_dir), _Epochs(fail_at=2)],
        )  # fmt: skip
    with open(os.path.join(backup_dir, "training_metadata.json")) as f:
        assert json.load(f) == {"epoch": 2, "batch": 0}

    resumed, epochs = _ema_trainer(), _Epochs()
    history = resumed.fit(
        *_data(), batch_size=8, epochs=4, verbose=0, validation_split=0.25,
        callbacks=[keras.callbacks.BackupAndRestore(backup_dir), epochs],
    )  # fmt: skip
    assert epochs.begun == [2, 3]  # resumed at the epoch Keras recorded
    # the backup is a full checkpoint: the History goes on, and weights, optimizer and average are exact
    assert history.epoch == [0, 1, 2, 3] and history.history == reference_history.history
    for key, value in reference.module.state_dict().items():
        assert torch.equal(resumed.module.state_dict()[key], value), key
    for key, value in reference.weight_average.averaged_weights().items():
        assert torch.equal(resumed.weight_average.averaged_weights()[key], value), key
    assert not os.path.exists(backup_dir)  # delete_checkpoint, once every write is done


def test_keras_backup_and_restore_falls_back_to_its_previous_backup(tmp_path):
    backup_dir = tmp_path / "backup"
    with pytest.raises(RuntimeError, match="interrupted"):
        make_trainer().fit(
            *_data(), batch_size=8, epochs=5, verbose=0,
            callbacks=[keras.callbacks.BackupAndRestore(str(backup_dir), double_checkpoint=True), _Epochs(fail_at=3)],
        )  # fmt: skip
    (backup_dir / "latest.weights.h5").write_bytes(b"torn")
    epochs = _Epochs()
    history = make_trainer().fit(
        *_data(), batch_size=8, epochs=5, verbose=0,
        callbacks=[keras.callbacks.BackupAndRestore(str(backup_dir), double_checkpoint=True), epochs],
    )  # fmt: skip
    assert epochs.begun == [2, 3, 4] and history.epoch == [0, 1, 2, 3, 4]


def test_a_keras_callback_s_model_initial_epoch_is_where_fit_starts_once():
    class StartAtTwo(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            if not getattr(self, "done", False):
                self.done = True
                self.model._initial_epoch = 2

    trainer, start = make_trainer(), StartAtTwo()
    first = trainer.fit(*make_data(16), batch_size=4, epochs=4, verbose=0, callbacks=[start])
    second = trainer.fit(*make_data(16), batch_size=4, epochs=2, verbose=0, callbacks=[start])
    assert first.epoch == [2, 3] and second.epoch == [0, 1]
