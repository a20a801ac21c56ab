"""Turn what a user passes to ``fit``/``evaluate``/``predict`` into a source of batches on the device.

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

The values a source is made from (``Batch``, ``Batching``, ``Placement``) live in
``torchcb.batch``, the sources themselves in ``torchcb.sources``; the names are importable
from here too, where ``make_source`` is called. This module holds ``make_source``,
``array_source``, ``split_arrays`` (``validation_split``), ``class_weight``, and the
validation data: ``validation_source`` and ``ValidationArrays``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeGuard

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, RandomSampler

from torchcb._checks import is_int
from torchcb.batch import (
    Batch,
    Batching,
    Placement,
    _as_array,
    _as_float,
    _is_array,
    _is_number_nest,
    _length,
    _to_arrays,
    _to_tensor,
    is_array_input,
)
from torchcb.sources import ArraySource, IterableSource, Source
from torchcb.tree import tree_leaves, tree_map

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


def _is_xy(data: Any) -> TypeGuard[tuple[Any, ...] | list[Any]]:
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
