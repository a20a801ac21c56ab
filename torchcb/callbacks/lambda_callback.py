"""LambdaCallback: a callback made of plain functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torchcb.callbacks.base import HOOKS, Callback

__all__ = ["LambdaCallback"]

_HOOK_NAMES = set(HOOKS) | {"on_batch_begin", "on_batch_end"}


class LambdaCallback(Callback):
    """Builds a callback from functions, one per hook.

    Epoch hooks are called as ``f(epoch, logs)``, batch hooks as ``f(batch, logs)``, and the
    train/test/predict begin and end hooks as ``f(logs)``. The Keras 2 names
    (``on_batch_begin``/``on_batch_end``), the Keras 3 names
    (``on_train_batch_begin``/``on_train_batch_end``) and any other hook (``on_test_begin=``,
    ``on_predict_batch_end=`` ...) are accepted as keywords; any other keyword becomes an
    attribute.

    Example:
        >>> import json, io
        >>> from torchcb.callbacks import LambdaCallback
        >>> json_log = io.StringIO()
        >>> json_logging_callback = LambdaCallback(
        ...     on_epoch_end=lambda epoch, logs: json_log.write(
        ...         json.dumps({"epoch": epoch, "loss": logs["loss"]}) + "\\n"))
        >>> json_logging_callback.on_epoch_end(0, {"loss": 0.25})
        >>> json_log.getvalue()
        '{"epoch": 0, "loss": 0.25}\\n'
    """

    def __init__(
        self,
        on_epoch_begin: Callable | None = None,
        on_epoch_end: Callable | None = None,
        on_batch_begin: Callable | None = None,
        on_batch_end: Callable | None = None,
        on_train_begin: Callable | None = None,
        on_train_end: Callable | None = None,
        on_train_batch_begin: Callable | None = None,
        on_train_batch_end: Callable | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        hooks = {
            "on_epoch_begin": on_epoch_begin,
            "on_epoch_end": on_epoch_end,
            "on_batch_begin": on_batch_begin,
            "on_batch_end": on_batch_end,
            "on_train_begin": on_train_begin,
            "on_train_end": on_train_end,
            "on_train_batch_begin": on_train_batch_begin,
            "on_train_batch_end": on_train_batch_end,
        }
        for name, value in kwargs.items():
            if name in _HOOK_NAMES:
                hooks[name] = value
            else:
                setattr(self, name, value)
        for name, function in hooks.items():
            if function is None:
                continue
            if not callable(function):
                raise ValueError(f"LambdaCallback: {name} must be callable, got {type(function).__name__}.")
            # before_checkpoint answers (True lets the write happen); every other hook returns None
            setattr(self, name, function if name == "before_checkpoint" else _wrap(function))


def _wrap(function: Callable) -> Callable:
    # Arguments go positionally, whatever the function names them; the hook returns None
    # whatever the function returns (file.write returns a count).
    def hook(*args: Any, **kwargs: Any) -> None:
        function(*args, *kwargs.values())

    return hook
