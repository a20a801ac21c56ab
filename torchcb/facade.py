"""The Keras-shaped model and optimizer that every callback sees as ``self.model``.

Callbacks reach training only through this facade, so callback code written for Keras
runs unchanged: ``self.model.stop_training = True``, ``K.set_value(self.model.optimizer.lr,
0.01)``, ``self.model.get_weights()``, ``self.model.save(path)``. Any other name reaches the
wrapped module (``self.model.encoder``), as a Keras model is the network itself.

Example:
    >>> import torch
    >>> from torchcb import Trainer
    >>> from torchcb import backend as K
    >>> net = torch.nn.Linear(2, 1)
    >>> trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", device="cpu")
    >>> lr = trainer.model.optimizer.lr
    >>> float(lr), lr * 2, lr > 0.05
    (0.1, 0.2, True)
    >>> K.set_value(lr, 0.05)
    >>> trainer.optimizer.param_groups[0]["lr"]
    0.05
"""

from __future__ import annotations

import math
import numbers
import operator
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from torchcb import sharded
from torchcb.checkpoint import wait_for_pending_write
from torchcb.tree import tree_map

if TYPE_CHECKING:
    from torchcb.trainer import Trainer

__all__ = [
    "GroupValue",
    "Hyperparameter",
    "KerasModel",
    "KerasOptimizer",
    "LearningRate",
    "Layer",
    "TimeDecay",
    "Variable",
    "Weight",
    "set_learning_rate",
]


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
    """Set the first param group's rate to ``value``, scaling every other group by the same ratio."""
    new = _real_number(value, "learning rate")
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


