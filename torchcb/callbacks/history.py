"""History and BaseLogger, the two callbacks every ``fit`` adds by itself."""

from __future__ import annotations

from typing import Any

import numpy as np

from torchcb.callbacks.base import Callback
from torchcb.distributed import is_main_process
from torchcb.logs import EpochTotals

__all__ = ["BaseLogger", "History"]


class BaseLogger(Callback):
    """Averages the batch values of each epoch into the epoch logs.

    ``fit`` puts it first in the callback list, so every other callback's ``on_epoch_end``
    sees the training averages. Values are weighted by the batch's ``size``; the sums stay
    on the device and are read back once per epoch.

    Used on its own (or passed to ``fit``) it sums the batch logs it is handed, as in
    Keras 2. ``fit``'s own is handed ``totals``: the loop adds each step's outputs to them
    and resets them at each epoch's start, so this logger takes no batch call
    (:meth:`implements` declines ``on_train_batch_end``) and no batch logs are built when no
    other callback looks at single batches; it only writes their averages at the epoch's end.

    It only reads the batch logs (``changes_batch_logs = False``), and its checkpoint state
    (the sums of the epoch so far) is that of all ranks with ``all_ranks=True``
    (``state_takes_all_ranks = True``).

    Args:
        stateful_metrics: names whose epoch value is their last batch value, not an average.
        totals: the ``torchcb.logs.EpochTotals`` that the caller fills and resets (``fit``'s
            loop); ``None`` keeps its own, filled from the batch logs.

    Example:
        >>> from torchcb.callbacks import BaseLogger
        >>> logger = BaseLogger()
        >>> logger.set_params({"metrics": ["loss"]})
        >>> logger.on_epoch_begin(0)
        >>> logger.on_batch_end(0, {"batch": 0, "size": 2, "loss": 1.0})
        >>> logger.on_batch_end(1, {"batch": 1, "size": 1, "loss": 4.0})
        >>> logs = {}
        >>> logger.on_epoch_end(0, logs)
        >>> logs == {"loss": 2.0}
        True
    """

    changes_batch_logs = False
    state_takes_all_ranks = True

    def __init__(self, stateful_metrics: Any = None, totals: EpochTotals | None = None) -> None:
        super().__init__()
        self.stateful_metrics = set(stateful_metrics or [])
        self._fed = totals is not None  # the caller adds every batch to the totals and resets them
        self.totals = totals if totals is not None else EpochTotals(self.stateful_metrics, skip=("batch", "size"))

    def implements(self, hook: str) -> bool:
        if self._fed and hook == "on_train_batch_end":
            return False  # the loop adds each step's outputs to the totals itself
        return super().implements(hook)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if not self._fed:
            self.totals.reset()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if logs and not self._fed:  # the values stay on the device, summed once the epoch ends
            self.totals.add(logs, dict.get(logs, "size", 0))

    on_batch_end = on_train_batch_end  # the Keras 2 name

    def get_state(self, all_ranks: bool = False) -> dict[str, Any]:
        """The sums of the epoch so far, for a resume mid-epoch (of all ranks, with ``all_ranks``)."""
        return self.totals.state(all_ranks)

    def set_state(self, state: dict[str, Any]) -> None:
        if not is_main_process():  # under torchrun rank 0 carries the saved sums; the reduction adds the rest
            state = {**state, "seen": 0, "sums": {}, "weights": {}}
        self.totals.restore(state)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None or self.totals.seen == 0:
            return
        for key, value in self.totals.result().items():
            logs[key] = value


class History(Callback):
    """Records the epoch logs; ``fit`` returns it.

    ``history.history`` maps each log key to its list of per-epoch values and
    ``history.epoch`` lists the (0-based) epochs. ``fit`` adds a new History as the last
    callback; a History you pass yourself is used instead and keeps accumulating across
    ``fit`` calls.

    Example:
        >>> from torchcb.callbacks import History
        >>> history = History()
        >>> history.on_train_begin()
        >>> history.on_epoch_end(0, {"loss": 0.9})
        >>> history.on_epoch_end(1, {"loss": 0.7})
        >>> history.epoch, history.history
        ([0, 1], {'loss': [0.9, 0.7]})
    """

    changes_batch_logs = False  # it reads only the epoch logs

    def __init__(self) -> None:
        super().__init__()
        self.epoch: list[int] = []
        self.history: dict[str, list[Any]] = {}

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.epoch = []

    def get_state(self) -> dict[str, Any]:
        return {"epoch": list(self.epoch), "history": {k: list(v) for k, v in self.history.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        self.epoch = list(state["epoch"])
        # a checkpoint holds plain numbers; the logs held numpy scalars, so the History does
        self.history = {k: [np.float64(x) if type(x) is float else x for x in v] for k, v in state["history"].items()}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)
        if self.model is not None:
            self.model.history = self
