import copy

import pytest
import torch

from torchcb import Trainer
from torchcb.callbacks import BackupAndRestore, Callback, ModelCheckpoint, SwapEMAWeights
from torchcb.facade import Variable


def _trainer(use_ema=True):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9)
    return Trainer(
        net, optimizer, loss="sparse_categorical_crossentropy", device="cpu", use_ema=use_ema, ema_momentum=0.8
    )


def _data(n=64, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    return x, (x[:, 0] > 0).long()


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.module.state_dict().items()}


def _loss_of_a_copy_with(trainer, averaged, x, y):
    """The loss of a separate copy of the module loaded with ``averaged``, in eval mode."""
    module = copy.deepcopy(trainer.module).eval()
    module.load_state_dict(averaged, strict=False)
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(module(x), y).item()


class Watch(Callback):
    """At each epoch's end: the raw weights and the average; at each epoch's first batch: the weights."""

    def __init__(self, trainer):
        super().__init__()
        self.trainer = trainer
        self.raw, self.averages, self.first_batch = [], [], []

    def on_epoch_end(self, epoch, logs=None):
        self.raw.append(_weights(self.trainer))
        self.averages.append(self.trainer.weight_average.averaged_weights())

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.first_batch.append(_weights(self.trainer))


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in b)


def test_validation_runs_on_the_average_and_training_goes_on_from_the_raw_weights():
    trainer = _trainer()
    watch = Watch(trainer)
    x_val, y_val = _data(16, seed=2)
    history = trainer.fit(
        *_data(), batch_size=8, epochs=3, verbose=0, validation_data=(x_val, y_val),
        callbacks=[watch, SwapEMAWeights()],
    )  # fmt: skip
    for epoch in range(3):
        expected = _loss_of_a_copy_with(trainer, watch.averages[epoch], x_val, y_val)
        assert history.history["val_loss"][epoch] == pytest.approx(expected, abs=1e-6)
        assert not _same(watch.raw[epoch], watch.averages[epoch])  # the two differ: the check means something
    for epoch in (1, 2):  # the next epoch starts from the raw weights of the one before
        assert _same(watch.first_batch[epoch], watch.raw[epoch - 1])


def test_evaluate_and_predict_use_the_average_and_give_the_raw_weights_back():
    trainer = _trainer()
    trainer.fit(*_data(), batch_size=8, epochs=1, verbose=0)
    with torch.no_grad():  # after fit the module holds the average: put other raw weights in
        for parameter in trainer.module.parameters():
            parameter.add_(0.5)
    raw = _weights(trainer)
    averaged = trainer.weight_average.averaged_weights()
    x, y = _data(16, seed=3)
    swap = SwapEMAWeights()
    loss = trainer.evaluate(x, y, verbose=0, callbacks=[swap])
    assert loss == pytest.approx(_loss_of_a_copy_with(trainer, averaged, x, y), abs=1e-6)
    assert _same(_weights(trainer), raw)
    predictions = trainer.predict(x, callbacks=[swap])
    module = copy.deepcopy(trainer.module).eval()
    module.load_state_dict(averaged, strict=False)
    assert torch.allclose(predictions, module(x).detach(), atol=1e-6)
    assert _same(_weights(trainer), raw)  # Keras 3 leaves the average in the model after predict
    assert trainer.weight_average.swapped is False


def test_swap_on_epoch_lets_model_checkpoint_save_the_average(tmp_path):
    trainer = _trainer()
    watch = Watch(trainer)
    path = str(tmp_path / "w-{epoch}.pt")
    trainer.fit(
        *_data(), batch_size=8, epochs=3, verbose=0,
        callbacks=[watch, SwapEMAWeights(swap_on_epoch=True), ModelCheckpoint(path, save_weights_only=True)],
    )  # fmt: skip
    for epoch in range(3):
        saved = torch.load(tmp_path / f"w-{epoch + 1}.pt", weights_only=True)
        assert _same(saved, watch.averages[epoch])
        assert not _same(saved, watch.raw[epoch])
    for epoch in (1, 2):  # swapped back at the next epoch's start
        assert _same(watch.first_batch[epoch], watch.raw[epoch - 1])
    # after the last epoch the average is in the module and in the slots
    assert _same(_weights(trainer), watch.averages[2])
    assert _same(trainer.weight_average.averaged_weights(), watch.averages[2])
    assert trainer.weight_average.swapped is False


