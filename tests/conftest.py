import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before anything imports keras (tqdm.keras does)

import numpy as np
import pytest
import torch

from torchcb import Trainer
from torchcb.callbacks import Callback


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def make_trainer(inputs=4, classes=2, metrics=("accuracy",), lr=0.05, **kwargs):
    net = torch.nn.Sequential(torch.nn.Linear(inputs, 8), torch.nn.ReLU(), torch.nn.Linear(8, classes))
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    loss = kwargs.pop("loss", "sparse_categorical_crossentropy")
    return Trainer(net, optimizer, loss=loss, metrics=list(metrics), device="cpu", **kwargs)


def make_data(samples=10, inputs=4, classes=2):
    x = np.random.rand(samples, inputs).astype(np.float32)
    y = np.random.randint(0, classes, samples)
    return x, y


class Recorder(Callback):
    """Records every hook call as (hook, index or None, a copy of the logs)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def _record(self, hook, index, logs):
        self.calls.append((hook, index, dict(logs) if logs is not None else None))

    def count(self, hook):
        return sum(1 for call in self.calls if call[0] == hook)

    def logs_of(self, hook):
        return [call[2] for call in self.calls if call[0] == hook]


def _make_hook(name, with_index):
    if with_index:

        def hook(self, index, logs=None):
            self._record(name, index, logs)

    else:

        def hook(self, logs=None):
            self._record(name, None, logs)

    return hook


for _name in (
    "on_epoch_begin",
    "on_epoch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_test_batch_begin",
    "on_test_batch_end",
    "on_predict_batch_begin",
    "on_predict_batch_end",
):
    setattr(Recorder, _name, _make_hook(_name, True))
for _name in ("on_train_begin", "on_train_end", "on_test_begin", "on_test_end", "on_predict_begin", "on_predict_end"):
    setattr(Recorder, _name, _make_hook(_name, False))


@pytest.fixture
def recorder():
    return Recorder()


class KerasStubOptimizer:
    def __init__(self, lr):
        self.lr = lr


class KerasStub:
    """Only what Keras itself offers a callback: stop_training, weights, optimizer.lr, save*."""

    def __init__(self, lr=0.1):
        self.stop_training = False
        self.optimizer = KerasStubOptimizer(lr)
        self.weights = [np.zeros(2)]
        self.saved = []

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        self.weights = [w.copy() for w in weights]

    def save(self, filepath, overwrite=True):
        self.saved.append(("save", filepath))

    def save_weights(self, filepath, overwrite=True):
        self.saved.append(("save_weights", filepath))


def drive(callback, values, monitor="val_loss", model=None, on_each_epoch=None):
    """Run a callback by hand over scripted monitor values, as Keras' own tests do.

    Returns the epochs that ran (training stops when the callback sets stop_training).
    """
    model = model or KerasStub()
    callback.set_model(model)
    callback.set_params({"epochs": len(values), "do_validation": True, "metrics": ["loss", monitor]})
    callback.on_train_begin({})
    ran = []
    for epoch, value in enumerate(values):
        callback.on_epoch_begin(epoch, {})
        if on_each_epoch:
            on_each_epoch(epoch, model)
        callback.on_epoch_end(epoch, {monitor: value} if value is not None else {"loss": 1.0})
        ran.append(epoch)
        if model.stop_training:
            break
    callback.on_train_end({})
    return ran
