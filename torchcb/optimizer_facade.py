"""The optimizer as Keras callbacks see it: hyperparameters as live Keras variables.

``model.optimizer`` in a callback is a :class:`KerasOptimizer`: ``lr``, ``momentum``,
``beta_1`` ... are :class:`Hyperparameter` handles over every param group of the torch
optimizer, read and set with ``K.get_value``/``K.set_value``; ``iterations`` is the run's
optimizer step count and ``decay`` Keras 2's time decay. ``torchcb.facade`` builds the
model facade around it.

Example:
    >>> import torch
    >>> from torchcb import Trainer
    >>> net = torch.nn.Linear(2, 1)
    >>> trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", device="cpu")
    >>> lr = trainer.model.optimizer.lr
    >>> float(lr), lr * 2
    (0.1, 0.2)
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any, Protocol

import numpy as np
import torch

__all__ = [
    "GroupValue",
    "Hyperparameter",
    "KerasOptimizer",
    "LearningRate",
    "OptimizerOwner",
    "TimeDecay",
    "Variable",
    "Weight",
    "set_learning_rate",
]


class OptimizerOwner(Protocol):
    """What the optimizer facade reads of the trainer that owns the optimizer."""

    module: torch.nn.Module
    weight_average: Any
    time_decay: float

    @property
    def optimizer_steps(self) -> int: ...

    def set_time_decay(self, decay: float) -> None: ...


def _real_number(value: Any, argument: str) -> float:
    if isinstance(value, Hyperparameter):
        return value.get_value()
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        return float(value.item())
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        result = float(value)
        if math.isfinite(result):
            return result
    raise ValueError(f"{argument} must be a finite real number, got {value!r}.")


def set_learning_rate(optimizer: torch.optim.Optimizer, value: Any) -> None:
    """Set the first param group's rate to ``value``, scaling every other group by the same ratio.

    A rate that is negative (or not a finite number) raises ``ValueError``, as torch optimizers
    refuse one at construction; ``0`` is a rate (``ReduceLROnPlateau`` may reach it).
    """
    new = _real_number(value, "learning rate")
    if new < 0:
        raise ValueError(f"learning rate must be >= 0, as torch optimizers take it, got {new!r}.")
    groups = optimizer.param_groups
    old = float(groups[0]["lr"])
    ratio = new / old if old != 0 else None
    for index, group in enumerate(groups):
        target = new if (index == 0 or ratio is None) else float(group["lr"]) * ratio
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(target)
        else:
            group["lr"] = target


def _binary(op: Any) -> Any:
    def method(self: Hyperparameter, other: Any) -> Any:
        return op(self.get_value(), float(other) if isinstance(other, Hyperparameter) else other)

    return method


def _reflected(op: Any) -> Any:
    def method(self: Hyperparameter, other: Any) -> Any:
        return op(other, self.get_value())

    return method


class Hyperparameter:
    """A live handle on an optimizer hyperparameter that behaves as the float it holds.

    ``float()``, arithmetic, comparisons, formatting and ``numpy`` conversion all use the
    current value, as a Python float (Keras 2's ``K.get_value`` gives it too).
    ``K.set_value(handle, v)``, ``handle.assign(v)`` or assigning the optimizer attribute
    (``model.optimizer.momentum = v``) set it in the torch optimizer, so the next step uses it.

    It also offers Keras 3's variable API, as on Keras' torch backend: ``.value`` is a 0-d
    float32 tensor (a copy, on the CPU), so ``handle.value < 0.1`` compares at float32 as
    Keras 3 does; ``.numpy()`` a 0-d float32 array; ``.assign(v)`` returns the new ``.value``.

    Example:
        >>> import torch
        >>> from torchcb import Trainer
        >>> net = torch.nn.Linear(2, 1)
        >>> trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", device="cpu")
        >>> learning_rate = trainer.model.optimizer.learning_rate
        >>> learning_rate.value, learning_rate.numpy().dtype
        (tensor(0.1000), dtype('float32'))
        >>> learning_rate.assign(0.5)
        tensor(0.5000)
        >>> trainer.optimizer.param_groups[0]["lr"], float(learning_rate)
        (0.5, 0.5)
    """

    __slots__ = ()

    def get_value(self) -> float:
        raise NotImplementedError

    def set_value(self, value: Any) -> None:
        raise NotImplementedError

    @property
    def value(self) -> torch.Tensor:
        """The current value as Keras 3's torch backend holds a variable's: a 0-d float32 tensor (a copy)."""
        return torch.tensor(self.get_value(), dtype=torch.float32)

    def assign(self, value: Any) -> torch.Tensor:
        """Set the value (as ``K.set_value``); returns the new :attr:`value`, as Keras 3's ``assign`` does."""
        self.set_value(value)
        return self.value

    def numpy(self) -> np.ndarray:
        """The value as a 0-d float32 array, as Keras 3's ``Variable.numpy()`` gives it."""
        return np.array(self.get_value(), dtype=np.float32)

    def item(self) -> float:
        return self.get_value()

    def __float__(self) -> float:
        return self.get_value()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self.get_value(), dtype=dtype)

    def __format__(self, spec: str) -> str:
        return format(self.get_value(), spec)

    def __repr__(self) -> str:
        return repr(self.get_value())

    def __str__(self) -> str:
        return str(self.get_value())

    def __round__(self, ndigits: int | None = None) -> Any:
        return round(self.get_value(), ndigits)

    def __bool__(self) -> bool:
        return self.get_value() != 0.0

    def __neg__(self) -> float:
        return -self.get_value()

    def __abs__(self) -> float:
        return abs(self.get_value())

    __hash__ = None  # type: ignore[assignment]  # its value changes
    __add__ = _binary(operator.add)
    __sub__ = _binary(operator.sub)
    __mul__ = _binary(operator.mul)
    __truediv__ = _binary(operator.truediv)
    __floordiv__ = _binary(operator.floordiv)
    __pow__ = _binary(operator.pow)
    __radd__ = _reflected(operator.add)
    __rsub__ = _reflected(operator.sub)
    __rmul__ = _reflected(operator.mul)
    __rtruediv__ = _reflected(operator.truediv)
    __rfloordiv__ = _reflected(operator.floordiv)
    __rpow__ = _reflected(operator.pow)
    __eq__ = _binary(operator.eq)  # type: ignore[assignment]
    __ne__ = _binary(operator.ne)  # type: ignore[assignment]
    __lt__ = _binary(operator.lt)
    __le__ = _binary(operator.le)
    __gt__ = _binary(operator.gt)
    __ge__ = _binary(operator.ge)


