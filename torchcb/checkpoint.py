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
``format_version``  ``2`` (version 1 files, without the last three keys, load too)
``module``          the module's ``state_dict``
``optimizer``       the optimizer's ``state_dict`` (every param group field: ``lr``,
                    ``momentum``, ``betas``, a scheduler's ``initial_lr`` ...)
``decay``           Keras 2's time-based decay (``model.optimizer.decay``), which torch's
                    optimizer does not hold
``epoch``           the epoch to resume at (epochs completed)
``batch``           batches of that epoch already done (0 at an epoch's end)
``step``            optimizer steps taken (``model.optimizer.iterations``)
``rng``             ``python``, ``numpy``, ``torch`` and ``cuda`` random states
``epoch_rng``       the random states at the start of the epoch (when ``batch`` > 0), to
                    rebuild its batch order
``callbacks``       each stateful callback's ``get_state()``, keyed by class name
                    (``EarlyStopping``, ``EarlyStopping_1`` for a second one ...): the
                    running ``fit``'s callbacks, or after it the last ``fit``'s (a
                    ``TorchScheduler``'s scheduler state, ReduceLROnPlateau's wait ...)
``scaler``          the ``GradScaler`` state, when training uses one
``stop_training``   whether training had been asked to stop: a resumed run stops too
``accumulation``    with ``accumulate_steps`` > 1, mid-group: ``count`` batches whose
                    gradients are pending, and those gradients (``grads``, one per parameter)
``metrics``         each stateful metric's accumulated state (torchmetrics' metric states,
                    or the object's ``state_dict``), by metric name
``ema``             with ``use_ema``: the weight average (``updates``, ``swapped``, and the
                    ``average`` tensors by ``state_dict`` name; see ``torchcb.ema``)
==================  =====================================================================

Loads check before they change anything: a file that is not a checkpoint, is truncated, or
does not fit the module or the optimizer raises :class:`CheckpointError` naming the file,
and the module and optimizer are left as they were. A write that fills the disk raises
``OSError(ENOSPC)`` naming the file; the previous file stays whole.

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
import errno
import functools
import io
import os
import pickle
import random
import secrets
import tempfile
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch

from torchcb import distributed
from torchcb.tree import tree_leaves, tree_map

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
    "BackgroundWriter",
    "CheckpointError",
    "Checkpointing",
    "TrainingState",
    "atomic_save",
    "atomic_write",
    "load_module_state",
    "tensor_bytes",
    "to_host",
    "serialized",
    "wait_for_pending_write",
    "write_checkpoint",
    "safe_load",
    "rng_state",
    "set_rng_state",
    "check_writable",
    "keep_previous_file",
]

FORMAT = "torchcb.checkpoint"
FORMAT_VERSION = 2


class CheckpointError(ValueError):
    """A file that cannot be loaded: not a torch file, truncated, refused, or not fitting the trainer.

    Nothing in the trainer has changed when it is raised.
    """


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


