"""Callbacks that other people wrote for Keras, from packages on the index, run on torchcb.

- ``tqdm.keras.TqdmCallback``: a Keras 3 callback (a ``keras.callbacks.Callback``), passed as
  it is; it sizes its bars from Keras 3's ``params`` and moves them with Keras 3's batch logs.
- ``keras-swa``'s SWA: written for Keras 2 and built from the ``K``, ``Callback`` and
  BatchNormalization it is given; here torchcb's, the one line a user changes.
"""

import io

import numpy as np
import pytest
import torch

from tests.conftest import make_data, make_trainer
from torchcb import backend as K
from torchcb.callbacks import Callback


@pytest.mark.parametrize("verbose", [1, 2])
def test_tqdm_callback_counts_every_epoch_and_batch(verbose):
    tqdm_keras = pytest.importorskip("tqdm.keras")
    stream = io.StringIO()
    callback = tqdm_keras.TqdmCallback(verbose=verbose, file=stream)
    history = make_trainer().fit(*make_data(40), batch_size=8, epochs=3, verbose=0, callbacks=[callback])
    assert (callback.epoch_bar.n, callback.epoch_bar.total) == (3, 3)
    assert (callback.batch_bar.n, callback.batch_bar.total) == (5, 5)  # 40 samples in batches of 8
    # the batch bar shows Keras 3's running means: after the last batch, the epoch's own values
    format_number = callback.batch_bar.format_num
    expected = (
        f"accuracy={format_number(history.history['accuracy'][-1])}, loss={format_number(history.history['loss'][-1])}"
    )
    assert callback.batch_bar.postfix == expected
    assert "3/3 [" in stream.getvalue()  # the epoch bar, drawn complete


def test_keras_swa_averages_the_weights_and_cycles_the_rate_on_every_batch():
    swa_callback = pytest.importorskip("swa.callback")
    # was: create_swa_callback_class(keras.backend, keras.callbacks.Callback, keras.layers.BatchNormalization)
    SWA = swa_callback.create_swa_callback_class(K, Callback, torch.nn.modules.batchnorm._BatchNorm)
    swa = SWA(start_epoch=2, lr_schedule="cyclic", swa_lr=0.001, swa_lr2=0.003, swa_freq=3)
    trainer = make_trainer(lr=0.01)
    rates, weights = [], []

    class Record(Callback):
        def on_train_batch_begin(self, batch, logs=None):
            rates.append(trainer.optimizer.param_groups[0]["lr"])  # what the optimizer steps with

        def on_epoch_end(self, epoch, logs=None):
            weights.append(self.model.get_weights())

    history = trainer.fit(*make_data(40), batch_size=8, epochs=5, verbose=0, callbacks=[swa, Record()])

    def cyclic(epoch, batch, steps=5):  # Section 3.1 of the SWA paper, as the package computes it
        if epoch < 1:
            return 0.01
        i = ((epoch - 1) % 3) * steps + batch + 1
        t = ((i - 1) % (3 * steps) + 1) / (3 * steps)
        return (1 - t) * 0.003 + t * 0.001

    expected = [cyclic(epoch, batch) for epoch in range(5) for batch in range(5)]
    assert rates == pytest.approx(expected, rel=1e-12)
    assert history.history["lr"][-25:] == pytest.approx(expected, rel=1e-12)  # SWA appends its record
    # SWA epochs are 1 and 4 (start_epoch=2, every third): the final weights are their average
    average = [(a + b) / 2 for a, b in zip(weights[1], weights[4])]
    assert all(np.allclose(w, a, atol=1e-7) for w, a in zip(trainer.model.get_weights(), average))
    assert not np.allclose(trainer.model.get_weights()[0], weights[4][0])
