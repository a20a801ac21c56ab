"""Crash-safe files: atomic, fsynced writes, a background writer, and loads that never run code.

Every file torchcb writes goes to a temporary file in the target's own directory, is
flushed and fsynced, then ``os.replace``d over the target, and the directory is fsynced.
A crash at any moment leaves either the old file or the new one, never a torn one.
Every load uses ``torch.load(..., weights_only=True)``: a checkpoint is data, never code.
A write that fills the disk raises ``OSError(ENOSPC)`` naming the file; the previous file
stays whole. ``torchcb.checkpoint`` builds the checkpoint format on these.

Example:
    >>> import os, tempfile, torch
    >>> from torchcb.files import atomic_save, safe_load
    >>> path = os.path.join(tempfile.mkdtemp(), "weights.pt")
    >>> atomic_save({"w": torch.ones(2)}, path)
    >>> safe_load(path)["w"]
    tensor([1., 1.])
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import pickle
import secrets
import tempfile
import threading
import weakref
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np
import torch

from torchcb.tree import tree_leaves, tree_map

# torch.save imports its serialization config on first use, which takes milliseconds;
# importing it with torchcb keeps that out of a run's first checkpoint.
with contextlib.suppress(ImportError):
    import torch.utils.serialization  # noqa: F401  (torch >= 2.5)

__all__ = [
    "BackgroundWriter",
    "CheckpointError",
    "atomic_save",
    "atomic_write",
    "check_module_state",
    "check_optimizer_state",
    "check_writable",
    "fsync_directory",
    "keep_previous_file",
    "plain",
    "safe_load",
    "serialized",
    "tensor_bytes",
    "to_host",
    "wait_for_pending_write",
    "write_checkpoint",
]


class CheckpointError(ValueError):
    """A file that cannot be loaded: not a torch file, truncated, refused, or not fitting the trainer.

    Nothing in the trainer has changed when it is raised.
    """


def fsync_directory(directory: str) -> None:
    """fsync a directory (or a file), so a rename in it survives a crash; where it cannot be, nothing."""
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


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
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
    fsync_directory(directory)


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