class _RememberedWrites:
    """A file that remembers the OSError of a failed write: torch.save reports one as its own RuntimeError."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` with ``write(file)`` so that a crash leaves the old file or the new one.

    A temporary file in the target's directory is written, flushed and fsynced, then
    ``os.replace``d over the target and the directory fsynced; the temporary file is
    removed if anything fails. A full disk raises ``OSError(ENOSPC)`` naming ``path``.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    _remove_stale_temporaries(directory, os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    file = None
    try:
        with os.fdopen(fd, "wb") as f:
            file = _RememberedWrites(f)
            write(file)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        cause = file.error if file is not None and file.error is not None else error
        if isinstance(cause, OSError) and cause.errno in _DISK_FULL:
            raise OSError(
                cause.errno,
                f"No space left on the device to write {path!r} (the disk is full); the previous file is intact",
            ) from error
        raise
    _fsync_directory(directory)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _plain_leaf(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0:
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    return value


def plain(value: Any) -> Any:
    """``value`` with numpy scalars and 0-d arrays made Python numbers: what ``weights_only`` loads take."""
    return tree_map(_plain_leaf, value)


def to_host(value: Any) -> Any:
    """A copy of ``value`` with every tensor copied to host memory: training may change the originals."""
    return tree_map(lambda v: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v, value)


def tensor_bytes(value: Any) -> int:
    """How many bytes the tensors in a nest of dicts, lists and tuples hold."""
    return sum(t.numel() * t.element_size() for t in tree_leaves(value) if isinstance(t, torch.Tensor))


def serialized(state: Any) -> bytes:
    """The bytes ``torch.save`` writes for ``state``: taken now, written to disk later."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def keep_previous_file(path: str | os.PathLike, previous: str | os.PathLike) -> None:
    """Keep the file at ``path`` whole under the name ``previous`` (replacing it), before ``path`` is rewritten.

    A hard link takes the file's name, then ``os.replace`` puts it over ``previous``: no byte
    is copied, and the file stays whole (torchcb never writes into an existing file, it
    replaces it). Where the file system has no hard links, the file is copied atomically.
    Nothing happens when ``path`` does not exist.
    """
    path, previous = os.fspath(path), os.fspath(previous)
    if not os.path.exists(path):
        return
    directory, name = os.path.split(os.path.abspath(previous))
    _remove_stale_temporaries(directory, name)
    link = os.path.join(directory, f".{name}.{secrets.token_hex(8)}.tmp")  # a name the next write cleans up
    try:
        os.link(path, link)
        os.replace(link, previous)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(link)
        with open(path, "rb") as f:
            data = f.read()
        atomic_write(previous, lambda out: out.write(data))


def write_checkpoint(path: str, state: Any, keep_previous: str | None = None) -> None:
    """``atomic_save`` ``state`` (or write its :func:`serialized` bytes) to ``path``; with
    ``keep_previous``, first keep the file it replaces under that name (:func:`keep_previous_file`)."""
    if keep_previous is not None:
        keep_previous_file(path, keep_previous)
    if isinstance(state, bytes):
        atomic_write(path, lambda out: out.write(state))
    else:
        atomic_save(state, path)


_WRITERS: weakref.WeakSet[BackgroundWriter] = weakref.WeakSet()  # every live writer, for loads to wait on


def wait_for_pending_write(path: str | os.PathLike) -> None:
    """Return once no :class:`BackgroundWriter` has a write of ``path`` queued or in progress.

    Every torchcb load of a file calls it first, so a file that ModelCheckpoint or
    BackupAndRestore is still writing is read once it is whole, never a version behind.
    """
    target = os.path.abspath(os.fspath(path))
    for writer in list(_WRITERS):
        writer.wait_for(target)