def test_swap_on_epoch_and_an_early_stop_still_end_with_the_average():
    class StopAfterFirstEpoch(Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    trainer = _trainer()
    watch = Watch(trainer)
    trainer.fit(
        *_data(), batch_size=8, epochs=5, verbose=0,
        callbacks=[watch, SwapEMAWeights(swap_on_epoch=True), StopAfterFirstEpoch()],
    )  # fmt: skip
    assert _same(_weights(trainer), watch.averages[0])


def test_a_backup_taken_while_swapped_resumes_bitwise(tmp_path):
    class InterruptAtEpoch(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("interrupted")

    def fit(trainer, before):
        return trainer.fit(
            *_data(), batch_size=8, epochs=4, verbose=0, validation_split=0.25,
            callbacks=[*before, SwapEMAWeights(swap_on_epoch=True), BackupAndRestore(str(tmp_path / "b"))],
        )  # fmt: skip

    reference = _trainer()
    reference_history = fit(reference, [])
    interrupted = _trainer()
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(interrupted, [InterruptAtEpoch()])  # raised before the swap back: the backup of epoch 1 was swapped
    assert not interrupted.weight_average.swapped  # a failed fit leaves the raw weights in the module
    saved = torch.load(tmp_path / "b" / "latest.pt", weights_only=True)
    assert saved["ema"]["swapped"] is True
    resumed = _trainer()
    history = fit(resumed, [])
    assert history.history == reference_history.history
    assert _same(_weights(resumed), _weights(reference))
    assert _same(resumed.weight_average.averaged_weights(), reference.weight_average.averaged_weights())


def test_without_use_ema_it_says_which_argument_to_set():
    trainer = _trainer(use_ema=False)
    before = _weights(trainer)
    with pytest.raises(ValueError, match="use_ema=True"):
        trainer.fit(*_data(), batch_size=8, epochs=1, verbose=0, callbacks=[SwapEMAWeights()])
    with pytest.raises(ValueError, match="use_ema=True"):
        trainer.evaluate(*_data(), verbose=0, callbacks=[SwapEMAWeights()])
    assert _same(_weights(trainer), before)  # refused before any step


def test_swap_on_epoch_must_be_a_bool():
    with pytest.raises(ValueError, match="swap_on_epoch"):
        SwapEMAWeights(swap_on_epoch="yes")


def test_it_swaps_the_variables_of_an_optimizer_with_only_keras_ema_attributes():
    # what a Keras 3 optimizer built with use_ema=True offers, and nothing of torchcb's
    weights, averages = [torch.ones(2), torch.zeros(3)], [torch.full((2,), 5.0), torch.full((3,), 7.0)]

    class KerasOptimizerStub:
        use_ema = True
        _trainable_variables = [Variable("w", weights[0]), Variable("b", weights[1])]
        _model_variables_moving_average = [Variable("w/average", averages[0]), Variable("b/average", averages[1])]

    class ModelStub:
        optimizer = KerasOptimizerStub()

    swap = SwapEMAWeights()
    swap.set_model(ModelStub())
    swap.on_test_begin({})
    assert [w.tolist() for w in weights] == [[5.0, 5.0], [7.0, 7.0, 7.0]]
    assert [a.tolist() for a in averages] == [[1.0, 1.0], [0.0, 0.0, 0.0]]
    swap.on_test_end({})
    assert [w.tolist() for w in weights] == [[1.0, 1.0], [0.0, 0.0, 0.0]]
    assert [a.tolist() for a in averages] == [[5.0, 5.0], [7.0, 7.0, 7.0]]