class LearningRate(Hyperparameter):
    """The learning rate: the first param group's; setting it scales every group by the same ratio,
    so their proportions are kept."""

    __slots__ = ("_optimizer",)

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer = optimizer

    def get_value(self) -> float:
        return float(self._optimizer.param_groups[0]["lr"])

    def set_value(self, value: Any) -> None:
        set_learning_rate(self._optimizer, value)


class GroupValue(Hyperparameter):
    """A hyperparameter every param group holds (``momentum``, ``eps``, one of ``betas`` ...);
    reading gives the first group's, setting sets every group's."""

    __slots__ = ("_optimizer", "_key", "_index", "_name")

    def __init__(self, optimizer: torch.optim.Optimizer, key: str, index: int | None, name: str) -> None:
        self._optimizer, self._key, self._index, self._name = optimizer, key, index, name

    def get_value(self) -> float:
        value = self._optimizer.param_groups[0][self._key]
        return float(value if self._index is None else value[self._index])

    def set_value(self, value: Any) -> None:
        new = _real_number(value, self._name)
        bounds = _BOUNDS.get((self._key, self._index))
        if bounds is not None and not bounds[0](new):
            raise ValueError(f"{self._name} must be {bounds[1]}, as torch optimizers take it, got {new!r}.")
        for group in self._optimizer.param_groups:
            if self._index is None:
                current = group[self._key]
                if isinstance(current, torch.Tensor):
                    current.fill_(new)
                else:
                    group[self._key] = new
            else:
                values = list(group[self._key])
                if isinstance(values[self._index], torch.Tensor):
                    values[self._index].fill_(new)
                else:
                    values[self._index] = new
                group[self._key] = type(group[self._key])(values)


