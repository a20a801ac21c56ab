"""FSDP2 training and its sharded checkpoint directories.

``Trainer(..., strategy="fsdp")`` shards the module with PyTorch's FSDP2
(``torch.distributed.fsdp.fully_shard``) under torchrun: each top-level child that holds
parameters (or each submodule a policy picks), then the root. A module that already holds
``FSDPModule`` instances (sharded by its user) is used as it is. ``fully_shard`` replaces the
parameters with sharded ones (DTensors); the optimizer given to the Trainer, built over the
module's parameters as usual, is pointed at the sharded ones by name, so a user builds it as
for any model. It must not have stepped yet (its state would belong to the old parameters).
In a single process (no torchrun, or one rank) nothing is sharded, and checkpoints have the
same directory format, so a run saved on 2 ranks resumes on 1 and the other way round.

Evaluation and ``predict`` gather the whole module once for the loop (ranks may hold
uneven numbers of validation batches, and none waits for another); training steps stay sharded.

Checkpoint directory (``model.save``, ``ModelCheckpoint``, ``BackupAndRestore`` under FSDP)::

    ckpt/                     written by every rank with torch.distributed.checkpoint
        .metadata             the shards' index (DCP)
        __<rank>_0.distcp     each rank's shards of the module ("model.*"), optimizer ("optimizer.*")
                              and, with ``use_ema``, weight average ("ema.*", sharded like the weights)
        trainer_rank<r>.pt    torchcb's own small state, one file a rank: epoch, batch, step,
                              Keras 2's decay, callbacks, metric states, the weight average's
                              counters and that rank's random states (a torchcb checkpoint
                              file with an empty module and optimizer, and no average tensors)

It is written into ``.ckpt.<token>.tmp`` beside the target, fsynced, and renamed into place
(the previous directory is moved to ``.ckpt.old`` first and removed last): a kill at any
moment leaves the previous checkpoint or the new one readable at ``ckpt`` (or, between the
two renames, at ``.ckpt.old``, which every load here falls back to). ``export_full`` turns a
directory into one plain ``torch.save`` state_dict.

Example:
    >>> import torch
    >>> from torchcb.sharded import check_strategy, is_sharded
    >>> check_strategy("ddp") is None, is_sharded(torch.nn.Linear(2, 2))
    (True, False)
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from torchcb import distributed
from torchcb.directories import readable as _readable
from torchcb.directories import write_directory

if TYPE_CHECKING:
    from torchcb.checkpoint import Checkpointer, TrainingState

# torch.distributed.checkpoint's save, load and FileSystemReader are public API its stubs do not re-export
# pyright: reportPrivateImportUsage=false

__all__ = [
    "FSDP",
    "check_strategy",
    "export_full",
    "fsdp_available",
    "full_state_dict",
    "is_checkpoint_dir",
    "is_sharded",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
    "set_full_state_dict",
    "shard",
]

STRATEGIES = ("ddp", "fsdp")
_RANK_FILE = "trainer_rank{}.pt"


class FSDP:
    """The ``"fsdp"`` strategy, with its options: ``Trainer(..., strategy=FSDP(policy=...))``.

    Args:
        policy: ``policy(submodule) -> bool``, the submodules to shard on their own (each is
            passed to ``fully_shard`` before the root, innermost first). By default, each
            top-level child that holds parameters.
        **options: passed to every ``fully_shard`` call (``reshard_after_forward``,
            ``mp_policy``, ``offload_policy`` ...).

    Example:
        >>> import torch
        >>> strategy = FSDP(policy=lambda m: isinstance(m, torch.nn.Linear))
        >>> strategy.policy(torch.nn.Linear(2, 2))
        True
    """

    def __init__(self, policy: Callable[[torch.nn.Module], bool] | None = None, **options: Any) -> None:
        if policy is not None and not callable(policy):
            raise ValueError(f"FSDP policy must be a callable taking a module, got {type(policy).__name__}.")
        self.policy = policy
        self.options = options

    def __repr__(self) -> str:
        return f"FSDP(policy={self.policy!r}, **{self.options!r})"

    # The checkpoint format of this strategy: torchcb.checkpoint reaches it through the step
    # object's ``sharding`` (this object), so that it does not import this module back.
    def save_checkpoint(self, saver: Checkpointer, path: str | os.PathLike, keep_previous: str | None = None) -> None:
        """:func:`save_checkpoint`."""
        save_checkpoint(saver, path, keep_previous=keep_previous)

    def load_checkpoint(self, saver: Checkpointer, path: str | os.PathLike) -> TrainingState:
        """:func:`load_checkpoint`."""
        return load_checkpoint(saver, path)

    def full_state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """:func:`full_state_dict` on rank 0 (empty elsewhere)."""
        return full_state_dict(module, rank0_only=True)

    def set_full_state_dict(self, module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        """:func:`set_full_state_dict`."""
        set_full_state_dict(module, state)

    def is_checkpoint_dir(self, path: str | os.PathLike) -> bool:
        """:func:`is_checkpoint_dir`."""
        return is_checkpoint_dir(path)

    def load_weights(self, module: torch.nn.Module, path: str | os.PathLike) -> None:
        """:func:`load_weights`."""
        load_weights(module, path)


def check_strategy(strategy: Any) -> FSDP | None:
    """``None`` for ``"ddp"``, an :class:`FSDP` for ``"fsdp"`` or an FSDP object; ``ValueError`` otherwise.

    ``"fsdp"`` needs FSDP2's public API (``torch.distributed.fsdp.fully_shard``, torch 2.6 or
    later); with an older torch it is refused here, when the Trainer is built.
    """
    if strategy == "ddp":
        return None
    if not isinstance(strategy, FSDP) and strategy != "fsdp":
        raise ValueError(f"strategy must be 'ddp', 'fsdp' or a torchcb.sharded.FSDP, got {strategy!r}.")
    if not fsdp_available():
        raise ValueError(
            "strategy='fsdp' needs torch.distributed.fsdp.fully_shard (torch 2.6 or later); this is "
            f"torch {torch.__version__}. Use strategy='ddp' or upgrade torch."
        )
    return strategy if isinstance(strategy, FSDP) else FSDP()


def _fsdp_module_class() -> type | None:
    """``torch.distributed.fsdp.FSDPModule``, or ``None`` on a torch without FSDP2's public API (before 2.6)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return None
    return FSDPModule


