"""The Trainer: Keras ``fit``/``evaluate``/``predict`` over a user's own module and optimizer.

The whole training loop is :meth:`Trainer.fit`, readable top to bottom. Per batch it runs
the step and the batch hooks and nothing else: the step returns device tensors, the batch
logs hold them unread (see ``torchcb.logs``), and the loop sums them on the device.

A ``Trainer`` holds its parts and passes them along: ``state``, the run's
``torchcb.state.FitState`` (counters, stop flag, the running callbacks); ``steps``, the
``torchcb.step.Steps`` that runs forward, loss and optimizer step; ``checkpointer``, the
``torchcb.checkpoint.Checkpointer`` that saves and resumes; and ``model``, the Keras-shaped
facade of ``torchcb.facade`` that callbacks see. The callbacks are reached through their
``CallbackList``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch

from torchcb import distributed, sharded
from torchcb._checks import check_int, check_verbose, validation_schedule
from torchcb.callbacks.callback_list import CallbackList
from torchcb.callbacks.defaults import for_fit, for_inference
from torchcb.callbacks.history import History
from torchcb.checkpoint import Checkpointer, TrainingState
from torchcb.data import ArraySource, Batch, Batching, Source, ValidationArrays, is_array_input
from torchcb.facade import KerasModel
from torchcb.logs import EpochTotals
from torchcb.loops import fit_params, fit_sources, inference_source, predict_loop, shard, test_loop
from torchcb.state import FitState
from torchcb.step import Steps, module_modes, set_modes

__all__ = ["Trainer"]


def _part(part: str, name: str) -> Any:
    """A Trainer attribute that is ``name`` of its ``part`` (``steps``, ``state``), read and set there."""
    return property(
        lambda self: getattr(getattr(self, part), name),
        lambda self, value: setattr(getattr(self, part), name, value),
        doc=f"``{part}.{name}``",
    )


class Trainer:
    """Train a ``torch.nn.Module`` with the Keras ``fit`` API and Keras callbacks.

    Args:
        module: the model, a ``torch.nn.Module``. It is moved to ``device``.
        optimizer: a ``torch.optim.Optimizer`` over the module's parameters.
        loss: a Keras loss name (``"mse"``, ``"mae"``, ``"binary_crossentropy"``,
            ``"categorical_crossentropy"``, ``"sparse_categorical_crossentropy"``; all on
            logits) or any callable ``loss(y_pred, y_true)`` such as ``torch.nn.CrossEntropyLoss()``.
        metrics: a list of Keras metric names (``"accuracy"``, ``"acc"``, ``"mse"`` ...),
            callables ``metric(y_pred, y_true)``, or stateful objects with
            ``update``/``compute``/``reset`` (torchmetrics metrics work).
        device: where to train; ``None`` picks CUDA when available, else the CPU.
        precision: ``"32"``; ``"bf16-mixed"`` (autocast to bfloat16, CPU or CUDA); or
            ``"16-mixed"`` (autocast to float16 with a GradScaler, CUDA only).
        clipnorm: clip each gradient tensor to this norm (Keras' ``clipnorm``).
        clipvalue: clip every gradient element to ``[-clipvalue, clipvalue]``.
        global_clipnorm: clip all gradients together to this total norm.
        accumulate_steps: batches whose gradients are summed before each optimizer step (the
            loss is divided by it for the backward pass; the logged loss and metrics are the
            batches' own, whatever its value). A last partial group steps at the epoch's end.
        compile: run the module through ``torch.compile``; callbacks and logs stay outside it.
        process_group: an initialised ``torch.distributed`` group to train over; by default
            the one ``torchrun`` sets up (see "Distributed training" in the README).
        stop_check_every: under torchrun, how many batches pass between the agreements on
            ``stop_training`` (a one-number all-reduce; none is added to each step).
        use_ema: keep an exponential moving average of the weights (Keras' optimizer option),
            updated after every optimizer step; ``fit`` leaves it in the module when it ends,
            and ``torchcb.callbacks.SwapEMAWeights`` evaluates on it (see ``torchcb.ema``).
        ema_momentum: the average's momentum: ``average = ema_momentum * average + (1 -
            ema_momentum) * weights`` (the first step copies the weights).
        ema_overwrite_frequency: replace the module's weights by the average every this many
            optimizer steps; ``None`` keeps it beside them until ``fit`` ends.
        strategy: under torchrun, ``"ddp"`` (DistributedDataParallel: the whole module on
            every rank) or ``"fsdp"`` (FSDP2's ``fully_shard`` on each top-level child, then
            the root; a ``torchcb.sharded.FSDP(policy=...)`` picks the submodules). Build the
            optimizer over ``module.parameters()`` as usual: it is pointed at the sharded
            parameters. With ``"fsdp"`` checkpoints are sharded directories that resume at any
            world size (see ``torchcb.sharded``), in a single process too.

    Attributes:
        model: the Keras-shaped facade every callback sees (``torchcb.facade.KerasModel``).
        weight_average: the :class:`torchcb.ema.WeightAverage` with ``use_ema=True``, else None.
        history: the History of the last ``fit``.
        state: the run's :class:`torchcb.state.FitState` (``optimizer_steps``, ``epoch`` ...).
        steps: the :class:`torchcb.step.Steps` behind ``module``, ``optimizer``, ``forward``,
            ``autocast``, ``compute_loss``, ``compute_metrics`` and ``apply_gradients``.
        checkpointer: the :class:`torchcb.checkpoint.Checkpointer` behind the saves and loads.

    Override ``train_step``, ``test_step`` or ``predict_step`` on a subclass for a model that
    is not one input and one target (see ``torchcb.step``); the loops call them. Override
    ``compute_loss(y_pred, y_true, sample_weight=None)`` or ``compute_metrics(y_pred, y_true,
    loss)`` alone to change the loss or the logs of the default steps, as a Keras 3 Model
    subclass overrides ``compute_loss`` (``super().compute_loss(...)`` is the compiled loss).

    Example:
        >>> import torch
        >>> from torchcb import Trainer
        >>> from torchcb.callbacks import EarlyStopping
        >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> trainer = Trainer(net, torch.optim.Adam(net.parameters()), loss="sparse_categorical_crossentropy",
        ...                   metrics=["accuracy"], device="cpu")
        >>> history = trainer.fit(x, y, batch_size=16, epochs=3, verbose=0, validation_split=0.25,
        ...                       callbacks=[EarlyStopping(patience=2)])
        >>> sorted(history.history)
        ['accuracy', 'loss', 'val_accuracy', 'val_loss']
    """

    def __init__(
        self,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss: Any,
        metrics: Any = None,
        *,
        device: str | torch.device | None = None,
        precision: str = "32",
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        accumulate_steps: int = 1,
        compile: bool = False,  # noqa: A002  (the name users look for)
        process_group: Any = None,
        stop_check_every: int = 32,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: int | None = None,
        strategy: Any = "ddp",
    ) -> None:
        if not isinstance(module, torch.nn.Module):
            raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}.")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}.")
        fsdp = sharded.check_strategy(strategy)
        local_rank = distributed.init_from_env(process_group, device)  # None in a single process
        self.distributed = local_rank is not None
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
            if self.distributed and device == "cuda":
                device = f"cuda:{local_rank}"  # each rank on its own GPU
                torch.cuda.set_device(local_rank)
        self.state = FitState()
        self.steps = Steps(
            module,
            optimizer,
            loss,
            metrics,
            device=torch.device(device),
            precision=precision,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            accumulate_steps=accumulate_steps,
            compile=compile,
            process_group=process_group,
            distributed=self.distributed,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            strategy=fsdp,
            state=self.state,
        )
        if self._overrides("compute_loss") or self._overrides("compute_metrics"):
            self.steps.hooks = self  # the default steps call this subclass's compute_loss / compute_metrics
            self.steps.custom_loss = self._overrides("compute_loss")
        self.checkpointer = Checkpointer(self.steps, self.state, self.distributed)
        self.stop_check_every = check_int(stop_check_every, "stop_check_every", 1)
        self.history: History | None = None
        self.model = KerasModel(self)

    # The parts' names that a train_step override, callbacks and users reach on the trainer.
    module = _part("steps", "module")
    optimizer = _part("steps", "optimizer")
    device = _part("steps", "device")
    loss = _part("steps", "loss")
    metric_objects = _part("steps", "metric_objects")
    metrics_names = _part("steps", "metrics_names")
    scaler = _part("steps", "scaler")
    weight_average = _part("steps", "weight_average")
    time_decay = _part("steps", "time_decay")
    sharding = _part("steps", "sharding")
    forward = _part("steps", "forward")
    autocast = _part("steps", "autocast")
    compute_loss = _part("steps", "compute_loss")
    compute_metrics = _part("steps", "compute_metrics")
    apply_gradients = _part("steps", "apply_gradients")
    set_time_decay = _part("steps", "set_time_decay")
    optimizer_steps = _part("state", "optimizer_steps")
    epochs_completed = _part("state", "epoch")
    batches_done = _part("state", "batch")
    current_batch = _part("state", "current_batch")
    callback_list = _part("state", "callbacks")
    writer = _part("checkpointer", "writer")
    serialize_at_once_below = _part("checkpointer", "serialize_at_once_below")

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One optimisation step on ``batch`` (``.x``, ``.y``, ``.sample_weight``, ``.size``).

        Override it for models that are not one input and one target; return a dict of
        scalar device tensors, which become the batch logs (see ``torchcb.step``).
        """
        return self.steps.train_step(batch)

    def test_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Loss and metrics on ``batch``, without gradients. Override like :meth:`train_step`."""
        return self.steps.test_step(batch)

    def predict_step(self, batch: Batch) -> Any:
        """The module's outputs for ``batch.x``."""
        return self.steps.predict_step(batch)

    # ----------------------------------------------------------------- fit

    def fit(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = None,
        epochs: int = 1,
        verbose: int | str = 1,
        callbacks: Iterable[Any] | None = None,
        validation_split: float = 0.0,
        validation_data: Any = None,
        shuffle: bool = True,
        class_weight: dict[int, float] | None = None,
        sample_weight: Any = None,
        initial_epoch: int = 0,
        steps_per_epoch: int | None = None,
        validation_steps: int | None = None,
        validation_freq: int | list[int] = 1,
    ) -> History:
        """Train for ``epochs`` epochs, with the Keras 2 ``fit`` signature; returns the History.

        Everything the arguments show is checked before any hook runs: a bad argument raises
        ``ValueError`` naming it (negative labels under ``sparse_categorical_crossentropy`` and
        dict keys ``forward`` does not take included). ``validation_split`` takes the last
        fraction of in-memory arrays before shuffling; ``validation_data`` is ``(x, y)``,
        ``(x, y, sample_weight)``, a Dataset, a DataLoader or an iterable of batches.

        The module runs only in batches. The first batch checks its outputs before its loss:
        targets that cannot fit them under a Keras loss name, or labels past the number of
        outputs, raise ``ValueError``; under ``mse``, ``mae`` and ``binary_crossentropy``, rank-1
        targets against rank-2 outputs become ``(N, 1)`` and are broadcast, as tf.keras does
        (a warning names both shapes). Each submodule keeps its own train/eval mode (a frozen
        BatchNorm stays frozen); validation, ``evaluate`` and ``predict`` put every mode back
        after, even on an error; a module wholly in eval mode trains in training mode and goes
        back to eval after. A module with nothing to train runs its batches and steps nothing.

        Example:
            >>> import numpy as np, torch
            >>> from torchcb import Trainer
            >>> net = torch.nn.Linear(3, 1)
            >>> trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", device="cpu")
            >>> history = trainer.fit(np.ones((8, 3)), np.ones((8, 1)), batch_size=4, epochs=2, verbose=0)
            >>> history.epoch
            [0, 1]
        """
        # 1. Check the arguments, build the data and the callbacks: before any hook runs.
        if self.callback_list is not None:
            raise RuntimeError(
                "fit is already running on this trainer: a callback cannot start another fit of the same model "
                "(call evaluate or predict from a callback, or fit a second Trainer)."
            )
        epochs = check_int(epochs, "epochs", 0)
        initial_epoch = check_int(initial_epoch, "initial_epoch", 0)
        verbose = check_verbose(verbose)
        should_validate = validation_schedule(validation_freq)
        train, val = fit_sources(
            self.steps, x, y, batch_size, shuffle, validation_split, validation_data, class_weight, sample_weight,
            steps_per_epoch, validation_steps, default_step=self._default_step(),
        )  # fmt: skip
        totals = EpochTotals({m.name for m in self.metric_objects if m.stateful}, skip=("batch", "size"))
        callbacks, history = self._fit_callbacks(callbacks, verbose, train, totals)  # the loop sums the epoch
        callbacks.writer = self.writer  # a failed background write surfaces at the next hook
        batch_size = batch_size or (32 if is_array_input(x) else None)
        callbacks.set_params(fit_params(self.steps, batch_size, epochs, verbose, train, validating=val is not None))

        # 2. Train. The loop owns the run's state; the parts read it from there.
        model, state, steps, checkpointer = self.model, self.state, self.steps, self.checkpointer
        self.history = model.history = history
        state.callbacks = state.last_callbacks = callbacks
        state.stop_training = False
        steps.restore_pending_gradients(None)  # no gradient of an interrupted fit leaks into this one
        # a module left in eval mode trains in training mode, as Keras trains, and goes back after
        modes_before = None if self.module.training else module_modes(self.module)
        default_step = self._default_step()
        steps.begin_fit_steps(train, val, default_step)  # the first batch checks the targets against the outputs
        train_step = steps.train_step if default_step else self.train_step
        ranks = self.distributed  # under torchrun, ranks agree on stopping every stop_check_every batches
        epoch_logs: dict[str, Any] = {}
        try:
            if modes_before is not None:
                self.module.train()
            callbacks.on_train_begin({})
            callbacks.set_validation_data(ValidationArrays(val) if isinstance(val, ArraySource) else None)
            # Keras' BackupAndRestore sets the model's _initial_epoch in on_train_begin (used once)
            initial_epoch, model._initial_epoch = model._initial_epoch or initial_epoch, None
            # A checkpoint loaded before fit or in on_train_begin (BackupAndRestore) says where to resume.
            start_epoch, skip = checkpointer.resume_point(callbacks, initial_epoch, epochs)
            callbacks.begin_train_batches()
            for epoch in range(start_epoch, epochs):
                if not skip:  # a run resumed mid-epoch restored the metrics of the epoch so far
                    steps.reset_metrics()
                totals.reset()
                callbacks.on_epoch_begin(epoch, {})  # a resumed epoch opens too, for every callback
                if skip:
                    checkpointer.resume_epoch(callbacks)  # the epoch sums, the bar's count, the rates: as they were
                train.set_epoch(epoch)
                for step, batch in checkpointer.epoch_batches(train, skip):  # the rest of a resumed epoch
                    state.current_batch = batch
                    logs = callbacks.train_batch_begin(step, batch.size)
                    outputs = train_step(batch)  # the optimizer's step hook counts state.optimizer_steps
                    state.batch = step + 1
                    totals.add(outputs, batch.size)  # on the device, read back at the epoch's end
                    callbacks.train_batch_end(step, batch.size, outputs, logs)
                    if ranks:  # a stop asked on any rank takes effect at the next agreement
                        if (step + 1) % self.stop_check_every == 0 and self._agree_on_stop():
                            break
                    elif state.stop_training:
                        break
                state.train_batches += state.batch - skip
                skip = 0
                if ranks:
                    self._agree_on_stop()  # every rank validates, or none does
                steps.step_optimizer()  # a last, partial group of accumulated gradients
                epoch_logs = {}
                # Keras validates only an epoch that ran to its end, not after a batch-level stop
                if val is not None and not state.stop_training and should_validate(epoch):
                    val_logs = test_loop(steps, state, self.test_step, val, callbacks)
                    epoch_logs.update(("val_" + key, value) for key, value in val_logs.items())
                state.epoch, state.batch = epoch + 1, 0
                callbacks.on_epoch_end(epoch, epoch_logs)  # BaseLogger, first, adds the training averages
                state.logs = epoch_logs
                if ranks:
                    self._agree_on_stop()
                if state.stop_training or train.exhausted:
                    break
            if steps.weight_average is not None and epochs > 0:
                steps.weight_average.finalize()  # as Keras' fit: the module ends with the averaged weights
            callbacks.on_train_end(epoch_logs)
            checkpointer.writer.wait()  # every checkpoint is on disk when fit returns
        except BaseException as error:
            callbacks.on_train_error(error)  # callbacks release files and threads; Keras' hooks stay as they are
            checkpointer.writer.wait()  # what was written stays whole (a failed write raises, chained to the error)
            raise
        finally:
            state.callbacks = state.current_batch = None
            steps.end_fit_steps()
            if modes_before is not None:
                set_modes(modes_before)
        return history

    def _default_step(self) -> bool:
        """Whether ``fit`` runs the step of :class:`torchcb.step.Steps`, not one of a subclass or instance."""
        return not self._overrides("train_step")

    def _overrides(self, name: str) -> bool:
        """Whether this Trainer's subclass or instance has its own ``name`` (a step or a loss)."""
        return getattr(type(self), name) is not getattr(Trainer, name) or name in self.__dict__

    def _fit_callbacks(
        self, callbacks: Any, verbose: int, train: Source, totals: EpochTotals
    ) -> tuple[CallbackList, History]:
        """``[BaseLogger, ProgbarLogger (if verbose), *user callbacks, History]``; BaseLogger averages ``totals``."""
        count_mode = "samples" if train.samples is not None and not train.fixed_steps else "steps"
        callback_list = for_fit(callbacks, model=self.model, verbose=verbose, count_mode=count_mode, totals=totals)
        return callback_list, callback_list.history

    def _agree_on_stop(self) -> bool:
        """Under torchrun: stop everywhere if any rank asked to (one small all-reduce)."""
        self.state.stop_training = distributed.any_rank(self.state.stop_training)
        return self.state.stop_training

    # ----------------------------------------------------------------- evaluate / predict

    def evaluate(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = None,
        verbose: int | str = 1,
        sample_weight: Any = None,
        steps: int | None = None,
        callbacks: Any = None,
        return_dict: bool = False,
    ) -> Any:
        """Loss and metrics on the given data: a float for the loss alone, else a list (or a dict).

        Targets are checked as ``fit`` checks them, with the same messages naming ``y``: negative
        labels under ``sparse_categorical_crossentropy`` before any hook runs; at the first batch
        (the module runs only in batches), targets that cannot fit the outputs and labels past
        their count raise ``ValueError``, and rank-1 targets under ``mse``, ``mae`` and
        ``binary_crossentropy`` are matched to rank-2 outputs as Keras matches them (a warning
        names both shapes).

        Example:
            >>> import torch
            >>> from torchcb import Trainer
            >>> net = torch.nn.Linear(2, 1)
            >>> trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", metrics=["mae"], device="cpu")
            >>> sorted(trainer.evaluate(torch.ones(4, 2), torch.ones(4, 1), verbose=0, return_dict=True))
            ['loss', 'mae']
        """
        verbose = check_verbose(verbose)
        batching = Batching(
            batch_size=batch_size, steps=steps, steps_argument="steps", shard=shard(self.steps), pad=False
        )
        source = inference_source(self.steps, x, y, batching, sample_weight=sample_weight)
        default_step = type(self).test_step is Trainer.test_step and "test_step" not in self.__dict__
        self.steps.begin_test_check(source, default_step)  # before any hook; the first batch checks the rest
        params = {"verbose": verbose, "epochs": 1, "steps": source.steps, "samples": source.samples}
        callback_list = for_inference(
            callbacks, model=self.model, verbose=verbose, params={**params, "metrics": self.metrics_names}
        )
        try:
            results = test_loop(self.steps, self.state, self.test_step, source, callback_list)
        finally:
            self.steps.end_test_check()
        if return_dict:
            return results
        values = list(results.values())
        return values[0] if len(values) == 1 else values

    def predict(
        self,
        x: Any,
        batch_size: int | None = None,
        verbose: int | str = 0,
        steps: int | None = None,
        callbacks: Any = None,
    ) -> Any:
        """The module's outputs for ``x``, concatenated over batches, as tensors on the trainer's device.

        Example:
            >>> import torch
            >>> from torchcb import Trainer
            >>> net = torch.nn.Linear(2, 3)
            >>> trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", device="cpu")
            >>> trainer.predict(torch.ones(5, 2), batch_size=2).shape
            torch.Size([5, 3])
        """
        verbose = check_verbose(verbose)
        batching = Batching(batch_size=batch_size, steps=steps, steps_argument="steps")
        source = inference_source(self.steps, x, None, batching, with_targets=False)
        params = {"verbose": verbose, "epochs": 1, "steps": source.steps, "samples": source.samples, "metrics": []}
        callback_list = for_inference(callbacks, model=self.model, verbose=verbose, params=params)
        return predict_loop(self.steps, self.predict_step, source, callback_list)

    # ----------------------------------------------------------------- checkpoints (torchcb.checkpoint)

    def save_checkpoint(
        self,
        path: str | os.PathLike,
        *,
        all_ranks: bool = False,
        keep_previous: str | os.PathLike | None = None,
        background: bool = False,
    ) -> None:
        """Write the full training state to ``path`` (``model.save``); see :meth:`Checkpointer.save_checkpoint`."""
        self.checkpointer.save_checkpoint(path, all_ranks=all_ranks, keep_previous=keep_previous, background=background)

    def save_weights(self, path: str | os.PathLike, *, background: bool = False) -> None:
        """Write the module's ``state_dict`` to ``path`` (``model.save_weights``), as :meth:`save_checkpoint` writes."""
        self.checkpointer.save_weights(path, background=background)

    def load_checkpoint(self, path: str | os.PathLike) -> int:
        """Restore a full checkpoint; the next ``fit`` resumes where it was written (see
        :meth:`Checkpointer.load_checkpoint`). Returns the epoch the next ``fit`` starts at."""
        return self.checkpointer.load_checkpoint(path)

    def restore_state(self, state: TrainingState, source: str = "the checkpoint") -> int:
        """What :meth:`load_checkpoint` does, for a state already read (``source`` names it in errors)."""
        return self.checkpointer.restore_state(state, source)

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load module weights from ``save_weights`` output or from a full checkpoint (checked first)."""
        self.checkpointer.load_weights(path)

    def wait_for_writes(self) -> None:
        """Return once every checkpoint submitted during ``fit`` is on disk (``fit`` ends with it)."""
        self.checkpointer.writer.wait()