class KerasOptimizer:
    """The optimizer as Keras callbacks see it: its hyperparameters as Keras variables, and ``iterations``.

    ``lr``/``learning_rate``, ``momentum`` (SGD, RMSprop), ``beta_1``/``beta_2`` (Adam and
    its family: torch's ``betas``), ``epsilon`` (``eps``), ``rho`` (RMSprop's ``alpha``,
    Adadelta's ``rho``) and ``decay`` (Keras 2's time-based decay, see :class:`TimeDecay`)
    are live handles, read and set with ``K.get_value``/``K.set_value``, ``.assign`` or
    ``=``, on every param group. One this optimizer does not have raises ``AttributeError``
    naming both, so ``hasattr(optimizer, "momentum")`` tells, as in Keras. Any other
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

    def __init__(self, optimizer: torch.optim.Optimizer, trainer: Trainer) -> None:
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


class Layer:
    """A named leaf module, as ``model.layers`` lists it."""

    def __init__(self, name: str, module: torch.nn.Module) -> None:
        self.name = name
        self.module = module

    @property
    def weights(self) -> list[Weight]:
        prefix = f"{self.name}." if self.name else ""
        return [Weight(prefix + n, p) for n, p in self.module.named_parameters(recurse=False)]

    trainable_weights = weights

    def get_weights(self) -> list[np.ndarray]:
        return [w.numpy() for w in self.weights]

    def __repr__(self) -> str:
        return f"Layer({self.name!r}, {type(self.module).__name__})"


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.cpu().numpy().copy()


class KerasModel:
    """The model facade: what ``self.model`` is inside every callback.

    A Keras model is the network itself, so any name the facade does not define falls
    through to the wrapped module: ``self.model.encoder`` is the module's ``encoder``
    submodule, ``self.model.temperature`` its attribute. The facade's own names win
    (``stop_training``, ``optimizer``, ``history``, ``layers``, ``name``, ``metrics``,
    ``get_weights``, ``save`` ...); the module's own ``layers`` or ``name`` are
    ``self.model.module.layers``. Setting a name the module has (and the facade has not)
    sets it on the module, so a callback that anneals ``self.model.temperature`` changes
    what ``forward`` reads; any other name is kept on the facade. ``self.model.iterations``
    is the module's own ``iterations`` if it has one, else the optimizer's step count
    (``self.model.optimizer.iterations``). A name neither has raises ``AttributeError``
    naming both.

    Attributes:
        stop_training: set it to ``True`` to stop ``fit`` after the current batch.
        optimizer: a :class:`KerasOptimizer` over the torch optimizer.
        history: the :class:`~torchcb.callbacks.History` of the current or last ``fit``.
        module: the wrapped ``torch.nn.Module``.
        trainer: the :class:`~torchcb.Trainer`.

    Example:
        >>> import torch
        >>> from torchcb import Trainer
        >>> class Denoiser(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.encoder = torch.nn.Linear(4, 2)
        ...         self.decoder = torch.nn.Linear(2, 4)
        ...         self.noise = 0.1
        ...     def forward(self, x):
        ...         return self.decoder(self.encoder(x + self.noise * torch.randn_like(x)))
        >>> net = Denoiser()
        >>> trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", device="cpu")
        >>> model = trainer.model  # what self.model is in a callback
        >>> model.encoder is net.encoder, model.noise, model.iterations
        (True, 0.1, 0)
        >>> model.noise = 0.0  # the module's attribute: forward reads it
        >>> net.noise
        0.0
    """

    trainer: Trainer
    stop_training: bool
    history: Any
    optimizer: KerasOptimizer
    _keras_metrics: Any
    _initial_epoch: int | None

    def __init__(self, trainer: Trainer) -> None:
        # the facade's own attributes, past __setattr__: a module's own `history` or `optimizer` stays as it is
        self.__dict__.update(
            trainer=trainer,
            stop_training=False,
            history=None,
            optimizer=KerasOptimizer(trainer.optimizer, trainer),
            _keras_metrics=None,
            _initial_epoch=None,  # Keras' BackupAndRestore sets it; the next fit starts there
        )

    @property
    def module(self) -> torch.nn.Module:
        return self.trainer.module

    @property
    def name(self) -> str:
        return type(self.trainer.module).__name__.lower()

    @property
    def metrics_names(self) -> list[str]:
        return self.trainer.metrics_names

    @property
    def metrics(self) -> list[Any]:
        """The compiled metrics, each with a ``name`` (and ``higher_is_better`` where known).

        When Keras callbacks are in use, a Keras ``MetricsList`` of the same metrics with
        their direction follows, which Keras 3's ``mode="auto"`` reads.
        """
        metrics = list(self.trainer.metric_objects)
        if self._keras_metrics is not None:
            metrics.append(self._keras_metrics)
        return metrics

    def enable_keras_metrics(self) -> None:
        """Add the Keras view of the metrics (imports keras; done when a Keras callback is passed)."""
        if self._keras_metrics is None:
            from torchcb.callbacks.keras_interop import keras_metrics_view
            from torchcb.metrics import Metric

            loss = Metric(lambda p, t: p, "loss", higher_is_better=False)
            self._keras_metrics = keras_metrics_view([loss, *self.trainer.metric_objects])

    @property
    def built(self) -> bool:
        """Always True: a torch module has its weights from its construction (Keras' BackupAndRestore asks)."""
        return True

    @property
    def trainable_variables(self) -> list[Variable]:
        """Live views of the parameters that require gradients, as Keras variables."""
        return [Variable(n, p) for n, p in self.trainer.module.named_parameters() if p.requires_grad]

    @property
    def layers(self) -> list[Layer]:
        return [Layer(name, m) for name, m in self.trainer.module.named_modules() if not list(m.children())]

    def get_weights(self, rank0_only: bool = False) -> list[np.ndarray]:
        """The module's ``state_dict`` tensors as numpy arrays, in order.

        Under FSDP the full tensors are gathered (every rank calls it); with ``rank0_only``
        only rank 0 holds them (the other ranks get an empty list), which saves their memory.
        """
        if sharded.is_sharded(self.trainer.module):
            return [_to_numpy(t) for t in sharded.full_state_dict(self.trainer.module, rank0_only).values()]
        return [_to_numpy(t) for t in self.trainer.module.state_dict().values()]

    def set_weights(self, weights: list[Any]) -> None:
        """Copy ``weights`` (as returned by :meth:`get_weights`, the full arrays on every rank) into the module."""
        state = self.trainer.module.state_dict()
        if sharded.is_sharded(self.trainer.module):
            if weights is None or len(weights) != len(state):
                count = "None" if weights is None else len(weights)
                raise ValueError(
                    f"set_weights expects a list of {len(state)} arrays (one per state_dict entry), got {count}."
                )
            full = {k: torch.as_tensor(np.asarray(w)).to(dtype=v.dtype) for (k, v), w in zip(state.items(), weights)}
            sharded.set_full_state_dict(self.trainer.module, full)
            return
        if weights is None or len(weights) != len(state):
            count = "None" if weights is None else len(weights)
            raise ValueError(
                f"set_weights expects a list of {len(state)} arrays (one per state_dict entry), got {count}."
            )
        with torch.no_grad():
            for (key, tensor), value in zip(state.items(), weights):
                source = torch.as_tensor(np.asarray(value))
                if tuple(source.shape) != tuple(tensor.shape):
                    raise ValueError(
                        f"set_weights: {key} has shape {tuple(tensor.shape)}, got an array of shape {tuple(source.shape)}."
                    )
                tensor.copy_(source.to(dtype=tensor.dtype))

    def weights_snapshot(self) -> dict[str, torch.Tensor]:
        """A copy of the ``state_dict`` that stays on the module's device (no host copy)."""
        return {k: v.detach().clone() for k, v in self.trainer.module.state_dict().items()}

    def restore_weights_snapshot(self, snapshot: dict[str, torch.Tensor]) -> None:
        """Load a copy made by :meth:`weights_snapshot` back into the module."""
        if sharded.is_sharded(self.trainer.module) and not any(
            type(v).__name__ == "DTensor" for v in snapshot.values()
        ):
            sharded.set_full_state_dict(self.trainer.module, snapshot)  # gathered whole into a checkpoint
            return
        self.trainer.module.load_state_dict(snapshot)

    def save(self, filepath: str | os.PathLike, overwrite: bool = True, **kwargs: Any) -> None:
        """Write the full training checkpoint (module, optimizer, epoch, step, RNG) to ``filepath``.

        The file is on disk when the call returns, inside a hook too, as in Keras: the next
        line (or the next hook) may copy, upload or load it. Inside ``fit`` it holds the state
        of that moment. Only once TerminateOnNaN has seen a NaN or infinite loss is the write
        skipped, so that NaN weights never replace a good file. (torchcb's own ModelCheckpoint
        and BackupAndRestore write in the background instead, once the round of hooks has
        ended; a load of their files waits for the pending write.)
        """
        _check_overwrite(filepath, overwrite)
        self.trainer.save_checkpoint(filepath)

    def save_weights(self, filepath: str | os.PathLike, overwrite: bool = True, **kwargs: Any) -> None:
        """Write the module's ``state_dict`` to ``filepath`` with an atomic ``torch.save``.

        The file is on disk when the call returns (see :meth:`save`).
        """
        _check_overwrite(filepath, overwrite)
        self.trainer.save_weights(filepath)

    def load_weights(self, filepath: str | os.PathLike, **kwargs: Any) -> None:
        """Load module weights from a weights file or a full checkpoint (safely: no code runs).

        A write of ``filepath`` still pending in the background (ModelCheckpoint's) is waited for first.
        """
        self.trainer.load_weights(filepath)

    def fit(self, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.fit``, as Keras code calls ``model.fit`` (learning-rate finders do)."""
        return self.trainer.fit(*args, **kwargs)

    def predict(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.predict``, returning numpy arrays as Keras' ``model.predict`` does."""
        return tree_map(
            lambda t: _to_numpy(t) if isinstance(t, torch.Tensor) else t, self.trainer.predict(x, *args, **kwargs)
        )

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        return self.trainer.evaluate(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.trainer.module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # only for names the facade itself does not have
        if (name.startswith("__") and name.endswith("__")) or "trainer" not in self.__dict__:
            raise AttributeError(name)
        module = self.trainer.module
        try:
            return getattr(module, name)
        except AttributeError:
            if name == "iterations":  # Keras users read the step count from the model too
                return self.optimizer.iterations
        raise AttributeError(
            f"'KerasModel' (the model facade self.model) has no attribute {name!r}, and the module it "
            f"wraps ({type(module).__name__}) has none either."
        )

    def __setattr__(self, name: str, value: Any) -> None:
        trainer = self.__dict__.get("trainer")
        if trainer is not None and name not in self.__dict__ and not hasattr(type(self), name):
            if hasattr(trainer.module, name):  # the module's attribute, as forward reads it
                setattr(trainer.module, name, value)
                return
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return f"KerasModel({type(self.trainer.module).__name__})"


def _check_overwrite(filepath: str | os.PathLike, overwrite: bool) -> None:
    if not overwrite:
        wait_for_pending_write(filepath)  # a file still being written exists for this check
    if not overwrite and os.path.exists(filepath):
        raise FileExistsError(f"{os.fspath(filepath)!r} exists and overwrite=False.")