def fsdp_available() -> bool:
    """Whether this torch has FSDP2's public API (``torch.distributed.fsdp.fully_shard``, torch 2.6 or later)."""
    return _fsdp_module_class() is not None


def is_sharded(module: torch.nn.Module) -> bool:
    """Whether ``module`` or one of its submodules went through ``fully_shard`` (never, before torch 2.6)."""
    fsdp_module = _fsdp_module_class()
    return fsdp_module is not None and any(isinstance(m, fsdp_module) for m in module.modules())


def shard(module: torch.nn.Module, optimizer: torch.optim.Optimizer, strategy: FSDP) -> None:
    """Shard ``module`` in place with FSDP2 and point ``optimizer`` at the sharded parameters.

    Raises ``ValueError`` when the optimizer holds parameters that are not the module's, or
    has state already (it stepped: that state belongs to the parameters being replaced).
    """
    from torch.distributed.fsdp import fully_shard

    if is_sharded(module):
        return  # sharded by its user, with the optimizer built over the sharded parameters
    names = {id(p): name for name, p in module.named_parameters()}
    if optimizer.state:
        raise ValueError(
            "strategy='fsdp': the optimizer has state already (it has stepped); pass one that has not, so "
            "that it can be pointed at the sharded parameters."
        )
    groups = []
    for group in optimizer.param_groups:
        unknown = [p for p in group["params"] if id(p) not in names]
        if unknown:
            raise ValueError(
                "strategy='fsdp': the optimizer holds parameters that are not the module's; build it over "
                "module.parameters()."
            )
        groups.append([names[id(p)] for p in group["params"]])
    policy = strategy.policy
    if policy is None:
        chosen = [child for child in module.children() if any(True for _ in child.parameters())]
    else:
        chosen = [m for m in module.modules() if m is not module and policy(m)]
    for submodule in reversed(chosen):  # innermost first: modules() lists parents before children
        fully_shard(submodule, **strategy.options)
    fully_shard(module, **strategy.options)
    sharded = dict(module.named_parameters())
    for group, group_names in zip(optimizer.param_groups, groups):
        group["params"] = [sharded[name] for name in group_names]


@contextlib.contextmanager
def gathered(module: torch.nn.Module, reshard_after_forward: Any = True) -> Iterator[None]:
    """The whole module on every rank for the block (one all-gather), so forwards need no collective."""
    from torch.distributed.fsdp import FSDPModule

    if distributed.get_world_size() == 1:
        yield
        return
    fsdp = [m for m in module.modules() if isinstance(m, FSDPModule)]
    for m in fsdp:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in fsdp:
            m.reshard()
            m.set_reshard_after_forward(reshard_after_forward is not False, recurse=False)


# ---------------------------------------------------------------- full state dicts


