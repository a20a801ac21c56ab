"""Turn what a user passes to ``fit``/``evaluate``/``predict`` into batches on the device.

``fit`` accepts:

- numpy arrays and tensors, or lists/tuples/dicts of them for modules with several inputs
  (a list or tuple is passed as ``module(*x)``, a dict as ``module(**x)``). They are moved
  to the device once; each epoch indexes them there (a device permutation when shuffling).
- a ``torch.utils.data.Dataset`` (wrapped in a ``DataLoader`` with ``batch_size`` and
  ``shuffle``) or a ``DataLoader`` (used as it is).
- any other iterable or generator yielding ``(x, y)`` or ``(x, y, sample_weight)``; one
  without ``len()`` needs ``steps_per_epoch``.

Example:
    >>> import numpy as np
    >>> from torchcb.data import Batching, Placement, make_source
    >>> source = make_source(np.zeros((10, 3)), np.arange(10), batching=Batching(batch_size=4), placement=Placement("cpu"))
    >>> [batch.size for batch in source.epoch()]
    [4, 4, 2]
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, RandomSampler

from torchcb._checks import is_int
from torchcb.tree import tree_leaves, tree_map, tree_split

__all__ = [
    "Batch",
    "Batching",
    "Placement",
    "Source",
    "ArraySource",
    "IterableSource",
    "array_source",
    "make_source",
    "split_arrays",
    "validation_source",
    "ValidationArrays",
    "is_array_input",
]


class Batch(NamedTuple):
    """One batch on the device: inputs, targets, per-sample weights and the sample count."""

    x: Any
    y: Any
    sample_weight: torch.Tensor | None
    size: int


# Batches are built with tuple.__new__: a C call, where Batch(...) would run a Python frame per batch.
_new_batch = tuple.__new__


@dataclass(frozen=True)
class Placement:
    """Where batches go and in what form: one value per trainer, the same for every source.

    Args:
        device: the device every batch is moved to.
        float_inputs: integer and boolean inputs become floats (the default dtype), as Keras
            casts inputs to floatx; targets keep their dtype.
        pin_memory: a Dataset that torchcb batches itself gets a ``DataLoader(pin_memory=True)``,
            so its host-to-GPU copies can overlap the step (a DataLoader you pass keeps its own).
        non_blocking: copy each batch of a loader or generator to the device with
            ``non_blocking``; ``None`` (the default) does so on CUDA only.

    Example:
        >>> Placement("cpu", float_inputs=True).copies_non_blocking
        False
    """

    device: torch.device | str = "cpu"
    float_inputs: bool = False
    pin_memory: bool = False
    non_blocking: bool | None = None

    @property
    def copies_non_blocking(self) -> bool:
        """Whether batches are copied with ``non_blocking=True``."""
        if self.non_blocking is not None:
            return self.non_blocking
        return torch.device(self.device).type == "cuda"


@dataclass(frozen=True)
class Batching:
    """How a source cuts its data into batches, checked when it is made.

    Args:
        batch_size: samples per batch; ``None`` is 32 for arrays and Datasets, and must be
            ``None`` for a DataLoader or an iterable of batches (they batch themselves).
        shuffle: draw a new order each epoch (arrays and Datasets).
        steps: batches per epoch; given, the data is a stream that continues across epochs.
        steps_argument: the name ``steps`` has in error messages (``"steps_per_epoch"``,
            ``"validation_steps"``, ``"steps"``).
        shard: ``(rank, world size)`` under torchrun: this process takes every world-th sample.
        pad: with ``shard``, repeat samples so that every rank takes the same number of steps
            (training); ``False`` for evaluation, where every sample counts once.
        seed: the seed every rank draws its shared order from, with ``shard``.

    Example:
        >>> Batching(batch_size=64, shuffle=True).steps is None
        True
        >>> Batching(batch_size=0)
        Traceback (most recent call last):
        ...
        ValueError: batch_size must be a positive int or None, got 0.
    """

    batch_size: int | None = None
    shuffle: bool = False
    steps: int | None = None
    steps_argument: str = "steps_per_epoch"
    shard: tuple[int, int] | None = None
    pad: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.steps is not None and (not is_int(self.steps) or self.steps <= 0):
            raise ValueError(f"{self.steps_argument} must be a positive int or None, got {self.steps!r}.")
        if self.batch_size is not None and (not is_int(self.batch_size) or self.batch_size <= 0):
            raise ValueError(f"batch_size must be a positive int or None, got {self.batch_size!r}.")


def _is_array(value: Any) -> bool:
    return isinstance(value, (np.ndarray, torch.Tensor))


def is_array_input(x: Any) -> bool:
    """Whether ``x`` is an in-memory array, tensor, or a list/tuple/dict of them."""
    if _is_array(x):
        return True
    if isinstance(x, dict):
        return bool(x) and all(_is_array(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        if x and all(_is_array(v) for v in x):
            return True
        # nested Python lists of numbers, as Keras accepts through np.asarray
        return bool(x) and _is_number_nest(x)
    return False


def _is_number_nest(x: Any) -> bool:
    if isinstance(x, (list, tuple)):
        return all(_is_number_nest(v) for v in x)
    return isinstance(x, (int, float)) and not isinstance(x, bool)


_KINDS = {"U": "strings", "S": "bytes", "O": "Python objects", "M": "dates", "m": "time deltas", "c": "complex numbers"}


def _as_array(value: Any, argument: str) -> np.ndarray:
    """``np.asarray(value)``, with ragged nested lists reported against ``argument``."""
    try:
        return np.asarray(value)
    except ValueError:
        raise ValueError(
            f"{argument} is ragged: its nested lists have rows of different lengths; pass rows of one length "
            "or an array."
        ) from None


def _to_tensor(value: Any, device: torch.device | str, argument: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    array = _as_array(value, argument)
    if array.dtype.kind == "f":  # Keras casts float inputs to floatx
        return torch.as_tensor(array, dtype=torch.get_default_dtype()).to(device)
    if array.dtype.kind in "iu":
        return torch.as_tensor(array.astype(np.int64)).to(device)
    if array.dtype.kind == "b":
        return torch.as_tensor(array).to(device)
    raise ValueError(
        f"{argument} holds {_KINDS.get(array.dtype.kind, array.dtype.name)} (dtype {array.dtype}); expected numbers "
        "or booleans (encode labels and text as numbers first)."
    )


def _as_float(tensor: torch.Tensor) -> torch.Tensor:
    """Integer and boolean inputs as floats, as Keras casts inputs to floatx."""
    return tensor if tensor.is_floating_point() else tensor.to(torch.get_default_dtype())


def _to_arrays(x: Any, device: torch.device | str, argument: str) -> Any:
    if isinstance(x, (list, tuple)) and x and not all(_is_array(v) for v in x):
        x = _as_array(x, argument)
    return tree_map(lambda v: _to_tensor(v, device, argument), x)


def _length(struct: Any, argument: str) -> int:
    lengths = []
    for leaf in tree_leaves(struct):
        if len(leaf.shape) == 0:
            raise ValueError(f"{argument} must have a first (batch) dimension, got a 0-d value.")
        lengths.append(int(leaf.shape[0]))
    if len(set(lengths)) > 1:
        raise ValueError(f"all arrays in {argument} must have the same number of samples, got lengths {lengths}.")
    return lengths[0]


class Source:
    """Batches for one ``fit``/``evaluate``/``predict`` call.

    Attributes:
        steps: batches per epoch, or ``None`` when it cannot be known in advance.
        samples: samples per epoch, or ``None``.
        fixed_steps: whether ``steps`` was given (``steps_per_epoch``): the data is then a
            stream that continues across epochs, and an epoch is counted in steps, not samples.
        exhausted: set when a one-shot generator ran out of data.
    """

    steps: int | None = None
    samples: int | None = None
    fixed_steps: bool = False
    exhausted = False

    def set_epoch(self, epoch: int) -> None:
        """Called before each epoch; sharded sources draw that epoch's order from it."""

    def epoch(self, skip: int = 0) -> Iterator[Batch]:
        """The batches of one epoch, leaving out the first ``skip``.

        The epoch's batch order is drawn (and the skipped batches passed over) before this
        returns, so a resumed run can restore its random state right after.
        """
        raise NotImplementedError