class BackgroundWriter:
    """Writes checkpoint files on a thread of its own, so training goes on while they are written.

    ``submit(target, write)`` queues ``write()``, which writes ``target`` (atomically: see
    :func:`atomic_write`). Files are written one at a time, in order. A newer write of a
    target still waiting in the queue replaces the waiting one, unless either asks to be
    kept (``replaceable=False``); and ``submit`` waits while ``max_queued`` writes wait, so
    few snapshots are held in memory. ``wait()`` returns once every submitted write is on
    disk, ``wait_for(target)`` once the writes of that file are. A write that fails is
    reported by the next ``submit``, ``check`` or ``wait``. The thread starts with the first
    write and waits, idle, for the next one until ``wait()`` (``fit`` ends with it): starting
    a thread for each checkpoint would cost more than writing it.

    Example:
        >>> import os, tempfile, torch
        >>> writer = BackgroundWriter()
        >>> path = os.path.join(tempfile.mkdtemp(), "w.pt")
        >>> writer.submit(path, lambda: atomic_save({"w": torch.ones(1)}, path))
        >>> writer.wait()
        >>> safe_load(path)["w"]
        tensor([1.])
    """

    def __init__(self, max_queued: int = 2) -> None:
        self.max_queued = max_queued
        self.error: BaseException | None = None  # the first failed write not reported yet
        self._condition = threading.Condition()
        self._queue: list[tuple[str, Callable[[], None], bool]] = []  # (target, write, replaceable), in order
        self._writing: str | None = None  # the target being written now
        self._thread: threading.Thread | None = None
        self._closing = False  # wait() asks the thread to leave once the queue is empty
        _WRITERS.add(self)

    def submit(self, target: str, write: Callable[[], None], replaceable: bool = True) -> None:
        self.check()
        target = os.path.abspath(target)
        with self._condition:
            while True:
                waiting = next(
                    (i for i, (t, _, r) in enumerate(self._queue) if t == target and r and replaceable), None
                )
                if waiting is not None:
                    self._queue[waiting] = (target, write, replaceable)  # the newer snapshot replaces it
                    break
                if len(self._queue) < self.max_queued:
                    self._queue.append((target, write, replaceable))
                    break
                self._condition.wait()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="torchcb-checkpoint-writer", daemon=True)
                self._thread.start()
            self._condition.notify_all()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._queue and not self._closing:
                    self._condition.wait()
                if not self._queue:
                    self._thread = None
                    self._condition.notify_all()
                    return
                self._writing, write, _ = self._queue.pop(0)
                self._condition.notify_all()  # a submit waiting for room may go on
            try:
                write()
            except BaseException as error:  # reported in the training thread
                with self._condition:
                    if self.error is None:
                        self.error = error
            finally:
                with self._condition:
                    self._writing = None
                    self._condition.notify_all()  # a load waiting for this file may go on

    def wait_for(self, target: str) -> None:
        """Return once no write of ``target`` is queued or in progress (a failure is reported by ``check``)."""
        target = os.path.abspath(target)
        if threading.current_thread() is self._thread:
            return  # a write that reads its own target does not wait for itself
        with self._condition:
            while self._writing == target or any(t == target for t, _, _ in self._queue):
                self._condition.wait()

    def check(self) -> None:
        """Raise the error of a write that failed since the last check, if any."""
        if self.error is not None:
            with self._condition:
                error, self.error = self.error, None
            if error is not None:
                raise error

    def wait(self) -> None:
        """Return once every submitted write is on disk; raise the error of one that failed."""
        with self._condition:
            thread, self._closing = self._thread, True
            self._condition.notify_all()
            while self._thread is not None:  # it leaves once the queue is empty
                self._condition.wait()
            self._closing = False
        if thread is not None:
            thread.join()
        self.check()


