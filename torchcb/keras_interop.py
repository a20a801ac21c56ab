"""Callbacks from the ``keras`` package itself (Keras 3, ``KERAS_BACKEND=torch``), run by torchcb.

Pass ``keras.callbacks`` objects to ``Trainer.fit`` beside torchcb's own: each runs inside an
adapter that hands it what Keras 3 would (batch logs without ``batch``/``size``, as plain
floats; the same epoch logs dict, so the keys it adds reach History), and ``self.model`` is
torchcb's facade. Keras itself is imported only when such a callback is passed.

Example:
    >>> from torchcb.keras_interop import is_keras_callback
    >>> from torchcb.callbacks import EarlyStopping
    >>> is_keras_callback(EarlyStopping())
    False
"""

from __future__ import annotations

from typing import Any

from torchcb.callbacks.base import KERAS_HOOKS, Callback

__all__ = ["KerasCallback", "is_keras_callback", "keras_metrics_view", "wrap_keras_callbacks"]

# What cannot run without TensorFlow or a Keras model, and torchcb's own class to use instead.
_UNSUPPORTED = {
    "TensorBoard": "keras.callbacks.TensorBoard writes with TensorFlow; use torchcb.callbacks.TensorBoard, "
    "which takes the same arguments and writes the same tags.",
    "BackupAndRestore": "keras.callbacks.BackupAndRestore needs a Keras model; use torchcb.callbacks.BackupAndRestore, "
    "which takes the same arguments and restores the full torch training state.",
    "SwapEMAWeights": "keras.callbacks.SwapEMAWeights needs a Keras optimizer built with use_ema=True.",
}
_BATCH_HOOKS = {
    "on_train_batch_begin": "on_batch_begin",
    "on_train_batch_end": "on_batch_end",
    "on_test_batch_begin": None,
    "on_test_batch_end": None,
    "on_predict_batch_begin": None,
    "on_predict_batch_end": None,
}


def is_keras_callback(callback: Any) -> bool:
    """Whether ``callback`` comes from the ``keras`` package (a Keras class or a subclass of one)."""
    return any(klass.__module__.split(".")[0] == "keras" for klass in type(callback).__mro__[:-1])


def _keras_overrides(callback: Any, hook: str, base: type) -> bool:
    method = getattr(type(callback), hook, None)
    return hook in vars(callback) or (method is not None and method is not getattr(base, hook, None))


class KerasCallback(Callback):
    """Runs one ``keras.callbacks.Callback`` inside torchcb's ``fit``, ``evaluate`` and ``predict``."""

    def __init__(self, callback: Any) -> None:
        super().__init__()
        name = type(callback).__name__
        if name in _UNSUPPORTED and type(callback).__module__.startswith("keras"):
            raise ValueError(_UNSUPPORTED[name])
        import keras

        self.callback = callback
        base = keras.callbacks.Callback
        for hook in KERAS_HOOKS:
            alias = _BATCH_HOOKS.get(hook)
            if not (_keras_overrides(callback, hook, base) or (alias and _keras_overrides(callback, alias, base))):
                continue  # a hook the Keras callback does not use costs nothing per batch
            if hook in _BATCH_HOOKS:
                setattr(self, hook, self._batch_forwarder(getattr(callback, hook)))
            else:
                setattr(self, hook, getattr(callback, hook))

    @staticmethod
    def _batch_forwarder(method: Any) -> Any:
        def forward(batch: int, logs: dict | None = None) -> None:
            method(batch, {k: v for k, v in (logs or {}).items() if k not in ("batch", "size")})

        return forward

    def set_model(self, model: Any) -> None:
        super().set_model(model)
        self.callback.set_model(model)

    def set_params(self, params: dict[str, Any]) -> None:
        super().set_params(params)
        self.callback.set_params(params)

    def __repr__(self) -> str:
        return f"KerasCallback({self.callback!r})"


def wrap_keras_callbacks(callbacks: list[Any]) -> list[Any]:
    """The list with every Keras callback in its adapter (torchcb's own are left as they are)."""
    return [KerasCallback(c) if is_keras_callback(c) else c for c in callbacks]


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
