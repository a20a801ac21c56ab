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

import os
from typing import Any, Protocol

import numpy as np
import torch

from torchcb import sharded
from torchcb.files import wait_for_pending_write
from torchcb.optimizer_facade import KerasOptimizer, OptimizerOwner, Variable, Weight, _to_numpy
from torchcb.state import FitState
from torchcb.tree import tree_map

__all__ = ["KerasModel", "KerasOptimizer", "Layer", "ModelOwner"]


class ModelOwner(OptimizerOwner, Protocol):
    """What the model facade reads of its trainer (``torchcb.Trainer`` is one)."""

    optimizer: torch.optim.Optimizer
    state: FitState
    metric_objects: list[Any]

    @property
    def metrics_names(self) -> list[str]: ...

    def save_checkpoint(self, path: str | os.PathLike) -> None: ...

    def save_weights(self, path: str | os.PathLike) -> None: ...

    def load_weights(self, path: str | os.PathLike) -> None: ...

    def fit(self, *args: Any, **kwargs: Any) -> Any: ...

    def evaluate(self, *args: Any, **kwargs: Any) -> Any: ...

    def predict(self, *args: Any, **kwargs: Any) -> Any: ...


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

    trainer: ModelOwner
    history: Any
    optimizer: KerasOptimizer
    _keras_metrics: Any
    _initial_epoch: int | None

    def __init__(self, trainer: ModelOwner) -> None:
        # the facade's own attributes, past __setattr__: a module's own `history` or `optimizer` stays as it is
        self.__dict__.update(
            trainer=trainer,
            history=None,
            optimizer=KerasOptimizer(trainer.optimizer, trainer),
            _keras_metrics=None,
            _initial_epoch=None,  # Keras' BackupAndRestore sets it; the next fit starts there
        )

    @property
    def stop_training(self) -> bool:
        return self.trainer.state.stop_training  # the run's stop flag, which the loop reads

    @stop_training.setter
    def stop_training(self, value: bool) -> None:
        self.trainer.state.stop_training = value

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
