import numpy as np
import pytest
import torch

from tests.conftest import drive, make_data, make_trainer
from torchcb import Trainer
from torchcb.callbacks import Callback, EarlyStopping, ModelCheckpoint, ReduceLROnPlateau
from torchcb.metrics import Metric


def test_on_batch_hooks_alias_the_train_batch_hooks_only():
    calls = []

    class Old(Callback):
        def on_batch_begin(self, batch, logs=None):
            calls.append(("begin", batch))

        def on_batch_end(self, batch, logs=None):
            calls.append(("end", batch))

    trainer = make_trainer()
    x, y = make_data(4)
    trainer.fit(x, y, batch_size=2, epochs=1, verbose=0, validation_data=(x, y), callbacks=[Old()])
    trainer.evaluate(x, y, batch_size=2, verbose=0, callbacks=[Old()])
    assert calls == [("begin", 0), ("end", 0), ("begin", 1), ("end", 1)]


def test_validation_data_is_keras_2s_numpy_list_once_training_has_begun():
    seen = {}

    class AccuracyOnValidationData(Callback):
        """The pattern of many 2018 posts: a metric computed from self.validation_data."""

        def on_train_begin(self, logs=None):
            seen["at_train_begin"] = self.validation_data

        def on_epoch_end(self, epoch, logs=None):
            if self.validation_data is None:
                return
            x_val, y_val = self.validation_data[0], self.validation_data[1]
            predicted = np.asarray(self.model.predict(x_val)).argmax(axis=-1)
            logs["val_acc_by_hand"] = (predicted == y_val).mean()
            seen["arrays"] = [(type(a), a.shape, a.dtype) for a in self.validation_data]

    x, y = make_data(20)
    history = make_trainer().fit(
        x, y, epochs=2, verbose=0, validation_split=0.25, callbacks=[AccuracyOnValidationData()]
    )
    assert seen["at_train_begin"] is None  # Keras 2 sets it after on_train_begin
    assert seen["arrays"] == [
        (np.ndarray, (5, 4), np.float32),
        (np.ndarray, (5,), np.int64),
        (np.ndarray, (5,), np.float32),  # sample weights: ones, as Keras 2 made them
    ]
    assert history.history["val_acc_by_hand"] == pytest.approx(history.history["val_accuracy"])

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(x), torch.tensor(y)))
    seen.clear()
    make_trainer().fit(x, y, epochs=1, verbose=0, validation_data=loader, callbacks=[AccuracyOnValidationData()])
    assert "arrays" not in seen  # a loader's data is not in memory: validation_data stays None


MONITORING = [
    lambda **kw: EarlyStopping(**kw),
    lambda **kw: ModelCheckpoint("never-written.pt", save_best_only=True, **kw),
    lambda **kw: ReduceLROnPlateau(**kw),
]


@pytest.mark.parametrize("make", MONITORING, ids=["EarlyStopping", "ModelCheckpoint", "ReduceLROnPlateau"])
def test_every_monitoring_callback_has_keras_monitor_op(make):
    assert make(monitor="val_accuracy", mode="max").monitor_op is np.greater
    assert make(monitor="val_accuracy", mode="auto").monitor_op is np.greater
    assert make(monitor="val_accuracy", mode="min").monitor_op is np.less
    assert make(monitor="val_loss", mode="auto").monitor_op is np.less
    assert make(monitor="val_loss", mode="min").monitor_op is np.less
    # decided with the fit's metrics once training begins: a metric that says higher is better
    callback = make(monitor="val_score", mode="auto")
    callback.set_model(make_trainer(metrics=[Metric(lambda p, t: p.mean(), "score", higher_is_better=True)]).model)
    callback.on_train_begin({})
    assert callback.monitor_op is np.greater


def test_keras_user_code_comparing_with_monitor_op_works():
    class StopAtFirstGain(EarlyStopping):
        """Keras 2 community code: the K2 comparison idiom, with min_delta signed by the mode."""

        def on_epoch_end(self, epoch, logs=None):
            current = logs.get(self.monitor)
            if self.monitor_op(current - self.min_delta, self.best):
                self.best = current
                self.gains.append(epoch)

    for monitor, values, gains in (
        ("val_accuracy", [0.5, 0.55, 0.8, 0.85], [0, 2]),  # min_delta 0.1: 0.55 and 0.85 gain too little
        ("val_loss", [1.0, 0.95, 0.7, 0.65], [0, 2]),
    ):
        callback = StopAtFirstGain(monitor=monitor, min_delta=0.1)
        callback.gains = []
        drive(callback, values, monitor)
        assert callback.gains == gains


@pytest.mark.parametrize("make", MONITORING, ids=["EarlyStopping", "ModelCheckpoint", "ReduceLROnPlateau"])
def test_auto_mode_raises_for_a_name_no_loss_or_metric_of_the_fit_logs(make, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    callback = make(monitor="val_acuracy")  # a typo: neither a loss nor a metric of this fit
    with pytest.raises(ValueError, match=f"{type(callback).__name__} callback received monitor=val_acuracy"):
        make_trainer().fit(*make_data(8), epochs=2, verbose=0, validation_split=0.25, callbacks=[callback])
    assert not (tmp_path / "never-written.pt").exists()


def test_a_monitor_op_set_by_hand_is_used_as_keras_uses_it():
    # Keras code may assign monitor_op after construction: a falling loss then never improves
    stop = EarlyStopping(monitor="loss", patience=1)
    stop.monitor_op = np.greater
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", device="cpu")
    x = torch.rand(32, 4)
    history = trainer.fit(x, x.sum(1, keepdim=True), batch_size=8, epochs=6, verbose=0, callbacks=[stop])
    assert stop.monitor_op is np.greater
    assert history.history["loss"][1] < history.history["loss"][0]  # the loss fell, yet no improvement
    assert history.epoch == [0, 1] and stop.stopped_epoch == 1
