"""The callbacks ``fit``, ``evaluate`` and ``predict`` add by themselves, in Keras 2's order.

``fit`` runs ``[BaseLogger, ProgbarLogger (if verbose), *yours, History]``, as Keras 2
builds it (``keras/engine/training_arrays.py``); ``evaluate`` and ``predict`` run yours with
a ProgbarLogger when ``verbose``. A BaseLogger, ProgbarLogger or History of yours is used
instead of a new one; callbacks from the ``keras`` package run in their adapters. This is
the one place that names those callbacks: the :class:`CallbackList` itself knows none.

Example:
    >>> from torchcb.callbacks import EarlyStopping
    >>> from torchcb.callbacks.defaults import for_inference
    >>> callbacks = for_inference([EarlyStopping()], model=None, verbose=1, params={"verbose": 1})
    >>> [type(c).__name__ for c in callbacks]
    ['EarlyStopping', 'ProgbarLogger']
"""

from __future__ import annotations

from typing import Any

from torchcb.callbacks.callback_list import CallbackList, check_callback
from torchcb.callbacks.history import BaseLogger, History
from torchcb.callbacks.keras_interop import KerasCallback, is_keras_callback, wrap_keras_callbacks
from torchcb.callbacks.progbar import ProgbarLogger
from torchcb.logs import EpochTotals

__all__ = ["for_fit", "for_inference"]


def _is_keras(callback: Any, name: str) -> bool:
    """Whether ``callback`` (or the one inside its adapter) is the Keras class ``name`` or a subclass."""
    if isinstance(callback, KerasCallback):
        callback = callback.callback
    return is_keras_callback(callback) and any(k.__name__ == name for k in type(callback).__mro__)


def _user_callbacks(callbacks: Any, model: Any) -> list[Any]:
    """The user's callbacks as a checked list, Keras ones in their adapters (keras is imported only then)."""
    if callbacks is not None and not isinstance(callbacks, (list, tuple)):
        raise ValueError(f"callbacks must be a list of Callback instances, got {type(callbacks).__name__}.")
    user = list(callbacks or [])
    for index, callback in enumerate(user):
        check_callback(callback, f"callbacks[{index}]")
    if any(is_keras_callback(c) for c in user):
        model.enable_keras_metrics()
        stateful = [m.name for m in getattr(model, "metrics", []) if getattr(m, "stateful", False)]
        user = wrap_keras_callbacks(user, stateful)
    return user


def _has_progbar(callbacks: list[Any]) -> bool:
    return any(isinstance(c, ProgbarLogger) or _is_keras(c, "ProgbarLogger") for c in callbacks)


def for_fit(
    callbacks: Any,
    *,
    model: Any,
    verbose: int,
    count_mode: str,
    totals: EpochTotals,
) -> CallbackList:
    """``[BaseLogger, ProgbarLogger (if verbose), *callbacks, History]`` for a ``fit``, model set.

    Args:
        callbacks: the user's callbacks (a list or tuple, or ``None``).
        model: the facade the callbacks see.
        verbose: ``fit``'s ``verbose``; a ProgbarLogger is added when it is not 0.
        count_mode: the added ProgbarLogger's ``"samples"`` or ``"steps"``.
        totals: the epoch totals the loop fills and resets; the added BaseLogger averages them.
            Their ``last_value`` names (stateful metrics) are shown and logged as their last
            value, not averaged.

    Returns:
        The list, its ``history`` the History that ``fit`` returns (the user's goes last and
        keeps accumulating).

    Example:
        >>> from torchcb.logs import EpochTotals
        >>> callbacks = for_fit(None, model=None, verbose=0, count_mode="steps", totals=EpochTotals())
        >>> [type(c).__name__ for c in callbacks], callbacks.history is callbacks.callbacks[-1]
        (['BaseLogger', 'History'], True)
    """
    user = _user_callbacks(callbacks, model)
    history = next((c for c in user if isinstance(c, History) or _is_keras(c, "History")), None)
    if history is None:
        history = History()
    else:
        user.remove(history)
    ordered: list[Any] = []
    stateful_metrics = sorted(totals.last_value)
    if not any(isinstance(c, BaseLogger) for c in user):
        ordered.append(BaseLogger(stateful_metrics=stateful_metrics, totals=totals))
    if verbose and not _has_progbar(user):
        ordered.append(ProgbarLogger(count_mode=count_mode, stateful_metrics=stateful_metrics))
    callback_list = CallbackList([*ordered, *user, history])
    callback_list.history = history.callback if isinstance(history, KerasCallback) else history
    callback_list.set_model(model)
    return callback_list


def for_inference(callbacks: Any, *, model: Any, verbose: int, params: dict[str, Any]) -> CallbackList:
    """The user's callbacks for ``evaluate``/``predict``, with a ProgbarLogger when ``verbose``; model and params set.

    Args:
        callbacks: the user's callbacks (a list or tuple, or ``None``).
        model: the facade the callbacks see.
        verbose: a ProgbarLogger counting steps is added when it is not 0.
        params: the callbacks' ``params``.

    Example:
        >>> [type(c).__name__ for c in for_inference(None, model=None, verbose=0, params={})]
        []
    """
    user = _user_callbacks(callbacks, model)
    if verbose and not _has_progbar(user):
        user.append(ProgbarLogger(count_mode="steps"))
    callback_list = CallbackList(user)
    callback_list.set_model(model)
    callback_list.set_params(params)
    return callback_list
