"""The callback protocol: :class:`Callback`, the hooks, and the monitor base.

Hooks and their arguments follow Keras 2.3 (``keras/callbacks/callbacks.py``): every hook receives
a ``dict`` of logs (never ``None``), and ``on_batch_begin``/``on_batch_end`` are the
aliases of the train-batch hooks.

A callback also declares what the ``CallbackList`` needs to call it cheaply, so a new
callback needs no change there: which hooks it takes part in (:meth:`Callback.implements`),
whether ``fit`` hands it training batches in groups (:meth:`Callback.takes_batch_groups`),
whether it may change the batch logs (:attr:`Callback.changes_batch_logs`) and whether its
``get_state`` takes ``all_ranks`` (:attr:`Callback.state_takes_all_ranks`). The list reads
them through :func:`implements_hook`, :func:`takes_groups`, :func:`changes_logs` and
:func:`checkpoint_state`, which give an object that is not a :class:`Callback` its defaults.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from torchcb.losses import KNOWN_LOSSES

__all__ = ["HOOKS", "KERAS_HOOKS", "BatchFrequency", "Callback", "MonitorCallback"]

KERAS_HOOKS = tuple(  # every hook Keras calls: on_{train,epoch,test,predict}_{begin,end} and the batch hooks
    f"on_{stage}_{when}"
    for stage in ("train", "epoch", "train_batch", "test", "test_batch", "predict", "predict_batch")
    for when in ("begin", "end")
)
HOOKS = (*KERAS_HOOKS, "on_train_error", "before_checkpoint")  # with torchcb's own two
# A callback that overrides the alias takes part in the train-batch hook it aliases.
_ALIASES = {"on_train_batch_begin": "on_batch_begin", "on_train_batch_end": "on_batch_end"}
_TRAIN_BATCH_HOOKS = ("on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end")


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
        changes_batch_logs: ``False`` for a callback that only reads the batch logs, so one
            after it may still take batch groups (:meth:`takes_batch_groups`). It holds for
            subclasses that override no train-batch hook; one that does is taken to change
            them (the default, ``True``) unless it says ``False`` itself.
        state_takes_all_ranks: ``True`` when :meth:`get_state` takes ``all_ranks``: under
            torchrun every rank calls ``get_state(all_ranks=True)`` at the same point and it
            returns the state of all ranks (BaseLogger's epoch sums).

    Example:
        >>> from torchcb.callbacks import Callback
        >>> class LossHistory(Callback):
        ...     def on_train_begin(self, logs=None):
        ...         self.losses = []
        ...     def on_batch_end(self, batch, logs=None):
        ...         self.losses.append(logs.get("loss"))
    """

    changes_batch_logs: bool = True
    state_takes_all_ranks: bool = False

    def __init__(self) -> None:
        self.validation_data = None
        self.model: Any = None
        self.params: dict[str, Any] = {}

    def implements(self, hook: str) -> bool:
        """Whether the callback list calls ``hook`` on this callback.

        By default, when the hook is set on the instance or overridden by its class (the
        Keras 2 alias ``on_batch_begin``/``on_batch_end`` counted). Asked when a loop starts
        (the training-batch hooks at each epoch's start), so a hook set on the instance in
        ``on_train_begin`` takes part. Override it to decline a hook the class has (fit's
        BaseLogger) or to answer for a wrapped object (a ``keras`` callback's adapter).

        Args:
            hook: the hook's name, e.g. ``"on_train_batch_end"``.

        Example:
            >>> from torchcb.callbacks import TerminateOnNaN  # it writes on_batch_end, the alias
            >>> TerminateOnNaN().implements("on_train_batch_end"), TerminateOnNaN().implements("on_test_end")
            (True, False)
        """
        alias = _ALIASES.get(hook)
        return _overrides(self, hook) or (alias is not None and _overrides(self, alias))

    def takes_batch_groups(self) -> bool:
        """Whether ``fit`` hands this callback its training batches in groups.

        A callback with torchcb's ``on_train_batch_group_end(first_batch, outputs)`` and a
        ``batch_group_size`` is handed the step outputs (device tensors, unread) of that many
        consecutive batches at a time, and the rest at an epoch's end and before every
        checkpoint; unless a subclass or the instance overrides ``on_train_batch_end`` or
        ``on_batch_end`` below the class that wrote the group hook, or a callback before it
        may change the batch logs (:attr:`changes_batch_logs`): then batch by batch.

        Example:
            >>> from torchcb.callbacks import TerminateOnNaN
            >>> TerminateOnNaN().takes_batch_groups(), Callback().takes_batch_groups()
            (True, False)
        """
        owner = _defining_class(type(self), "on_train_batch_group_end")
        return owner is not None and not _written_below(self, owner, ("on_train_batch_end", "on_batch_end"))

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
        """Restore what :meth:`get_state` returned; called on resume after ``on_train_begin``.

        When the run resumes mid-epoch it is called again after that epoch's ``on_epoch_begin``,
        so a reset there does not lose the state of the epoch so far.
        """

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


