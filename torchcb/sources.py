"""The sources of batches: in-memory tensors indexed on the device, or an iterable moved batch by batch.

``ArraySource`` holds arrays already on the device and cuts each epoch's batches there, a
chunk at a time; ``IterableSource`` moves each batch of a DataLoader, Dataset or generator
to the device. Both hand out ``Batch`` tuples built in C, with nothing in Python per batch
for arrays. ``torchcb.data.make_source`` picks one for what ``fit`` was given.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from torchcb.batch import Batch, Batching, Placement, _as_float, _length, _new_batch, _to_tensor
from torchcb.tree import tree_leaves, tree_map, tree_split

__all__ = ["Source", "ArraySource", "IterableSource"]


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
        assert self.samples is not None  # always known for arrays
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
        assert self.steps is not None  # always known for arrays
        return (next(stream) for _ in range(self.steps - skip))


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
                # a rank's share under torchrun; a sampler without a length raises TypeError
                self.samples = len(data.sampler)  # type: ignore[arg-type]
            except TypeError:
                self.samples = None
        self._iterator: Iterator[Any] | None = None

    def set_epoch(self, epoch: int) -> None:
        set_sampler_epoch = getattr(getattr(self.data, "sampler", None), "set_epoch", None)
        if callable(set_sampler_epoch):
            set_sampler_epoch(epoch)  # DistributedSampler reshuffles alike on every rank

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
        assert self.steps is not None  # given (fixed_steps)
        return self._fixed(self.steps - skip)

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
