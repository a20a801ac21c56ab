"""Rank and world helpers, so that callbacks which write files act once per run.

Under ``torchrun`` every process runs the same script; ``is_main_process()`` is true on
rank 0 only, and ``rank_zero_only`` turns a function into a no-op on the other ranks. In a
single process both behave as rank 0 of a world of one.

Example:
    >>> from torchcb.distributed import is_main_process, rank_zero_only
    >>> @rank_zero_only
    ... def report(text):
    ...     return text
    >>> is_main_process(), report("saved")
    (True, 'saved')
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch.distributed as dist

__all__ = ["get_rank", "get_world_size", "is_main_process", "rank_zero_only"]

F = TypeVar("F", bound=Callable[..., Any])


def get_rank() -> int:
    """This process's rank in the default process group, or 0 without one."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """The number of processes in the default process group, or 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process)."""
    return get_rank() == 0


def rank_zero_only(function: F) -> F:
    """Run ``function`` on rank 0 only; other ranks get ``None``."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if is_main_process():
            return function(*args, **kwargs)
        return None

    return wrapper  # type: ignore[return-value]
