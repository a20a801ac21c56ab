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

Keras 3's ``SwapEMAWeights`` works with ``Trainer(..., use_ema=True)``: the facade's
optimizer offers it the weights and their average as Keras variables (live views whose
``assign`` writes the torch tensors). Keras 3's ``BackupAndRestore`` works too: its
``latest.weights.h5`` is a full torchcb checkpoint (module, optimizer, weight average,
random states, callbacks' states: what a Keras weights file with its optimizer holds, and
more), and the next ``fit`` resumes from it at the epoch it recorded, or mid-epoch at the
next batch for a batch-level backup (``save_freq`` an int), where Keras restarts the epoch;
the resumed History holds the epochs before the interruption too, as with torchcb's own
BackupAndRestore (Keras starts a new one).
Keras' ``TensorBoard`` does not run (it writes with TensorFlow): use torchcb's own.

Example:
    >>> from torchcb.callbacks.keras_interop import is_keras_callback
    >>> from torchcb.callbacks import EarlyStopping
    >>> is_keras_callback(EarlyStopping())
    False
"""

from __future__ import annotations

import os
from typing import Any

from torchcb.callbacks.base import Callback
from torchcb.checkpoint import CheckpointError
from torchcb.logs import RunningMeans

__all__ = ["KerasBackupAndRestore", "KerasCallback", "is_keras_callback", "keras_metrics_view", "wrap_keras_callbacks"]

# What cannot run without TensorFlow, and torchcb's own class to use instead.
_UNSUPPORTED = {
    "TensorBoard": "keras.callbacks.TensorBoard writes with TensorFlow; use torchcb.callbacks.TensorBoard, "
    "which takes the same arguments and writes the same tags.",
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
        if _is_keras_class(self.callback, "SwapEMAWeights") and not getattr(model.optimizer, "use_ema", False):
            raise ValueError(
                "keras.callbacks.SwapEMAWeights needs a moving average of the weights: create the Trainer with "
                "use_ema=True (Trainer(module, optimizer, loss, use_ema=True))."
            )
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


def _is_keras_class(callback: Any, name: str) -> bool:
    """Whether ``callback`` is the ``keras.callbacks`` class ``name`` or a subclass of it."""
    return any(k.__name__ == name and k.__module__.startswith("keras") for k in type(callback).__mro__)


class _BackupModel:
    """The model as Keras' BackupAndRestore sees it: its weights file is torchcb's full checkpoint.

    Keras' ``.weights.h5`` holds the optimizer's variables beside the weights (its EMA slots
    among them); the torch counterpart of all of that is the full checkpoint, which also makes
    the next ``fit`` resume with the same random state and callbacks' states. A file that
    cannot be read raises ``OSError``, as h5py does, so Keras falls back to its ``.bkp`` copy.
    """

    def __init__(self, model: Any) -> None:
        object.__setattr__(self, "_model", model)

    def save_weights(self, filepath: Any, overwrite: bool = True, **kwargs: Any) -> None:
        # as torchcb's own backups: taken once the round of hooks has reached every callback
        # (History included), written in the background
        self._model.trainer.save_checkpoint(filepath, all_ranks=True, background=True)

    def load_weights(self, filepath: Any, **kwargs: Any) -> None:
        try:
            self._model.trainer.load_checkpoint(filepath)
        except CheckpointError as error:
            raise OSError(str(error)) from error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._model, name, value)  # _initial_epoch reaches the facade that fit reads

    def __repr__(self) -> str:
        return repr(self._model)


class KerasBackupAndRestore(KerasCallback):
    """Runs ``keras.callbacks.BackupAndRestore``: its backups are full checkpoints (see :class:`_BackupModel`).

    Backups are written in the background as torchcb's own are; before Keras copies or
    deletes the files (``double_checkpoint``, ``delete_checkpoint``), the pending ones are
    on disk.
    """

    def set_model(self, model: Any) -> None:
        super().set_model(model)
        self.callback.set_model(_BackupModel(model))

    def on_train_begin(self, logs: dict | None = None) -> None:
        had_backup = os.path.exists(self.callback._weights_path)
        super().on_train_begin(logs)
        if not had_backup:  # its metadata alone: the backup of a round that failed was never written
            self.model._initial_epoch = None

    def _wait_for_writes(self) -> None:
        self.model.trainer.wait_for_writes()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.callback.double_checkpoint:
            self._wait_for_writes()  # Keras copies the latest file to .bkp before writing a new one
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.callback.double_checkpoint:
            self._wait_for_writes()
        super().on_epoch_end(epoch, logs)

    def on_train_end(self, logs: dict | None = None) -> None:
        self._wait_for_writes()  # Keras removes the backup directory
        super().on_train_end(logs)


def wrap_keras_callbacks(callbacks: list[Any], stateful_metrics: Any = ()) -> list[Any]:
    """The list with every Keras callback in its adapter (torchcb's own are left as they are)."""
    wrapped = []
    for callback in callbacks:
        if not is_keras_callback(callback):
            wrapped.append(callback)
        elif _is_keras_class(callback, "BackupAndRestore"):
            wrapped.append(KerasBackupAndRestore(callback, stateful_metrics))
        else:
            wrapped.append(KerasCallback(callback, stateful_metrics))
    return wrapped


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
