"""Metrics: Keras metric names, torch callables and stateful metric objects, resolved against the loss.

``"accuracy"`` is Keras' choice of binary, sparse or categorical accuracy, made from the
loss and the shapes. Every metric is called torch-style, ``fn(y_pred, y_true)``; a stateful
one (torchmetrics) accumulates and is computed only where its value is logged.

Example:
    >>> import torch
    >>> from torchcb.losses import resolve_loss
    >>> accuracy, = resolve_metrics(["accuracy"], resolve_loss("sparse_categorical_crossentropy"))
    >>> logits, labels = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0])
    >>> accuracy.name, float(accuracy(logits, labels))
    ('accuracy', 0.5)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from torchcb.logs import PendingCompute
from torchcb.losses import Loss, _mae, _match, _mse

__all__ = ["KNOWN_METRICS", "Metric", "StatefulMetric", "resolve_metrics"]


def _labels(y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    """Class indices from integer labels or from one-hot / probability targets."""
    if y_true.dim() == y_pred.dim() and y_true.shape[-1] == y_pred.shape[-1] and y_pred.shape[-1] > 1:
        return y_true.argmax(dim=-1)
    if y_true.dim() == y_pred.dim():
        y_true = y_true.squeeze(-1)
    return y_true.long()


def binary_accuracy(y_pred: torch.Tensor, y_true: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Fraction of outputs on the right side of ``threshold`` (use 0 for logits)."""
    y_pred, y_true = _match(y_pred, y_true)
    return ((y_pred > threshold) == (y_true > 0.5)).float().mean()


