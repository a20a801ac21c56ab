"""Logs whose device values are read back to the host only when someone reads them.

A training step returns device tensors. Reading one of them with ``float()`` blocks until
the device has caught up, which on a GPU costs more than a small step itself. torchcb
therefore keeps tensors in the logs and reads them lazily:

- :class:`Logs` is the ``dict`` every batch hook receives. Its tensor values turn into
  Python floats the first time any value is read, all of them in one transfer.
- :class:`EpochTotals` sums per-batch values, weighted by the batch size, on the device and
  reads the averages back once.
- :func:`device_reads` counts the transfers, so tests can hold the trainer to a budget.

Example:
    >>> import torch
    >>> from torchcb.logs import Logs, device_reads
    >>> logs = Logs(batch=0, size=32)
    >>> logs.update_raw({"loss": torch.tensor(0.25), "accuracy": torch.tensor(0.5)})
    >>> with device_reads() as reads:
    ...     print(logs["loss"], logs["accuracy"], logs["loss"].dtype)
    0.25 0.5 float64
    >>> reads.count
    1
"""

from __future__ import annotations

import contextlib
import itertools
import operator
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from torchcb import distributed

__all__ = [
    "Logs",
    "KerasLogs",
    "RunningMeans",
    "EpochTotals",
    "PendingCompute",
    "resolve_pending",
    "ReadCounter",
    "device_reads",
    "read_floats",
    "stack_scalars",
]


class ReadCounter:
    """How many times torchcb has read device values back to the host."""

    def __init__(self) -> None:
        self.count = 0


_counters: list[ReadCounter] = []


@contextlib.contextmanager
def device_reads() -> Iterator[ReadCounter]:
    """Count the device-to-host reads torchcb makes inside the ``with`` block."""
    counter = ReadCounter()
    _counters.append(counter)
    try:
        yield counter
    finally:
        _counters.remove(counter)


def read_floats(tensors: list[torch.Tensor]) -> list[float]:
    """Read scalar tensors back as Python floats in a single transfer (counted as one read)."""
    if not tensors:
        return []
    for counter in _counters:
        counter.count += 1
    if len(tensors) == 1 or tensors[0].device.type == "cpu":  # already in host memory: nothing to gather
        return [float(t) for t in tensors]
    # One stack on the device, one cast, one copy to the host, whatever the number of values.
    return stack_scalars(tensors).to(torch.float64).tolist()