def full_state_dict(module: torch.nn.Module, rank0_only: bool = False) -> dict[str, torch.Tensor]:
    """The module's full (unsharded) ``state_dict``, on the CPU; with ``rank0_only``, empty on the other ranks.

    A collective under FSDP: every rank calls it.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not is_sharded(module):
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        return {} if rank0_only and not distributed.is_main_process() else state
    options = StateDictOptions(full_state_dict=True, cpu_offload=rank0_only)
    state = get_model_state_dict(module, options=options)
    return {k: v.detach().cpu() for k, v in state.items() if isinstance(v, torch.Tensor)}


def set_full_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full ``state_dict`` (every rank passes the whole of it) into ``module``, sharded or not."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if not is_sharded(module):
        module.load_state_dict(state)
        return
    set_model_state_dict(module, dict(state), options=StateDictOptions(full_state_dict=True))


# ---------------------------------------------------------------- checkpoint directories


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` (or the previous copy a kill mid-rename left) is a sharded checkpoint directory."""
    found = _readable(path)
    return found is not None and os.path.exists(os.path.join(found, ".metadata"))


def _no_dist() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized())


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """torch.distributed.checkpoint warns when it runs in one process: that is the intent here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def _small_state(saver: Checkpointer, all_ranks: bool) -> dict[str, Any]:
    """torchcb's own state, as a checkpoint file's dict with an empty module and optimizer."""
    from torchcb.checkpoint import TrainingState
    from torchcb.tree import tree_map

    state = TrainingState.capture(saver.state, saver.steps, all_ranks).as_dict()
    state["module"], state["optimizer"] = {}, {}
    if state.get("ema") is not None:  # its tensors are in the shards: "updates" and "swapped" here
        state["ema"] = {k: v for k, v in state["ema"].items() if k != "average"}
    state.pop("accumulation", None)  # gradients of a group not stepped yet are not kept here
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return state
    # sharded tensors held by callbacks (EarlyStopping's best weights): gathered whole
    return tree_map(lambda v: v.full_tensor().cpu() if isinstance(v, DTensor) else v, state)


def save_checkpoint(
    saver: Checkpointer, path: str | os.PathLike, all_ranks: bool = True, keep_previous: str | None = None
) -> None:
    """Write the full state of ``saver``'s run as a sharded checkpoint directory; every rank calls it at the same point.

    Inside ``fit`` it is taken once the current round of hooks has finished, and written at
    once (every rank writes its shards; ``fit`` waits).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from torchcb.checkpoint import atomic_save

    def save() -> None:
        callbacks = saver.state.callbacks
        allowed = callbacks is None or callbacks.checkpoint_allowed()
        if distributed.get_world_size() > 1:
            allowed = not distributed.any_rank(not allowed)  # a NaN seen on any rank stops every write
        if not allowed:
            return
        small = _small_state(saver, all_ranks)
        model, optimizer = get_state_dict(saver.steps.module, saver.steps.optimizer)
        shards: dict[str, Any] = {"model": model, "optimizer": optimizer}
        average = saver.steps.weight_average
        if average is not None:  # the averaging slots, sharded as the weights they are made from
            shards["ema"] = dict(zip(average.names, average.averages()))

        def write(directory: str) -> None:
            with _single_process_quiet():
                dcp.save(shards, checkpoint_id=directory, no_dist=_no_dist())
            atomic_save(small, os.path.join(directory, _RANK_FILE.format(distributed.get_rank())))

        write_directory(path, write, keep_previous)

    saver.defer(save)


def _check_fits(directory: str, module_state: dict[str, Any], source: str, prefix: str = "model") -> None:
    from torch.distributed.checkpoint import FileSystemReader

    from torchcb.checkpoint import CheckpointError

    try:
        saved = FileSystemReader(directory).read_metadata().state_dict_metadata
    except Exception as error:
        raise CheckpointError(f"{source!r} is not a sharded torchcb checkpoint ({error}).") from error
    start = f"{prefix}."
    missing = [k for k in module_state if start + k not in saved]
    unexpected = [k[len(start) :] for k in saved if k.startswith(start) and k[len(start) :] not in module_state]
    sizes = {k: getattr(saved.get(start + k), "size", None) for k in module_state}  # None: not a tensor
    mismatched = [
        f"{k}: {tuple(size)} in the checkpoint, {tuple(v.shape)} in the module"
        for k, v in module_state.items()
        if (size := sizes[k]) is not None and tuple(size) != tuple(v.shape)
    ]
    problems = [
        text
        for text, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shapes differ", mismatched))
        if items
    ]
    if problems:
        detail = "; ".join(
            f"{text} {items}" for text, items in zip(problems, (missing, unexpected, mismatched)) if items
        )
        what = "module" if prefix == "model" else "weight average"
        raise CheckpointError(f"{source!r} does not fit the {what} ({detail}); nothing was loaded.")


