"""TerminateOnNaN: stop training when the loss becomes NaN or infinite."""

from __future__ import annotations

import itertools
import math
from typing import Any, cast

import torch

from torchcb._checks import check_int
from torchcb.callbacks.base import Callback
from torchcb.logs import read_floats
from torchcb.utils import print_msg

__all__ = ["TerminateOnNaN"]


class TerminateOnNaN(Callback):
    """Stops training at a batch whose ``loss`` is NaN or ±inf.

    It prints ``Batch N: Invalid loss, terminating training`` (N the first bad batch) and
    sets ``model.stop_training``; the epoch still ends (``on_epoch_end`` runs) and training
    stops after it.

    The losses stay on the device and are read back ``check_every`` batches at a time, in
    one transfer, so a GPU is not synchronised every batch (``fit`` hands them over in
    groups of that size, through torchcb's ``on_train_batch_group_end`` hook, so no batch
    logs are built for it). The price is a lag: training may go on for up to
    ``check_every - 1`` batches after the bad one before it stops, but a bad loss is never
    missed: the pending batches are always checked at the end of the epoch, and before any
    checkpoint, weights file or backup is written during ``fit``: once the loss went NaN,
    those writes are skipped, so NaN weights never replace the last good file. Called batch
    by batch with logs that are plain floats (as Keras calls it), it checks at once. It
    declares the group hook (``batch_group_size``, :meth:`on_train_batch_group_end`) and that
    it only reads the batch logs (``changes_batch_logs = False``); the callback list reads
    those, and hands it single batches when a callback before it may change their logs.

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

    changes_batch_logs = False  # it only reads the loss

    def __init__(self, raise_error: bool = False, *, check_every: int = 32) -> None:
        super().__init__()
        self.check_every = check_int(check_every, "check_every", 1)
        self.raise_error = raise_error
        self._pending: list[torch.Tensor] = []  # losses not checked yet, of consecutive batches
        self._first_pending = 0  # the batch index of the first of them
        self.went_bad = False

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._pending = []
        self.went_bad = False  # a NaN or infinite loss was seen in this fit

    def before_checkpoint(self) -> bool:
        self._check_pending()
        return not self.went_bad

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:  # Keras' name, as on_train_batch_end calls it
        self._add(batch, dict.get(logs, "loss") if logs else None)  # dict.get: the stored value, not read back

    @property
    def batch_group_size(self) -> int:
        """How many batches ``fit`` hands :meth:`on_train_batch_group_end` at a time: ``check_every``."""
        return self.check_every

    def on_train_batch_group_end(self, first_batch: int, outputs: list[dict[str, Any]]) -> None:
        """``fit``'s call: the step outputs of consecutive batches from ``first_batch`` on, checked together."""
        losses = [values.get("loss") for values in outputs]
        if all(map(isinstance, losses, itertools.repeat(torch.Tensor))):  # the usual case: one read for all
            self._check_pending()  # batches handed over one by one before, if any, come first
            self._pending, self._first_pending = cast("list[torch.Tensor]", losses), first_batch
        else:
            for offset, loss in enumerate(losses):
                self._add(first_batch + offset, loss)
        self._check_pending()

    def _add(self, batch: int, loss: Any) -> None:
        if loss.__class__ is torch.Tensor:
            pending = self._pending
            if not pending:
                self._first_pending = batch
            pending.append(loss)  # checked on the device, with the next ones
            if len(pending) >= self.check_every:
                self._check_pending()
        elif loss is not None:
            self._check_pending()
            self._check(batch, float(loss))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._check_pending()  # no bad loss outlives its epoch

    def _check_pending(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        losses = read_floats(pending)  # the group's losses in one read
        if all(map(math.isfinite, losses)):
            return
        for offset, loss in enumerate(losses):
            if not math.isfinite(loss):
                self._check(self._first_pending + offset, loss)
                return

    def _check(self, batch: int, loss: float) -> None:
        if math.isnan(loss) or math.isinf(loss):
            if self.went_bad:
                return  # reported once
            self.went_bad = True
            if self.raise_error:
                raise RuntimeError(
                    f"NaN or Inf loss encountered at batch {batch}. Loss value: {loss}. Terminating training immediately."
                )
            print_msg("Batch %d: Invalid loss, terminating training" % batch)
            self.model.stop_training = True