class TimeDecay(Hyperparameter):
    """Keras 2's ``decay``: 0.0 unless set. Set to ``d`` > 0, every optimizer step uses the
    rate ``lr / (1 + d * iterations)``, as Keras 2's optimizers did; ``lr`` itself is unchanged."""

    __slots__ = ("_trainer",)

    def __init__(self, trainer: Any) -> None:
        self._trainer = trainer

    def get_value(self) -> float:
        return float(self._trainer.time_decay)

    def set_value(self, value: Any) -> None:
        decay = _real_number(value, "decay")
        if decay < 0:
            raise ValueError(f"decay must be >= 0, got {decay}.")
        self._trainer.set_time_decay(decay)


# Keras names of optimizer hyperparameters -> (param group key, index in it); the first key
# the optimizer's groups hold is used (RMSprop calls Keras' rho alpha, Adadelta calls it rho).
_HYPERPARAMETERS: dict[str, list[tuple[str, int | None]]] = {
    "momentum": [("momentum", None)],
    "beta_1": [("betas", 0)],
    "beta_2": [("betas", 1)],
    "epsilon": [("eps", None)],
    "rho": [("rho", None), ("alpha", None)],
}


# The values torch optimizers refuse at construction, refused when set through a handle too.
_BOUNDS: dict[tuple[str, int | None], tuple[Any, str]] = {
    ("momentum", None): (lambda v: v >= 0, ">= 0"),
    ("betas", 0): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("betas", 1): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("eps", None): (lambda v: v >= 0, ">= 0"),
    ("rho", None): (lambda v: 0 <= v <= 1, "in [0, 1]"),  # Adadelta's
    ("alpha", None): (lambda v: v >= 0, ">= 0"),  # RMSprop's
}


