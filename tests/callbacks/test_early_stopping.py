import numpy as np
import pytest
import torch

from tests.conftest import KerasStub, drive, make_data, make_trainer
from torchcb.callbacks import Callback, EarlyStopping


def test_stops_after_patience_epochs_without_improvement():
    assert drive(EarlyStopping(patience=2), [1.0, 0.9, 0.95, 0.94, 0.8]) == [0, 1, 2, 3]


def test_patience_zero_stops_at_the_first_epoch_that_does_not_improve():
    assert drive(EarlyStopping(patience=0), [1.0, 0.9, 0.9, 0.5]) == [0, 1, 2]


def test_min_delta_uses_its_absolute_value():
    for min_delta in (0.1, -0.1):
        assert drive(EarlyStopping(patience=1, min_delta=min_delta), [1.0, 0.95, 0.5]) == [0, 1]


def test_auto_mode_maximises_accuracy_and_auc_names():
    assert drive(EarlyStopping(monitor="val_accuracy", patience=1), [0.5, 0.6, 0.7, 0.7], "val_accuracy") == [
        0,
        1,
        2,
        3,
    ]
    assert drive(EarlyStopping(monitor="val_auc", patience=0), [0.5, 0.4], "val_auc") == [0, 1]
    assert drive(EarlyStopping(monitor="val_acc", mode="min", patience=0), [0.5, 0.6], "val_acc") == [0, 1]


def test_unknown_mode_warns_and_falls_back_to_auto():
    with pytest.warns(RuntimeWarning, match="EarlyStopping mode maximal is unknown, fallback to auto mode."):
        callback = EarlyStopping(mode="maximal")
    assert callback.mode == "auto"


def test_baseline_keras2_semantics():
    # Keras 2's baseline (keras/callbacks/callbacks.py, 2.3): best starts at the baseline, so epochs that do
    # not beat it count towards patience: accuracy [0.55, 0.74, 0.81, 0.81], baseline 0.75, patience 2 -> 2 epochs.
    assert drive(EarlyStopping(monitor="val_acc", baseline=0.75, patience=2), [0.55, 0.74, 0.81, 0.81], "val_acc") == [
        0,
        1,
    ]


def test_baseline_never_beaten_still_restores_the_best_epochs_weights():
    model = KerasStub()
    callback = EarlyStopping(monitor="val_acc", baseline=0.75, patience=3, restore_best_weights=True)

    def change_weights(epoch, model):
        model.weights = [np.full(2, float(epoch))]

    ran = drive(callback, [0.60, 0.70, 0.65], "val_acc", model=model, on_each_epoch=change_weights)
    assert ran == [0, 1, 2]  # every epoch short of the baseline counted towards patience: stopped at the 3rd
    assert callback.best_epoch == 1 and callback.best == 0.75
    assert np.array_equal(model.weights[0], np.full(2, 1.0))  # epoch 1's weights (0.70), not the last epoch's


def test_baseline_never_beaten_restores_the_best_epoch_in_a_real_fit():
    trainer = make_trainer(lr=0.5)
    x, y = make_data(40)
    weights_by_epoch = []

    class Snapshot(Callback):
        def on_epoch_end(self, epoch, logs=None):
            weights_by_epoch.append([w.copy() for w in self.model.get_weights()])

    # no validation loss ever reaches 0: the baseline is never beaten
    stop = EarlyStopping(monitor="val_loss", baseline=0.0, patience=4, restore_best_weights=True)
    history = trainer.fit(x, y, epochs=4, batch_size=8, verbose=0, validation_split=0.5, callbacks=[stop, Snapshot()])
    losses = history.history["val_loss"]
    best = int(np.argmin(losses))
    assert best != len(losses) - 1  # the restore is visible: the last epoch is not the best one
    assert stop.best_epoch == best
    assert all(np.array_equal(a, b) for a, b in zip(trainer.model.get_weights(), weights_by_epoch[best]))


def test_baseline_beaten_resets_patience():
    ran = drive(
        EarlyStopping(monitor="val_acc", baseline=0.75, patience=2), [0.55, 0.8, 0.79, 0.85, 0.8, 0.8], "val_acc"
    )
    assert ran == [0, 1, 2, 3, 4, 5]


def test_restores_best_weights_at_train_end_whoever_stopped_training():
    model = KerasStub()

    def change_weights(epoch, model):
        model.weights = [np.full(2, float(epoch))]

    # patience never reached: training ends by running out of epochs, the best epoch (1) is restored
    ran = drive(
        EarlyStopping(patience=5, restore_best_weights=True),
        [1.0, 0.5, 0.7, 0.8],
        model=model,
        on_each_epoch=change_weights,
    )
    assert ran == [0, 1, 2, 3]
    assert np.array_equal(model.weights[0], np.full(2, 1.0))