def _read_small(directory: str, source: str) -> TrainingState:
    from torchcb.checkpoint import CheckpointError, TrainingState

    rank_file = os.path.join(directory, _RANK_FILE.format(distributed.get_rank()))
    if not os.path.exists(rank_file):  # resumed on more ranks than saved it: rank 0's counters
        rank_file = os.path.join(directory, _RANK_FILE.format(0))
    if not os.path.exists(rank_file):
        raise CheckpointError(f"{source!r} holds no {_RANK_FILE.format(0)}: it is not a sharded torchcb checkpoint.")
    with open(rank_file, "rb") as f:
        return TrainingState.load(io.BytesIO(f.read()), source=rank_file)


def load_checkpoint(saver: Checkpointer, path: str | os.PathLike) -> TrainingState:
    """Read a sharded checkpoint into ``saver``'s module, optimizer and weight average (at any
    world size), and put back the rest that a checkpoint file's restore does (GradScaler, Keras
    2's decay, counters); returns torchcb's own state for the next ``fit``. Every rank calls it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    source = os.fspath(path)
    directory = _readable(path)
    if directory is None:
        raise FileNotFoundError(f"No sharded checkpoint at {source!r}.")
    small = _read_small(directory, source)
    steps = saver.steps
    model, optimizer = get_state_dict(steps.module, steps.optimizer)
    _check_fits(directory, model, source)
    state = {"model": model, "optimizer": optimizer}
    average, ema = steps.weight_average, small.ema
    if average is not None and ema is not None:  # read into new tensors, each shaped (and sharded) as its slot
        state["ema"] = {name: torch.empty_like(slot) for name, slot in zip(average.names, average.averages())}
        _check_fits(directory, state["ema"], source, prefix="ema")
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=directory, no_dist=_no_dist())
    set_state_dict(steps.module, steps.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    if ema is not None and "ema" in state:
        small.ema = {**ema, "average": state["ema"]}
    small.restore_after_weights(saver.state, steps)
    small.ema = ema  # the averages live in the slots now: the state kept for the next fit holds no copy
    return small


def load_weights(module: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load the module's part of a sharded checkpoint directory into ``module`` (sharded or not)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    directory = _readable(path)
    if directory is None:
        raise FileNotFoundError(f"No sharded checkpoint at {os.fspath(path)!r}.")
    model = get_model_state_dict(module)
    _check_fits(directory, model, os.fspath(path))
    state = {"model": model}
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=directory, no_dist=_no_dist())
    set_model_state_dict(module, state["model"])


def export_full(path_in: str | os.PathLike, path_out: str | os.PathLike, optimizer: bool = False) -> None:
    """Turn a sharded checkpoint directory into one plain ``torch.save`` file of the module's full ``state_dict``.

    The result loads without torchcb: ``module.load_state_dict(torch.load(path_out, weights_only=True))``.
    Run it in one process (no torchrun needed); the file is written atomically. With
    ``optimizer=True`` the file holds ``{"model": ..., "optimizer": ...}`` instead (the
    optimizer state keyed by parameter name, as ``torch.distributed.checkpoint`` keeps it).

    Also a command: ``python -m torchcb.export CHECKPOINT_DIR OUT.pt``.

    Example:
        >>> import os, tempfile, torch
        >>> from torchcb import Trainer
        >>> from torchcb.sharded import export_full
        >>> net = torch.nn.Linear(2, 1)
        >>> trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", device="cpu", strategy="fsdp")
        >>> folder = tempfile.mkdtemp()
        >>> trainer.model.save(os.path.join(folder, "ckpt"))
        >>> export_full(os.path.join(folder, "ckpt"), os.path.join(folder, "full.pt"))
        >>> other = torch.nn.Linear(2, 1)
        >>> other.load_state_dict(torch.load(os.path.join(folder, "full.pt"), weights_only=True))
        <All keys matched successfully>
        >>> torch.equal(other.weight, net.weight)
        True
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from torchcb.checkpoint import CheckpointError, atomic_save

    directory = _readable(path_in)
    if directory is None or not os.path.exists(os.path.join(directory, ".metadata")):
        raise CheckpointError(f"{os.fspath(path_in)!r} is not a sharded checkpoint directory.")
    out = os.path.abspath(os.fspath(path_out))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    scratch = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.{uuid.uuid4().hex}.tmp")
    try:
        with _single_process_quiet():
            dcp_to_torch_save(directory, scratch)
        everything = torch.load(scratch, weights_only=True)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(scratch)
    result = (
        everything["model"]
        if not optimizer
        else {"model": everything["model"], "optimizer": everything.get("optimizer")}
    )
    atomic_save(result, out)
