"""Directories written atomically by every rank: the sharded checkpoint's write and its fallback.

:func:`write_directory` fills ``.<name>.<token>.tmp`` beside the target, fsyncs it and renames
it into place (the previous directory is moved to ``.<name>.old`` first and removed last), so a
kill at any moment leaves the previous directory or the new one readable at the target (or,
between the two renames, at ``.<name>.old``, which :func:`readable` falls back to).

Example:
    >>> import os, tempfile
    >>> from torchcb.directories import readable, write_directory
    >>> target = os.path.join(tempfile.mkdtemp(), "ckpt")
    >>> write_directory(target, lambda tmp: open(os.path.join(tmp, "a.txt"), "w").close())
    >>> os.listdir(readable(target))
    ['a.txt']
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable

from torchcb import distributed
from torchcb.files import fsync_directory

__all__ = ["previous", "readable", "write_directory"]


def previous(path: str) -> str:
    """Where :func:`write_directory` moves the directory it replaces until the new one is in place."""
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.old")


def readable(path: str | os.PathLike) -> str | None:
    """``path`` if it is a directory, else the previous copy a kill between two renames left; else None."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        return path
    if not os.path.exists(path) and os.path.isdir(previous(path)):
        return previous(path)  # killed between the two renames of a write: the previous checkpoint
    return None


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def write_directory(path: str | os.PathLike, write: Callable[[str], None], keep_previous: str | None = None) -> None:
    """Every rank calls it: ``write(tmp)`` fills a temporary directory beside ``path``, which then
    replaces ``path`` (see the module's text); ``keep_previous`` keeps the directory it replaces there."""
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.dirname(path), os.path.basename(path)
    token = b""
    if distributed.is_main_process():
        os.makedirs(parent, exist_ok=True)
        if os.path.exists(path) and not os.path.isdir(path):
            raise IsADirectoryError(f"{path!r} is a file; a sharded checkpoint is a directory: pick another path.")
        with os.scandir(parent) as entries:  # what killed writes left
            stale = [e.path for e in entries if e.name.startswith(f".{name}.") and e.name.endswith(".tmp")]
        for leftover in stale:
            _remove(leftover)
        token = uuid.uuid4().hex.encode()
    token = distributed.broadcast_bytes(token if distributed.is_main_process() else None)
    tmp = os.path.join(parent, f".{name}.{token.decode()}.tmp")
    if distributed.is_main_process():
        os.makedirs(tmp)
    distributed.barrier()
    write(tmp)
    distributed.barrier()  # every rank's files are in tmp
    if distributed.is_main_process():
        for entry in os.scandir(tmp):
            fsync_directory(entry.path)
        fsync_directory(tmp)
        old = previous(path)
        if os.path.exists(path):
            _remove(old)  # path is whole: the old copy is stale
            os.rename(path, old)
            fsync_directory(parent)
        os.rename(tmp, path)
        fsync_directory(parent)
        if os.path.exists(old):
            if keep_previous is not None:
                _remove(keep_previous)
                os.rename(old, keep_previous)
                fsync_directory(parent)
            else:
                _remove(old)
    distributed.barrier()
