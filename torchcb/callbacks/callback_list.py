"""CallbackList: the callbacks of one ``fit``, ``evaluate`` or ``predict``, called hook by hook.

The loops in ``torchcb.trainer`` reach callbacks only through it. It names no callback: it
reads what each callback declares (``torchcb.callbacks.base``), so a new callback needs no
change here. It owns:

- ``set_model`` and ``set_params``, in the order the callbacks were given (the order
  ``fit`` gives them, Keras 2's, is built in ``torchcb.callbacks.defaults``);
- which hooks each callback implements (:meth:`Callback.implements`), looked up once: a hook
  nobody implements costs nothing per batch, and a training batch nobody looks at builds
  no logs (``fit``'s loop sums the epoch's values itself);
- which callbacks ``fit`` hands its training batches in groups
  (:meth:`Callback.takes_batch_groups`): those before which no callback may change the batch
  logs (:attr:`Callback.changes_batch_logs`);
- the round: a background checkpoint asked for inside a hook (ModelCheckpoint's,
  BackupAndRestore's) is taken once that hook has reached every callback, so it holds all
  of their states; if a callback of the round raises, it is taken before the exception
  leaves the round, so no write asked for is lost;
- the callbacks' checkpoint states, keyed so that another run finds them again
  (``all_ranks`` reaches the callbacks that declare ``state_takes_all_ranks``).

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

from torchcb.callbacks.base import changes_logs, checkpoint_state, implements_hook, takes_groups
from torchcb.data import ValidationArrays
from torchcb.logs import Logs, resolve_pending

__all__ = ["CallbackList", "check_callback"]


def check_callback(callback: Any, where: str) -> None:
    """Raise ``ValueError`` unless ``callback`` is a callback instance."""
    if isinstance(callback, type):
        raise ValueError(
            f"{where} is the class {callback.__name__}, not a callback; "
            f"pass an instance such as {callback.__name__}(...)."
        )
    if not (callable(getattr(callback, "set_model", None)) and callable(getattr(callback, "set_params", None))):
        raise ValueError(f"{where} must be a Callback instance, got {type(callback).__name__}: {callback!r}.")


def _each(methods: list[Any], *args: Any) -> None:
    for method in methods:
        method(*args)


class CallbackList:
    """A list of callbacks called together, hook by hook.

    Each hook reaches only the callbacks that implement it (:meth:`Callback.implements`),
    so a hook nobody uses costs nothing per batch. ``logs=None`` becomes ``{}``. Every hook call is a round: actions
    deferred during it (full checkpoints) run when it has reached every callback.

    Args:
        callbacks: the callbacks, in calling order.
        queue_length: deprecated and ignored. Keras 2's ``CallbackList(callbacks=None,
            queue_length=10)`` (``keras/callbacks.py``) kept that many hook timings to warn
            about slow batch hooks; torchcb times no hook. Passing it warns with a
            ``DeprecationWarning``, so Keras 2 code that builds a CallbackList still runs.

    Attributes:
        callbacks: the callbacks, in calling order.
        history: the History that ``fit`` returns (lists built by ``torchcb.callbacks.defaults.for_fit``).
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
        self._dispatch: dict[str, list[Any]] = {}  # hook name -> the bound methods that implement it
        self._deferred: list[Callable[[], None]] = []
        self._batch_begin: list[Any] = []
        self._batch_end: list[Any] = []
        self._group_hooks: list[Any] = []  # on_train_batch_group_end of the callbacks fit hands groups
        self._group_size = 1
        self._group: list[dict[str, Any]] = []  # the outputs of the batches gathered for them
        self._group_first = 0  # the index of the first of those batches
        self.writer: Any = None  # the trainer's BackgroundWriter, whose failures surface at the next hook
        for callback in callbacks or []:
            self.append(callback)

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
        Keras 3's callbacks have no such attribute and get none: their adapter holds it.
        """
        for callback in self.callbacks:
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

        Each callback says which it implements (:meth:`Callback.implements`: by default those
        it or its class overrides, its alias counted; a Keras callback's adapter says for its own).
        """
        methods = self._dispatch.get(hook)
        if methods is None:
            methods = [getattr(cb, hook) for cb in self.callbacks if implements_hook(cb, hook)]
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

    def _round(self, call: Callable[..., None], *args: Any) -> None:
        """One round: ``call(*args)``, then what it deferred; if it raises, what was deferred before runs first.

        Every hook call is one (``call`` is :func:`_each` over the hook's methods), and so is
        each training batch's end (:meth:`train_batch_end`).
        """
        try:
            call(*args)
        except BaseException:
            self.run_deferred_after_error()  # a backup asked for at this batch or epoch is not lost
            raise
        if self._deferred:
            self.run_deferred()
        if self.writer is not None and self.writer.error is not None:
            self.writer.check()  # a checkpoint the background writer failed to write

    # ----------------------------------------------------------------- the hooks

    def _call_batch(self, hook: str, index: int, logs: dict | None) -> None:
        self._round(_each, self.methods(hook), index, {} if logs is None else logs)

    def _call(self, hook: str, logs: dict | None) -> None:
        self._round(_each, self.methods(hook), {} if logs is None else logs)

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

        Hooks set on an instance since the last look take part from then on. Keras' batch
        logs are built only when some callback implements a training-batch hook (``fit``'s
        BaseLogger does not: the loop sums the epoch itself). A callback that takes batch
        groups (:meth:`Callback.takes_batch_groups`, such as TerminateOnNaN) is handed the
        step outputs of ``batch_group_size`` batches at a time instead, and the rest at an
        epoch's end and before every checkpoint (:meth:`end_batch_group`), if no callback
        before it may change the batch logs it would read (:attr:`Callback.changes_batch_logs`).
        """
        self._look_again("on_train_batch_begin", "on_train_batch_end")
        self._batch_begin = self.methods("on_train_batch_begin")
        grouped, logs_touched = [], False
        for callback in self.callbacks:
            if not logs_touched and takes_groups(callback):
                grouped.append(callback)
            elif changes_logs(callback) and (
                implements_hook(callback, "on_train_batch_begin") or implements_hook(callback, "on_train_batch_end")
            ):
                logs_touched = True
        self._group_hooks = [c.on_train_batch_group_end for c in grouped]
        self._group_size = min((c.batch_group_size for c in grouped), default=1)
        self._batch_end = [m for m in self.methods("on_train_batch_end") if getattr(m, "__self__", None) not in grouped]

    def train_batch_begin(self, step: int, size: int) -> Logs | None:
        """The ``on_train_batch_begin`` round; returns the batch's logs, or None when nobody reads them yet.

        The same logs then go to ``on_train_batch_end`` with the step's values added, as in
        Keras 2; with no begin hook they are built at the batch's end, or not at all.
        """
        if not self._batch_begin:
            return None
        logs = Logs(batch=step, size=size)
        self._round(_each, self._batch_begin, step, logs)
        return logs

    def train_batch_end(self, step: int, size: int, outputs: dict[str, Any], logs: Logs | None) -> None:
        """The ``on_train_batch_end`` round, with the step's ``outputs`` (device tensors, unread).

        With no batch-end or grouped hook there is no round (a failed background write then
        surfaces at the epoch's end)."""
        if self._batch_end or self._group_hooks:
            self._round(self._batch_end_hooks, step, size, outputs, logs)

    def _batch_end_hooks(self, step: int, size: int, outputs: dict[str, Any], logs: Logs | None) -> None:
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
        """Every stateful callback's ``get_state()``, by key.

        ``all_ranks`` (see ``TrainingState.capture``) reaches the callbacks whose
        ``state_takes_all_ranks`` is true, as ``get_state(all_ranks=...)``.
        """
        states = {}
        for key, callback in self.keyed():
            state = checkpoint_state(callback, all_ranks)
            if state is not None:
                states[key] = state
        return states

    def restore_states(self, states: dict[str, Any]) -> None:
        """Give each callback the state saved under its key (callbacks of another kind are skipped)."""
        for key, callback in self.keyed():
            if key in states and callable(getattr(callback, "set_state", None)):
                callback.set_state(states[key])
