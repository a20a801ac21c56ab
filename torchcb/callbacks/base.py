"""The callback protocol: :class:`Callback`, the hooks, and the monitor base.

Hooks and their arguments follow Keras 2.3: every hook receives
a ``dict`` of logs (never ``None``), and ``on_batch_begin``/``on_batch_end`` are the
aliases of the train-batch hooks.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

__all__ = ["HOOKS", "KERAS_HOOKS", "BatchFrequency", "Callback", "MonitorCallback"]

KERAS_HOOKS = (
    "on_train_begin",
    "on_train_end",
    "on_epoch_begin",
    "on_epoch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_test_begin",
    "on_test_end",
    "on_test_batch_begin",
    "on_test_batch_end",
    "on_predict_begin",
    "on_predict_end",
    "on_predict_batch_begin",
    "on_predict_batch_end",
)
HOOKS = (*KERAS_HOOKS, "on_train_error", "before_checkpoint")  # with torchcb's own two


class Callback:
    """Base class for callbacks; subclass it and override the hooks you need.

    Attributes:
        model: the Keras-shaped facade of the model being trained (see ``torchcb.facade``).
        params: training parameters: ``epochs``, ``steps``, ``samples``, ``batch_size``,
            ``verbose``, ``do_validation`` and ``metrics``.
        validation_data: Keras 2's ``[x..., y..., sample_weights]`` as numpy arrays, set by
            ``fit`` once ``on_train_begin`` has run when the validation data is in memory
            (arrays or tensors, ``validation_split`` included); ``None`` otherwise (Datasets,
            DataLoaders, generators), as in Keras 2.

    Example:
        >>> from torchcb.callbacks import Callback
        >>> class LossHistory(Callback):
        ...     def on_train_begin(self, logs=None):
        ...         self.losses = []
        ...     def on_batch_end(self, batch, logs=None):
        ...         self.losses.append(logs.get("loss"))
    """

    def __init__(self) -> None:
        self.validation_data = None
        self.model: Any = None
        self.params: dict[str, Any] = {}

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params

    def set_model(self, model: Any) -> None:
        self.model = model

    def get_state(self) -> dict[str, Any] | None:
        """The state a full checkpoint keeps for this callback, or ``None`` if it has none.

        Only tensors, numbers, strings, lists and dicts: checkpoints load with
        ``weights_only=True``. Override it together with :meth:`set_state`.
        """
        return None

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned; called on resume after ``on_train_begin``."""

    def on_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        """Alias of ``on_train_batch_begin``, as in Keras."""

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        """Alias of ``on_train_batch_end``, as in Keras."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        pass

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.on_batch_begin(batch, logs=logs)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.on_batch_end(batch, logs=logs)

    def on_test_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        pass

    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
        pass

    def on_predict_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        pass

    def on_predict_batch_end(self, batch: int, logs: dict | None = None) -> None:
        pass

    def on_train_begin(self, logs: dict | None = None) -> None:
        pass

    def on_train_end(self, logs: dict | None = None) -> None:
        pass

    def on_test_begin(self, logs: dict | None = None) -> None:
        pass

    def on_test_end(self, logs: dict | None = None) -> None:
        pass

    def on_predict_begin(self, logs: dict | None = None) -> None:
        pass

    def on_predict_end(self, logs: dict | None = None) -> None:
        pass

    def on_train_error(self, error: BaseException) -> None:
        """torchcb's own hook: ``fit`` raised ``error`` and ``on_train_end`` will not run.

        Callbacks that hold files or threads release them here; the error is re-raised after.
        """

    def before_checkpoint(self) -> bool:
        """torchcb's own hook: ``fit`` is about to write a checkpoint, a weights file or a backup.

        Return ``False`` to skip the write. TerminateOnNaN runs its pending loss checks here
        and refuses once the loss went NaN, so NaN weights never replace good ones.
        """
        return True


class BatchFrequency:
    """Keras' count of training batches for ``save_freq=N``: says when N batches have passed.

    The count runs across epochs; a batch index that does not grow means a new epoch began.

    Example:
        >>> every_3 = BatchFrequency(3)
        >>> [every_3.passed(batch) for batch in (0, 1, 2, 3, 0, 1)]  # 4 batches, then a new epoch
        [False, False, True, False, False, True]
    """

    def __init__(self, every: int) -> None:
        self.every = every
        self.reset()

    def reset(self) -> None:
        self.since = 0
        self.last: int | None = None

    def passed(self, batch: int) -> bool:
        self.since += batch + 1 if self.last is None or batch <= self.last else batch - self.last
        self.last = batch
        if self.since >= self.every:
            self.since = 0
            return True
        return False

    def state(self) -> dict[str, Any]:
        return {"since": self.since, "last": self.last}

    def restore(self, state: dict[str, Any]) -> None:
        self.since, self.last = state["since"], state["last"]


_HIGHER_IS_BETTER_SUFFIXES = ("acc", "accuracy", "auc")


class MonitorCallback(Callback):
    """The "monitor a quantity" logic shared by EarlyStopping, ModelCheckpoint and ReduceLROnPlateau.

    Args:
        monitor: the log key to watch, e.g. ``"val_loss"``.
        mode: ``"min"``, ``"max"`` or ``"auto"``. ``"auto"`` maximises names (without a
            ``val_`` prefix) ending in ``acc``, ``accuracy`` or ``auc``, and metrics whose
            object says higher is better; it minimises everything else. An unknown mode
            warns and falls back to ``"auto"``.
        baseline: the value ``best`` starts from, if given.
        min_delta: the smallest change that counts as an improvement; its absolute value
            is used, in the direction the mode needs.

    Example:
        >>> from torchcb.callbacks.base import MonitorCallback
        >>> watcher = MonitorCallback(monitor="val_accuracy", min_delta=0.01)
        >>> watcher.reset_monitor()
        >>> watcher.is_improvement(0.80, watcher.best), watcher.is_improvement(0.805, 0.80)
        (True, False)
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "auto",
        baseline: float | None = None,
        min_delta: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"monitor must be the name of a log key such as 'val_loss', got {monitor!r}.")
        if mode not in ("auto", "min", "max"):
            warnings.warn(
                f"{type(self).__name__} mode {mode} is unknown, fallback to auto mode.", RuntimeWarning, stacklevel=3
            )
            mode = "auto"
        self.monitor = monitor
        self.mode = mode
        self.baseline = baseline
        self.min_delta = abs(float(min_delta))
        self.maximize = self._maximize()
        self.best: float = -math.inf if self.maximize else math.inf

    def _maximize(self) -> bool:
        if self.mode != "auto":
            return self.mode == "max"
        name = self.monitor[4:] if self.monitor.startswith("val_") else self.monitor
        if name.endswith(_HIGHER_IS_BETTER_SUFFIXES):
            return True
        for metric in getattr(self.model, "metrics", None) or []:
            if getattr(metric, "name", None) == name:
                direction = getattr(metric, "_direction", None)
                if direction is not None:
                    return direction == "up"
                return bool(getattr(metric, "higher_is_better", False))
        return False

    def reset_monitor(self, initial: float | None = None) -> None:
        """Decide the direction and set ``best`` to ``initial``, the baseline, or the worst value."""
        self.maximize = self._maximize()
        if initial is None:
            initial = self.baseline
        self.best = float(initial) if initial is not None else (-math.inf if self.maximize else math.inf)

    def is_improvement(self, current: float, reference: float) -> bool:
        """Whether ``current`` beats ``reference`` by more than ``min_delta`` in the mode's direction."""
        if self.maximize:
            return current - self.min_delta > reference
        return current + self.min_delta < reference

    def get_monitor_value(self, logs: dict | None, warning: str) -> float | None:
        """The monitored value from ``logs``, or ``None`` after a warning naming the available keys."""
        logs = logs or {}
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(warning % (self.monitor, ",".join(logs)), RuntimeWarning, stacklevel=3)
            return None
        return float(current)
