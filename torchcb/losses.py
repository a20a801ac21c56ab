"""Losses: Keras loss names, torch loss modules and callables, as one ``Loss`` the step calls.

Keras loss names map to torch losses that take **logits** (the raw outputs of the last
layer, no softmax or sigmoid), which is how torch models are usually written:

=================================== =========================================================
Keras name                          torch loss
=================================== =========================================================
``mse``, ``mean_squared_error``     ``F.mse_loss``
``mae``, ``mean_absolute_error``    ``F.l1_loss``
``binary_crossentropy``             ``F.binary_cross_entropy_with_logits`` (float targets)
``categorical_crossentropy``        ``F.cross_entropy`` with one-hot / probability targets
``sparse_categorical_crossentropy`` ``F.cross_entropy`` with integer class targets
=================================== =========================================================

Every loss is called torch-style, ``fn(y_pred, y_true)``. A Keras name also says how targets
are matched to outputs (``target_mismatch``, ``target_broadcast``), as Keras matches them.

Example:
    >>> import torch
    >>> loss = resolve_loss("mse")
    >>> loss.name, float(loss(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0])))
    ('mse', 2.0)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["KNOWN_LOSSES", "Loss", "resolve_loss", "target_broadcast", "target_mismatch"]


def _reduce_per_sample(values: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first: one value per sample."""
    if values.dim() <= 1:
        return values
    return values.reshape(values.shape[0], -1).mean(dim=1)