def test_first_monitored_epoch_is_recorded_even_if_nan():
    model = KerasStub()
    model.weights = [np.full(2, 7.0)]
    callback = EarlyStopping(patience=0, restore_best_weights=True)

    def change_weights(epoch, model):
        model.weights = [np.full(2, 10.0 + epoch)]

    drive(callback, [float("nan"), 0.5], model=model, on_each_epoch=change_weights)
    assert np.array_equal(model.weights[0], np.full(2, 10.0))


def test_a_known_monitor_missing_from_the_logs_warns_with_the_available_keys_and_training_goes_on():
    callback = EarlyStopping(monitor="val_loss", patience=0)
    with pytest.warns(
        RuntimeWarning,
        match="Early stopping conditioned on metric `val_loss` which is not available. Available metrics are: loss",
    ):
        ran = drive(callback, [None, None, None])
    assert ran == [0, 1, 2]


def test_auto_mode_refuses_a_monitor_that_is_neither_a_loss_nor_a_metric_of_the_fit():
    epochs_seen = []

    class Count(Callback):
        def on_epoch_end(self, epoch, logs=None):
            epochs_seen.append(epoch)

    stop = EarlyStopping(monitor="val_los", patience=2)  # a typo of val_loss
    with pytest.raises(
        ValueError,
        match=r"EarlyStopping callback received monitor=val_los, but torchcb isn't able to automatically determine "
        r"whether that metric should be maximized or minimized. Pass `mode='max'` .* or pass `mode='min'`",
    ):
        make_trainer().fit(*make_data(8), epochs=3, verbose=0, validation_split=0.25, callbacks=[Count(), stop])
    assert epochs_seen == [0]  # at the end of the first epoch
    # an explicit mode is the way out
    with pytest.warns(RuntimeWarning, match="`val_los` which is not available"):  # then it is only missing
        history = make_trainer().fit(
            *make_data(8), epochs=2, verbose=0, validation_split=0.25, callbacks=[EarlyStopping("val_los", mode="min")]
        )
    assert len(history.epoch) == 2
    # a known name missing from one epoch's logs (validation_freq skips epoch 0) only warns
    with pytest.warns(RuntimeWarning, match="`val_accuracy` which is not available"):
        history = make_trainer().fit(
            *make_data(8),
            epochs=2,
            verbose=0,
            validation_split=0.25,
            validation_freq=2,
            callbacks=[EarlyStopping(monitor="val_accuracy", patience=5)],
        )
    assert len(history.epoch) == 2


def test_start_from_epoch_ignores_the_warm_up_epochs():
    assert drive(EarlyStopping(patience=0, start_from_epoch=2), [1.0, 2.0, 3.0, 4.0, 5.0]) == [0, 1, 2, 3]


def test_state_is_reset_between_fits():
    callback = EarlyStopping(patience=1)
    assert drive(callback, [0.1, 0.2, 0.3]) == [0, 1]
    # a best of 0.1 kept from the first fit would stop this one at its first epoch
    assert drive(callback, [5.0, 4.0, 4.5, 4.6]) == [0, 1, 2]


def test_verbose_messages(capsys):
    drive(EarlyStopping(patience=0, verbose=1, restore_best_weights=True), [1.0, 0.5, 0.6])
    out = capsys.readouterr().out
    assert "Epoch 00003: early stopping" in out
    assert "Restoring model weights from the end of the best epoch: 2." in out


def test_bad_arguments():
    with pytest.raises(ValueError, match="patience must be an int >= 0"):
        EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match="start_from_epoch must be an int >= 0"):
        EarlyStopping(start_from_epoch=1.5)


def test_end_to_end_restores_the_best_epoch_weights_kept_on_the_device():
    trainer = make_trainer(lr=0.5)
    x, y = make_data(40)
    weights_by_epoch = []

    class Snapshot(Callback):
        def on_epoch_end(self, epoch, logs=None):
            weights_by_epoch.append([w.copy() for w in self.model.get_weights()])

    # Record after EarlyStopping in the list: the weights at each epoch end
    stop = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    history = trainer.fit(x, y, epochs=12, batch_size=8, verbose=0, validation_split=0.5, callbacks=[stop, Snapshot()])
    losses = history.history["val_loss"]
    best = int(np.argmin(losses))
    assert stop.best_epoch == best and stop.best == pytest.approx(losses[best])
    assert isinstance(stop.best_weights, dict) and all(isinstance(t, torch.Tensor) for t in stop.best_weights.values())
    assert all(np.array_equal(a, b) for a, b in zip(trainer.model.get_weights(), weights_by_epoch[best]))
