"""LearningRateScheduler and ReduceLROnPlateau, through the facade's learning-rate handle."""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from torchcb import backend as K
from torchcb._checks import check_int
from torchcb.callbacks.base import Callback, MonitorCallback
from torchcb.utils import print_msg

__all__ = ["LearningRateScheduler", "ReduceLROnPlateau", "get_lr", "set_lr"]


def get_lr(model: Any) -> float:
    """The current learning rate of ``model.optimizer`` as a float."""
    return float(K.get_value(model.optimizer.lr))


def set_lr(model: Any, value: float) -> None:
    """Set ``model.optimizer.lr``: through its handle on torchcb's facade, by assignment elsewhere."""
    handle = model.optimizer.lr
    if callable(getattr(handle, "set_value", None)):
        K.set_value(handle, value)
    else:
        model.optimizer.lr = value


def _takes_two_arguments(schedule: Callable) -> bool:
    """Whether ``schedule`` accepts ``(epoch, lr)``; decided from its signature, not by trial."""
    try:
        parameters = inspect.signature(schedule).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature get the Keras 2 call
        return True
    positional = 0
    for parameter in parameters:
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return True
        if parameter.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 2


class LearningRateScheduler(Callback):
    """Sets the learning rate at the start of every epoch from ``schedule``.

    ``schedule(epoch, lr)`` (or ``schedule(epoch)``; which one is read from its signature)
    gets the 0-based epoch index and the current rate, and returns the new rate: a float,
    a numpy float or a 0-d float tensor. The rate is logged as ``lr`` at epoch end. With
    several param groups, every group is scaled by the same ratio.

    Args:
        schedule: the function described above.
        verbose: 1 prints ``Epoch 00001: LearningRateScheduler setting learning rate to 0.01.``

    Example:
        >>> import math
        >>> from torchcb.callbacks import LearningRateScheduler
        >>> def scheduler(epoch, lr):
        ...     return lr if epoch < 10 else lr * math.exp(-0.1)
        >>> callback = LearningRateScheduler(scheduler)
        >>> # trainer.fit(x, y, epochs=15, callbacks=[callback])
    """

    def __init__(self, schedule: Callable[..., Any], verbose: int = 0) -> None:
        super().__init__()
        if not callable(schedule):
            raise ValueError(f"schedule must be a function schedule(epoch, lr) or schedule(epoch), got {schedule!r}.")
        self.schedule = schedule
        self.verbose = verbose
        self._two_arguments = _takes_two_arguments(schedule)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if not hasattr(self.model.optimizer, "lr"):
            raise ValueError('Optimizer must have a "lr" attribute.')
        lr = get_lr(self.model)
        lr = self.schedule(epoch, lr) if self._two_arguments else self.schedule(epoch)
        lr = _as_rate(lr)
        set_lr(self.model, lr)
        if self.verbose > 0:
            print_msg("\nEpoch %05d: LearningRateScheduler setting learning rate to %s." % (epoch + 1, lr))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["lr"] = np.float64(get_lr(self.model))  # a numpy scalar, as Keras 2 logged it


def _as_rate(value: Any) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        value = value.item()
    elif isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind == "f":
        value = value.item()
    if isinstance(value, (float, np.floating)) and math.isfinite(value):
        return float(value)
    raise ValueError(f'The output of the "schedule" function should be float. Got: {value!r}')


class ReduceLROnPlateau(MonitorCallback):
    """Reduces the learning rate when ``monitor`` has stopped improving.

    After ``patience`` epochs without an improvement of at least ``min_delta``, the rate
    is multiplied by ``factor`` (never below ``min_lr``), then ``cooldown`` epochs pass
    before counting again. The current rate is logged as ``lr`` every epoch.

    Args:
        monitor: the log key to watch. Default ``"val_loss"``.
        factor: the multiplier, below 1 (``new_lr = lr * factor``).
        patience: epochs without improvement before a reduction.
        verbose: 1 prints ``Epoch 00005: ReduceLROnPlateau reducing learning rate to 0.0001.``
        mode: ``"auto"``, ``"min"`` or ``"max"``, as EarlyStopping's (``monitor_op`` is
            ``np.greater`` or ``np.less``; an ``"auto"`` monitor that is neither a loss nor
            a metric of the fit raises ``ValueError`` at the first epoch end).
        min_delta: the least change that counts as an improvement. ``epsilon=`` is accepted
            as its deprecated Keras 2 name, with a warning.
        cooldown: epochs to wait after a reduction before counting again.
        min_lr: the lower bound on the rate (compared in float32, so it stops there).

    Example:
        >>> from torchcb.callbacks import ReduceLROnPlateau
        >>> reduce_lr = ReduceLROnPlateau(monitor="val_loss", factor=0.2, patience=5, min_lr=0.001)
        >>> # trainer.fit(x_train, y_train, callbacks=[reduce_lr])
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        verbose: int = 0,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0,
        **kwargs: Any,
    ) -> None:
        if "epsilon" in kwargs:
            min_delta = kwargs.pop("epsilon")
            warnings.warn(
                "`epsilon` argument is deprecated and will be removed, use `min_delta` instead.",
                DeprecationWarning,
                stacklevel=2,
            )
        if kwargs:
            raise TypeError(f"ReduceLROnPlateau got unexpected arguments: {', '.join(sorted(kwargs))}.")
        if not isinstance(factor, numbers.Real) or factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau does not support a factor >= 1.0. Got {factor}")
        check_int(patience, "patience", 0)
        check_int(cooldown, "cooldown", 0)
        if not isinstance(min_lr, numbers.Real) or min_lr < 0:
            raise ValueError(f"min_lr must be a number >= 0, got {min_lr!r}.")
        super().__init__(monitor, mode, None, min_delta)
        self.factor = float(factor)
        self.patience = patience
        self.verbose = verbose
        self.cooldown = cooldown
        self.min_lr = min_lr
        self.wait = 0
        self.cooldown_counter = 0

    def _reset(self) -> None:
        self.reset_monitor()
        self.cooldown_counter = 0
        self.wait = 0

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._reset()

    def get_state(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def set_state(self, state: dict[str, Any]) -> None:
        self.best, self.wait, self.cooldown_counter = state["best"], state["wait"], state["cooldown_counter"]

    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        logs["lr"] = np.float64(get_lr(self.model))
        current = self.get_monitor_value(
            logs, "Reduce LR on plateau conditioned on metric `%s` which is not available. Available metrics are: %s"
        )
        if current is None:
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self.is_improvement(current, self.best):
            self.best = current
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience:
                old_lr = get_lr(self.model)
                if np.float32(old_lr) > np.float32(self.min_lr):
                    new_lr = max(old_lr * self.factor, self.min_lr)
                    set_lr(self.model, new_lr)
                    if self.verbose > 0:
                        print_msg("\nEpoch %05d: ReduceLROnPlateau reducing learning rate to %s." % (epoch + 1, new_lr))
                    self.cooldown_counter = self.cooldown
                    self.wait = 0