class KerasOptimizer:
    """The optimizer as Keras callbacks see it: its hyperparameters as Keras variables, and ``iterations``.

    ``lr``/``learning_rate``, ``momentum`` (SGD, RMSprop), ``beta_1``/``beta_2`` (Adam and
    its family: torch's ``betas``), ``epsilon`` (``eps``), ``rho`` (RMSprop's ``alpha``,
    Adadelta's ``rho``) and ``decay`` (Keras 2's time-based decay, see :class:`TimeDecay`)
    are live handles, read and set with ``K.get_value``/``K.set_value``, ``.assign`` or
    ``=``, on every param group. One this optimizer does not have raises ``AttributeError``
    naming both, so ``hasattr(optimizer, "momentum")`` tells, as in Keras. A value torch
    refuses at construction (a negative ``lr``, ``momentum`` or ``epsilon``, a beta outside
    ``[0, 1)``) raises ``ValueError`` naming it, and the optimizer keeps its value. Any other
    attribute (``param_groups``, ``state_dict``, ``zero_grad`` ...) is the torch optimizer's own.

    Example:
        >>> import torch
        >>> from torchcb import Trainer
        >>> from torchcb import backend as K
        >>> net = torch.nn.Linear(2, 1)
        >>> trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9), loss="mse", device="cpu")
        >>> optimizer = trainer.model.optimizer
        >>> K.set_value(optimizer.momentum, 0.85)
        >>> trainer.optimizer.param_groups[0]["momentum"], hasattr(optimizer, "beta_1")
        (0.85, False)
    """

    def __init__(self, optimizer: torch.optim.Optimizer, trainer: OptimizerOwner) -> None:
        object.__setattr__(self, "_optimizer", optimizer)
        object.__setattr__(self, "_trainer", trainer)

    @property
    def lr(self) -> LearningRate:
        return LearningRate(self._optimizer)

    @lr.setter
    def lr(self, value: Any) -> None:
        set_learning_rate(self._optimizer, value)

    learning_rate = lr

    @property
    def decay(self) -> TimeDecay:
        return TimeDecay(self._trainer)

    @decay.setter
    def decay(self, value: Any) -> None:
        TimeDecay(self._trainer).set_value(value)

    @property
    def iterations(self) -> int:
        """How many optimizer steps have been taken."""
        return self._trainer.optimizer_steps

    def _hyperparameter(self, name: str) -> GroupValue:
        group = self._optimizer.param_groups[0]
        for key, index in _HYPERPARAMETERS[name]:
            if key in group:
                return GroupValue(self._optimizer, key, index, name)
        raise AttributeError(
            f"{type(self._optimizer).__name__} has no hyperparameter {name!r} (its param groups hold "
            f"{', '.join(k for k in group if k != 'params')})."
        )

    def __getattr__(self, name: str) -> Any:
        if name in _HYPERPARAMETERS:
            return self._hyperparameter(name)
        return getattr(self._optimizer, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("lr", "learning_rate", "decay"):
            object.__setattr__(self, name, value)
        elif name in _HYPERPARAMETERS:
            self._hyperparameter(name).set_value(value)
        else:
            setattr(self._optimizer, name, value)

    def __repr__(self) -> str:
        return f"KerasOptimizer({self._optimizer!r})"

    # What Keras 3's SwapEMAWeights and BackupAndRestore read of an optimizer.
    @property
    def built(self) -> bool:
        """Always True: a torch optimizer has its state from its first step on."""
        return True

    def build(self, variables: Any = None) -> None:
        """Nothing to build (Keras creates its optimizer's slots here; torch, at the first step)."""

    @property
    def weight_average(self) -> Any:
        """The trainer's :class:`torchcb.ema.WeightAverage` (``use_ema=True``), else None."""
        return self._trainer.weight_average

    @property
    def use_ema(self) -> bool:
        """Whether the Trainer keeps a moving average of the weights (``Trainer(..., use_ema=True)``)."""
        return self._trainer.weight_average is not None

    @property
    def _trainable_variables(self) -> list[Variable]:
        """Keras' ``optimizer._trainable_variables``: live views of the averaged tensors (with EMA),
        else of the parameters that require gradients."""
        average = self._trainer.weight_average
        if average is None:
            named = [(n, p) for n, p in self._trainer.module.named_parameters() if p.requires_grad]
        else:
            named = list(zip(average.names, average.weights()))
        return [Variable(name, tensor) for name, tensor in named]

    @property
    def _model_variables_moving_average(self) -> list[Variable]:
        """Keras' EMA slots, as live views in the order of ``_trainable_variables``: assigning one
        writes the average (only with ``use_ema=True``; otherwise there is no such attribute)."""
        average = self._trainer.weight_average
        if average is None:
            raise AttributeError("_model_variables_moving_average")
        return [Variable(f"{name}/average", tensor) for name, tensor in zip(average.names, average.averages())]


class Weight:
    """One parameter of a layer, with the Keras ``name`` and ``numpy()``."""

    def __init__(self, name: str, value: torch.Tensor) -> None:
        self.name = name
        self.value = value
        self.shape = tuple(value.shape)

    def numpy(self) -> np.ndarray:
        return _to_numpy(self.value)

    def __repr__(self) -> str:
        return f"Weight({self.name!r}, shape={self.shape})"


class Variable(Weight):
    """A live view of a torch tensor as a Keras variable: ``numpy()``, ``np.array(v)`` and
    ``assign(value)`` (in place, bitwise, from an array, a tensor or another view)."""

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)

    def assign(self, value: Any) -> None:
        source = value.value if isinstance(value, Weight) else value
        if not isinstance(source, torch.Tensor):
            source = torch.as_tensor(np.asarray(source))
        with torch.no_grad():
            self.value.copy_(source.to(device=self.value.device, dtype=self.value.dtype))

    def __repr__(self) -> str:
        return f"Variable({self.name!r}, shape={self.shape})"


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.cpu().numpy().copy()
