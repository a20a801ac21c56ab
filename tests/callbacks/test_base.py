import numpy as np
import pytest
import torch

from tests.conftest import make_data, make_trainer
from torchcb.callbacks import Callback


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
