"""Rank and world helpers, and the few collectives torchcb makes under ``torchrun``.

Under ``torchrun`` every process runs the same script. torchcb initialises the process
group from torchrun's environment (gloo on the CPU, nccl on CUDA), and agrees across ranks
with a handful of small collectives: the epoch sums of the logs (one all-reduce an epoch),
the stop decision (one a ``stop_check_every`` batches, and at epoch ends), and the shuffling
seed (one a ``fit``). Nothing is added to the training step itself.

``is_main_process()`` is true on rank 0 only, and ``rank_zero_only`` turns a function into a
no-op on the other ranks: use them in your own callbacks that write files. In a single
process both behave as rank 0 of a world of one. A ``Trainer`` joins torchrun's group when
it is built; call ``init_from_env()`` to know the ranks before that.

Example:
    >>> from torchcb.distributed import is_main_process, rank_zero_only
    >>> @rank_zero_only
    ... def report(text):
    ...     return text
    >>> is_main_process(), report("saved")
    (True, 'saved')
"""

from __future__ import annotations

import atexit
import functools
import gc
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "all_reduce_sum",
    "any_rank",
    "barrier",
    "broadcast_bytes",
    "gather_ints",
    "get_rank",
    "get_world_size",
    "init_from_env",
    "is_main_process",
    "rank_zero_only",
    "shared_seed",
]

F = TypeVar("F", bound=Callable[..., Any])
_group: Any = None  # the process group torchcb uses; None is the default group


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank, or 0 without a process group."""
    return dist.get_rank(_group) if _active() else 0


def get_world_size() -> int:
    """The number of processes, or 1 without a process group."""
    return dist.get_world_size(_group) if _active() else 1


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


def init_from_env(process_group: Any = None) -> int | None:
    """Join the run ``torchrun`` started, or use ``process_group``; returns the local rank, or None.

    With ``WORLD_SIZE`` above 1 in the environment and no process group yet, the default
    group is initialised (nccl when CUDA is available, else gloo) from torchrun's variables.
    """
    global _group
    _group = process_group
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not _active() and world > 1:
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        # the group torchcb made is torchcb's to close: left to the interpreter's exit, its
        # threads can abort the process ("terminate called without an active exception")
        atexit.register(_destroy_own_group)
    if not _active() or get_world_size() == 1:
        return None
    return int(os.environ.get("LOCAL_RANK", get_rank() % max(torch.cuda.device_count(), 1)))


def _destroy_own_group() -> None:
    if _active():
        # Trainers that are gone but held in reference cycles (trainer <-> model facade) still
        # hold their DistributedDataParallel: free them while the group they use is alive.
        gc.collect()
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    if dist.get_backend(_group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: list[Any]) -> torch.Tensor:
    """The sums of ``values`` (numbers or scalar tensors) over all ranks, as one float64 vector."""
    device = _collective_device()
    vector = torch.stack([torch.as_tensor(v, dtype=torch.float64).to(device).reshape(()) for v in values])
    dist.all_reduce(vector, op=dist.ReduceOp.SUM, group=_group)
    return vector


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on at least one rank (the same answer on every rank)."""
    if get_world_size() == 1:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_group)
    return bool(value.item())


def gather_ints(values: list[int]) -> list[list[int]]:
    """Every rank's ``values`` (as many on each rank), in rank order, on every rank."""
    if get_world_size() == 1:
        return [list(values)]
    mine = torch.tensor(values, dtype=torch.int64, device=_collective_device())
    gathered = [torch.empty_like(mine) for _ in range(get_world_size())]
    dist.all_gather(gathered, mine, group=_group)
    return [t.tolist() for t in gathered]


def broadcast_bytes(data: bytes | None) -> bytes:
    """Rank 0's ``data`` on every rank (the other ranks pass None): raw bytes, never unpickled."""
    if get_world_size() == 1:
        return data or b""
    device = _collective_device()
    src = dist.get_global_rank(_group, 0) if _group is not None else 0
    size = torch.tensor([len(data or b"")], dtype=torch.int64, device=device)
    dist.broadcast(size, src=src, group=_group)
    if data is not None:
        buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    else:
        buffer = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.broadcast(buffer, src=src, group=_group)
    return buffer.cpu().numpy().tobytes()


def barrier() -> None:
    """Wait until every rank gets here (nothing in a single process)."""
    if get_world_size() > 1:
        dist.barrier(group=_group)


def shared_seed() -> int:
    """A seed drawn on rank 0 from torch's generator and given to every rank."""
    seed = torch.randint(0, 2**62, (), dtype=torch.int64)
    if get_world_size() > 1:
        seed = seed.to(_collective_device())
        dist.broadcast(seed, src=dist.get_global_rank(_group, 0) if _group is not None else 0, group=_group)
    return int(seed.item())
