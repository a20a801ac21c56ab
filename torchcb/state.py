"""One home for the state of a training run: :class:`FitState`, and the random states it keeps.

The ``Trainer`` owns one ``FitState`` and passes it along: the loop writes the counters,
the step object reads the optimizer step count (Keras 2's time decay), the facade's
``stop_training`` is its stop flag, and a checkpoint (``torchcb.checkpoint``) captures and
restores it. Nothing here imports the trainer, the facade or the callbacks.

Example:
    >>> import torch
    >>> from torchcb.state import FitState
    >>> net = torch.nn.Linear(2, 1)
    >>> optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> state = FitState()
    >>> state.count_steps(optimizer)
    >>> net(torch.ones(1, 2)).sum().backward()
    >>> optimizer.step()
    >>> state.optimizer_steps
    1
"""

from __future__ import annotations

import dataclasses
import random
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["FitState", "rng_state", "set_rng_state"]


@dataclasses.dataclass(eq=False)
class FitState:
    """Where a training run stands; the ``Trainer`` owns it, its parts read and write it.

    Attributes:
        epoch: epochs completed: the epoch the next ``fit`` starts at.
        batch: batches done in the current epoch (0 at an epoch's end).
        optimizer_steps: optimizer steps actually taken (``model.optimizer.iterations``):
            counted by a step hook, so a ``train_step`` of your own that calls
            ``optimizer.step()`` counts, a batch of an unfinished accumulation group does
            not, and a step a GradScaler skips does not.
        train_batches: batches trained, over every ``fit``.
        stop_training: the stop flag (``model.stop_training``).
        logs: the last epoch's logs.
        epoch_start_rng: the random states at the start of the current epoch.
        current_batch: the batch being trained on, for callbacks that trace the module.
        callbacks: the ``CallbackList`` of the running ``fit`` (None outside one).
        last_callbacks: the last ``fit``'s: a checkpoint saved after it holds their state.
        pending_resume: a loaded checkpoint the next ``fit`` resumes from.
        resume: the checkpoint the running ``fit`` resumes from.
    """

    epoch: int = 0
    batch: int = 0
    optimizer_steps: int = 0
    train_batches: int = 0
    stop_training: bool = False
    logs: dict[str, Any] = dataclasses.field(default_factory=dict)
    epoch_start_rng: dict[str, Any] | None = None
    current_batch: Any = None
    callbacks: Any = None
    last_callbacks: Any = None
    pending_resume: Any = None
    resume: Any = None

    def count_steps(self, optimizer: torch.optim.Optimizer) -> None:
        """Count every step ``optimizer`` takes from now on in :attr:`optimizer_steps`."""
        owner = weakref.ref(self)

        def count_step(optimizer: Any, args: Any, kwargs: Any) -> None:  # once per step: one call, no more
            state = owner()
            if state is not None:
                state.optimizer_steps += 1

        _register(optimizer, count_step, owner)


_followers: weakref.WeakKeyDictionary[Any, list[tuple[Any, Any]]] = weakref.WeakKeyDictionary()


def follow_steps(optimizer: torch.optim.Optimizer, method: Callable[..., None]) -> Any:
    """Call the bound ``method(optimizer, args, kwargs)`` after every step of ``optimizer``.

    The hook holds its object weakly: a Trainer dropped while its optimizer lives on (a
    notebook cell run again with the same optimizer) stops counting and averaging its steps,
    and its hooks are removed when the next one is registered. Returns the hook's handle.
    """
    ref = weakref.WeakMethod(method)

    def after_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        bound = ref()
        if bound is not None:
            bound(optimizer, args, kwargs)

    return _register(optimizer, after_step, ref)


def _register(optimizer: torch.optim.Optimizer, hook: Callable[..., None], owner: Any) -> Any:
    """Register ``hook`` after ``optimizer``'s steps, first removing the hooks whose ``owner`` (a weak
    reference) is gone: not from inside a hook, as the optimizer iterates over them while it calls them."""
    followers = _followers.setdefault(optimizer, [])
    for follower in [f for f in followers if f[1]() is None]:
        follower[0].remove()
        followers.remove(follower)
    handle = optimizer.register_step_post_hook(hook)
    followers.append((handle, owner))
    return handle


def rng_state() -> dict[str, Any]:
    """Every random state a training run draws from, as checkpoint-safe values."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        # one tensor, not 625 ints: each Python object costs torch.save a callback
        "python": [version, torch.from_numpy(np.array(internal, dtype=np.int64)), gauss],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the random states saved by :func:`rng_state`."""
    version, internal, gauss = state["python"]
    if isinstance(internal, torch.Tensor):
        internal = internal.tolist()
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": np_state["bit_generator"],
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
