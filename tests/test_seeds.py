"""The seed documents' examples run on torchcb as written: only the imports and the model construction change."""

import math
import types
import warnings

import numpy as np
import pytest
import torch

import torchcb.callbacks
from torchcb import Trainer

# `import tensorflow as tf`, for what the examples use of it
tf = types.SimpleNamespace(math=math, keras=types.SimpleNamespace(callbacks=torchcb.callbacks))


def test_blog_learning_rate_scheduler_example_runs_as_written():
    # The Korean tf.keras blog post, "LearningRateScheduler": a 10-unit output fitted against
    # np.zeros(5) under 'mse'; tf.keras expands the targets to (5, 1) and broadcasts them.
    def scheduler(epoch, lr):
        if epoch < 10:
            return lr
        else:
            return lr * tf.math.exp(-0.1)

    net = torch.nn.Linear(20, 10)  # was: tf.keras.models.Sequential([tf.keras.layers.Dense(10)])
    model = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.01), loss="mse")  # was: model.compile(...)
    with torch.no_grad():
        first_loss = float((net(torch.arange(100.0).reshape(5, 20)) ** 2).mean())
    callback = tf.keras.callbacks.LearningRateScheduler(scheduler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(np.arange(100).reshape(5, 20), np.zeros(5), epochs=15, callbacks=[callback], verbose=0)

    assert history.history["lr"] == pytest.approx([0.01] * 10 + [0.01 * math.exp(-0.1 * k) for k in range(1, 6)])
    assert len(history.history["loss"]) == 15
    assert history.history["loss"][0] == pytest.approx(first_loss, rel=1e-5)  # every output against its zero
    assert [str(w.message) for w in caught] == [
        "y of shape (5,) is matched to the module's outputs of shape (5, 10) as Keras matches them under loss "
        "'mse': expanded to (5, 1), then broadcast to (5, 10)."
    ]
