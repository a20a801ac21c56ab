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
