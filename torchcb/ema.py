"""Weight averaging: an exponential moving average (EMA) of the module's weights, as Keras' ``use_ema``.

``Trainer(..., use_ema=True, ema_momentum=0.99, ema_overwrite_frequency=None)`` keeps, beside
the module's weights, their moving average, updated after every optimizer step::

    average = ema_momentum * average + (1 - ema_momentum) * weights

The first step copies the weights (Keras' momentum is 0 at its first step), so the average
starts at the weights rather than at zero. With ``ema_overwrite_frequency=N`` the module's
weights are replaced by the average every N optimizer steps; otherwise the average is kept
beside them, and when ``fit`` ends (after at least one epoch was asked for) the module's
weights are replaced by it, as Keras' ``fit`` does (``finalize_variable_values``).
``torchcb.callbacks.SwapEMAWeights`` evaluates on the average during training.

What is averaged: every parameter, and every floating-point buffer of the ``state_dict``
(BatchNorm's running mean and variance), as ``torch.optim.swa_utils.AveragedModel(...,
use_buffers=True)`` does, so the statistics used with the averaged weights are averaged with
them. Integer buffers (``num_batches_tracked``) and non-persistent buffers are the module's own.
Under torchrun each rank updates its buffers from its own batches, so their averages drift
apart; wherever the average is used (a swap, an overwrite, the end of ``fit``) every rank
takes rank 0's buffer averages first, so every rank evaluates and ends with the same average.

The update is one fused ``torch._foreach_lerp_`` per optimizer step, run by an
``optimizer.register_step_post_hook`` (so a ``train_step`` of your own that calls
``optimizer.step()`` updates it too, and a step a GradScaler skips does not): no Python loop
over the parameters and no read back to the host. Under DistributedDataParallel every rank
averages the same synchronised weights; the average tensors are made from the parameters
themselves (``clone``), so sharded parameters (FSDP) give sharded averages, which the fused
ops update shard by shard and a sharded checkpoint saves sharded. The average is part of a
full checkpoint and resumes bitwise.

Example:
    >>> import torch
    >>> from torchcb import Trainer
    >>> net = torch.nn.Linear(2, 1)
    >>> trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", device="cpu",
    ...                   use_ema=True, ema_momentum=0.9)
    >>> _ = trainer.fit(torch.ones(8, 2), torch.zeros(8, 1), batch_size=4, epochs=1, verbose=0)
    >>> trainer.weight_average.updates, sorted(trainer.weight_average.averaged_weights())
    (2, ['bias', 'weight'])
"""

from __future__ import annotations

import numbers
from typing import Any

import torch

from torchcb import distributed
from torchcb._checks import is_int
from torchcb.checkpoint import CheckpointError
from torchcb.state import follow_steps

__all__ = ["WeightAverage", "check_ema_arguments"]

# torch._foreach_* (the fused list operations torch.optim uses) are not among the names torch exports
# pyright: reportPrivateImportUsage=false


def check_ema_arguments(use_ema: Any, ema_momentum: Any, ema_overwrite_frequency: Any) -> None:
    """Raise ``ValueError`` naming the argument unless the three EMA options are valid (Keras' rules)."""
    if not isinstance(use_ema, bool):
        raise ValueError(f"use_ema must be True or False, got {use_ema!r}.")
    if (
        not isinstance(ema_momentum, numbers.Real)
        or isinstance(ema_momentum, bool)
        or not 0.0 <= float(ema_momentum) <= 1.0
    ):
        raise ValueError(f"ema_momentum must be a number in [0, 1], got {ema_momentum!r}.")
    if ema_overwrite_frequency is not None and (not is_int(ema_overwrite_frequency) or ema_overwrite_frequency < 1):
        raise ValueError(f"ema_overwrite_frequency must be an integer >= 1 or None, got {ema_overwrite_frequency!r}.")


