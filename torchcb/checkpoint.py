"""Crash-safe checkpoint files: atomic, fsynced writes and loads that never run code.

Every file torchcb writes goes to a temporary file in the target's own directory, is
flushed and fsynced, then ``os.replace``d over the target, and the directory is fsynced.
A crash at any moment leaves either the old file or the new one, never a torn one.
Every load uses ``torch.load(..., weights_only=True)``: a checkpoint is data, never code.

Checkpoint format (a dict of tensors, numbers, strings, lists and dicts):

==================  =====================================================================
key                 value
==================  =====================================================================
``format``          ``"torchcb.checkpoint"``
``format_version``  ``1``
``module``          the module's ``state_dict``
``optimizer``       the optimizer's ``state_dict``
``epoch``           the epoch to resume at (epochs completed)
``batch``           batches of that epoch already done (0 at an epoch's end)
``step``            optimizer steps taken (``model.optimizer.iterations``)
``rng``             ``python``, ``numpy``, ``torch`` and ``cuda`` random states
``epoch_rng``       the random states at the start of the epoch (when ``batch`` > 0), to
                    rebuild its batch order
``callbacks``       each stateful callback's ``get_state()``, keyed by class name
                    (``EarlyStopping``, ``EarlyStopping_1`` for a second one ...)
``scaler``          the ``GradScaler`` state, when training uses one
==================  =====================================================================

:class:`TrainingState` is that dict as a type: ``capture`` takes it from a trainer at a save
point, ``load`` reads and checks a file, ``restore`` and ``resume`` give it back.

Example:
    >>> import os, tempfile, torch
    >>> from torchcb.checkpoint import atomic_save, safe_load
    >>> path = os.path.join(tempfile.mkdtemp(), "weights.pt")
    >>> atomic_save({"w": torch.ones(2)}, path)
    >>> safe_load(path)["w"]
    tensor([1., 1.])
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import random
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch

# torch.save imports its serialization config on first use, which takes milliseconds;
# importing it with torchcb keeps that out of a run's first checkpoint.
with contextlib.suppress(ImportError):
    import torch.utils.serialization  # noqa: F401  (torch >= 2.5)

if TYPE_CHECKING:
    from torchcb.callbacks.callback_list import CallbackList
    from torchcb.trainer import Trainer

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "TrainingState",
    "atomic_save",
    "atomic_write",
    "load_module_state",
    "safe_load",
    "rng_state",
    "set_rng_state",
    "check_writable",
]

FORMAT = "torchcb.checkpoint"
FORMAT_VERSION = 1


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale_temporaries(directory: str, name: str) -> None:
    # A process killed mid-write (kill -9) leaves its temporary file: the next write of the
    # same target removes it, so they never accumulate.
    prefix = f".{name}."
    with os.scandir(directory) as entries:
        stale = [
            entry.path
            for entry in entries  # mkstemp's random part has no dot: w.pt.bak's temporaries are not w.pt's
            if entry.name.startswith(prefix) and entry.name.endswith(".tmp") and "." not in entry.name[len(prefix) : -4]
        ]
    for path in stale:
        with contextlib.suppress(OSError):
            os.unlink(path)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` with ``write(file)`` so that a crash leaves the old file or the new one.

    A temporary file in the target's directory is written, flushed and fsynced, then
    ``os.replace``d over the target and the directory fsynced; the temporary file is
    removed if anything fails.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    _remove_stale_temporaries(directory, os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def safe_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a file written by :func:`atomic_save`, refusing anything that would run code."""
    try:
        return torch.load(os.fspath(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"Refusing to load {os.fspath(path)!r}: it is not a checkpoint of plain tensors and "
            f"containers (torch.load with weights_only=True rejected it: {error})."
        ) from error


def check_writable(path: str | os.PathLike, argument: str) -> None:
    """Raise a clear error if the directory that would hold ``path`` cannot be written."""
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    existing = directory
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{argument}: cannot write to {directory!r} (check that the directory is writable).")


def rng_state() -> dict[str, Any]:
    """Every random state a training run draws from, as checkpoint-safe values."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        # one tensor, not 625 ints: each Python object costs torch.save a callback
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
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


@dataclasses.dataclass
class TrainingState:
    """Everything a full checkpoint holds; the fields are the keys of the format above.

    :meth:`capture` takes the state of a trainer at a save point; :meth:`as_dict` is the
    file's content and :meth:`load` reads a file back (checked: a torchcb checkpoint of a
    version this torchcb reads). :meth:`restore` puts the module, optimizer, GradScaler and
    counters back at once; :meth:`resume` gives the callbacks of the next ``fit`` their
    states and says where that ``fit`` starts.

    Example:
        >>> import os, tempfile, torch
        >>> from torchcb import Trainer
        >>> from torchcb.checkpoint import TrainingState
        >>> net = torch.nn.Linear(2, 1)
        >>> trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", device="cpu")
        >>> path = os.path.join(tempfile.mkdtemp(), "state.pt")
        >>> TrainingState.capture(trainer).save(path)
        >>> state = TrainingState.load(path)
        >>> state.epoch, sorted(state.module)
        (0, ['bias', 'weight'])
    """

    module: dict[str, Any]
    optimizer: dict[str, Any]
    epoch: int = 0
    batch: int = 0
    step: int = 0
    rng: dict[str, Any] = dataclasses.field(default_factory=dict)
    epoch_rng: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    callbacks: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def capture(cls, trainer: Trainer) -> TrainingState:
        """The trainer's state now: inside ``fit``, with the state of every callback."""
        callbacks = trainer.callback_list
        return cls(
            module=trainer.module.state_dict(),
            optimizer=trainer.optimizer.state_dict(),
            epoch=trainer.epochs_completed,
            batch=trainer.batches_done,
            step=trainer.optimizer_steps,
            rng=rng_state(),
            epoch_rng=trainer.epoch_start_rng if trainer.batches_done else None,
            scaler=None if trainer.scaler is None else trainer.scaler.state_dict(),
            callbacks={} if callbacks is None else callbacks.states(),
        )

    def as_dict(self) -> dict[str, Any]:
        """The checkpoint file's content."""
        state: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "module": self.module,
            "optimizer": self.optimizer,
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "rng": self.rng,
            "callbacks": self.callbacks,
        }
        if self.epoch_rng is not None:
            state["epoch_rng"] = self.epoch_rng
        if self.scaler is not None:
            state["scaler"] = self.scaler
        return state

    def save(self, path: str | os.PathLike) -> None:
        """Write the checkpoint to ``path`` atomically."""
        atomic_save(self.as_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: Any = "cpu") -> TrainingState:
        """Read a full checkpoint; ``ValueError`` if ``path`` holds something else."""
        data = safe_load(path, map_location=map_location)
        name = os.fspath(path)
        if not (isinstance(data, dict) and data.get("format") == FORMAT):
            raise ValueError(f"{name!r} is not a full torchcb checkpoint (written by model.save).")
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{name!r} has format version {data['format_version']}; this torchcb reads up to {FORMAT_VERSION}."
            )
        return cls(
            module=data["module"],
            optimizer=data["optimizer"],
            epoch=int(data["epoch"]),
            batch=int(data.get("batch", 0)),
            step=int(data["step"]),
            rng=data["rng"],
            epoch_rng=data.get("epoch_rng"),
            scaler=data.get("scaler"),
            callbacks=data.get("callbacks", {}),
        )

    def restore(self, trainer: Trainer) -> None:
        """Put the module, optimizer, GradScaler and counters back into ``trainer``."""
        trainer.module.load_state_dict(self.module)
        trainer.optimizer.load_state_dict(self.optimizer)
        if trainer.scaler is not None and self.scaler is not None:
            trainer.scaler.load_state_dict(self.scaler)
        trainer.epochs_completed = self.epoch
        trainer.optimizer_steps = self.step

    def resume(self, callbacks: CallbackList) -> tuple[int, int]:
        """Give ``callbacks`` their saved states; returns ``(epoch, batches of it already done)``."""
        callbacks.restore_states(self.callbacks)
        return self.epoch, self.batch


def load_module_state(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """The module ``state_dict`` in a weights file (``save_weights``) or a full checkpoint."""
    state = safe_load(path, map_location=map_location)
    if isinstance(state, dict) and state.get("format") == FORMAT:
        state = state["module"]
    if not isinstance(state, dict):
        raise ValueError(f"{os.fspath(path)!r} holds no state_dict.")
    return state
