"""Checkpoints: the format, :class:`TrainingState`, and the trainer's :class:`Checkpointer`.

Files are written and read through ``torchcb.files`` (atomic, fsynced writes; loads with
``torch.load(..., weights_only=True)``: a checkpoint is data, never code).

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
and the module and optimizer are left as they were.

:class:`TrainingState` is that dict as a type: ``capture`` takes it from the run's
``torchcb.state.FitState`` and the step object at a save point, ``load`` reads and checks a
file, ``restore`` and ``resume`` give it back. :class:`Checkpointer` is the part of the
``Trainer`` that saves and loads, reading those two and never the trainer itself.

Example:
    >>> import os, tempfile, torch
    >>> from torchcb.checkpoint import atomic_save, safe_load
    >>> path = os.path.join(tempfile.mkdtemp(), "weights.pt")
    >>> atomic_save({"w": torch.ones(2)}, path)
    >>> safe_load(path)["w"]
    tensor([1., 1.])
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
from typing import Any, Protocol

import torch

from torchcb import distributed
from torchcb.files import (
    BackgroundWriter,
    CheckpointError,
    atomic_save,
    check_module_state,
    check_optimizer_state,
    check_writable,
    plain,
    safe_load,
    serialized,
    tensor_bytes,
    to_host,
    wait_for_pending_write,
    write_checkpoint,
)
from torchcb.state import FitState, rng_state, set_rng_state

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "Checkpointer",
    "StepParts",
    "TrainingState",
    "atomic_save",
    "load_module_state",
    "safe_load",
]

FORMAT = "torchcb.checkpoint"
FORMAT_VERSION = 2


class StepParts(Protocol):
    """What a checkpoint reads of the step object (``torchcb.step.Steps`` is one)."""

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    scaler: Any
    weight_average: Any
    time_decay: float
    metric_objects: list[Any]
    sharding: Any  # torchcb.sharded.FSDP, whose methods write and read the sharded format; or None

    def set_time_decay(self, decay: float) -> None: ...

    def pending_gradients(self) -> dict[str, Any] | None: ...

    def restore_pending_gradients(self, pending: dict[str, Any] | None) -> None: ...


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
        >>> TrainingState.capture(trainer.state, trainer.steps).save(path)
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
    def capture(cls, state: FitState, steps: StepParts, all_ranks: bool = False) -> TrainingState:
        """The run's state now (``state``, and the module, optimizer ... of ``steps``), with the
        state of every callback of the running ``fit``.

        Outside ``fit`` the callbacks are those of the last ``fit``, so a checkpoint saved
        after ``fit`` returns (``fit(epochs=k)``, then ``model.save``) resumes their state
        too: a torch LR scheduler's position, ReduceLROnPlateau's wait, EarlyStopping's best.

        Under torchrun, ``all_ranks=True`` (every rank capturing at the same point, as
        BackupAndRestore does) makes the epoch sums and the metric states those of all
        ranks; otherwise they are this rank's.
        """
        callbacks = state.callbacks if state.callbacks is not None else state.last_callbacks
        all_ranks = all_ranks and distributed.get_world_size() > 1
        metrics = {}
        for metric in steps.metric_objects:
            value = metric.get_state(all_ranks) if metric.stateful else None
            if value is not None:
                metrics[metric.name] = value
        return cls(
            module=steps.module.state_dict(),
            optimizer=steps.optimizer.state_dict(),
            epoch=state.epoch,
            batch=state.batch,
            step=state.optimizer_steps,
            rng=rng_state(),
            epoch_rng=state.epoch_start_rng if state.batch else None,
            scaler=None if steps.scaler is None else steps.scaler.state_dict(),
            callbacks={} if callbacks is None else plain(callbacks.states(all_ranks)),
            stop_training=bool(state.stop_training),
            decay=float(steps.time_decay),
            accumulation=steps.pending_gradients(),
            metrics=metrics,
            ema=None if steps.weight_average is None else steps.weight_average.state_dict(),
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

    def restore(self, state: FitState, steps: StepParts, source: str = "the checkpoint") -> None:
        """Check that the checkpoint fits ``steps``, then put the module, optimizer (every param group
        field, and Keras 2's ``decay``), GradScaler and the counters of ``state`` back.

        Raises :class:`CheckpointError` with nothing changed when it does not fit.
        """
        check_module_state(steps.module, self.module, source)
        check_optimizer_state(steps.optimizer, self.optimizer, source)
        average = steps.weight_average
        if average is not None and self.ema is not None:
            average.check_state(self.ema, source)
        steps.module.load_state_dict(self.module)
        steps.optimizer.load_state_dict(self.optimizer)
        self.restore_after_weights(state, steps)

    def restore_after_weights(self, state: FitState, steps: StepParts) -> None:
        """What :meth:`restore` puts back once the module and optimizer hold the checkpoint's: the
        weight average, GradScaler, Keras 2's ``decay`` and the counters of ``state``.

        A sharded checkpoint restores the module and optimizer its own way, then calls this.
        """
        average = steps.weight_average
        if average is not None and self.ema is not None:  # after the module: a state saved mid-swap is swapped back
            average.load_state_dict(self.ema)
        elif average is not None:
            average.reset()  # a checkpoint without an average: it starts again from these weights
        if steps.scaler is not None and self.scaler is not None:
            steps.scaler.load_state_dict(self.scaler)
        if self.decay is not None:
            steps.set_time_decay(self.decay)
        state.epoch = self.epoch
        state.optimizer_steps = self.step

    def resume(self, state: FitState, steps: StepParts, callbacks: Any) -> tuple[int, int]:
        """Give the starting ``fit`` what it resumes with; returns ``(epoch, batches of it already done)``.

        The callbacks' (a ``CallbackList``) and metrics' states, the gradients of an
        unfinished accumulation group and the stop flag. Under torchrun, states summed over
        ranks (the epoch sums, metric states) go to rank 0 and the other ranks start theirs
        empty, so that the next reduction counts every sample once.
        """
        callbacks.restore_states(self.callbacks)
        for metric in steps.metric_objects:
            if metric.stateful and metric.name in self.metrics:
                if distributed.is_main_process():
                    metric.set_state(self.metrics[metric.name])
                else:
                    metric.reset()
        steps.restore_pending_gradients(self.accumulation)
        state.stop_training = self.stop_training
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


class Checkpointer:
    """Saving and loading a run's checkpoints: the part of :class:`torchcb.Trainer` behind its
    ``save_checkpoint``, ``save_weights``, ``load_checkpoint``, ``load_weights`` and ``wait_for_writes``.

    A save a user asks for (``model.save``, ``model.save_weights``, ``save_checkpoint``) is
    on disk when the call returns, inside ``fit`` too, as in Keras. torchcb's own
    ModelCheckpoint and BackupAndRestore save with ``background=True``: their state is taken
    when the current round of hooks has finished (or when a callback in it raised) and
    written by the :class:`~torchcb.files.BackgroundWriter` while training goes on; every
    load of a file waits for its pending write. A loaded checkpoint is restored at once into
    the module and optimizer and applied to the next ``fit`` through :meth:`resume_point`.

    Args:
        steps: the step object (module, optimizer, scaler, metrics ...).
        state: the run's :class:`~torchcb.state.FitState`.
        distributed: whether the run is one of several torchrun processes.
    """

    def __init__(self, steps: StepParts, state: FitState, distributed: bool) -> None:
        self.steps, self.state, self.distributed = steps, state, distributed
        self.writer = BackgroundWriter()  # checkpoints saved during fit are written off the training path
        self.serialize_at_once_below = 2**20  # bytes of tensors under which a checkpoint is serialized at once

    def defer(self, action: Any) -> None:
        """Run ``action()`` once the current round of hooks has finished (at once outside ``fit``).

        Background saves use it, so they hold the state of every callback after it has seen
        the epoch or batch, whatever the callback order. If a callback of the round raises,
        the action runs before the exception leaves the round.
        """
        if self.state.callbacks is None:
            action()
        else:
            self.state.callbacks.defer(action)

    def save_checkpoint(
        self,
        path: str | os.PathLike,
        *,
        all_ranks: bool = False,
        keep_previous: str | os.PathLike | None = None,
        background: bool = False,
    ) -> None:
        """Write the full training state to ``path``: see :meth:`torchcb.Trainer.save_checkpoint`."""
        sharding = self.steps.sharding
        if sharding is not None:
            sharding.save_checkpoint(
                self, path, keep_previous=None if keep_previous is None else os.fspath(keep_previous)
            )
            return
        all_ranks = all_ranks or (self.distributed and self.state.callbacks is not None)
        if distributed.is_main_process():
            check_writable(path, "checkpoint path")
        elif not all_ranks:
            return  # rank 0 writes; every rank holds the same weights
        previous = None if keep_previous is None else os.fspath(keep_previous)
        capture = lambda: TrainingState.capture(self.state, self.steps, all_ranks).as_dict()  # noqa: E731
        self._save(path, capture, all_ranks, previous, background)

    def save_weights(self, path: str | os.PathLike, *, background: bool = False) -> None:
        """Write the module's ``state_dict`` to ``path``: see :meth:`torchcb.Trainer.save_weights`."""
        sharding, module = self.steps.sharding, self.steps.module
        if sharding is not None:
            self._save(path, lambda: sharding.full_state_dict(module), False, None, False)
            return
        if distributed.is_main_process():
            self._save(path, module.state_dict, False, None, background)

    def _save(
        self, path: str | os.PathLike, capture: Any, all_ranks: bool, keep_previous: str | None, background: bool
    ) -> None:
        path = os.fspath(path)

        def save() -> None:
            callbacks = self.state.callbacks
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
            data = serialized(state) if tensor_bytes(state) < self.serialize_at_once_below else to_host(state)
            # a backup that keeps the previous one is never dropped for a newer one: `.bkp` is always the last
            write = functools.partial(write_checkpoint, path, data, keep_previous)
            self.writer.submit(path, write, replaceable=keep_previous is None)

        if background:
            self.defer(save)
        else:
            save()

    def load_checkpoint(self, path: str | os.PathLike) -> int:
        """Restore a full checkpoint: see :meth:`torchcb.Trainer.load_checkpoint`."""
        sharding = self.steps.sharding
        if sharding is not None and sharding.is_checkpoint_dir(path):
            self.state.pending_resume = sharding.load_checkpoint(self, path)
            return self.state.epoch
        return self.restore_state(TrainingState.load(path, map_location=self.steps.device), source=os.fspath(path))

    def restore_state(self, state: TrainingState, source: str = "the checkpoint") -> int:
        """What :meth:`load_checkpoint` does, for a state already read (``source`` names it in errors)."""
        state.restore(self.state, self.steps, source=source)
        self.state.pending_resume = state
        return self.state.epoch

    def resume_point(self, callbacks: Any, initial_epoch: int, epochs: int) -> tuple[int, int]:
        """Apply a pending checkpoint to the starting ``fit``; returns ``(epoch, batches to skip)``."""
        state, self.state.pending_resume = self.state.pending_resume, None
        self.state.resume = state
        if state is None:
            return initial_epoch, 0
        epoch, skip = state.resume(self.state, self.steps, callbacks)
        if state.stop_training and not skip:
            return epochs, 0  # the run had been asked to stop at that epoch's end: no epoch is left
        return epoch, skip

    def resume_epoch(self, callbacks: Any) -> None:
        """Once ``on_epoch_begin`` has opened an epoch resumed mid-way, put back the state it held then.

        That hook ran for this epoch before the interruption too, and the checkpoint holds
        what followed: the epoch's sums (BaseLogger), the progress bar's count, and a rate a
        LearningRateScheduler set. Running it again must change none of them.
        """
        state = self.state.resume
        if state is not None:
            state.restore(self.state, self.steps)
            callbacks.restore_states(state.callbacks)

    def epoch_batches(self, train: Any, skip: int) -> Any:
        """``(index, batch)`` pairs of ``train``'s epoch; with ``skip``, the rest of an epoch resumed
        mid-way, in its batch order, then on from the random state of the checkpoint."""
        resume, self.state.resume = self.state.resume, None
        if resume is not None and resume.stop_training:
            set_rng_state(resume.rng)
            return iter(())  # the run had been asked to stop during this epoch: no batch is left
        if resume is not None and skip and resume.epoch_rng is not None:
            set_rng_state(resume.epoch_rng)  # rebuild the interrupted epoch's batch order
            self.state.epoch_start_rng = resume.epoch_rng
            batches = train.epoch(skip)
            set_rng_state(resume.rng)  # then continue from the random state of the backup
            return enumerate(batches, start=skip)
        if resume is not None:
            set_rng_state(resume.rng)
        self.state.epoch_start_rng = rng_state()
        return enumerate(train.epoch(skip), start=skip)

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load module weights from ``save_weights`` output or a full checkpoint (checked first)."""
        sharding, module = self.steps.sharding, self.steps.module  # with fsdp: a directory, or a file every rank reads
        if sharding is not None and sharding.is_checkpoint_dir(path):
            sharding.load_weights(module, path)
        elif sharding is not None:
            sharding.set_full_state_dict(module, load_module_state(path, module, map_location="cpu"))
        else:
            module.load_state_dict(load_module_state(path, module, map_location=self.steps.device))