def _keras_ranks(pred_shape: tuple[int, ...], true_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The two shapes after Keras' rank matching: rank-1 targets against rank-2 outputs become
    ``(N, 1)`` (tf.keras ``match_dtype_and_rank``); otherwise a trailing axis of size 1 on the
    side with one more axis is dropped (``squeeze_or_expand_to_same_rank``)."""
    if len(true_shape) == 1 and len(pred_shape) == 2:
        return pred_shape, (*true_shape, 1)
    if len(pred_shape) == len(true_shape) + 1 and pred_shape[-1] == 1:
        return pred_shape[:-1], true_shape
    if len(true_shape) == len(pred_shape) + 1 and true_shape[-1] == 1:
        return pred_shape, true_shape[:-1]
    return pred_shape, true_shape


def _broadcast_shape(pred_shape: tuple[int, ...], true_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The shape an element-wise Keras loss compares outputs and targets at, or ``None`` if Keras refuses them."""
    pred_shape, true_shape = _keras_ranks(pred_shape, true_shape)
    if len(pred_shape) != len(true_shape) or not pred_shape or pred_shape[0] != true_shape[0]:
        return None
    if any(p != t and 1 not in (p, t) for p, t in zip(pred_shape, true_shape)):
        return None
    return tuple(max(p, t) for p, t in zip(pred_shape, true_shape))


def _match(y_pred: torch.Tensor, y_true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs and float targets of one shape, for an element-wise loss or metric.

    Targets of the outputs' shape, or of as many elements per sample (``(N,)`` for ``(N, 1)``),
    are taken as they are; other shapes are matched as Keras matches them (rank-1 targets
    against rank-2 outputs become ``(N, 1)``), then broadcast. ``fit`` refuses, at its first
    batch, shapes that Keras refuses.
    """
    y_true = y_true.to(y_pred.dtype)
    if y_true.shape == y_pred.shape:
        return y_pred, y_true
    if y_true.numel() == y_pred.numel():
        return y_pred, y_true.reshape(y_pred.shape)
    pred_shape, true_shape = _keras_ranks(tuple(y_pred.shape), tuple(y_true.shape))
    y_pred, y_true = torch.broadcast_tensors(y_pred.reshape(pred_shape), y_true.reshape(true_shape))
    return y_pred, y_true


def _mse(y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(*_match(y_pred, y_true), reduction="none")


def _mae(y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(*_match(y_pred, y_true), reduction="none")


def _binary_crossentropy(y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(*_match(y_pred, y_true), reduction="none")


def _categorical_crossentropy(y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(y_pred, y_true.to(y_pred.dtype), reduction="none")


def _sparse_categorical_crossentropy(y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(y_pred, _sparse_labels(y_pred, y_true), reduction="none")


def _sparse_labels(y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    if y_true.dim() == y_pred.dim():  # (N, 1) labels, as Keras accepts
        y_true = y_true.squeeze(-1)
    return y_true if y_true.dtype == torch.long else y_true.long()


def _mse_mean(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(p, t.to(p.dtype)) if t.shape == p.shape else F.mse_loss(*_match(p, t))


def _mae_mean(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(p, t.to(p.dtype)) if t.shape == p.shape else F.l1_loss(*_match(p, t))


def _binary_crossentropy_mean(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    if t.shape == p.shape:
        return F.binary_cross_entropy_with_logits(p, t.to(p.dtype))
    return F.binary_cross_entropy_with_logits(*_match(p, t))


# The batch-mean forms, used when samples are not weighted: one fused kernel, as a hand loop has.
_MEAN_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": _mse_mean,
    "mae": _mae_mean,
    "binary_crossentropy": _binary_crossentropy_mean,
    "categorical_crossentropy": lambda p, t: F.cross_entropy(p, t.to(p.dtype)),
    "sparse_categorical_crossentropy": lambda p, t: F.cross_entropy(
        p, t if (t.dtype is torch.long and t.ndim == 1) else _sparse_labels(p, t)
    ),
}
_MEAN_LOSSES["mean_squared_error"] = _MEAN_LOSSES["mse"]
_MEAN_LOSSES["mean_absolute_error"] = _MEAN_LOSSES["mae"]

_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": _mse,
    "mean_squared_error": _mse,
    "mae": _mae,
    "mean_absolute_error": _mae,
    "binary_crossentropy": _binary_crossentropy,
    "categorical_crossentropy": _categorical_crossentropy,
    "sparse_categorical_crossentropy": _sparse_categorical_crossentropy,
}
KNOWN_LOSSES = tuple(_LOSSES)


class Loss:
    """A loss that gives the batch mean, and per-sample values when samples are weighted."""

    def __init__(self, fn: Callable[..., Any], name: str, per_sample: Callable[..., Any] | None) -> None:
        self.fn = fn
        self.name = name
        self._per_sample = per_sample
        # Binary accuracy thresholds logits at 0 and probabilities at 0.5.
        self.on_logits = name in ("binary_crossentropy", "BCEWithLogitsLoss")

    @property
    def supports_weights(self) -> bool:
        return self._per_sample is not None

    def __call__(self, y_pred: Any, y_true: Any) -> torch.Tensor:
        return self.fn(y_pred, y_true)

    def for_targets(self, y_true: Any) -> Callable[..., torch.Tensor]:
        """The batch-mean function for batches cut from the one tensor ``y_true``: for integer
        class labels that need no conversion, ``F.cross_entropy`` itself, with no check a batch."""
        sparse = self.fn is _MEAN_LOSSES["sparse_categorical_crossentropy"]
        if sparse and isinstance(y_true, torch.Tensor) and y_true.dtype == torch.long and y_true.dim() == 1:
            return F.cross_entropy
        return self.fn

    def per_sample(self, y_pred: Any, y_true: Any) -> torch.Tensor:
        """One loss value per sample, shape ``(batch,)``."""
        if self._per_sample is None:
            raise ValueError(
                f"loss {self.name!r} gives one number per batch, so sample_weight and class_weight "
                "cannot weight it; pass a torch loss module (such as torch.nn.MSELoss()) or a Keras loss name."
            )
        return _reduce_per_sample(self._per_sample(y_pred, y_true))


def resolve_loss(loss: Any) -> Loss:
    """Turn a Keras loss name, a torch loss module or a callable into a :class:`Loss`."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        fn = _LOSSES.get(loss)
        if fn is None:
            raise ValueError(f"loss: unknown loss name {loss!r}; known names are {', '.join(KNOWN_LOSSES)}.")
        return Loss(_MEAN_LOSSES[loss], loss, fn)
    if not callable(loss):
        raise ValueError(
            f"loss must be a Keras loss name ({', '.join(KNOWN_LOSSES)}) or a callable loss(y_pred, y_true), "
            f"got {type(loss).__name__}."
        )
    per_sample = None
    if isinstance(loss, torch.nn.modules.loss._Loss) and getattr(loss, "reduction", None) in ("mean", "sum", "none"):
        unreduced = copy.copy(loss)
        unreduced.reduction = "none"
        per_sample = unreduced
    name = type(loss).__name__ if isinstance(loss, torch.nn.Module) else getattr(loss, "__name__", "loss")
    return Loss(loss, name, per_sample)


def target_mismatch(loss: str, y_pred: Any, y_true: Any, samples: int) -> str | None:
    """Why targets shaped like ``y_true`` cannot fit outputs like ``y_pred`` under the Keras loss ``loss``.

    ``None`` when they fit, or when the loss is not a Keras name (a callable checks its own).
    ``y_pred`` and ``y_true`` are one batch's; ``samples`` is how many rows ``y`` has, for the
    message. The element-wise losses (``mse``, ``mae``, ``binary_crossentropy``) take what
    Keras takes: targets of the outputs' shape or with as many values per sample, rank-1
    targets against rank-2 outputs (expanded to ``(N, 1)``, then broadcast, as tf.keras does
    for the seed examples), and shapes that broadcast once their ranks are matched.

    Example:
        >>> import torch
        >>> print(target_mismatch("mse", torch.zeros(2, 10), torch.zeros(2, 3), samples=64))
        y of shape (64, 3) does not fit the module's outputs of shape (64, 10) under loss 'mse', which compares them element by element: pass targets shaped like the outputs (one-hot encode class labels), or use loss='sparse_categorical_crossentropy' for integer labels.
        >>> target_mismatch("mse", torch.zeros(2, 10), torch.zeros(2), samples=64) is None
        True
    """
    if loss not in _LOSSES or not isinstance(y_pred, torch.Tensor) or not isinstance(y_true, torch.Tensor):
        return None
    if y_pred.dim() == 0 or y_true.dim() == 0:
        return None
    pred, true = tuple(y_pred.shape[1:]), tuple(y_true.shape[1:])
    if loss == "sparse_categorical_crossentropy":
        if true in ((), (1,)) or true == pred[1:]:  # a label per sample (or per position, for dense outputs)
            return None
        hint = "which takes one integer class label per sample: for one-hot targets use loss='categorical_crossentropy'"
    elif loss == "categorical_crossentropy":
        if true == pred:
            return None
        hint = (
            "which takes one-hot (or probability) targets with a column per output: for integer labels use "
            "loss='sparse_categorical_crossentropy'"
        )
    else:  # mse, mae, binary_crossentropy
        if math.prod(true) == math.prod(pred) or _broadcast_shape(tuple(y_pred.shape), tuple(y_true.shape)):
            return None
        hint = (
            "which compares them element by element: pass targets shaped like the outputs (one-hot encode class "
            "labels), or use loss='sparse_categorical_crossentropy' for integer labels"
        )
    return (
        f"y of shape {(samples, *true)} does not fit the module's outputs of shape {(samples, *pred)} under loss "
        f"{loss!r}, {hint}."
    )


def target_broadcast(loss: str, y_pred: Any, y_true: Any, samples: int) -> str | None:
    """How Keras matches targets shaped like ``y_true`` to outputs like ``y_pred`` under ``loss``,
    when it takes them by expanding and broadcasting (else ``None``): the text of ``fit``'s warning.

    Example:
        >>> import torch
        >>> print(target_broadcast("mse", torch.zeros(2, 10), torch.zeros(2), samples=5))
        y of shape (5,) is matched to the module's outputs of shape (5, 10) as Keras matches them under loss 'mse': expanded to (5, 1), then broadcast to (5, 10).
        >>> target_broadcast("mse", torch.zeros(2, 1), torch.zeros(2), samples=5) is None
        True
    """
    if loss not in ("mse", "mean_squared_error", "mae", "mean_absolute_error", "binary_crossentropy"):
        return None
    if not isinstance(y_pred, torch.Tensor) or not isinstance(y_true, torch.Tensor) or y_pred.dim() == 0:
        return None
    if y_true.dim() == 0 or y_true.shape[1:].numel() == y_pred.shape[1:].numel():
        return None
    shape = _broadcast_shape(tuple(y_pred.shape), tuple(y_true.shape))
    if shape is None:
        return None
    pred_rows, true_rows = _keras_ranks(tuple(y_pred.shape), tuple(y_true.shape))
    pred, true = (samples, *pred_rows[1:]), (samples, *true_rows[1:])
    how = f"expanded to {true}, then " if true_rows != tuple(y_true.shape) else ""
    if pred_rows != tuple(y_pred.shape):
        how += f"the outputs taken as {pred}, then "
    return (
        f"y of shape {(samples, *y_true.shape[1:])} is matched to the module's outputs of shape "
        f"{(samples, *y_pred.shape[1:])} as Keras matches them under loss {loss!r}: {how}broadcast to "
        f"{(samples, *shape[1:])}."
    )