def _overrides(callback: Any, hook: str) -> bool:
    """Whether ``hook`` is set on the instance, or is another function than :class:`Callback`'s."""
    if hook in getattr(callback, "__dict__", {}):
        return True
    method = getattr(type(callback), hook, None)
    return method is not None and method is not getattr(Callback, hook, None)


def _defining_class(cls: type, name: str) -> type | None:
    return next((klass for klass in cls.__mro__ if name in vars(klass)), None)


def _written_below(callback: Any, owner: type, hooks: tuple[str, ...]) -> bool:
    """Whether one of ``hooks`` is set on the instance, or written by a class below ``owner``."""
    cls, instance_hooks = type(callback), getattr(callback, "__dict__", {})
    return any(hook in instance_hooks or _defining_class(cls, hook) not in owner.__mro__ for hook in hooks)


def implements_hook(callback: Any, hook: str) -> bool:
    """Whether the list calls ``hook`` on ``callback`` (:meth:`Callback.implements`, or its default).

    Example:
        >>> class Printer:
        ...     def on_epoch_end(self, epoch, logs=None):
        ...         print(epoch)
        >>> implements_hook(Printer(), "on_epoch_end"), implements_hook(Printer(), "on_train_end")
        (True, False)
    """
    if not hasattr(callback, hook):
        return False
    declared = getattr(callback, "implements", None)
    return bool(declared(hook)) if callable(declared) else Callback.implements(callback, hook)


def takes_groups(callback: Any) -> bool:
    """:meth:`Callback.takes_batch_groups` of ``callback``, or its default.

    Example:
        >>> from torchcb.callbacks import History, TerminateOnNaN
        >>> takes_groups(TerminateOnNaN()), takes_groups(History())
        (True, False)
    """
    declared = getattr(callback, "takes_batch_groups", None)
    return bool(declared()) if callable(declared) else Callback.takes_batch_groups(callback)


def changes_logs(callback: Any) -> bool:
    """Whether ``callback`` may change the batch logs (:attr:`Callback.changes_batch_logs`; see there).

    Example:
        >>> from torchcb.callbacks import BaseLogger
        >>> changes_logs(Callback()), changes_logs(BaseLogger())
        (True, False)
    """
    if getattr(callback, "changes_batch_logs", True):
        return True
    if "changes_batch_logs" in getattr(callback, "__dict__", {}):
        return False  # said by the instance itself
    owner = _defining_class(type(callback), "changes_batch_logs")
    return owner is None or _written_below(callback, owner, _TRAIN_BATCH_HOOKS)