class ArraySource(Source):
    """In-memory tensors on the device, indexed there batch by batch.

    Args:
        x: the inputs: a tensor, or a list, tuple or dict of tensors, on the device.
        y: the targets, shaped alike, or ``None`` (predict).
        sample_weight: one weight per sample, or ``None``.
        batching: how to batch them (a ``batch_size`` of ``None`` is 32).

    Example:
        >>> import torch
        >>> source = ArraySource(torch.zeros(5, 2), torch.arange(5), None, Batching(batch_size=2))
        >>> [batch.y.tolist() for batch in source.epoch()]
        [[0, 1], [2, 3], [4]]
    """

    def __init__(self, x: Any, y: Any, sample_weight: torch.Tensor | None, batching: Batching) -> None:
        self.x, self.y, self.sample_weight = x, y, sample_weight
        batch_size, steps, shard, pad, seed = (
            batching.batch_size or 32, batching.steps, batching.shard, batching.pad, batching.seed
        )  # fmt: skip
        self.batch_size = batch_size
        self.shuffle = batching.shuffle
        self.num_samples = _length(x, "x")
        self.device = tree_leaves(x)[0].device
        # Under torchrun each rank takes every world-th sample of an order every rank draws
        # alike (from a shared seed, per epoch); padding, as DistributedSampler pads, gives
        # every rank the same number of steps.
        self.shard, self.pad = shard, pad
        self._generator = torch.Generator().manual_seed(seed or 0) if shard is not None else None
        self._seed = seed or 0
        if shard is None:
            self.samples = self.num_samples
        else:
            rank, world = shard
            self.samples = math.ceil(self.num_samples / world) if pad else len(range(rank, self.num_samples, world))
        batches_per_pass = math.ceil(self.samples / batch_size)
        self.steps = steps if steps is not None else batches_per_pass
        self.fixed_steps = steps is not None
        self._stream: Iterator[Batch] | None = None
        self._pass_views: tuple[Any, Any, Any] | None = None  # an unshuffled pass's batches, when it is one chunk

    def set_epoch(self, epoch: int) -> None:
        if self._generator is not None:
            self._generator.manual_seed(self._seed + epoch)

    def _order(self) -> torch.Tensor | None:
        n = self.num_samples
        if self.shard is None:
            return torch.randperm(n, device=self.device) if self.shuffle else None
        rank, world = self.shard
        order = torch.randperm(n, generator=self._generator) if self.shuffle else torch.arange(n)
        if self.pad and n % world:
            order = order.repeat(math.ceil(world / n) + 1)[: math.ceil(n / world) * world]
        return order[rank::world].to(self.device)

    def _pass(self, skip: int = 0) -> Iterator[Batch]:
        order = self._order()  # drawn now, not lazily
        return self._batches(order, range(skip * self.batch_size, self.samples, self.batch_size))

    # Batches are views of one chunk at a time, made by one split call per chunk. Without
    # shuffling a chunk is a slice of the arrays themselves: no gather, no copy, and it can
    # span many batches. Shuffled, a chunk is gathered on the device, one gather for up to 64
    # batches and about 1 MiB, so it is still in cache when its batches are used. An
    # unshuffled pass of tensors that is one chunk keeps its views for the next epochs.
    chunk_batches = 64
    chunk_bytes = 2**20
    slice_chunk_batches = 1024

    def _chunk_samples(self, shuffled: bool) -> int:
        if not shuffled:
            return self.slice_chunk_batches * self.batch_size
        leaves = tree_leaves(self.x) + tree_leaves(self.y)
        bytes_per_sample = sum(t[:1].numel() * t.element_size() for t in leaves) or 1
        batches = min(self.chunk_batches, max(1, self.chunk_bytes // (bytes_per_sample * self.batch_size)))
        return batches * self.batch_size

    def _batches(self, order: torch.Tensor | None, starts: range) -> Iterator[Batch]:
        # the batches are built and handed out in C: nothing in Python runs per batch
        return itertools.chain.from_iterable(self._chunks(order, starts))

    def _chunks(self, order: torch.Tensor | None, starts: range) -> Iterator[Iterator[Batch]]:
        """The batches of each chunk, one iterator a chunk, each chunk cut when it is reached."""
        size, n = self.batch_size, self.num_samples if order is None else order.numel()
        step = self._chunk_samples(shuffled=order is not None)
        for chunk_start in range(starts.start, n, step):
            chunk_stop = min(chunk_start + step, n)
            index: Any = slice(chunk_start, chunk_stop) if order is None else order[chunk_start:chunk_stop]
            whole_pass = (
                order is None
                and chunk_start == 0
                and chunk_stop == n
                and all(t is None or isinstance(t, torch.Tensor) for t in (self.x, self.y, self.sample_weight))
            )
            if whole_pass and self._pass_views is not None:
                xs, ys, ws = self._pass_views  # the same views as the epoch before: nothing is cut again
            else:
                xs = tree_split(self.x, index, size)
                ys = tree_split(self.y, index, size)
                ws = tree_split(self.sample_weight, index, size)
                if whole_pass:
                    self._pass_views = xs, ys, ws
            full, rest = divmod(chunk_stop - chunk_start, size)
            sizes = itertools.chain(itertools.repeat(size, full), (rest,) if rest else ())
            yield map(_new_batch, itertools.repeat(Batch), zip(xs, ys, ws, sizes))

    def _forever(self) -> Iterator[Batch]:
        while True:
            yield from self._pass()

    def epoch(self, skip: int = 0) -> Iterator[Batch]:
        if not self.fixed_steps:
            return self._pass(skip)
        # steps_per_epoch with arrays: a stream that continues (and reshuffles) across epochs
        if self._stream is None:
            self._stream = self._forever()
        stream = self._stream
        for _ in range(skip):
            next(stream)
        return (next(stream) for _ in range(self.steps - skip))  # type: ignore[operator]


def _unpack(element: Any, with_targets: bool) -> tuple[Any, Any, Any]:
    """``(x, y, sample_weight)`` from one element of a loader or generator."""
    if isinstance(element, (tuple, list)):
        if with_targets and len(element) in (2, 3):
            return element[0], element[1], element[2] if len(element) == 3 else None
        if not with_targets and 1 <= len(element) <= 3:  # predict takes x and ignores targets
            return element[0], None, None
    elif not with_targets:
        return element, None, None
    what = (
        f"a {type(element).__name__} of {len(element)} items"
        if isinstance(element, (tuple, list))
        else type(element).__name__
    )
    raise ValueError(f"each batch must be (x, y) or (x, y, sample_weight), got {what}.")


class IterableSource(Source):
    """A DataLoader, Dataset, generator or other iterable of batches, moved to the device per batch.

    Args:
        data: a DataLoader or any iterable of ``(x, y)`` / ``(x, y, sample_weight)`` batches.
        placement: the device, dtype policy and copy mode of every batch.
        steps: batches per epoch; given, the data is a stream that continues across epochs.
        with_targets: ``False`` for ``predict``: a batch may be ``x`` alone.
        weights_fn: ``(y, sample_weight) -> sample_weight`` for ``class_weight``.
        where: starts every error message about the data.

    Example:
        >>> import torch
        >>> batches = [(torch.zeros(2, 3), torch.zeros(2)), (torch.zeros(1, 3), torch.zeros(1))]
        >>> [b.size for b in IterableSource(batches, Placement(), steps=None, with_targets=True).epoch()]
        [2, 1]
    """

    def __init__(
        self,
        data: Any,
        placement: Placement,
        steps: int | None,
        with_targets: bool,
        weights_fn: Callable[[Any, Any], torch.Tensor | None] | None = None,
        where: str = "",
    ) -> None:
        self.data = data
        self.float_inputs = placement.float_inputs
        self.device = torch.device(placement.device)
        self.non_blocking = placement.copies_non_blocking
        self.with_targets = with_targets
        self.weights_fn = weights_fn
        if isinstance(data, (list, tuple)):  # batches in memory: each one is checked now, before training
            for index, element in enumerate(data):
                try:
                    _unpack(element, with_targets)
                except ValueError as error:
                    raise ValueError(f"{where or 'x: '}batch {index}: {error}") from None
        self._one_shot = iter(data) is data if not isinstance(data, DataLoader) else False
        if steps is None:
            length = None
            try:
                length = len(data)
            except TypeError:
                pass
            if length is None:
                raise ValueError(
                    f"steps_per_epoch (or steps / validation_steps) is required when x is a "
                    f"{type(data).__name__} without a length."
                )
            if length == 0:
                raise ValueError(f"{where or 'x: '}the data is empty (it yields no batches).")
            self.steps = length
            self.fixed_steps = False
        else:
            self.steps = steps
            self.fixed_steps = True
        dataset = getattr(data, "dataset", None)
        if isinstance(data, DataLoader) and not isinstance(dataset, IterableDataset) and steps is None:
            try:
                self.samples = len(data.sampler)  # type: ignore[arg-type]  # a rank's share under torchrun
            except TypeError:
                self.samples = None
        self._iterator: Iterator[Any] | None = None

    def set_epoch(self, epoch: int) -> None:
        sampler = getattr(self.data, "sampler", None)
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(epoch)  # DistributedSampler reshuffles alike on every rank

    def _move(self, element: Any) -> Batch:
        x, y, sample_weight = _unpack(element, self.with_targets)
        non_blocking = self.non_blocking

        def move(value: Any) -> torch.Tensor:
            if isinstance(value, torch.Tensor):
                return value.to(self.device, non_blocking=non_blocking)
            return _to_tensor(value, self.device, "each batch")

        x = tree_map(move, x)
        if self.float_inputs:
            x = tree_map(_as_float, x)
        y = tree_map(move, y)
        sample_weight = None if sample_weight is None else move(sample_weight).to(torch.get_default_dtype())
        if self.weights_fn is not None:
            sample_weight = self.weights_fn(y, sample_weight)
        leaves = tree_leaves(x)
        size = int(leaves[0].shape[0]) if leaves and leaves[0].dim() > 0 else 1
        return _new_batch(Batch, (x, y, sample_weight, size))

    def epoch(self, skip: int = 0) -> Iterator[Batch]:
        if not self.fixed_steps:
            iterator = iter(self.data)
            for _ in range(skip):  # a loader cannot jump: fetch and drop the batches already done
                next(iterator, None)
            return (self._move(element) for element in iterator)
        for _ in range(skip):
            if self._next_element() is _EXHAUSTED:
                break
        return self._fixed(self.steps - skip)  # type: ignore[operator]

    def _next_element(self) -> Any:
        """The next element of the stream that continues across epochs; a sentinel when it ran out."""
        if self._iterator is None:
            self._iterator = iter(self.data)
        try:
            return next(self._iterator)
        except StopIteration:
            self._iterator = None
            if self._one_shot:
                self.exhausted = True
                return _EXHAUSTED
            self._iterator = iter(self.data)
            return next(self._iterator)

    def _fixed(self, count: int) -> Iterator[Batch]:
        for _ in range(count):
            element = self._next_element()
            if element is _EXHAUSTED:
                warnings.warn(
                    "Your input ran out of data; interrupting training. Make sure the generator yields at "
                    "least steps_per_epoch * epochs batches.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return
            yield self._move(element)


_EXHAUSTED = object()


def _class_weight_fn(class_weight: dict[Any, float] | None, device: torch.device | str) -> Callable | None:
    if class_weight is not None and not isinstance(class_weight, dict):
        raise ValueError(
            f"class_weight must be a dict mapping class index to weight, got {type(class_weight).__name__}."
        )
    if not class_weight:
        return None
    bad = [k for k in class_weight if not (is_int(k) or isinstance(k, np.integer)) or k < 0]
    if bad:
        raise ValueError(f"class_weight keys must be class indices (ints >= 0), got {bad[0]!r}.")
    weights_given = [w for w in class_weight.values() if isinstance(w, bool) or not isinstance(w, (int, float))]
    if weights_given:
        raise ValueError(f"class_weight values must be numbers, got {weights_given[0]!r}.")
    keys = [int(k) for k in class_weight]
    table = torch.ones(max(keys) + 1, dtype=torch.get_default_dtype())
    for key, weight in class_weight.items():
        table[int(key)] = float(weight)
    table = table.to(device)

    def weights(y: Any, sample_weight: torch.Tensor | None) -> torch.Tensor:
        if not isinstance(y, torch.Tensor):
            raise ValueError("class_weight needs a single target tensor y.")
        labels = y.argmax(dim=-1) if (y.dim() > 1 and y.shape[-1] > 1) else y.reshape(y.shape[0], -1)[:, 0]
        labels = labels.long()
        # classes missing from class_weight weigh 1
        in_table = labels < table.numel()
        found = table[labels.clamp(max=table.numel() - 1)]
        result = torch.where(in_table, found, torch.ones_like(found))
        return result if sample_weight is None else result * sample_weight.reshape(-1)

    return weights


def array_source(
    x: Any,
    y: Any,
    *,
    batching: Batching,
    placement: Placement,
    sample_weight: Any = None,
    class_weight: dict | None = None,
    where: str = "",
) -> ArraySource:
    """Move in-memory arrays to the device once and batch them there.

    Args:
        x: arrays, tensors or nested Python lists of numbers, or a list, tuple or dict of them.
        y: the targets, shaped alike, or ``None``.
        batching: the batch size, shuffling, steps and shard.
        placement: the device, and whether integer inputs become floats.
        sample_weight: one weight per sample, or ``None``.
        class_weight: a weight per class index, multiplied into the sample weights once.
        where: starts every error message (``"validation_data: "`` for validation arrays).

    Example:
        >>> import numpy as np
        >>> source = array_source(np.ones((3, 2)), np.arange(3), batching=Batching(batch_size=2), placement=Placement())
        >>> source.steps, source.x.dtype
        (2, torch.float32)
    """
    device, float_inputs = placement.device, placement.float_inputs
    x_t = _to_arrays(x, device, f"{where}x")
    if float_inputs:
        x_t = tree_map(_as_float, x_t)
    n = _length(x_t, f"{where}x")
    if n == 0:
        raise ValueError(f"{where}x: the data is empty (0 samples).")
    y_t = None if y is None else _to_arrays(y, device, f"{where}y")
    if y_t is not None:
        n_y = _length(y_t, f"{where}y")
        if n_y != n:
            raise ValueError(f"{where}x and y must have the same number of samples, got x with {n} and y with {n_y}.")
    weights = None
    if sample_weight is not None:
        weights = _to_tensor(sample_weight, device, f"{where}sample_weight").to(torch.get_default_dtype()).reshape(-1)
        if weights.shape[0] != n:
            raise ValueError(f"{where}sample_weight must have one weight per sample ({n}), got {weights.shape[0]}.")
    class_weights = _class_weight_fn(class_weight, device)
    if class_weights is not None:
        weights = class_weights(y_t, weights)  # computed once for the whole array
    return ArraySource(x_t, y_t, weights, batching)


def split_arrays(x: Any, y: Any, sample_weight: Any, validation_split: float) -> tuple[Any, Any]:
    """Split off the last ``validation_split`` fraction, before any shuffling (as Keras does)."""
    if isinstance(x, (list, tuple)) and not all(_is_array(v) for v in x):
        x = _as_array(x, "x")
    n = _length(x, "x")
    split_at = int(n * (1.0 - validation_split))
    if split_at == 0 or split_at == n:
        raise ValueError(
            f"validation_split={validation_split} leaves {split_at} training and {n - split_at} validation samples "
            f"out of {n}; choose a fraction that leaves samples on both sides."
        )

    def head(t: Any) -> Any:
        return t[:split_at]

    def tail(t: Any) -> Any:
        return t[split_at:]

    train = (tree_map(head, x), tree_map(head, y), None if sample_weight is None else head(np.asarray(sample_weight)))
    val = (tree_map(tail, x), tree_map(tail, y), None if sample_weight is None else tail(np.asarray(sample_weight)))
    return train, val


def make_source(
    x: Any,
    y: Any,
    *,
    batching: Batching,
    placement: Placement,
    sample_weight: Any = None,
    class_weight: dict | None = None,
    with_targets: bool = True,
    where: str = "",
) -> Source:
    """Pick the source for ``x``: in-memory arrays, a Dataset/DataLoader, or an iterable.

    Args:
        x: arrays or tensors (or a list, tuple or dict of them), a Dataset, a DataLoader, or
            an iterable of ``(x, y)`` / ``(x, y, sample_weight)`` batches.
        y: the targets of in-memory ``x``; ``None`` otherwise (the batches hold them).
        batching: the batch size, shuffling, steps, shard and seed.
        placement: the device and dtype policy every batch follows.
        sample_weight: per-sample weights of in-memory ``x``.
        class_weight: a weight per class index.
        with_targets: ``False`` for ``predict``, whose batches need no targets.
        where: starts every error message about the data (``"validation_data: "``).

    Example:
        >>> import torch
        >>> source = make_source(torch.zeros(10, 3), torch.zeros(10), batching=Batching(batch_size=4),
        ...                      placement=Placement("cpu"))
        >>> source.steps, source.samples, source.fixed_steps
        (3, 10, False)
    """
    if x is None:
        raise ValueError("x is required: pass arrays, tensors, a Dataset, a DataLoader or a generator.")
    batch_size, shuffle, shard, seed = batching.batch_size, batching.shuffle, batching.shard, batching.seed
    if is_array_input(x):
        if with_targets and y is None:
            raise ValueError("y is required when x is an array or tensor: pass the targets as y.")
        return array_source(
            x, y, batching=batching, placement=placement, sample_weight=sample_weight, class_weight=class_weight,
            where=where,
        )  # fmt: skip
    if y is not None:
        raise ValueError(f"y must not be given when x is a {type(x).__name__}: its batches hold the targets.")
    if sample_weight is not None:
        raise ValueError(
            f"sample_weight must not be given when x is a {type(x).__name__}: yield (x, y, sample_weight) batches instead."
        )
    if isinstance(x, DataLoader):
        if batch_size is not None:
            raise ValueError("batch_size must not be given with a DataLoader: it batches the data itself.")
        data: Any = x
        if (
            shard is not None
            and not isinstance(x.sampler, DistributedSampler)
            and not isinstance(x.dataset, IterableDataset)
        ):
            data = DataLoader(  # the same loader, with each rank taking its share
                x.dataset,
                batch_size=x.batch_size,
                sampler=DistributedSampler(
                    x.dataset,
                    num_replicas=shard[1],
                    rank=shard[0],
                    shuffle=isinstance(x.sampler, RandomSampler),
                    seed=seed or 0,
                    drop_last=False,
                ),
                num_workers=x.num_workers,
                collate_fn=x.collate_fn,
                pin_memory=x.pin_memory,
                drop_last=x.drop_last,
            )
    elif isinstance(x, Dataset):
        if shard is not None and not isinstance(x, IterableDataset):
            sampler = DistributedSampler(x, num_replicas=shard[1], rank=shard[0], shuffle=shuffle, seed=seed or 0)
            data = DataLoader(x, batch_size=batch_size or 32, sampler=sampler, pin_memory=placement.pin_memory)
        else:
            shuffled = shuffle and not isinstance(x, IterableDataset)
            data = DataLoader(x, batch_size=batch_size or 32, shuffle=shuffled, pin_memory=placement.pin_memory)
    elif hasattr(x, "__iter__") or hasattr(x, "__next__"):
        data = x
    else:
        raise ValueError(
            f"x must be arrays, tensors, a Dataset, a DataLoader or an iterable of batches, got {type(x).__name__}."
        )
    weights = _class_weight_fn(class_weight, placement.device)
    return IterableSource(data, placement, batching.steps, with_targets, weights, where)


class ValidationArrays(list):
    """Keras 2's ``callback.validation_data``: ``[x..., y..., sample_weights]`` as numpy arrays.

    Made from in-memory validation data the first time a callback looks at it (copying the
    validation set to the host costs nothing until someone wants it). Inputs come in order
    (a dict's in its order), then the targets, then the sample weights (ones when none
    were given, float32 as Keras 2 made them).

    Example:
        >>> import numpy as np
        >>> source = array_source(np.ones((3, 2)), np.arange(3), batching=Batching(batch_size=2), placement=Placement())
        >>> x, y, weights = ValidationArrays(source)
        >>> x.shape, y.tolist(), weights.tolist()
        ((3, 2), [0, 1, 2], [1.0, 1.0, 1.0])
    """

    def __init__(self, source: ArraySource) -> None:
        super().__init__()
        self._source: ArraySource | None = source

    def _fill(self) -> None:
        source, self._source = self._source, None
        if source is None:
            return
        inputs, targets = tree_leaves(source.x), tree_leaves(source.y)
        weights = source.sample_weight
        if weights is None:
            weights = torch.ones(source.num_samples, dtype=torch.float32)
        list.extend(self, [t.detach().cpu().numpy() for t in [*inputs, *targets, weights]])


def _filled(name: str) -> Callable:
    method = getattr(list, name)

    def filled(self: ValidationArrays, *args: Any) -> Any:
        self._fill()
        return method(self, *args)

    filled.__name__ = name
    return filled


for _name in (
    "__getitem__",
    "__len__",
    "__iter__",
    "__reversed__",
    "__contains__",
    "__eq__",
    "__repr__",
    "copy",
    "index",
    "count",
):
    setattr(ValidationArrays, _name, _filled(_name))


def _is_xy(data: Any) -> bool:
    """``(x, y)`` or ``(x, y, sample_weight)`` of in-memory arrays: a tuple, or a list as Keras 2 took it.

    A list whose second item is itself a batch, ``[(x1, y1), (x2, y2)]``, is a list of batches.
    """
    if not (isinstance(data, (tuple, list)) and len(data) in (2, 3) and is_array_input(data[0])):
        return False
    second = data[1]
    return isinstance(data, tuple) or _is_array(second) or isinstance(second, dict) or _is_number_nest(second)


def validation_source(
    validation_data: Any,
    *,
    batch_size: int | None,
    steps: int | None,
    placement: Placement,
    shard: tuple[int, int] | None = None,
) -> Source | None:
    """The source for ``fit``'s ``validation_data``: ``(x, y)`` or ``(x, y, sample_weight)`` (a tuple or a
    list), a Dataset, a DataLoader or an iterable of batches; ``None`` for none. Never shuffled or padded.

    Args:
        validation_data: what ``fit`` was given, or ``None``.
        batch_size: ``fit``'s ``batch_size`` (used for arrays and Datasets only).
        steps: ``validation_steps``.
        placement: the trainer's placement.
        shard: ``(rank, world size)`` under torchrun.

    Example:
        >>> import torch
        >>> val = validation_source((torch.zeros(6, 2), torch.zeros(6)), batch_size=4, steps=None, placement=Placement())
        >>> val.steps, val.shuffle
        (2, False)
    """
    if validation_data is None:
        return None
    arrays = _is_xy(validation_data)
    if not arrays and is_array_input(validation_data):
        raise ValueError(
            "validation_data must be (x_val, y_val), (x_val, y_val, sample_weight), a Dataset, a DataLoader or an "
            "iterable of (x, y) batches; arrays alone have no targets."
        )
    # a Dataset is batched with batch_size; a DataLoader or an iterable yields its own batches
    batches_itself = not arrays and not isinstance(validation_data, Dataset)
    batching = Batching(
        batch_size=None if batches_itself else batch_size,
        steps=steps,
        steps_argument="validation_steps",
        shard=shard,
        pad=False,
    )
    where = "validation_data: "
    if arrays:
        weights = validation_data[2] if len(validation_data) == 3 else None
        return make_source(
            validation_data[0], validation_data[1], batching=batching, placement=placement, sample_weight=weights,
            where=where,
        )  # fmt: skip
    return make_source(validation_data, None, batching=batching, placement=placement, where=where)
