import numpy as np
import pytest
import torch

from tests.conftest import make_data, make_trainer
from torchcb.callbacks import BaseLogger, Callback, History
from torchcb.logs import Logs


def test_baselogger_averages_by_size_and_keeps_stateful_last_value():
    logger = BaseLogger(stateful_metrics=["auc"])
    logger.set_params({"metrics": ["loss", "auc"]})
    logger.on_epoch_begin(0)
    logger.on_batch_end(0, {"batch": 0, "size": 3, "loss": 1.0, "auc": 0.2})
    logger.on_batch_end(1, {"batch": 1, "size": 1, "loss": 5.0, "auc": 0.9})
    logs = {"val_loss": 0.5}
    logger.on_epoch_end(0, logs)
    assert logs == {"val_loss": 0.5, "loss": 2.0, "auc": 0.9}
    logger.on_epoch_begin(1)
    logger.on_batch_end(0, {"batch": 0, "size": 2, "loss": 3.0, "auc": 0.1})
    logs = {}
    logger.on_epoch_end(1, logs)
    assert logs == {"loss": 3.0, "auc": 0.1}


def test_baselogger_sums_device_logs_without_reading_them():
    logger = BaseLogger()
    logger.on_epoch_begin(0)
    for value in (1.0, 3.0):
        logs = Logs(batch=0, size=2)
        logs.update_raw({"loss": torch.tensor(value)})
        logger.on_batch_end(0, logs)
        assert isinstance(dict.__getitem__(logs, "loss"), torch.Tensor)
    out = {}
    logger.on_epoch_end(0, out)
    assert out == {"loss": 2.0}


def test_baselogger_with_no_batches_writes_nothing():
    logger = BaseLogger()
    logger.on_epoch_begin(0)
    logs = {"val_loss": 1.0}
    logger.on_epoch_end(0, logs)
    assert logs == {"val_loss": 1.0}


def test_history_appends_each_key_and_sets_model_history():
    class Model:
        history = None

    history = History()
    history.set_model(Model())
    history.on_train_begin()
    history.on_epoch_end(0, {"loss": 1.0})
    history.on_epoch_end(1, {"loss": 0.5, "val_loss": 0.7})
    assert history.epoch == [0, 1]
    assert history.history == {"loss": [1.0, 0.5], "val_loss": [0.7]}
    assert history.model.history is history
    history.on_train_begin()
    assert history.epoch == [] and history.history["loss"] == [1.0, 0.5]


@pytest.mark.parametrize("cls", [BaseLogger, History])
def test_history_and_baselogger_accept_none_logs(cls):
    callback = cls()
    callback.on_epoch_begin(0)
    callback.on_epoch_end(0, None)


class _ReadsNothing(Callback):
    def on_train_batch_end(self, batch, logs=None):
        pass  # looks at single batches, so fit builds Keras' batch logs


def _fit_history(callbacks):
    torch.manual_seed(0)
    np.random.seed(0)
    x, y = make_data(37)  # a last, partial batch: the average is weighted by size
    return make_trainer().fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=callbacks).history


def test_epoch_averages_are_the_same_whether_or_not_batch_logs_are_built():
    assert _fit_history([_ReadsNothing()]) == _fit_history([])


def test_a_baselogger_subclass_passed_to_fit_sees_every_batch():
    class Counting(BaseLogger):
        batches = 0

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1
            super().on_train_batch_end(batch, logs)

    counting = Counting()
    history = _fit_history([counting])
    assert counting.batches == 3 * 5
    assert history == _fit_history([])


def test_a_baselogger_handed_totals_averages_them_and_takes_no_batch_logs():
    from torchcb.callbacks import CallbackList
    from torchcb.logs import EpochTotals

    totals = EpochTotals({"auc"}, skip=("batch", "size"))
    logger = BaseLogger(stateful_metrics=["auc"], totals=totals)
    callbacks = CallbackList([logger])
    callbacks.on_epoch_begin(0)
    totals.add({"loss": torch.tensor(1.0), "auc": torch.tensor(0.2)}, 3)  # as fit's loop adds each step
    totals.add({"loss": torch.tensor(5.0), "auc": torch.tensor(0.9)}, 1)
    callbacks.on_train_batch_end(1, {"batch": 1, "size": 1, "loss": 100.0})  # not its to sum
    logs = {"val_loss": 0.5}
    callbacks.on_epoch_end(0, logs)
    assert logs == {"val_loss": 0.5, "loss": 2.0, "auc": pytest.approx(0.9)}
    assert logger.get_state()["seen"] == 4
    assert BaseLogger().implements("on_train_batch_end") and not logger.implements("on_train_batch_end")