def stack_scalars(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Scalar tensors stacked into one vector, outside autograd."""
    with torch.no_grad():
        try:
            return torch.stack(tensors)  # the usual case: 0-d tensors, one call
        except RuntimeError:  # mixed shapes such as () and (1,)
            return torch.stack([t.reshape(()) for t in tensors])


class PendingCompute:
    """A stateful metric's running value, computed only at a logging point.

    A stateful metric's step updates its state and logs this placeholder; ``compute()``
    (which syncs the ranks, in torchmetrics under torchrun) runs once per logging point: the
    epoch's end, validation's end, and the batches whose logs a callback is handed. Every
    rank reaches those points alike, so a compute that syncs never waits for one rank alone.

    Example:
        >>> import torch
        >>> pending = PendingCompute(lambda: torch.tensor(0.5))
        >>> resolve_pending({"loss": 1.0, "auc": pending})
        {'loss': 1.0, 'auc': tensor(0.5000)}
    """

    __slots__ = ("compute",)

    def __init__(self, compute: Any) -> None:
        self.compute = compute

    def __repr__(self) -> str:
        return "PendingCompute()"


def resolve_pending(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (changed in place and returned) with each :class:`PendingCompute` computed."""
    for key, value in dict.items(values):
        if value.__class__ is PendingCompute:
            dict.__setitem__(values, key, value.compute())
    return values


def _is_scalar_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.numel() == 1


class Logs(dict):
    """A ``dict`` of log values whose scalar tensors become numbers when first read.

    Keys, ``len`` and ``in`` never touch the device. Any read of a value (indexing, ``get``,
    ``items``, ``values``, ``dict(logs)``, ``json.dumps(logs)``) reads every pending tensor
    back in one transfer and stores the numbers, so later reads are plain dict reads. The
    numbers are numpy float64 scalars, as Keras 2 logged them (``.item()``, ``.dtype`` and
    ``[()]`` work, and they are Python floats too); :class:`KerasLogs` holds Python floats,
    as Keras 3 does. :meth:`raw` gives the stored value without reading it back. Construct
    it with plain values and add device values with :meth:`update_raw`.
    """

    __slots__ = ("_unread",)  # no instance __dict__: building the logs of a batch costs what a dict costs
    _number: Any = np.float64  # what a read tensor becomes

    def update_raw(self, values: Mapping[str, Any]) -> None:
        """Store values, tensors included, without reading anything back."""
        dict.update(self, values)
        self._unread = True

    def raw(self, key: str, default: Any = None) -> Any:
        """The stored value for ``key``: a device tensor if it has not been read yet."""
        return dict.get(self, key, default)

    def raw_items(self) -> Any:
        """The stored items, device tensors left on the device."""
        return dict.items(self)

    def _materialize(self) -> None:
        if not getattr(self, "_unread", False):
            return
        self._unread = False
        keys = [k for k, v in dict.items(self) if _is_scalar_tensor(v)]
        if keys:
            values = read_floats([dict.__getitem__(self, k) for k in keys])
            number = self._number
            dict.update(self, zip(keys, [number(v) for v in values]))

    # Every way of reading a value goes through _materialize.
    def __getitem__(self, key: str) -> Any:
        self._materialize()
        return dict.__getitem__(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        self._materialize()
        return dict.get(self, key, default)

    def items(self) -> Any:
        self._materialize()
        return dict.items(self)

    def values(self) -> Any:
        self._materialize()
        return dict.values(self)

    def pop(self, key: str, *default: Any) -> Any:
        self._materialize()
        return dict.pop(self, key, *default)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._materialize()
        return dict.setdefault(self, key, default)

    def copy(self) -> dict:
        self._materialize()
        return dict(dict.items(self))

    def __iter__(self) -> Iterator[str]:
        # Defining __iter__ makes dict(logs) and {**logs} go through __getitem__.
        return dict.__iter__(self)

    def __eq__(self, other: object) -> bool:
        self._materialize()
        return dict.__eq__(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        self._materialize()
        return dict.__repr__(self)

    def __reduce__(self) -> Any:
        self._materialize()
        return (dict, (dict(dict.items(self)),))


class KerasLogs(Logs):
    """:class:`Logs` whose read values are Python floats, as Keras 3 hands them to callbacks."""

    __slots__ = ()
    _number = float


class RunningMeans:
    """Keras 3's batch logs: each value's size-weighted mean over the batches so far.

    Keras 3 logs what its metric trackers hold after each batch, so the last batch's
    ``loss`` is the epoch's. The sums stay on the device (two small kernels a value per
    batch); each batch's means are :class:`KerasLogs`, read only if a callback reads them.
    Keys in ``last_value`` (stateful metrics, already running values) pass as they are.

    Example:
        >>> import torch
        >>> means = RunningMeans()
        >>> _ = means.update({"loss": torch.tensor(1.0), "size": 2}, 2)
        >>> logs = means.update({"loss": torch.tensor(4.0), "size": 1}, 1)
        >>> logs
        {'loss': 2.0}
    """

    def __init__(self, last_value: frozenset[str] | set[str] = frozenset()) -> None:
        self.last_value = frozenset(last_value)
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, Any] = {}
        self._seen = 0

    def update(self, values: dict[str, Any], size: int) -> KerasLogs:
        """Add one batch (``batch``/``size`` keys are left out) and return the means so far."""
        self._seen += size
        means = {}
        for key, value in sorted(
            dict.items(values)
        ):  # dict.items: device values stay unread; keys sorted, as Keras 3 has them
            if key in ("batch", "size"):
                continue
            if key in self.last_value:
                means[key] = value
                continue
            total = self._sums.get(key)
            if isinstance(value, torch.Tensor):
                value = value.detach()
                total = value.to(torch.float64) * size if total is None else total.add(value, alpha=size)
            else:
                total = (total or 0.0) + float(value) * size
            self._sums[key] = total
            means[key] = total / self._seen
        logs = KerasLogs()
        logs.update_raw(means)
        return logs


class EpochTotals:
    """Size-weighted sums of per-batch values, kept on the device and read back once.

    ``add(values, size)`` keeps a copy of the batch's dict as it is then (device tensors
    stay unread): one append a batch, nothing per key. Every ``fold_every`` batches the kept
    rows are folded, key by key, into one running sum each (one stack and one product on
    the device a key), so memory stays bounded on long epochs. Keys in ``last_value`` keep
    their latest value instead of an average (stateful metrics); keys in ``skip`` are not
    summed.
    """

    fold_every = 256

    def __init__(self, last_value: frozenset[str] | set[str] = frozenset(), skip: tuple[str, ...] = ()) -> None:
        self.last_value = frozenset(last_value)
        self.skip = frozenset(skip)
        self.reset()

    def reset(self) -> None:
        """Forget every batch added: the start of a new epoch."""
        self._folded_seen = 0
        self._rows: list[dict[str, Any]] = []  # the batches added since the last fold
        self._sizes: list[int] = []
        self._sums: dict[str, Any] = {}
        self._weights: dict[str, float] = {}  # sample counts; floats once all-reduced
        self._last: dict[str, Any] = {}

    @property
    def seen(self) -> int:
        """How many samples were added."""
        return self._folded_seen + sum(self._sizes)

    def add(self, values: dict[str, Any], size: int) -> None:
        """Add one batch's values, each weighted by ``size`` samples (nothing is read back)."""
        # a copy of the values stored now (dict.items: a Logs is not read back)
        self._rows.append(values.copy() if values.__class__ is dict else dict(dict.items(values)))
        self._sizes.append(size)
        if len(self._sizes) >= self.fold_every:
            self._fold()

    def _fold(self) -> None:
        rows, sizes = self._rows, self._sizes
        if not rows:
            return
        self._rows, self._sizes = [], []
        self._folded_seen += sum(sizes)
        for key in dict.fromkeys(itertools.chain.from_iterable(rows)):  # every key, in first-seen order
            if key in self.skip:
                continue
            if key in self.last_value:
                self._last[key] = next(row[key] for row in reversed(rows) if key in row)
                continue
            # the rows that hold the key, picked in C (no Python runs per row)
            holds = list(map(operator.contains, rows, itertools.repeat(key)))
            values = list(map(operator.itemgetter(key), itertools.compress(rows, holds)))
            weights = list(itertools.compress(sizes, holds))
            if all(map(isinstance, values, itertools.repeat(torch.Tensor))):
                stacked = stack_scalars(values).to(torch.float64)
                partial: Any = (stacked * torch.tensor(weights, dtype=torch.float64, device=stacked.device)).sum()
            else:
                partial = sum(float(v) * s for v, s in zip(values, weights))
            previous = self._sums.get(key)
            self._sums[key] = partial if previous is None else previous + partial
            self._weights[key] = self._weights.get(key, 0) + sum(weights)

    def settle(self) -> None:
        """Compute the stateful metrics' values now: before something resets them (validation)."""
        self._fold()
        resolve_pending(self._last)

    def state(self, all_ranks: bool = False) -> dict[str, Any]:
        """The sums so far as plain numbers (one read), for a checkpoint.

        With ``all_ranks`` under torchrun (every rank calling at once), the sums of all ranks.
        """
        self._fold()
        keys = sorted(self._sums)
        values: list[Any] = [self._sums[k] for k in keys]
        seen, weights = self._folded_seen, [self._weights[k] for k in keys]
        if all_ranks and distributed.get_world_size() > 1:
            summed = read_floats(list(distributed.all_reduce_sum([*values, *weights, seen])))
            values, weights, seen = summed[: len(keys)], summed[len(keys) : -1], summed[-1]
        sums = dict(zip(keys, read_floats([torch.as_tensor(v) for v in values])))
        resolve_pending(self._last)
        last = dict(zip(self._last, read_floats([torch.as_tensor(v) for v in self._last.values()])))
        return {"seen": int(seen), "sums": sums, "weights": {k: int(w) for k, w in zip(keys, weights)}, "last": last}

    def restore(self, state: dict[str, Any]) -> None:
        """Take back the sums that :meth:`state` gave."""
        self._folded_seen = int(state["seen"])
        self._rows, self._sizes = [], []
        self._sums = {k: float(v) for k, v in state["sums"].items()}
        self._weights = {k: int(v) for k, v in state["weights"].items()}
        self._last = {k: float(v) for k, v in state["last"].items()}

    def result(self) -> dict[str, float]:
        """The averages (and last values) as numpy float64 scalars, read back in one transfer."""
        self._fold()
        out: dict[str, Any] = {}
        if distributed.get_world_size() > 1:  # the one collective of an epoch's logs, under torchrun
            keys = sorted(self._sums)
            vector = distributed.all_reduce_sum([self._sums[k] for k in keys] + [self._weights[k] for k in keys])
            reduced = read_floats(list(vector))
            self._sums = dict(zip(keys, reduced[: len(keys)]))
            self._weights = dict(zip(keys, reduced[len(keys) :]))
        for key, total in self._sums.items():
            weight = self._weights[key]
            out[key] = total / weight if weight else float("nan")
        for key, value in resolve_pending(self._last).items():  # a stateful metric's one compute
            out[key] = value
        keys = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
        for key, value in zip(keys, read_floats([out[k] for k in keys])):
            out[key] = value
        return {k: np.float64(v) for k, v in out.items()}
