"""TerminateOnNaN: stop training when the loss becomes NaN or infinite."""

from __future__ import annotations

import math
from typing import Any

import torch

from torchcb._checks import check_int
from torchcb.callbacks.base import Callback
from torchcb.logs import read_floats, stack_scalars

__all__ = ["TerminateOnNaN"]


class TerminateOnNaN(Callback):
    """Stops training at a batch whose ``loss`` is NaN or ±inf.

    It prints ``Batch N: Invalid loss, terminating training`` (N the first bad batch) and
    sets ``model.stop_training``; the epoch still ends (``on_epoch_end`` runs) and training
    stops after it.

    The check runs on the device: the losses of ``check_every`` batches are tested
    together and read back as one boolean, so a GPU is not synchronised every batch. The
    price is a lag: training may go on for up to ``check_every - 1`` batches after the bad
    one before it stops, but a bad loss is never missed: the pending batches are always
    checked at the end of the epoch, and before any checkpoint, weights file or backup is
    written during ``fit``: once the loss went NaN, those writes are skipped, so NaN weights
    never replace the last good file. Where something else already read the loss back (a
    callback reading ``logs["loss"]``, or logs that are plain floats), the check is at once,
    as in Keras.

    Args:
        raise_error: raise ``RuntimeError`` instead of stopping (Keras 3), so no further
            hook runs.
        check_every: how many batches are checked together on the device; 1 checks every
            batch, as Keras does.

    Example:
        >>> from torchcb.callbacks import TerminateOnNaN
        >>> # trainer.fit(x, y, callbacks=[TerminateOnNaN()])
        >>> TerminateOnNaN(raise_error=True).raise_error
        True
    """

    def __init__(self, raise_error: bool = False, *, check_every: int = 32) -> None:
        super().__init__()
        self.check_every = check_int(check_every, "check_every", 1)
        self.raise_error = raise_error
        self._pending: list[tuple[int, torch.Tensor]] = []
        self.went_bad = False

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._pending = []
        self.went_bad = False  # a NaN or infinite loss was seen in this fit

    def before_checkpoint(self) -> bool:
        self._check_pending()
        return not self.went_bad

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss: Any = dict.get(logs, "loss") if logs else None  # dict.get: the stored value, not read back
        if loss is None:
            return
        if isinstance(loss, torch.Tensor):
            self._pending.append((batch, loss))  # checked on the device, with the next ones
            if len(self._pending) >= self.check_every:
                self._check_pending()
            return
        self._check_pending()
        self._check(batch, float(loss))

    on_batch_end = on_train_batch_end  # the Keras 2 name

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._check_pending()  # no bad loss outlives its epoch

    def _check_pending(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        losses = stack_scalars([loss for _, loss in pending])
        # a NaN or an infinity makes the sum non-finite: one reduction and one read per check
        (total,) = read_floats([losses.sum(dtype=torch.float32)])
        if math.isfinite(total):
            return
        finite = torch.isfinite(losses).tolist()
        if all(finite):  # finite losses whose sum overflowed
            return
        first = finite.index(False)
        self._check(pending[first][0], float(losses[first]))

    def _check(self, batch: int, loss: float) -> None:
        if math.isnan(loss) or math.isinf(loss):
            if self.went_bad:
                return  # reported once
            self.went_bad = True
            if self.raise_error:
                raise RuntimeError(
                    f"NaN or Inf loss encountered at batch {batch}. Loss value: {loss}. Terminating training immediately."
                )
            print("Batch %d: Invalid loss, terminating training" % batch)
            self.model.stop_training = True
