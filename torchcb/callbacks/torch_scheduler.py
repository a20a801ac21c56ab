"""TorchScheduler: step any ``torch.optim.lr_scheduler`` scheduler from the callback list."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from torchcb.callbacks.base import Callback

__all__ = ["TorchScheduler"]


class TorchScheduler(Callback):
    """Steps a PyTorch learning-rate scheduler per epoch or per batch, beside Keras callbacks.

    The rate used during the epoch is logged as ``lr`` at epoch end (before the step), as
    Keras' LearningRateScheduler logs it. ``torch.optim.lr_scheduler.ReduceLROnPlateau`` is
    stepped at epoch end with the value of ``monitor`` (default ``"val_loss"``).

    The scheduler's ``state_dict`` goes into every full checkpoint (``model.save``,
    ``ModelCheckpoint(save_weights_only=False)``, ``BackupAndRestore``), also one saved after
    ``fit`` returns; a run resumed from it with a TorchScheduler of the same scheduler goes
    on with the schedule where it was, and trains on as a run never interrupted.

    Args:
        scheduler: a scheduler built on the trainer's optimizer.
        interval: ``"epoch"`` (step after every epoch) or ``"batch"`` (after every batch).
        monitor: the log key passed to ``ReduceLROnPlateau.step``; only for that scheduler.

    Example:
        >>> import torch
        >>> from torchcb.callbacks import TorchScheduler
        >>> net = torch.nn.Linear(2, 1)
        >>> optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> cosine = TorchScheduler(torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10))
        >>> plateau = TorchScheduler(torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer), monitor="val_loss")
        >>> # Trainer(net, optimizer, loss="mse").fit(x, y, callbacks=[cosine])
    """

    def __init__(self, scheduler: Any, interval: str = "epoch", monitor: str | None = None) -> None:
        super().__init__()
        if interval not in ("epoch", "batch"):
            raise ValueError(f"interval must be 'epoch' or 'batch', got {interval!r}.")
        if not callable(getattr(scheduler, "step", None)) or not hasattr(scheduler, "optimizer"):
            raise ValueError(f"scheduler must be a torch.optim.lr_scheduler scheduler, got {type(scheduler).__name__}.")
        self.plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        if self.plateau and interval == "batch":
            raise ValueError("ReduceLROnPlateau steps once per epoch with a monitored value: use interval='epoch'.")
        if monitor is not None and not self.plateau:
            raise ValueError("monitor is only for torch.optim.lr_scheduler.ReduceLROnPlateau.")
        self.scheduler = scheduler
        self.interval = interval
        self.monitor = monitor or ("val_loss" if self.plateau else None)
        self._restored = False

    def get_state(self) -> dict[str, Any]:
        # A function in a scheduler's state (OneCycleLR's ``anneal_func`` before torch 2.4) is set by
        # its constructor and cannot be loaded without running code: it stays out, as LambdaLR's lambdas do.
        state = self.scheduler.state_dict()
        return {"scheduler": {key: value for key, value in state.items() if not callable(value)}}

    def set_state(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self._restored = True

    def _step(self, *args: Any) -> None:
        if not self._restored:
            self.scheduler.step(*args)
            return
        # A run resumed at the end of an epoch steps the schedule before this process has
        # stepped the optimizer; the optimizer it restored has stepped, so PyTorch's
        # "scheduler before optimizer" warning does not apply.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step(*args)

    def on_train_begin(self, logs: dict | None = None) -> None:
        trainer = getattr(self.model, "trainer", None)
        if trainer is not None and self.scheduler.optimizer is not trainer.optimizer:
            raise ValueError(
                "scheduler: it was built on another optimizer than the Trainer's; build it on trainer.optimizer."
            )

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.interval == "batch":
            self._step()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        logs["lr"] = np.float64(self.scheduler.optimizer.param_groups[0]["lr"])
        if self.plateau:
            value = logs.get(self.monitor)
            if value is None:
                warnings.warn(
                    f"TorchScheduler: ReduceLROnPlateau conditioned on `{self.monitor}`, which is not available. "
                    f"Available metrics are: {','.join(logs)}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return
            self._step(value)
        elif self.interval == "epoch":
            self._step()
