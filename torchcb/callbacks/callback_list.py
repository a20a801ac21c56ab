"""CallbackList: the callbacks of one ``fit``, ``evaluate`` or ``predict``, called hook by hook.

The loops in ``torchcb.trainer`` reach callbacks only through it. It owns:

- their order, as Keras 2 gives it: ``[BaseLogger, ProgbarLogger (if verbose), *yours,
  History]`` (:meth:`CallbackList.for_fit`), callbacks from the ``keras`` package in their
  adapters;
- ``set_model`` and ``set_params``;
- which hooks each callback implements, looked up once: a hook nobody overrides costs
  nothing per batch, and a training batch nobody but BaseLogger looks at builds no logs;
- the deferred-save round: a background checkpoint asked for inside a hook (ModelCheckpoint's,
  BackupAndRestore's) is taken once that hook has reached every callback, so it holds all
  of their states; if a callback of the round raises, it is taken before the exception
  leaves the round, so no write asked for is lost;
- the callbacks' checkpoint states, keyed so that another run finds them again.

Example:
    >>> from torchcb.callbacks import CallbackList, History
    >>> callbacks = CallbackList([History()])
    >>> callbacks.on_train_begin()
    >>> callbacks.on_epoch_end(0, {"loss": 0.5})
    >>> callbacks.callbacks[0].history
    {'loss': [0.5]}
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from torchcb.callbacks.base import Callback
from torchcb.callbacks.history import BaseLogger, History
from torchcb.callbacks.keras_interop import KerasCallback, is_keras_callback, wrap_keras_callbacks
from torchcb.callbacks.progbar import ProgbarLogger
from torchcb.data import ValidationArrays
from torchcb.logs import Logs, resolve_pending

__all__ = ["CallbackList", "check_callback"]

# A callback that overrides the alias takes part in the train-batch hook it aliases.
_ALIASES = {"on_train_batch_begin": "on_batch_begin", "on_train_batch_end": "on_batch_end"}


def _overrides(callback: Any, hook: str) -> bool:
    if hook in getattr(callback, "__dict__", {}):
        return True
    method = getattr(type(callback), hook, None)
    return method is not None and method is not getattr(Callback, hook)


def _implements(callback: Any, hook: str) -> bool:
    """Whether ``callback`` takes part in ``hook``: it overrides it (or its alias), or its Keras adapter says so."""
    if not hasattr(callback, hook):
        return False
    if isinstance(callback, KerasCallback):
        return callback.implements(hook)
    alias = _ALIASES.get(hook)
    return _overrides(callback, hook) or (alias is not None and _overrides(callback, alias))


def _defining_class(cls: type, name: str) -> type | None:
    return next((klass for klass in cls.__mro__ if name in vars(klass)), None)


def _takes_batch_groups(callback: Any) -> bool:
    """Whether ``fit`` hands ``callback`` its training batches in groups (``on_train_batch_group_end``).

    Only where its batch hooks are not overridden below the class that wrote the group hook:
    a subclass or an instance that overrides ``on_train_batch_end`` or ``on_batch_end`` is
    called batch by batch.
    """
    cls = type(callback)
    owner = _defining_class(cls, "on_train_batch_group_end")
    if owner is None or isinstance(callback, KerasCallback):
        return False
    instance_hooks = getattr(callback, "__dict__", {})
    return all(
        hook not in instance_hooks and _defining_class(cls, hook) in owner.__mro__
        for hook in ("on_train_batch_end", "on_batch_end")
    )


def check_callback(callback: Any, where: str) -> None:
    """Raise ``ValueError`` unless ``callback`` is a callback instance."""
    if isinstance(callback, type):
        raise ValueError(
            f"{where} is the class {callback.__name__}, not a callback; "
            f"pass an instance such as {callback.__name__}(...)."
        )
    if not (callable(getattr(callback, "set_model", None)) and callable(getattr(callback, "set_params", None))):
        raise ValueError(f"{where} must be a Callback instance, got {type(callback).__name__}: {callback!r}.")


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


class CallbackList:
    """A list of callbacks called together, hook by hook.

    Each hook reaches only the callbacks that override it, so a hook nobody uses costs
    nothing per batch. ``logs=None`` becomes ``{}``. Every hook call is a round: actions
    deferred during it (full checkpoints) run when it has reached every callback.

    Args:
        callbacks: the callbacks, in calling order.
        queue_length: deprecated and ignored. Keras 2's ``CallbackList(callbacks=None,
            queue_length=10)`` (``keras/callbacks.py``) kept that many hook timings to warn
            about slow batch hooks; torchcb times no hook. Passing it warns with a
            ``DeprecationWarning``, so Keras 2 code that builds a CallbackList still runs.

    Attributes:
        callbacks: the callbacks, in calling order.
        history: the History that ``fit`` returns (lists built by :meth:`for_fit`).
    """

    def __init__(self, callbacks: Iterable[Any] | None = None, queue_length: int | None = None) -> None:
        if queue_length is not None:
            warnings.warn(
                "CallbackList's queue_length is ignored (Keras 2 timed hooks with it; torchcb does not).",
                DeprecationWarning,
                stacklevel=2,
            )
        self.callbacks: list[Any] = []
        self.params: dict[str, Any] = {}
        self.model: Any = None
        self.history: Any = None
        self._dispatch: dict[str, list[Any]] = {}  # hook name -> the bound methods that override it
        self._deferred: list[Callable[[], None]] = []
        self._sums: BaseLogger | None = None  # fit's BaseLogger, its totals fed each step's outputs directly
        self._add_to_sums: Any = None  # their add
        self._batch_begin: list[Any] = []
        self._batch_end: list[Any] = []
        self._group_hooks: list[Any] = []  # on_train_batch_group_end of the callbacks fit hands groups
        self._group_size = 1
        self._group: list[dict[str, Any]] = []  # the outputs of the batches gathered for them
        self._group_first = 0  # the index of the first of those batches
        self.writer: Any = None  # the trainer's BackgroundWriter, whose failures surface at the next hook
        for callback in callbacks or []:
            self.append(callback)

    @classmethod
    def for_fit(
        cls, callbacks: Any, *, model: Any, verbose: int, count_mode: str, stateful_metrics: list[str]
    ) -> CallbackList:
        """``[BaseLogger, ProgbarLogger (if verbose), *callbacks, History]``, as Keras 2 orders them.

        A BaseLogger, ProgbarLogger or History of the user's is used instead of a new one;
        a History passed in goes last and keeps accumulating.
        """
        user = _user_callbacks(callbacks, model)
        history = next((c for c in user if isinstance(c, History) or _is_keras(c, "History")), None)
        if history is None:
            history = History()
        else:
            user.remove(history)
        ordered: list[Any] = []
        if not any(isinstance(c, BaseLogger) for c in user):
            ordered.append(BaseLogger(stateful_metrics=stateful_metrics))
        if verbose and not any(isinstance(c, ProgbarLogger) or _is_keras(c, "ProgbarLogger") for c in user):
            ordered.append(ProgbarLogger(count_mode=count_mode, stateful_metrics=stateful_metrics))
        callback_list = cls([*ordered, *user, history])
        callback_list.history = history.callback if isinstance(history, KerasCallback) else history
        callback_list.set_model(model)
        return callback_list

    @classmethod
    def for_inference(cls, callbacks: Any, *, model: Any, verbose: int, params: dict[str, Any]) -> CallbackList:
        """The user's callbacks for ``evaluate``/``predict``, with a ProgbarLogger when ``verbose``."""
        user = _user_callbacks(callbacks, model)
        if verbose and not any(isinstance(c, ProgbarLogger) or _is_keras(c, "ProgbarLogger") for c in user):
            user.append(ProgbarLogger(count_mode="steps"))
        callback_list = cls(user)
        callback_list.set_model(model)
        callback_list.set_params(params)
        return callback_list

    def append(self, callback: Any) -> None:
        check_callback(callback, f"callbacks[{len(self.callbacks)}]")
        self.callbacks.append(callback)
        self._dispatch = {}

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params
        for callback in self.callbacks:
            callback.set_params(params)

    def set_model(self, model: Any) -> None:
        self.model = model
        for callback in self.callbacks:
            callback.set_model(model)
        self._dispatch = {}

    def set_validation_data(self, data: ValidationArrays | None) -> None:
        """Keras 2's ``callback.validation_data``, given to every callback once ``on_train_begin`` has run.

        Set only when ``fit`` has in-memory validation data (``data``). Without it (``None``), a
        callback keeps a ``validation_data`` of its own, as callbacks written for tf.keras set
        one in ``__init__``; only the arrays an earlier ``fit`` gave are taken back.
        Keras 3's callbacks (in their adapters) have no such attribute and get none.
        """
        for callback in self.callbacks:
            if isinstance(callback, KerasCallback):
                continue
            if data is not None:
                callback.validation_data = data
            elif isinstance(getattr(callback, "validation_data", None), ValidationArrays):
                callback.validation_data = None

    def __iter__(self) -> Iterator[Any]:
        return iter(self.callbacks)

    def __len__(self) -> int:
        return len(self.callbacks)

    def methods(self, hook: str) -> list[Any]:
        """The bound methods that ``hook`` calls, in order: only callbacks that implement it.

        A torchcb callback implements a hook it (or its class) overrides, its alias counted;
        a Keras callback's adapter says for its own (:meth:`KerasCallback.implements`).
        """
        methods = self._dispatch.get(hook)
        if methods is None:
            methods = [getattr(cb, hook) for cb in self.callbacks if _implements(cb, hook)]
            self._dispatch[hook] = methods
        return methods

    def _look_again(self, *hooks: str) -> None:
        """Forget the callbacks found for ``hooks``: hooks set on an instance since are found next time."""
        for hook in hooks:
            self._dispatch.pop(hook, None)

    # ----------------------------------------------------------------- the deferred-save round

    def defer(self, action: Callable[[], None]) -> None:
        """Run ``action()`` when the current hook call has reached every callback."""
        self._deferred.append(action)

    def run_deferred(self) -> None:
        while self._deferred:
            self._deferred.pop(0)()

    def run_deferred_after_error(self) -> None:
        """Inside an ``except``: run every deferred action, each even if one before it failed.

        The first failure is raised once all have run; raised there, it is chained to the
        exception being handled.
        """
        failure: BaseException | None = None
        while self._deferred:
            try:
                self._deferred.pop(0)()
            except BaseException as error:  # raised below, once the others have run
                failure = failure or error
        if failure is not None:
            raise failure

    def _end_round(self) -> None:
        if self._deferred:
            self.run_deferred()
        if self.writer is not None and self.writer.error is not None:
            self.writer.check()  # a checkpoint the background writer failed to write

    # ----------------------------------------------------------------- the hooks

    def _round(self, methods: list[Any], *args: Any) -> None:
        """Call ``methods``, then what they deferred; if one raises, what was deferred before it runs first."""
        try:
            for method in methods:
                method(*args)
        except BaseException:
            self.run_deferred_after_error()  # a backup asked for at this batch or epoch is not lost
            raise
        self._end_round()

    def _call_batch(self, hook: str, index: int, logs: dict | None) -> None:
        self._round(self.methods(hook), index, {} if logs is None else logs)

    def _call(self, hook: str, logs: dict | None) -> None:
        self._round(self.methods(hook), {} if logs is None else logs)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._call_batch("on_epoch_begin", epoch, logs)
        self.begin_train_batches()  # a batch hook set by now (in on_train_begin or here) takes part

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.end_batch_group()  # no batch of the epoch is left unseen
        self._call_batch("on_epoch_end", epoch, logs)

    def on_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._call_batch("on_train_batch_begin", batch, logs)

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._call_batch("on_train_batch_end", batch, logs)

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._call_batch("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._call_batch("on_train_batch_end", batch, logs)

    def on_test_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._call_batch("on_test_batch_begin", batch, logs)

    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._call_batch("on_test_batch_end", batch, logs)

    def on_predict_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._call_batch("on_predict_batch_begin", batch, logs)

    def on_predict_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._call_batch("on_predict_batch_end", batch, logs)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._call("on_train_begin", logs)

    def on_train_end(self, logs: dict | None = None) -> None:
        self._call("on_train_end", logs)

    def on_test_begin(self, logs: dict | None = None) -> None:
        self._call("on_test_begin", logs)
        self._look_again("on_test_batch_begin", "on_test_batch_end")

    def on_test_end(self, logs: dict | None = None) -> None:
        self._call("on_test_end", logs)

    def on_predict_begin(self, logs: dict | None = None) -> None:
        self._call("on_predict_begin", logs)
        self._look_again("on_predict_batch_begin", "on_predict_batch_end")

    def on_predict_end(self, logs: dict | None = None) -> None:
        self._call("on_predict_end", logs)

    def on_train_error(self, error: BaseException) -> None:
        failure = None
        try:
            self.run_deferred_after_error()  # asked for before the error, behind a deferred save that raised
        except BaseException as raised:
            failure = raised
        for method in self.methods("on_train_error"):
            method(error)
        self.run_deferred()  # a save asked for while training fails is written now
        if failure is not None:
            raise failure

    # ----------------------------------------------------------------- fit's training batches

    def begin_train_batches(self) -> None:
        """Look up the training-batch hooks, when ``fit`` starts and at each epoch's start, not per batch.

        Hooks set on an instance since the last look take part from then on. ``fit``'s own
        BaseLogger takes each step's outputs directly (:meth:`train_batch_end`), so Keras'
        batch logs are built only when some other callback looks at single batches. A
        callback with torchcb's ``on_train_batch_group_end(first_batch, outputs)`` hook (and
        ``batch_group_size``), such as TerminateOnNaN, is handed the step outputs of
        ``batch_group_size`` batches at a time instead, and the rest at an epoch's end and
        before every checkpoint (:meth:`end_batch_group`).
        """
        self._look_again("on_train_batch_begin", "on_train_batch_end")
        self._batch_begin = self.methods("on_train_batch_begin")
        self._sums = next((c for c in self.callbacks if type(c) is BaseLogger), None)  # not a subclass
        self._add_to_sums = None if self._sums is None else self._sums.totals.add
        # A callback is handed groups only if no callback before it could have changed the batch
        # logs it would read (Keras' own BaseLogger and ProgbarLogger do not change them).
        grouped, logs_touched = [], False
        for callback in self.callbacks:
            if _takes_batch_groups(callback) and not logs_touched:
                grouped.append(callback)
            elif type(callback) not in (BaseLogger, ProgbarLogger) and (
                _implements(callback, "on_train_batch_begin") or _implements(callback, "on_train_batch_end")
            ):
                logs_touched = True
        self._group_hooks = [c.on_train_batch_group_end for c in grouped]
        self._group_size = min((c.batch_group_size for c in grouped), default=1)
        self._batch_end = [
            m
            for m in self.methods("on_train_batch_end")
            if getattr(m, "__self__", None) is not self._sums and getattr(m, "__self__", None) not in grouped
        ]

    def train_batch_begin(self, step: int, size: int) -> Logs | None:
        """The ``on_train_batch_begin`` round; returns the batch's logs, or None when nobody reads them yet.

        The same logs then go to ``on_train_batch_end`` with the step's values added, as in
        Keras 2; with no begin hook they are built at the batch's end, or not at all.
        """
        if not self._batch_begin:
            return None
        logs = Logs(batch=step, size=size)
        self._round(self._batch_begin, step, logs)
        return logs

    def train_batch_end(self, step: int, size: int, outputs: dict[str, Any], logs: Logs | None) -> None:
        """The ``on_train_batch_end`` round, with the step's ``outputs`` (device tensors, unread).

        It runs every batch, so its round is written out here rather than through :meth:`_round`.
        """
        if self._add_to_sums is not None:
            self._add_to_sums(outputs, size)  # first, as BaseLogger is in Keras' order
        try:
            if self._group_hooks:  # gathered first: a write asked for in this round checks this batch too
                if not self._group:
                    self._group_first = step
                self._group.append(outputs)
            if self._batch_end:
                if logs is None:
                    logs = Logs(batch=step, size=size)
                logs.update_raw(resolve_pending(outputs))  # a stateful metric computes for these logs
                for hook in self._batch_end:
                    hook(step, logs)
            if self._group_hooks and len(self._group) >= self._group_size:
                self.end_batch_group()
        except BaseException:
            self.run_deferred_after_error()  # as in _round
            raise
        if self._deferred or (self.writer is not None and self.writer.error is not None):
            self._end_round()

    def end_batch_group(self) -> None:
        """Hand the training batches gathered since the last group to the grouped hooks."""
        if not self._group:
            return
        group, self._group = self._group, []
        for hook in self._group_hooks:
            hook(self._group_first, group)

    def checkpoint_allowed(self) -> bool:
        """Whether a write may happen now: every ``before_checkpoint`` hook runs, and all must agree."""
        self.end_batch_group()  # every batch so far is seen (TerminateOnNaN's check) before a write
        return all([method() for method in self.methods("before_checkpoint")])

    # ----------------------------------------------------------------- checkpoint states

    def keyed(self) -> list[tuple[str, Any]]:
        """Each callback with a key that finds it again in another run: its class name, numbered if repeated."""
        counts: dict[str, int] = {}
        keyed = []
        for callback in self.callbacks:
            name = type(callback).__name__
            index = counts.get(name, 0)
            counts[name] = index + 1
            keyed.append((name if index == 0 else f"{name}_{index}", callback))
        return keyed

    def states(self, all_ranks: bool = False) -> dict[str, Any]:
        """Every stateful callback's ``get_state()``, by key (``all_ranks``: see ``TrainingState.capture``)."""
        states = {}
        for key, callback in self.keyed():
            get_state = getattr(callback, "get_state", None)
            if isinstance(callback, BaseLogger):
                state = callback.get_state(all_ranks)
            else:
                state = get_state() if callable(get_state) else None
            if state is not None:
                states[key] = state
        return states

    def restore_states(self, states: dict[str, Any]) -> None:
        """Give each callback the state saved under its key (callbacks of another kind are skipped)."""
        for key, callback in self.keyed():
            if key in states and callable(getattr(callback, "set_state", None)):
                callback.set_state(states[key])