def _shard(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded tensor's (DTensor's) local shard, sharing its storage; any other tensor itself.

    The fused ``torch._foreach_*`` ops have no DTensor rule: they run on the shards.
    """
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return tensor
    return tensor.to_local().detach() if isinstance(tensor, DTensor) else tensor


class WeightAverage:
    """The moving average of a module's weights, updated after every step of its optimizer.

    The averaged tensors are made from the module's own (the parameters and floating-point
    persistent buffers, see the module's text) the first time they are needed, so a module
    wrapped after the trainer was built (sharded, compiled) is averaged as it trains.

    Args:
        module: the module whose weights are averaged.
        optimizer: its optimizer; every ``optimizer.step()`` then updates the average.
        momentum: Keras' ``ema_momentum``: the weight of the old average at each update.
        overwrite_frequency: Keras' ``ema_overwrite_frequency``: copy the average into the
            module every this many updates (``None``: never during training).

    Attributes:
        updates: the optimizer steps averaged so far.
        swapped: whether the module holds the average and the averaged slots the raw weights
            (:meth:`swap`, as ``SwapEMAWeights`` does around evaluation).

    Example:
        >>> import torch
        >>> from torchcb.ema import WeightAverage
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
        >>> average = WeightAverage(net, optimizer, momentum=0.5)
        >>> with torch.no_grad():
        ...     _ = net.weight.fill_(2.0)
        >>> for _ in range(2):
        ...     net.weight.grad = torch.ones(1, 1)
        ...     optimizer.step()   # weights 1.0 then 0.0
        >>> average.averaged_weights()["weight"].item()   # 1.0 (the first step), then 0.5 * 1 + 0.5 * 0
        0.5
    """

    def __init__(
        self,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        momentum: float = 0.99,
        overwrite_frequency: int | None = None,
    ) -> None:
        check_ema_arguments(True, momentum, overwrite_frequency)
        self.module = module
        self.momentum = float(momentum)
        self.overwrite_frequency = overwrite_frequency
        self.updates = 0
        self.swapped = False
        self._names: list[str] = []
        self._weights: list[torch.Tensor] = []  # the module's tensors, updated in place by training
        self._averages: list[torch.Tensor] = []  # their averages (the raw weights while swapped)
        self._local: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])  # both, this rank's shards
        self._first_buffer = 0  # where the buffers start in those lists (the parameters come first)
        self._hook = follow_steps(optimizer, self._after_step)

    # ----------------------------------------------------------------- the tensors

    def _tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(the module's averaged tensors, their averages), made at the first call."""
        if not self._names:
            names: list[str] = []
            weights: list[torch.Tensor] = []
            for name, parameter in self.module.named_parameters():
                names.append(name)
                weights.append(parameter)
            self._first_buffer = len(weights)
            seen = {id(w) for w in weights}
            for prefix, owner in self.module.named_modules():
                for name, buffer in owner.named_buffers(recurse=False):
                    if buffer is None or not buffer.is_floating_point():
                        continue
                    if name in getattr(owner, "_non_persistent_buffers_set", ()):
                        continue
                    if id(buffer) in seen:
                        continue
                    seen.add(id(buffer))
                    names.append(f"{prefix}.{name}" if prefix else name)
                    weights.append(buffer)
            with torch.no_grad():
                self._averages = [w.detach().clone() for w in weights]  # shaped (and sharded) like each weight
            self._names, self._weights = names, weights
            self._local = ([_shard(w) for w in weights], [_shard(a) for a in self._averages])
        return self._weights, self._averages

    def _local_tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """:meth:`_tensors` as this rank's shards (the tensors themselves when not sharded), for the fused ops."""
        self._tensors()
        return self._local

    @property
    def names(self) -> list[str]:
        """The ``state_dict`` names of the averaged tensors, in order."""
        self._tensors()
        return list(self._names)

    def weights(self) -> list[torch.Tensor]:
        """The module's averaged tensors (parameters, then floating-point buffers), live."""
        return list(self._tensors()[0])

    def averages(self) -> list[torch.Tensor]:
        """The averaging slots, live, in the order of :meth:`weights` (the raw weights while :attr:`swapped`)."""
        return list(self._tensors()[1])

    def averaged_weights(self) -> dict[str, torch.Tensor]:
        """The average now (whichever side of a swap holds it), as copies keyed by ``state_dict`` name.

        ``module.load_state_dict(average.averaged_weights(), strict=False)`` puts it into a
        copy of the module.
        """
        weights, averages = self._tensors()
        current = weights if self.swapped else averages
        return {name: t.detach().clone() for name, t in zip(self._names, current)}

    # ----------------------------------------------------------------- training

    def _share_buffer_averages(self) -> None:
        """Under torchrun: every rank takes rank 0's buffer averages (each rank's statistics follow its own data)."""
        distributed.broadcast_tensors(self._local[1][self._first_buffer :])

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.update()

    @torch.no_grad()
    def update(self) -> None:
        """Average the weights of the step just taken in (run after every ``optimizer.step()``)."""
        weights, averages = self._local_tensors()
        if not weights:
            return
        if self.updates == 0:
            torch._foreach_copy_(averages, weights)  # Keras' momentum is 0 at its first step
        else:
            torch._foreach_lerp_(averages, weights, 1.0 - self.momentum)
        self.updates += 1
        if self.overwrite_frequency and self.updates % self.overwrite_frequency == 0:
            self._share_buffer_averages()
            torch._foreach_copy_(weights, averages)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the module's weights and the averaging slots in place (bitwise; no allocation kept)."""
        weights, averages = self._local_tensors()
        if not self.swapped:
            self._share_buffer_averages()
        if weights:
            scratch = [torch.empty_like(w) for w in weights]
            torch._foreach_copy_(scratch, weights)
            torch._foreach_copy_(weights, averages)
            torch._foreach_copy_(averages, scratch)
        self.swapped = not self.swapped

    @torch.no_grad()
    def finalize(self) -> None:
        """Leave the average in the module, in both places (Keras' ``finalize_variable_values``).

        While swapped the module holds it already: it is copied into the slots.
        """
        weights, averages = self._local_tensors()
        if weights:
            if self.swapped:
                torch._foreach_copy_(averages, weights)
            else:
                self._share_buffer_averages()
                torch._foreach_copy_(weights, averages)
        self.swapped = False

    @torch.no_grad()
    def reset(self) -> None:
        """Start again from the module's weights: the next step's weights become the average."""
        weights, averages = self._local_tensors()
        if weights:
            torch._foreach_copy_(averages, weights)
        self.updates, self.swapped = 0, False

    # ----------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """``updates``, ``swapped`` and the slots (``average``, by name): a checkpoint's ``ema`` entry."""
        _, averages = self._tensors()
        return {"updates": self.updates, "swapped": self.swapped, "average": dict(zip(self._names, averages))}

    def check_state(self, state: Any, source: str = "the checkpoint") -> None:
        """Raise :class:`~torchcb.checkpoint.CheckpointError` unless ``state`` fits this module."""
        weights, _ = self._tensors()
        average = state.get("average") if isinstance(state, dict) else None
        if not isinstance(average, dict) or not isinstance(state.get("updates"), int):
            raise CheckpointError(f"{source!r} has a bad weight average entry; nothing was loaded.")
        if list(average) != self._names:
            missing = sorted(set(self._names) - set(average))
            unexpected = sorted(set(average) - set(self._names))
            raise CheckpointError(
                f"{source!r} holds a weight average of other tensors (missing: {missing}, unexpected: "
                f"{unexpected}); nothing was loaded."
            )
        for name, weight in zip(self._names, weights):
            if tuple(average[name].shape) != tuple(weight.shape):
                raise CheckpointError(
                    f"{source!r}: the weight average of {name} has shape {tuple(average[name].shape)}, the "
                    f"module's {tuple(weight.shape)}; nothing was loaded."
                )

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (checked with :meth:`check_state` first).

        A state saved while swapped is swapped back once loaded, after the module's weights:
        training resumes on the raw weights, with the average beside them.
        """
        self.check_state(state)
        _, averages = self._tensors()
        for name, slot in zip(self._names, averages):
            slot.copy_(state["average"][name])
        self.updates = int(state["updates"])
        self.swapped = bool(state.get("swapped", False))
        if self.swapped:
            self.swap()

    def close(self) -> None:
        """Stop following the optimizer's steps."""
        self._hook.remove()

    def __repr__(self) -> str:
        return f"WeightAverage(momentum={self.momentum}, updates={self.updates}, swapped={self.swapped})"