def checkpoint_state(callback: Any, all_ranks: bool = False) -> Any:
    """``callback.get_state()``, with ``all_ranks`` if it declares ``state_takes_all_ranks``; None without state.

    Example:
        >>> from torchcb.callbacks import History
        >>> checkpoint_state(History(), all_ranks=True), checkpoint_state(Callback())
        ({'epoch': [], 'history': {}}, None)
    """
    get_state = getattr(callback, "get_state", None)
    if not callable(get_state):
        return None
    return get_state(all_ranks=all_ranks) if getattr(callback, "state_takes_all_ranks", False) else get_state()


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
# metrics known to decrease as the model gets better (Keras' names); losses end in "loss"
_LOWER_IS_BETTER = frozenset(
    {
        *KNOWN_LOSSES,
        "mse",
        "mae",
        "mape",
        "msle",
        "mean_squared_error",
        "mean_absolute_error",
        "mean_absolute_percentage_error",
        "mean_squared_logarithmic_error",
        "root_mean_squared_error",
        "rmse",
        "hinge",
        "squared_hinge",
        "categorical_hinge",
        "logcosh",
        "log_cosh",
        "kld",
        "kl_divergence",
        "kullback_leibler_divergence",
        "poisson",
        "huber",
        "crossentropy",
        "binary_crossentropy",
        "categorical_crossentropy",
        "sparse_categorical_crossentropy",
    }
)


def _direction_of(metric: Any) -> bool | None:
    """``True`` if the metric object says higher is better, ``False`` if lower, ``None`` if it does not say."""
    direction = getattr(metric, "_direction", None)  # Keras 3 metrics: "up" or "down"
    if direction is not None:
        return direction == "up"
    higher = getattr(metric, "higher_is_better", None)  # torchcb and torchmetrics metrics
    return None if higher is None else bool(higher)


