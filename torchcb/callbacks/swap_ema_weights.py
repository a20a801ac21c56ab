"""SwapEMAWeights: evaluate (and, if asked, checkpoint) on the moving average of the weights."""

from __future__ import annotations

from typing import Any

from torchcb.callbacks.base import Callback

__all__ = ["SwapEMAWeights"]


class _KerasSlots:
    """The swap on an optimizer that offers only Keras 3's EMA attributes (``_trainable_variables``,
    ``_model_variables_moving_average``, each variable with ``assign``), as Keras swaps them."""

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer
        self.swapped = False

    def _pairs(self) -> list[tuple[Any, Any]]:
        return list(zip(self.optimizer._trainable_variables, self.optimizer._model_variables_moving_average))

    def swap(self) -> None:
        for variable, average in self._pairs():
            raw = variable.numpy()
            variable.assign(average)
            average.assign(raw)
        self.swapped = not self.swapped

    def finalize(self) -> None:
        if self.swapped:
            for variable, average in self._pairs():
                average.assign(variable)
        else:
            for variable, average in self._pairs():
                variable.assign(average)
        self.swapped = False


class SwapEMAWeights(Callback):
    """Swaps the module's weights with their moving average around evaluation (Keras 3's callback).

    With ``Trainer(..., use_ema=True)`` the trainer keeps an exponential moving average of
    the weights (see ``torchcb.ema``). This callback puts the average into the module for
    every evaluation — the validation at each epoch's end, ``evaluate`` and ``predict`` given
    it as a callback — and the raw weights back after it, so the ``val_*`` logs are the
    average's while training goes on from the raw weights. The swap is in place (three fused
    copies, bitwise exact), so nothing is kept beside the two sets of weights.

    With ``swap_on_epoch=True`` the average is also in the module from each epoch's end to
    the next epoch's start, so callbacks after this one in the list see it in
    ``on_epoch_end``: a ``ModelCheckpoint`` placed after it saves the averaged weights (a
    full checkpoint saved then resumes on the raw weights all the same). After the last
    epoch the average stays in the module, as ``fit`` leaves it with ``use_ema``.

    Unlike Keras 3, ``predict`` swaps back when it ends (Keras leaves the average in the
    model after ``predict``). Leave the weights and the average alone in other callbacks
    while they are swapped.

    Args:
        swap_on_epoch: also swap at ``on_epoch_end`` and back at ``on_epoch_begin``
            (default False).

    Raises:
        ValueError: from ``fit``, ``evaluate`` or ``predict`` when the Trainer keeps no
            average (it was built without ``use_ema=True``).

    Example:
        >>> import torch
        >>> from torchcb import Trainer
        >>> from torchcb.callbacks import SwapEMAWeights
        >>> net = torch.nn.Linear(3, 1)
        >>> trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", device="cpu",
        ...                   use_ema=True, ema_momentum=0.9)
        >>> x, y = torch.ones(16, 3), torch.zeros(16, 1)
        >>> history = trainer.fit(x, y, batch_size=4, epochs=2, verbose=0, validation_data=(x, y),
        ...                       callbacks=[SwapEMAWeights()])
        >>> sorted(history.history)   # val_loss is the loss of the averaged weights
        ['loss', 'val_loss']
    """

    def __init__(self, swap_on_epoch: bool = False) -> None:
        super().__init__()
        if not isinstance(swap_on_epoch, bool):
            raise ValueError(f"swap_on_epoch must be True or False, got {swap_on_epoch!r}.")
        self.swap_on_epoch = swap_on_epoch
        self._average: Any = None
        self._swapped_for = ""  # "test" or "predict" while this callback swapped for that loop

    def set_model(self, model: Any) -> None:
        super().set_model(model)
        optimizer = getattr(model, "optimizer", None)
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # Keras' LossScaleOptimizer
        average = getattr(optimizer, "weight_average", None)
        if average is None and getattr(optimizer, "use_ema", False):
            if hasattr(optimizer, "_model_variables_moving_average"):
                average = _KerasSlots(optimizer)  # a Keras optimizer built with use_ema=True
        if average is None:
            raise ValueError(
                "SwapEMAWeights needs a moving average of the weights: create the Trainer with use_ema=True "
                f"(Trainer(module, optimizer, loss, use_ema=True)). Received: use_ema={getattr(optimizer, 'use_ema', False)}."
            )
        self._average = average

    # evaluation and predict run on the average; the raw weights come back after them
    def _swap_in(self, loop: str) -> None:
        if not self._average.swapped:
            self._average.swap()
            self._swapped_for = loop

    def _swap_out(self, loop: str) -> None:
        if self._swapped_for == loop:
            if self._average.swapped:
                self._average.swap()
            self._swapped_for = ""

    def on_test_begin(self, logs: dict | None = None) -> None:
        self._swap_in("test")

    def on_test_end(self, logs: dict | None = None) -> None:
        self._swap_out("test")

    def on_predict_begin(self, logs: dict | None = None) -> None:
        self._swap_in("predict")

    def on_predict_end(self, logs: dict | None = None) -> None:
        self._swap_out("predict")

    # swap_on_epoch: the average is in the module from an epoch's end to the next epoch's start
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self.swap_on_epoch and self._average.swapped:
            self._average.swap()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not self.swap_on_epoch:
            return
        if not self._average.swapped:
            self._average.swap()
        if epoch == self.params.get("epochs", 0) - 1:
            self._average.finalize()  # the last epoch: the average in both places, as Keras copies it

    def on_train_error(self, error: BaseException) -> None:
        if self._average.swapped:  # a failed fit leaves the raw weights in the module
            self._average.swap()
        self._swapped_for = ""
