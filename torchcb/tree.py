"""Nests of tensors: lists, tuples and dicts of arrays, walked, mapped, joined and cut.

A model's inputs, targets and outputs, and a checkpoint's state, are such nests. These
helpers are the one place that knows their shape; ``None`` stands for "nothing here".

Example:
    >>> import torch
    >>> from torchcb.tree import concatenate, tree_leaves, tree_map
    >>> nest = {"a": torch.zeros(2), "b": [torch.ones(2), None]}
    >>> [t.tolist() for t in tree_leaves(tree_map(lambda t: t + 1, nest))]
    [[1.0, 1.0], [2.0, 2.0]]
    >>> concatenate([torch.zeros(2), torch.ones(1)]).tolist()
    [0.0, 0.0, 1.0]
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["concatenate", "tree_leaves", "tree_map", "tree_split"]


def tree_map(fn: Callable[[Any], Any], struct: Any) -> Any:
    """Apply ``fn`` to every array or tensor in a nest of lists, tuples and dicts (``None`` stays ``None``).

    Args:
        fn: called on each leaf; its result takes the leaf's place.
        struct: a leaf, ``None``, or a list, tuple or dict of such nests.

    Example:
        >>> tree_map(lambda v: v * 2, {"x": [1, 2], "y": None})
        {'x': [2, 4], 'y': None}
    """
    if isinstance(struct, dict):
        return {k: tree_map(fn, v) for k, v in struct.items()}
    if isinstance(struct, (list, tuple)):
        return type(struct)(tree_map(fn, v) for v in struct)
    if struct is None:
        return None
    return fn(struct)


def tree_leaves(struct: Any) -> list[Any]:
    """Every array, tensor or other leaf in a nest of lists, tuples and dicts, in order (Nones left out).

    Args:
        struct: a leaf, ``None``, or a list, tuple or dict of such nests.

    Example:
        >>> tree_leaves({"x": [1, 2], "y": None, "z": 3})
        [1, 2, 3]
    """
    if isinstance(struct, dict):
        return [leaf for v in struct.values() for leaf in tree_leaves(v)]
    if isinstance(struct, (list, tuple)):
        return [leaf for v in struct for leaf in tree_leaves(v)]
    return [] if struct is None else [struct]


def concatenate(outputs: list[Any]) -> Any:
    """Per-batch outputs joined along the batch dimension, nests of lists, tuples and dicts alike.

    Args:
        outputs: one nest per batch, all of the same shape; 0-d tensors are stacked.

    Example:
        >>> import torch
        >>> joined = concatenate([(torch.zeros(2, 3), torch.tensor(1.0)), (torch.ones(1, 3), torch.tensor(2.0))])
        >>> joined[0].shape, joined[1].tolist()
        (torch.Size([3, 3]), [1.0, 2.0])
    """
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs) if first.dim() > 0 else torch.stack(outputs)
    if isinstance(first, dict):
        return {k: concatenate([o[k] for o in outputs]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(concatenate(list(parts)) for parts in zip(*outputs))
    return outputs


def tree_split(struct: Any, index: Any, size: int) -> Any:
    """``struct[index]`` cut into batches of ``size`` (the last may be smaller), one nest a batch.

    A slice ``index`` gives views of each tensor (no copy); a tensor of indices, one gather.
    ``None`` gives an endless run of Nones, so it zips with the other parts of a batch.

    Args:
        struct: a tensor, ``None``, or a list, tuple or dict of tensors.
        index: a ``slice`` or a tensor of indices along the first dimension.
        size: the batch size.

    Example:
        >>> import torch
        >>> [b["x"].tolist() for b in tree_split({"x": torch.arange(5)}, slice(0, 5), 2)]
        [[0, 1], [2, 3], [4]]
    """
    if struct is None:
        return itertools.repeat(None)
    if isinstance(struct, torch.Tensor):
        return struct[index].split(size)
    if isinstance(struct, dict):
        keys = list(struct)
        return [dict(zip(keys, parts)) for parts in zip(*(tree_split(struct[k], index, size) for k in keys))]
    return [type(struct)(parts) for parts in zip(*(tree_split(v, index, size) for v in struct))]
