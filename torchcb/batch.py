"""What a batch is and where it goes: ``Batch``, ``Placement``, ``Batching``, and turning user arrays into tensors.

``Placement`` (device, dtype policy, pinning, copy mode) is one value per trainer;
``Batching`` (batch size, shuffling, steps, shard) one per ``fit``/``evaluate``/``predict``
call. The sources in ``torchcb.sources`` hand out ``Batch`` tuples; ``torchcb.data`` picks
the source for what the user passed.

Example:
    >>> import numpy as np
    >>> batching = Batching(batch_size=4, shuffle=True)
    >>> is_array_input([np.zeros((4, 2)), np.zeros((4, 3))]), batching.steps
    (True, None)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from torchcb._checks import is_int
from torchcb.tree import tree_leaves, tree_map

__all__ = ["Batch", "Batching", "Placement", "is_array_input"]


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
