"""Callbacks from the ``keras`` package itself (Keras 3, ``KERAS_BACKEND=torch``), run by torchcb.

Pass ``keras.callbacks`` objects (and packaged ones built on them, such as
``tqdm.keras.TqdmCallback``) to ``Trainer.fit`` beside torchcb's own: each runs inside an
adapter that gives it Keras 3's world, while torchcb's own callbacks keep Keras 2's:

- ``self.params`` is Keras 3's ``{"verbose", "epochs", "steps"}``;
- batch logs hold the running means over the epoch so far (no ``batch``/``size``), as Keras
  3's metric trackers give them: the last batch's ``loss`` is the epoch's. They stay on the
  device until the callback reads them, and read as Python floats;
- its batch hooks run when it implements them as Keras decides it: its
  ``_implements_train_batch_hooks()`` (and the test and predict ones) where it has one,
  else any batch hook that is not Keras' default, looked up at every epoch's (or
  evaluation's) start, so hooks it sets on itself in ``on_train_begin`` are called;
- every other hook gets the logs as Keras 3's ``pythonify_logs`` gives them (keys sorted,
  numbers as Python floats); keys it adds to the epoch logs (``learning_rate`` ...) reach
  the callbacks after it and History. ``self.model`` is torchcb's facade. Keras itself is
  imported only when such a callback is passed.

Example:
    >>> from torchcb.keras_interop import is_keras_callback
    >>> from torchcb.callbacks import EarlyStopping
    >>> is_keras_callback(EarlyStopping())
    False
"""

from __future__ import annotations

from typing import Any

from torchcb.callbacks.base import Callback
from torchcb.logs import RunningMeans

__all__ = ["KerasCallback", "is_keras_callback", "keras_metrics_view", "wrap_keras_callbacks"]

# What cannot run without TensorFlow or a Keras model, and torchcb's own class to use instead.
_UNSUPPORTED = {
    "TensorBoard": "keras.callbacks.TensorBoard writes with TensorFlow; use torchcb.callbacks.TensorBoard, "
    "which takes the same arguments and writes the same tags.",
    "BackupAndRestore": "keras.callbacks.BackupAndRestore needs a Keras model; use torchcb.callbacks.BackupAndRestore, "
    "which takes the same arguments and restores the full torch training state.",
    "SwapEMAWeights": "keras.callbacks.SwapEMAWeights needs a Keras optimizer built with use_ema=True.",
}
# Batch hooks by loop, with the names that count as implementing them (Keras 2's aliases included).
_BATCH_HOOKS = {
    "train": ("on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end"),
    "test": ("on_test_batch_begin", "on_test_batch_end"),
    "predict": ("on_predict_batch_begin", "on_predict_batch_end"),
}
_LOOP_OF = {hook: loop for loop, hooks in _BATCH_HOOKS.items() for hook in hooks[:2]}


def is_keras_callback(callback: Any) -> bool:
    """Whether ``callback`` comes from the ``keras`` package (a Keras class or a subclass of one)."""
    return any(klass.__module__.split(".")[0] == "keras" for klass in type(callback).__mro__[:-1])


def _pythonified(logs: dict | None) -> dict:
    """Logs as Keras 3 hands them to callbacks: keys sorted, numbers as Python floats, nested dicts flattened."""
    result: dict[str, Any] = {}
    for key, value in sorted((logs or {}).items()):
        if isinstance(value, dict):
            result.update(_pythonified(value))
            continue
        try:
            value = float(value)
        except (TypeError, ValueError, RuntimeError):
            pass
        result[key] = value
    return result


def _write_back(view: dict, logs: dict | None) -> None:
    """Keys a Keras callback added, changed or removed in its view reach the logs the other callbacks share."""
    if logs is None:
        return
    for key in [k for k in logs if k not in view and not isinstance(logs[k], dict)]:
        del logs[key]
    for key, value in view.items():
        if key not in logs or _pythonified({key: logs[key]}).get(key) != value:
            logs[key] = value


def _is_keras_default(method: Any) -> bool:
    """Keras marks its base class's no-op hooks as defaults; anything else is the callback's own."""
    return method is None or bool(getattr(method, "_is_default", False))