def safe_load(path: str | os.PathLike | io.BytesIO, map_location: Any = "cpu", source: str | None = None) -> Any:
    """Load a file written by :func:`atomic_save` (or its bytes), refusing anything that would run code.

    A write of the file still pending in the background (ModelCheckpoint, BackupAndRestore)
    is waited for first. A missing file raises ``FileNotFoundError``; anything else that stops the load raises
    :class:`CheckpointError` naming the file (``source``, for bytes).
    """
    name = source if source is not None else os.fspath(path)  # type: ignore[arg-type]
    if not isinstance(path, io.BytesIO):
        wait_for_pending_write(name)  # a file still being written in the background is read once whole
    try:
        return torch.load(path if isinstance(path, io.BytesIO) else name, map_location=map_location, weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except pickle.UnpicklingError as error:
        # an object whose loading runs code ("Unsupported class" is torch < 2.4's wording)
        if "GLOBAL" in str(error) or "global" in str(error) or "Unsupported class" in str(error):
            raise CheckpointError(
                f"Refusing to load {name!r}: it is not a checkpoint of plain tensors and "
                f"containers (torch.load with weights_only=True rejected it: {error})."
            ) from error
        raise CheckpointError(_not_a_checkpoint(name, error)) from error
    except Exception as error:  # torch reports a torn or foreign file in many ways
        raise CheckpointError(_not_a_checkpoint(name, error)) from error


def _not_a_checkpoint(name: str, error: BaseException) -> str:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else "the file ends too early"
    return f"{name!r} is not a torchcb or torch checkpoint, or it is truncated ({type(error).__name__}: {reason})."


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


def check_module_state(module: torch.nn.Module, state: Any, source: str) -> None:
    """Raise :class:`CheckpointError` unless ``state`` loads into ``module`` (same keys and shapes)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{source!r} holds no module state_dict (found a {type(state).__name__}).")
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{key}: {tuple(state[key].shape)} in the file, {tuple(value.shape)} in the module"
        for key, value in own.items()
        if key in state
        and isinstance(value, torch.Tensor)
        and isinstance(state[key], torch.Tensor)
        and state[key].shape != value.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if mismatched:
        problems.append("shapes differ: " + "; ".join(mismatched))
    if problems:
        raise CheckpointError(f"{source!r} does not fit the module ({', '.join(problems)}); nothing was loaded.")


def check_optimizer_state(optimizer: torch.optim.Optimizer, state: Any, source: str) -> None:
    """Raise :class:`CheckpointError` unless ``state`` loads into ``optimizer`` (the same param groups)."""
    groups = state.get("param_groups") if isinstance(state, dict) else None
    if not isinstance(groups, list) or not isinstance(state.get("state"), dict):
        raise CheckpointError(f"{source!r} holds no optimizer state_dict; nothing was loaded.")
    own = [len(group["params"]) for group in optimizer.param_groups]
    saved = [len(group.get("params", [])) for group in groups]
    if own != saved:
        raise CheckpointError(
            f"{source!r} does not fit the optimizer: its param groups hold {saved} parameters, the "
            f"optimizer's hold {own}; nothing was loaded."
        )


@dataclasses.dataclass
class TrainingState:
    """Everything a full checkpoint holds; the fields are the keys of the format above.

    :meth:`capture` takes the state of a trainer at a save point; :meth:`as_dict` is the
    file's content and :meth:`load` reads a file back (checked: a torchcb checkpoint of a
    version this torchcb reads). :meth:`restore` checks that it fits the trainer, then puts
    the module, optimizer, GradScaler and counters back; :meth:`resume` gives the next
    ``fit`` the rest (callback and metric states, pending gradients, the stop flag) and says
    where that ``fit`` starts.

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
    stop_training: bool = False
    decay: float | None = None  # None in files written before it was saved: the trainer's is kept
    accumulation: dict[str, Any] | None = None
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    ema: dict[str, Any] | None = None

    @classmethod
    def capture(cls, trainer: Trainer, all_ranks: bool = False) -> TrainingState:
        """The trainer's state now, with the state of every callback of the running ``fit``.

        Outside ``fit`` the callbacks are those of the last ``fit``, so a checkpoint saved
        after ``fit`` returns (``fit(epochs=k)``, then ``model.save``) resumes their state
        too: a torch LR scheduler's position, ReduceLROnPlateau's wait, EarlyStopping's best.

        Under torchrun, ``all_ranks=True`` (every rank capturing at the same point, as
        BackupAndRestore does) makes the epoch sums and the metric states those of all
        ranks; otherwise they are this rank's.
        """
        callbacks = trainer.callback_list if trainer.callback_list is not None else trainer.last_callback_list
        all_ranks = all_ranks and distributed.get_world_size() > 1
        metrics = {}
        for metric in trainer.metric_objects:
            state = metric.get_state(all_ranks) if metric.stateful else None  # type: ignore[attr-defined]
            if state is not None:
                metrics[metric.name] = state
        return cls(
            module=trainer.module.state_dict(),
            optimizer=trainer.optimizer.state_dict(),
            epoch=trainer.epochs_completed,
            batch=trainer.batches_done,
            step=trainer.optimizer_steps,
            rng=rng_state(),
            epoch_rng=trainer.epoch_start_rng if trainer.batches_done else None,
            scaler=None if trainer.scaler is None else trainer.scaler.state_dict(),
            callbacks={} if callbacks is None else plain(callbacks.states(all_ranks)),
            stop_training=bool(trainer.model.stop_training),
            decay=float(trainer.time_decay),
            accumulation=trainer.pending_gradients(),
            metrics=metrics,
            ema=None if trainer.weight_average is None else trainer.weight_average.state_dict(),
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
            "stop_training": self.stop_training,
            "metrics": self.metrics,
        }
        if self.decay is not None:
            state["decay"] = self.decay
        if self.epoch_rng is not None:
            state["epoch_rng"] = self.epoch_rng
        if self.scaler is not None:
            state["scaler"] = self.scaler
        if self.accumulation is not None:
            state["accumulation"] = self.accumulation
        if self.ema is not None:
            state["ema"] = self.ema
        return state

    def save(self, path: str | os.PathLike) -> None:
        """Write the checkpoint to ``path`` atomically."""
        atomic_save(self.as_dict(), path)

    @classmethod
    def load(
        cls, path: str | os.PathLike | io.BytesIO, map_location: Any = "cpu", source: str | None = None
    ) -> TrainingState:
        """Read a full checkpoint (a file, or its bytes from ``source``); :class:`CheckpointError` if it is not one."""
        data = safe_load(path, map_location=map_location, source=source)
        name = source if source is not None else os.fspath(path)  # type: ignore[arg-type]
        if not (isinstance(data, dict) and data.get("format") == FORMAT):
            raise CheckpointError(f"{name!r} is not a full torchcb checkpoint (written by model.save).")
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise CheckpointError(
                f"{name!r} has format version {data['format_version']}; this torchcb reads up to {FORMAT_VERSION}."
            )
        try:
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
                stop_training=bool(data.get("stop_training", False)),
                decay=_decay(data.get("decay")),
                accumulation=data.get("accumulation"),
                metrics=data.get("metrics", {}),
                ema=data.get("ema"),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(
                f"{name!r} is a torchcb checkpoint with a missing or bad entry ({error!r})."
            ) from None

    def restore(self, trainer: Trainer, source: str = "the checkpoint") -> None:
        """Check that the state fits ``trainer``, then put the module, optimizer (every param group
        field, and Keras 2's ``decay``), GradScaler and counters back.

        Raises :class:`CheckpointError` with nothing changed when it does not fit.
        """
        check_module_state(trainer.module, self.module, source)
        check_optimizer_state(trainer.optimizer, self.optimizer, source)
        average = trainer.weight_average
        if average is not None and self.ema is not None:
            average.check_state(self.ema, source)
        trainer.module.load_state_dict(self.module)
        trainer.optimizer.load_state_dict(self.optimizer)
        if average is not None and self.ema is not None:  # after the module: a state saved mid-swap is swapped back
            average.load_state_dict(self.ema)
        elif average is not None:
            average.reset()  # a checkpoint without an average: it starts again from these weights
        if trainer.scaler is not None and self.scaler is not None:
            trainer.scaler.load_state_dict(self.scaler)
        if self.decay is not None:
            trainer.set_time_decay(self.decay)
        trainer.epochs_completed = self.epoch
        trainer.optimizer_steps = self.step

    def resume(self, trainer: Trainer, callbacks: CallbackList) -> tuple[int, int]:
        """Give the starting ``fit`` what it resumes with; returns ``(epoch, batches of it already done)``.

        The callbacks' and metrics' states, the gradients of an unfinished accumulation
        group and the stop flag. Under torchrun, states summed over ranks (the epoch sums,
        metric states) go to rank 0 and the other ranks start theirs empty, so that the next
        reduction counts every sample once.
        """
        callbacks.restore_states(self.callbacks)
        for metric in trainer.metric_objects:
            if metric.stateful and metric.name in self.metrics:
                if distributed.is_main_process():
                    metric.set_state(self.metrics[metric.name])  # type: ignore[attr-defined]
                else:
                    metric.reset()  # type: ignore[attr-defined]
        trainer.restore_pending_gradients(self.accumulation)
        trainer.model.stop_training = self.stop_training
        return self.epoch, self.batch