def categorical_accuracy(y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose largest output is the one-hot target's class."""
    return (y_pred.argmax(dim=-1) == y_true.argmax(dim=-1)).float().mean()


def sparse_categorical_accuracy(y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose largest output is the integer target."""
    return (y_pred.argmax(dim=-1) == _labels(y_true, y_pred)).float().mean()


def top_k_categorical_accuracy(y_pred: torch.Tensor, y_true: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Fraction of samples whose target class is among the ``k`` largest outputs."""
    k = min(k, y_pred.shape[-1])
    top = y_pred.topk(k, dim=-1).indices
    return (top == _labels(y_true, y_pred).unsqueeze(-1)).any(dim=-1).float().mean()


def mean_squared_error(y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    return _mse(y_pred, y_true).mean()


def mean_absolute_error(y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    return _mae(y_pred, y_true).mean()


def _accuracy_for(loss: Loss) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Keras' choice of accuracy: binary, sparse or categorical, from the loss and the shapes."""
    threshold = 0.0 if loss.on_logits else 0.5

    def accuracy(y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        if y_pred.dim() == 1 or y_pred.shape[-1] == 1 or loss.name == "binary_crossentropy":
            return binary_accuracy(y_pred, y_true, threshold)
        if y_true.dim() < y_pred.dim() or y_true.shape[-1] == 1 or not y_true.is_floating_point():
            return sparse_categorical_accuracy(y_pred, y_true)
        return categorical_accuracy(y_pred, y_true)

    return accuracy


_METRICS: dict[str, Callable[..., torch.Tensor]] = {
    "binary_accuracy": binary_accuracy,
    "categorical_accuracy": categorical_accuracy,
    "sparse_categorical_accuracy": sparse_categorical_accuracy,
    "top_k_categorical_accuracy": top_k_categorical_accuracy,
    "mse": mean_squared_error,
    "mean_squared_error": mean_squared_error,
    "mae": mean_absolute_error,
    "mean_absolute_error": mean_absolute_error,
}
KNOWN_METRICS = ("accuracy", "acc", *_METRICS)
_HIGHER_IS_BETTER = {"accuracy", "acc", "binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy"}


class Metric:
    """A metric computed per batch on the device; the epoch value is the size-weighted mean."""

    stateful = False

    def __init__(self, fn: Callable[..., Any], name: str, higher_is_better: bool | None = None) -> None:
        self.fn = fn
        self.name = name
        self.higher_is_better = higher_is_better

    def __call__(self, y_pred: Any, y_true: Any) -> torch.Tensor:
        return self.fn(y_pred, y_true)

    def __repr__(self) -> str:
        return f"Metric({self.name!r})"


class StatefulMetric(Metric):
    """A metric object with ``update``/``compute``/``reset`` (torchmetrics works).

    Logged as its running value, not averaged. Each batch updates it; ``compute()`` (which
    syncs the ranks in torchmetrics) runs only at the logging points: the epoch's end,
    validation's end and the batches whose logs a callback is handed (see
    ``torchcb.logs.PendingCompute``).
    """

    stateful = True

    def __init__(self, metric: Any, name: str) -> None:
        super().__init__(metric, name, getattr(metric, "higher_is_better", None))
        self.metric = metric
        self._pending = PendingCompute(self._compute)

    def _compute(self) -> Any:
        return self.metric.compute()

    def __call__(self, y_pred: Any, y_true: Any) -> Any:
        self.metric.update(y_pred, y_true)
        return self._pending  # computed where it is logged

    def reset(self) -> None:
        self.metric.reset()

    def get_state(self, all_ranks: bool = False) -> dict[str, Any] | None:
        """What the metric has accumulated, for a checkpoint; ``None`` if the object cannot say.

        torchmetrics metrics give their metric states (with ``all_ranks``, synced over the
        ranks of a torchrun run first: a collective every rank must make); other objects
        their ``state_dict()``.
        """
        metric = self.metric
        if isinstance(getattr(metric, "_defaults", None), dict) and hasattr(metric, "metric_state"):  # torchmetrics
            if all_ranks:
                metric.sync()
            try:
                states = {
                    name: [t.detach().clone() for t in value] if isinstance(value, list) else value.detach().clone()
                    for name, value in metric.metric_state.items()
                }
            finally:
                if all_ranks:
                    metric.unsync()
            return {"metric_state": states, "update_count": int(getattr(metric, "_update_count", 0))}
        if callable(getattr(metric, "state_dict", None)) and callable(getattr(metric, "load_state_dict", None)):
            return {"state_dict": metric.state_dict()}
        return None

    def set_state(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`get_state` gave."""
        metric = self.metric
        if "metric_state" in state:
            device = getattr(metric, "device", None)
            for name, value in state["metric_state"].items():
                if isinstance(value, list):
                    value = [t.to(device) if device is not None else t for t in value]
                elif device is not None:
                    value = value.to(device)
                setattr(metric, name, value)
            metric._update_count = state["update_count"]
            metric._computed = None  # the cached result belongs to the state before
        else:
            metric.load_state_dict(state["state_dict"])

    def to(self, device: torch.device) -> StatefulMetric:
        if callable(getattr(self.metric, "to", None)):
            self.metric = self.metric.to(device)
        return self


def _snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def resolve_metrics(metrics: Any, loss: Loss) -> list[Metric]:
    """Turn the ``metrics`` argument of ``Trainer`` into :class:`Metric` objects."""
    if metrics is None:
        return []
    if isinstance(metrics, (str, dict)) or callable(metrics):
        metrics = [metrics]
    resolved: list[Metric] = []
    for index, metric in enumerate(metrics):
        if isinstance(metric, Metric):
            resolved.append(metric)
        elif isinstance(metric, str):
            if metric in ("accuracy", "acc"):
                resolved.append(Metric(_accuracy_for(loss), metric, True))
            elif metric in _METRICS:
                resolved.append(Metric(_METRICS[metric], metric, metric in _HIGHER_IS_BETTER))
            else:
                raise ValueError(
                    f"metrics[{index}]: unknown metric name {metric!r}; known names are {', '.join(KNOWN_METRICS)}."
                )
        elif all(callable(getattr(metric, m, None)) for m in ("update", "compute", "reset")):
            name = getattr(metric, "name", None)
            resolved.append(
                StatefulMetric(metric, name if isinstance(name, str) else _snake_case(type(metric).__name__))
            )
        elif callable(metric):
            name = getattr(metric, "__name__", None) or _snake_case(type(metric).__name__)
            resolved.append(Metric(metric, name))
        else:
            raise ValueError(
                f"metrics[{index}] must be a metric name ({', '.join(KNOWN_METRICS)}), a callable "
                f"metric(y_pred, y_true) or an object with update/compute/reset, got {type(metric).__name__}."
            )
    names = [m.name for m in resolved]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"metrics: each metric needs a distinct name, {', '.join(duplicates)} appears twice.")
    return resolved