class MonitorCallback(Callback):
    """The "monitor a quantity" logic shared by EarlyStopping, ModelCheckpoint and ReduceLROnPlateau.

    ``monitor_op`` is ``np.greater`` when higher values are better and ``np.less`` when
    lower are, as in Keras 2 and 3, so callback code written for Keras that compares with
    it (``self.monitor_op(current - self.min_delta, self.best)``) works unchanged;
    ``min_delta`` carries the sign that comparison needs (negative for ``np.less``), as in
    Keras.

    ``mode="auto"`` decides from the name (without a ``val_`` prefix) and the fit's metrics:

    * max for a name ending in ``acc``, ``accuracy`` or ``auc``, and for a metric of the
      fit whose object says higher is better (``higher_is_better``, Keras' ``_direction``);
    * min for ``loss`` and any name ending in ``loss``, for the metrics known to decrease
      (``mse``, ``mae``, ``hinge``, the crossentropies...), and for a metric of the fit
      that says nothing about its direction (Keras 2 minimised it);
    * anything else (a typo such as ``"val_los"``, a key no metric of this fit logs) is
      Keras 3's ``ValueError`` at the end of the first epoch, naming the monitor and telling
      to pass ``mode='max'`` or ``mode='min'``. A known name that is missing from one
      epoch's logs (``val_loss`` on an epoch ``validation_freq`` skips) only warns.

    The direction is decided when the callback is made, from the name alone where that
    suffices, and again in ``on_train_begin`` with the fit's metrics, unless ``monitor_op``
    was set by hand: then it is used as it is, as Keras uses it.

    Args:
        monitor: the log key to watch, e.g. ``"val_loss"``.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (above). An unknown mode warns and falls
            back to ``"auto"``.
        baseline: the value ``best`` starts from, if given.
        min_delta: the smallest change that counts as an improvement; its absolute value
            is used, with the sign the mode needs.

    Example:
        >>> import numpy as np
        >>> from torchcb.callbacks.base import MonitorCallback
        >>> watcher = MonitorCallback(monitor="val_accuracy", min_delta=0.01)
        >>> watcher.monitor_op is np.greater, MonitorCallback(monitor="val_loss").monitor_op is np.less
        (True, True)
        >>> watcher.reset_monitor()
        >>> watcher.is_improvement(0.80, watcher.best), watcher.is_improvement(0.805, 0.80)
        (True, False)
        >>> MonitorCallback(monitor="val_los").require_monitor_op()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: MonitorCallback callback received monitor=val_los, but torchcb isn't able to ...
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
        self._min_delta = abs(float(min_delta))
        self.min_delta = self._min_delta
        self.monitor_op: Callable[[Any, Any], Any] | None = None
        self._set_monitor_op(self._resolve_monitor_op())
        self.best: float = math.inf if self.monitor_op is np.less else -math.inf

    def _set_monitor_op(self, op: Callable[[Any, Any], Any] | None) -> None:
        self.monitor_op = self._derived_monitor_op = op
        self.min_delta = -self._min_delta if op is np.less else self._min_delta

    def _fit_metrics(self) -> tuple[list[Any], set[str]]:
        """The metric objects of this fit (Keras' metric lists flattened) and every metric name it logs."""
        model = self.model
        objects: list[Any] = []
        for metric in getattr(model, "metrics", None) or []:
            inner = getattr(metric, "metrics", None)  # Keras 3's CompileMetrics / MetricsList
            objects.extend(inner if isinstance(inner, list) else [metric])
        names = {getattr(m, "name", None) for m in objects}
        names.update(getattr(model, "metrics_names", None) or [])
        names.update(self.params.get("metrics") or [] if isinstance(self.params, dict) else [])
        return objects, {n.removeprefix("val_") for n in names if isinstance(n, str)}

    def _resolve_monitor_op(self) -> Callable[[Any, Any], Any] | None:
        """``np.greater``, ``np.less``, or ``None`` when ``mode="auto"`` cannot tell (see the class)."""
        if self.mode != "auto":
            return np.greater if self.mode == "max" else np.less
        name = self.monitor.removeprefix("val_")
        if name.endswith(_HIGHER_IS_BETTER_SUFFIXES):
            return np.greater
        objects, names = self._fit_metrics()
        for metric in objects:
            if getattr(metric, "name", None) == name and (higher := _direction_of(metric)) is not None:
                return np.greater if higher else np.less
        if name.endswith("loss") or name in _LOWER_IS_BETTER or name in names:
            return np.less
        return None

    def require_monitor_op(self) -> None:
        """Decide ``monitor_op`` if it is not yet; Keras 3's ``ValueError`` when ``mode="auto"`` cannot."""
        if self.monitor_op is not None:
            return
        self._set_monitor_op(self._resolve_monitor_op())
        if self.monitor_op is None:
            raise ValueError(
                f"{type(self).__name__} callback received monitor={self.monitor}, but torchcb isn't able to "
                "automatically determine whether that metric should be maximized or minimized. Pass "
                "`mode='max'` in order to monitor based on the highest metric value, or pass `mode='min'` "
                "in order to use the lowest value."
            )

    def reset_monitor(self, initial: float | None = None) -> None:
        """Decide the direction and set ``best`` to ``initial``, the baseline, or the worst value.

        A ``monitor_op`` set by hand (Keras code assigns one after construction) is kept.
        """
        if self.monitor_op is self._derived_monitor_op:
            self._set_monitor_op(self._resolve_monitor_op())
        if initial is None:
            initial = self.baseline
        self.best = float(initial) if initial is not None else (math.inf if self.monitor_op is np.less else -math.inf)

    def is_improvement(self, current: float, reference: float) -> bool:
        """Whether ``current`` beats ``reference`` by more than ``min_delta`` in the mode's direction."""
        self.require_monitor_op()
        return bool(self.monitor_op(current - self.min_delta, reference))  # type: ignore[misc]

    def get_monitor_value(self, logs: dict | None, warning: str) -> float | None:
        """The monitored value from ``logs``, or ``None`` after a warning naming the available keys.

        A monitor whose direction ``mode="auto"`` cannot tell raises first (see the class).
        """
        self.require_monitor_op()
        logs = logs or {}
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(warning % (self.monitor, ",".join(logs)), RuntimeWarning, stacklevel=3)
            return None
        return float(current)