def _decay(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"decay must be a number >= 0, got {value!r}")
    return float(value)


def load_module_state(path: str | os.PathLike, module: torch.nn.Module, map_location: Any = "cpu") -> dict[str, Any]:
    """The module ``state_dict`` in a weights file (``save_weights``) or a full checkpoint, checked to fit ``module``."""
    state = safe_load(path, map_location=map_location)
    if isinstance(state, dict) and state.get("format") == FORMAT:
        state = state["module"]
    check_module_state(module, state, os.fspath(path))
    return state


class Checkpointing:
    """Saving and loading a trainer's checkpoints; :class:`torchcb.Trainer` inherits it.

    A save a user asks for (``model.save``, ``model.save_weights``, :meth:`save_checkpoint`)
    is on disk when the call returns, inside ``fit`` too, as in Keras. torchcb's own
    ModelCheckpoint and BackupAndRestore save with ``background=True``: their state is taken
    when the current round of hooks has finished (or when a callback in it raised) and
    written by the trainer's :class:`BackgroundWriter` while training goes on; every load of
    a file waits for its pending write. A loaded checkpoint is restored at once into the
    module and optimizer and applied to the next ``fit`` through :meth:`resume_point`. It
    reads the trainer's ``module``, ``optimizer``, ``device``, ``distributed``,
    ``callback_list``, ``writer``, ``serialize_at_once_below`` and counters.
    """

    module: torch.nn.Module
    device: torch.device
    distributed: bool
    sharding: Any  # torchcb.sharded.FSDP, whose methods write and read the sharded format; or None
    callback_list: CallbackList | None
    writer: BackgroundWriter
    serialize_at_once_below: int
    epochs_completed: int
    _pending_resume: TrainingState | None
    _resume: TrainingState | None

    def defer(self, action: Any) -> None:
        """Run ``action()`` once the current round of hooks has finished (at once outside ``fit``).

        Background saves use it, so they hold the state of every callback after it has seen
        the epoch or batch, whatever the callback order. If a callback of the round raises,
        the action runs before the exception leaves the round.
        """
        if self.callback_list is None:
            action()
        else:
            self.callback_list.defer(action)

    def save_checkpoint(
        self,
        path: str | os.PathLike,
        *,
        all_ranks: bool = False,
        keep_previous: str | os.PathLike | None = None,
        background: bool = False,
    ) -> None:
        """Write the full training state to ``path`` (``model.save``); under torchrun rank 0 writes.

        By default the file is on disk when the call returns, also inside ``fit`` (the state
        is the one of that moment). With ``background=True`` (ModelCheckpoint's and
        BackupAndRestore's saves) and inside ``fit``, the state is taken when the current
        round of hooks has finished (so it holds every callback's state for that batch or
        epoch) and written by a background thread while training goes on; ``fit`` returns
        once it is on disk. A state under ``serialize_at_once_below`` bytes of tensors (1 MiB)
        is serialized at once, a larger one copied to host memory and serialized by that
        thread. Either way, the pending checks of ``before_checkpoint`` (TerminateOnNaN's) run
        first, and a write is skipped once they refuse it.

        Args:
            path: the file.
            all_ranks: every rank calls this at the same point (BackupAndRestore does), so the
                epoch sums and metric states of all ranks are saved.
            keep_previous: keep the file being replaced under this name first (BackupAndRestore's
                previous backup).
            background: write in the background, after the round of hooks (see above).

        Under torchrun inside ``fit`` every rank calls it at the same point (as every callback
        hook runs on every rank), so the saved epoch sums and metric states are those of all
        ranks. With ``strategy="fsdp"`` the checkpoint is a sharded directory that every rank
        writes (see ``torchcb.sharded``).
        """
        if getattr(self, "sharding", None) is not None:
            self.sharding.save_checkpoint(
                self, path, keep_previous=None if keep_previous is None else os.fspath(keep_previous)
            )
            return
        all_ranks = all_ranks or (self.distributed and self.callback_list is not None)
        if distributed.is_main_process():
            check_writable(path, "checkpoint path")
        elif not all_ranks:
            return  # rank 0 writes; every rank holds the same weights
        previous = None if keep_previous is None else os.fspath(keep_previous)
        self._save(path, lambda: TrainingState.capture(self, all_ranks).as_dict(), all_ranks, previous, background)

    def save_weights(self, path: str | os.PathLike, *, background: bool = False) -> None:
        """Write the module's ``state_dict`` to ``path`` (``model.save_weights``), as :meth:`save_checkpoint` writes.

        Under FSDP every rank calls it: the full tensors are gathered to rank 0, which writes one plain file.
        """
        if getattr(self, "sharding", None) is not None:
            self._save(path, lambda: self.sharding.full_state_dict(self.module), False, None, False)
            return
        if distributed.is_main_process():
            self._save(path, self.module.state_dict, False, None, background)

    def _save(
        self, path: str | os.PathLike, capture: Any, all_ranks: bool, keep_previous: str | None, background: bool
    ) -> None:
        path = os.fspath(path)

        def save() -> None:
            callbacks = self.callback_list
            allowed = callbacks is None or callbacks.checkpoint_allowed()
            if all_ranks and self.distributed:
                allowed = not distributed.any_rank(not allowed)  # a NaN seen on any rank stops every write
            if not allowed:
                return
            state = capture()
            if not distributed.is_main_process():
                return
            if callbacks is None or not background:  # written now, after a pending write of the same file
                wait_for_pending_write(path)
                write_checkpoint(path, state, keep_previous)
                return
            # Inside fit the file is written (and fsynced) by the writer thread while training
            # goes on. A small state is serialized here, which costs less than a copy; a large
            # one is copied to host memory and serialized there too.
            if tensor_bytes(state) < self.serialize_at_once_below:
                data = serialized(state)
            else:
                data = to_host(state)
            self.writer.submit(path, functools.partial(write_checkpoint, path, data, keep_previous))

        if background:
            self.defer(save)
        else:
            save()

    def wait_for_writes(self) -> None:
        """Return once every checkpoint submitted during ``fit`` is on disk (``fit`` ends with it)."""
        self.writer.wait()

    def load_checkpoint(self, path: str | os.PathLike) -> int:
        """Restore a full checkpoint (``model.save``, ``ModelCheckpoint``, ``BackupAndRestore``).

        The module, the optimizer (and GradScaler) are restored at once; the next ``fit``
        then resumes exactly where the checkpoint was written: at its epoch, mid-epoch at
        its batch in the same batch order, with the random state and the state of every
        callback of the same kind restored. Returns the epoch the next ``fit`` starts at.

        Example:
            >>> # trainer.model.save("ckpt/last.pt") in one run, then in the next:
            >>> # trainer.load_checkpoint("ckpt/last.pt"); trainer.fit(x, y, epochs=10, callbacks=[...])
        """
        if getattr(self, "sharding", None) is not None and self.sharding.is_checkpoint_dir(path):
            self._pending_resume = self.sharding.load_checkpoint(self, path)
            return self.epochs_completed
        return self.restore_state(TrainingState.load(path, map_location=self.device), source=os.fspath(path))

    def restore_state(self, state: TrainingState, source: str = "the checkpoint") -> int:
        """What :meth:`load_checkpoint` does, for a state already read (``source`` names it in errors)."""
        state.restore(self, source=source)
        self._pending_resume = state
        return self.epochs_completed

    def resume_point(self, callbacks: CallbackList, initial_epoch: int, epochs: int) -> tuple[int, int]:
        """Apply a pending checkpoint to the starting ``fit``; returns ``(epoch, batches to skip)``."""
        state, self._pending_resume = self._pending_resume, None
        self._resume = state
        if state is None:
            return initial_epoch, 0
        epoch, skip = state.resume(self, callbacks)
        if state.stop_training and not skip:
            return epochs, 0  # the run had been asked to stop at that epoch's end: no epoch is left
        return epoch, skip

    def resume_epoch(self, callbacks: CallbackList) -> None:
        """Once ``on_epoch_begin`` has opened an epoch resumed mid-way, put back the state it held then.

        That hook ran for this epoch before the interruption too, and the checkpoint holds
        what followed: the epoch's sums (BaseLogger), the progress bar's count, and a rate a
        LearningRateScheduler set. Running it again must change none of them.
        """
        state = self._resume
        if state is None:
            return
        state.restore(self)
        callbacks.restore_states(state.callbacks)

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load module weights from ``save_weights`` output or from a full checkpoint (checked first)."""
        sharding = getattr(self, "sharding", None)  # with strategy="fsdp": a directory, or a file every rank reads
        if sharding is not None and sharding.is_checkpoint_dir(path):
            sharding.load_weights(self.module, path)
            return
        if sharding is not None:
            sharding.set_full_state_dict(self.module, load_module_state(path, self.module, map_location="cpu"))
            return
        self.module.load_state_dict(load_module_state(path, self.module, map_location=self.device))
