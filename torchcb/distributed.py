"""Rank and world helpers, and the few collectives torchcb makes under ``torchrun``.

Under ``torchrun`` every process runs the same script. torchcb initialises the process
group from torchrun's environment (gloo for CPU tensors, ``cpu:gloo,cuda:nccl`` on CUDA),
and agrees across ranks with a handful of small collectives: the epoch sums of the logs
(one all-reduce an epoch), the stop decision (one a ``stop_check_every`` batches, and at
epoch ends), and the shuffling seed (one a ``fit``). Nothing is added to the training step.

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
    "backend_for",
    "barrier",
    "broadcast_bytes",
    "gather_ints",
    "get_rank",
    "get_world_size",
    "gpu_shortage",
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

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps function's signature


def backend_for(device: str | torch.device | None, cuda_available: bool | None = None) -> str:
    """The process-group backend for training on ``device`` (``None``: CUDA when available).

    gloo for CPU tensors, even on a machine with GPUs; with CUDA, a group that serves both
    (``cpu:gloo,cuda:nccl``): DistributedDataParallel reduces CUDA gradients with NCCL,
    while torchcb's own few collectives (a stop flag, the epoch sums) stay small CPU ones.

    Example:
        >>> backend_for("cpu", cuda_available=True), backend_for(None, cuda_available=True)
        ('gloo', 'cpu:gloo,cuda:nccl')
    """
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if not cuda_available or (device is not None and torch.device(device).type == "cpu"):
        return "gloo"
    return "cpu:gloo,cuda:nccl"


def gpu_shortage(device: str | torch.device | None, processes: int, gpus: int) -> str | None:
    """Why ``processes`` ranks on one machine cannot each have a GPU of their own, or None if they can.

    Example:
        >>> gpu_shortage("cpu", processes=8, gpus=1) is None, gpu_shortage(None, processes=2, gpus=2) is None
        (True, True)
        >>> print(gpu_shortage(None, processes=2, gpus=1))
        torchrun started 2 processes on this machine, but 1 GPU is visible, so a process would have none: start at most 1 per machine (--nproc_per_node=1), or pass device="cpu" to train every rank on the CPU.
    """
    if gpus == 0 or processes <= gpus:
        return None
    wanted = torch.device(device) if device is not None else torch.device("cuda")
    if wanted.type != "cuda" or wanted.index is not None:
        return None
    return (
        f"torchrun started {processes} processes on this machine, but {gpus} GPU{'s are' if gpus > 1 else ' is'} "
        f"visible, so a process would have none: start at most {gpus} per machine (--nproc_per_node={gpus}), "
        'or pass device="cpu" to train every rank on the CPU.'
    )


def init_from_env(process_group: Any = None, device: str | torch.device | None = None) -> int | None:
    """Join the run ``torchrun`` started, or use ``process_group``; returns the local rank, or None.

    With ``WORLD_SIZE`` above 1 in the environment and no process group yet, the default
    group is initialised from torchrun's variables, with the backend :func:`backend_for`
    gives for ``device``. Raises ``ValueError`` before any of that when training on CUDA
    with more processes on this machine than visible GPUs.
    """
    global _group
    _group = process_group
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not _active() and world > 1:
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        shortage = gpu_shortage(device, processes, torch.cuda.device_count()) if torch.cuda.is_available() else None
        if shortage is not None:
            raise ValueError(shortage)
        dist.init_process_group(backend=backend_for(device))
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
    # torchcb's own collectives are a few numbers: on the CPU wherever the group serves it
    if "gloo" in str(dist.get_backend(_group)):
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


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


def broadcast_tensors(tensors: list[torch.Tensor]) -> None:
    """Overwrite ``tensors`` on every rank with rank 0's, in place (nothing in a single process)."""
    if get_world_size() == 1 or not tensors:
        return
    src = dist.get_global_rank(_group, 0) if _group is not None else 0
    for tensor in tensors:
        dist.broadcast(tensor, src=src, group=_group)


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