class KerasCallback(Callback):
    """Runs one ``keras.callbacks.Callback`` inside torchcb's ``fit``, ``evaluate`` and ``predict``.

    Args:
        callback: the Keras callback.
        stateful_metrics: metric names whose values are already running values (kept as they are).
    """

    def __init__(self, callback: Any, stateful_metrics: Any = ()) -> None:
        super().__init__()
        name = type(callback).__name__
        if name in _UNSUPPORTED and type(callback).__module__.startswith("keras"):
            raise ValueError(_UNSUPPORTED[name])
        self.callback = callback
        self._means = {"train": RunningMeans(set(stateful_metrics)), "test": RunningMeans(set(stateful_metrics))}

    def implements(self, hook: str) -> bool:
        """Whether torchcb calls ``hook`` on this adapter now (the CallbackList asks at each loop's start)."""
        loop = _LOOP_OF.get(hook)
        if loop is None:
            return True  # Keras calls every epoch, begin and end hook; they cost nothing per batch
        declared = getattr(self.callback, f"_implements_{loop}_batch_hooks", None)
        if callable(declared):
            return bool(declared())
        return any(not _is_keras_default(getattr(self.callback, name, None)) for name in _BATCH_HOOKS[loop])

    def set_model(self, model: Any) -> None:
        super().set_model(model)
        self.callback.set_model(model)

    def set_params(self, params: dict[str, Any]) -> None:
        super().set_params(params)
        self.callback.set_params({key: params.get(key) for key in ("verbose", "epochs", "steps")})

    # fit
    def on_train_begin(self, logs: dict | None = None) -> None:
        self.callback.on_train_begin(_pythonified(logs))

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._means["train"].reset()
        self.callback.on_epoch_begin(epoch, _pythonified(logs))

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.callback.on_train_batch_begin(batch, {})

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        means = self._means["train"].update(logs, dict.get(logs, "size", 1))
        self.callback.on_train_batch_end(batch, means)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        view = _pythonified(logs)
        self.callback.on_epoch_end(epoch, view)
        _write_back(view, logs)  # keys it adds (learning_rate ...) reach the callbacks after it and History

    def on_train_end(self, logs: dict | None = None) -> None:
        self.callback.on_train_end(_pythonified(logs))

    # evaluate, and validation inside fit
    def on_test_begin(self, logs: dict | None = None) -> None:
        self._means["test"].reset()
        self.callback.on_test_begin(_pythonified(logs))

    def on_test_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.callback.on_test_batch_begin(batch, {})

    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        means = self._means["test"].update(logs, dict.get(logs, "size", 1))
        self.callback.on_test_batch_end(batch, means)

    def on_test_end(self, logs: dict | None = None) -> None:
        self.callback.on_test_end(_pythonified(logs))

    # predict
    def on_predict_begin(self, logs: dict | None = None) -> None:
        self.callback.on_predict_begin(_pythonified(logs))

    def on_predict_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.callback.on_predict_batch_begin(batch, {})

    def on_predict_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.callback.on_predict_batch_end(batch, {"outputs": (logs or {}).get("outputs")})

    def on_predict_end(self, logs: dict | None = None) -> None:
        self.callback.on_predict_end(_pythonified(logs))

    def __repr__(self) -> str:
        return f"KerasCallback({self.callback!r})"


def wrap_keras_callbacks(callbacks: list[Any], stateful_metrics: Any = ()) -> list[Any]:
    """The list with every Keras callback in its adapter (torchcb's own are left as they are)."""
    return [KerasCallback(c, stateful_metrics) if is_keras_callback(c) else c for c in callbacks]


def keras_metrics_view(metrics: list[Any]) -> Any:
    """A ``MetricsList`` of the compiled metrics with their direction, for Keras 3's ``mode='auto'``."""
    from keras.src.trainers.compile_utils import MetricsList

    class Direction:
        def __init__(self, name: str, up: bool) -> None:
            self.name = name
            self._direction = "up" if up else "down"

    view = MetricsList.__new__(MetricsList)  # only its type and .metrics are read
    object.__setattr__(view, "metrics", [Direction(m.name, bool(m.higher_is_better)) for m in metrics])
    return view
