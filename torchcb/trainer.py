"""The Trainer: Keras ``fit``/``evaluate``/``predict`` over a user's own module and optimizer.

The whole training loop is :meth:`Trainer.fit`, readable top to bottom. Per batch it runs
the step and the batch hooks and nothing else: the step returns device tensors, the batch
logs hold them unread (see ``torchcb.logs``), and the loop sums them on the device. The
callbacks are reached through their ``CallbackList``; what a full checkpoint holds is
``torchcb.checkpoint.TrainingState``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from torchcb import distributed, sharded
from torchcb._checks import check_int, check_verbose, validation_schedule
from torchcb.callbacks.callback_list import CallbackList
from torchcb.callbacks.defaults import for_fit, for_inference
from torchcb.callbacks.history import History
from torchcb.checkpoint import BackgroundWriter, Checkpointing, TrainingState, rng_state, set_rng_state
from torchcb.data import (
    ArraySource,
    Batch,
    Batching,
    Placement,
    Source,
    ValidationArrays,
    is_array_input,
    make_source,
    split_arrays,
    validation_source,
)
from torchcb.facade import KerasModel
from torchcb.logs import EpochTotals, Logs, resolve_pending
from torchcb.step import Steps, module_modes, set_modes
from torchcb.tree import concatenate

__all__ = ["Trainer"]


class Trainer(Steps, Checkpointing):
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

    ``train_step``, ``test_step`` and ``predict_step`` come from :class:`torchcb.step.Steps`;
    override them on a subclass for a model that is not one input and one target.
    ``save_checkpoint``, ``save_weights``, ``load_checkpoint``, ``load_weights`` and
    ``wait_for_writes`` come from :class:`torchcb.checkpoint.Checkpointing`.

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
        super().__init__(
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
        )
        self.stop_check_every = check_int(stop_check_every, "stop_check_every", 1)
        self.epochs_completed = 0
        self.batches_done = 0  # batches finished in the current epoch
        self.history: History | None = None
        self.current_batch: Batch | None = None  # the batch being trained on, for callbacks that trace the module
        self.callback_list: CallbackList | None = None  # the callbacks of the running fit
        self.last_callback_list: CallbackList | None = None  # a checkpoint saved after fit holds their state
        self.epoch_start_rng: dict[str, Any] | None = None  # random state at the start of the current epoch
        self._pending_resume: TrainingState | None = None  # a loaded checkpoint the next fit resumes from
        self._resume: TrainingState | None = None  # the one this fit resumes from
        self.writer = BackgroundWriter()  # checkpoints saved during fit are written off the training path
        self.serialize_at_once_below = 2**20  # bytes of tensors under which a checkpoint is serialized at once
        self.model = KerasModel(self)

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
        train, val = self._fit_sources(
            x, y, batch_size, shuffle, validation_split, validation_data, class_weight, sample_weight,
            steps_per_epoch, validation_steps,
        )  # fmt: skip
        totals = EpochTotals({m.name for m in self.metric_objects if m.stateful}, skip=("batch", "size"))
        callbacks, history = self._fit_callbacks(callbacks, verbose, train, totals)  # the loop sums the epoch
        callbacks.writer = self.writer  # a failed background write surfaces at the next hook
        batch_size = batch_size or (32 if is_array_input(x) else None)
        callbacks.set_params(self._fit_params(batch_size, epochs, verbose, train, validating=val is not None))

        # 2. Train.
        model = self.model
        self.history = model.history = history
        self.callback_list = self.last_callback_list = callbacks
        model.stop_training = False
        self.restore_pending_gradients(None)  # no gradient of an interrupted fit leaks into this one
        self._train_loss = self.loss.for_targets(train.y) if isinstance(train, ArraySource) else self.loss.fn
        # a module left in eval mode trains in training mode, as Keras trains, and goes back after
        modes_before = None if self.module.training else module_modes(self.module)
        self.begin_fit_steps(train, val)  # the first batch checks the targets against the outputs
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
            start_epoch, skip = self.resume_point(callbacks, initial_epoch, epochs)
            callbacks.begin_train_batches()
            for epoch in range(start_epoch, epochs):
                if not skip:  # a run resumed mid-epoch restored the metrics of the epoch so far
                    self._reset_stateful_metrics()
                totals.reset()
                callbacks.on_epoch_begin(epoch, {})  # a resumed epoch opens too, for every callback
                if skip:
                    self.resume_epoch(callbacks)  # the epoch sums, the bar's count, the rates: as they were
                train.set_epoch(epoch)
                for step, batch in self._epoch_batches(train, skip):
                    self.current_batch = batch
                    logs = callbacks.train_batch_begin(step, batch.size)
                    outputs = self.train_step(batch)
                    self.optimizer_steps += 1
                    self.batches_done = step + 1
                    totals.add(outputs, batch.size)  # on the device, read back at the epoch's end
                    callbacks.train_batch_end(step, batch.size, outputs, logs)
                    if ranks:  # a stop asked on any rank takes effect at the next agreement
                        if (step + 1) % self.stop_check_every == 0 and self._agree_on_stop():
                            break
                    elif model.stop_training:
                        break
                skip = 0
                if ranks:
                    self._agree_on_stop()  # every rank validates, or none does
                self.step_optimizer()  # a last, partial group of accumulated gradients
                epoch_logs = {}
                # Keras validates only an epoch that ran to its end, not after a batch-level stop
                if val is not None and not model.stop_training and should_validate(epoch):
                    val_logs = self._test_loop(val, callbacks)
                    epoch_logs.update(("val_" + key, value) for key, value in val_logs.items())
                self.epochs_completed, self.batches_done = epoch + 1, 0
                callbacks.on_epoch_end(epoch, epoch_logs)  # BaseLogger, first, adds the training averages
                if ranks:
                    self._agree_on_stop()
                if model.stop_training or train.exhausted:
                    break
            if self.weight_average is not None and epochs > 0:
                self.weight_average.finalize()  # as Keras' fit: the module ends with the averaged weights
            callbacks.on_train_end(epoch_logs)
            self.writer.wait()  # every checkpoint is on disk when fit returns
        except BaseException as error:
            callbacks.on_train_error(error)  # callbacks release files and threads; Keras' hooks stay as they are
            self.writer.wait()  # what was written stays whole (a failed write raises, chained to the error)
            raise
        finally:
            self.callback_list = None
            self.current_batch = None
            self._train_loss = self.loss.fn
            self.end_fit_steps()
            if modes_before is not None:
                set_modes(modes_before)
        return history

    def _fit_sources(
        self,
        x: Any,
        y: Any,
        batch_size: int | None,
        shuffle: Any,
        validation_split: Any,
        validation_data: Any,
        class_weight: Any,
        sample_weight: Any,
        steps_per_epoch: int | None,
        validation_steps: int | None,
    ) -> tuple[Source, Source | None]:
        """The training and validation batches of ``fit``, every argument checked."""
        if not isinstance(shuffle, bool):
            raise ValueError(f"shuffle must be True or False, got {shuffle!r}.")
        if not isinstance(validation_split, (int, float)) or not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split must be a float in [0, 1), got {validation_split!r}.")
        if validation_split and not is_array_input(x):
            raise ValueError(
                f"validation_split needs in-memory arrays or tensors; x is a {type(x).__name__}. "
                "Pass validation_data instead."
            )
        if validation_split and validation_data is None:
            (x, y, sample_weight), validation_data = split_arrays(x, y, sample_weight, validation_split)
        seed = distributed.shared_seed() if self.distributed else None
        batching = Batching(
            batch_size=batch_size, shuffle=shuffle, steps=steps_per_epoch, shard=self._shard(), seed=seed
        )
        placement = Placement(self.device, float_inputs=self.float_inputs)
        train = make_source(
            x, y, batching=batching, placement=placement, sample_weight=sample_weight, class_weight=class_weight
        )
        if (sample_weight is not None or class_weight) and not self.loss.supports_weights:
            self.loss.per_sample(None, None)  # raises the explanation
        val = validation_source(
            validation_data,
            batch_size=batch_size,
            steps=validation_steps,
            placement=placement,
            shard=self._shard(),
        )
        self.check_data(train, val)
        return train, val

    def _fit_params(self, batch_size: int | None, epochs: int, verbose: int, train: Source, validating: bool) -> dict:
        """Keras 2's ``params`` for the callbacks of a ``fit``."""
        return {
            "batch_size": batch_size,
            "epochs": epochs,
            "steps": train.steps,
            "samples": train.samples,
            "verbose": verbose,
            "do_validation": validating,
            "metrics": self.metrics_names + (["val_" + n for n in self.metrics_names] if validating else []),
        }

    def _fit_callbacks(
        self, callbacks: Any, verbose: int, train: Source, totals: EpochTotals
    ) -> tuple[CallbackList, History]:
        """``[BaseLogger, ProgbarLogger (if verbose), *user callbacks, History]``; BaseLogger averages ``totals``."""
        count_mode = "samples" if train.samples is not None and not train.fixed_steps else "steps"
        callback_list = for_fit(callbacks, model=self.model, verbose=verbose, count_mode=count_mode, totals=totals)
        return callback_list, callback_list.history

    def _epoch_batches(self, train: Source, skip: int) -> Any:
        """``(index, batch)`` pairs for one epoch; with ``skip``, the rest of an epoch resumed mid-way."""
        resume, self._resume = self._resume, None
        if resume is not None and resume.stop_training:
            set_rng_state(resume.rng)
            return iter(())  # the run had been asked to stop during this epoch: no batch is left
        if resume is not None and skip and resume.epoch_rng is not None:
            set_rng_state(resume.epoch_rng)  # rebuild the interrupted epoch's batch order
            self.epoch_start_rng = resume.epoch_rng
            batches = train.epoch(skip)
            set_rng_state(resume.rng)  # then continue from the random state of the backup
            return enumerate(batches, start=skip)
        if resume is not None:
            set_rng_state(resume.rng)
        self.epoch_start_rng = rng_state()
        return enumerate(train.epoch(skip), start=skip)

    def _shard(self) -> tuple[int, int] | None:
        """``(rank, world size)`` under torchrun: what part of the data this process takes."""
        return (distributed.get_rank(), distributed.get_world_size()) if self.distributed else None

    def _agree_on_stop(self) -> bool:
        """Under torchrun: stop everywhere if any rank asked to (one small all-reduce)."""
        self.model.stop_training = distributed.any_rank(self.model.stop_training)
        return self.model.stop_training

    def _test_loop(self, source: Source, callbacks: CallbackList) -> dict[str, float]:
        """Run the test hooks over ``source``; returns the size-weighted averages of the step's logs."""
        modes = module_modes(self.module)  # each submodule's own mode, put back after, even on an error
        self.module.eval()
        try:
            for callback in self.callback_list or ():  # the training epoch's metric values, before the reset
                if isinstance(getattr(callback, "totals", None), EpochTotals):
                    callback.totals.settle()
            self._reset_stateful_metrics()
            totals = EpochTotals({m.name for m in self.metric_objects if m.stateful}, skip=("batch", "size"))
            callbacks.on_test_begin({})
            batch_logs = bool(callbacks.methods("on_test_batch_begin") or callbacks.methods("on_test_batch_end"))
            with torch.no_grad(), self.gathered():
                for step, batch in enumerate(source.epoch()):
                    logs = Logs(batch=step, size=batch.size)
                    callbacks.on_test_batch_begin(step, logs)
                    outputs = self.test_step(batch)
                    if batch_logs:  # a stateful metric computes only for logs a callback is handed
                        resolve_pending(outputs)
                    logs.update_raw(outputs)
                    totals.add(outputs, batch.size)
                    callbacks.on_test_batch_end(step, logs)
            results = totals.result()
            callbacks.on_test_end(dict(results))
        finally:
            set_modes(modes)
        return results

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

        Example:
            >>> import torch
            >>> from torchcb import Trainer
            >>> net = torch.nn.Linear(2, 1)
            >>> trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", metrics=["mae"], device="cpu")
            >>> sorted(trainer.evaluate(torch.ones(4, 2), torch.ones(4, 1), verbose=0, return_dict=True))
            ['loss', 'mae']
        """
        verbose = check_verbose(verbose)
        source = make_source(
            x,
            y,
            batching=Batching(
                batch_size=batch_size, steps=steps, steps_argument="steps", shard=self._shard(), pad=False
            ),
            placement=Placement(self.device, float_inputs=self.float_inputs),
            sample_weight=sample_weight,
        )
        params = {"verbose": verbose, "epochs": 1, "steps": source.steps, "samples": source.samples}
        callback_list = for_inference(
            callbacks, model=self.model, verbose=verbose, params={**params, "metrics": self.metrics_names}
        )
        results = self._test_loop(source, callback_list)
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
        source = make_source(
            x,
            None,
            batching=Batching(batch_size=batch_size, steps=steps, steps_argument="steps"),
            placement=Placement(self.device, float_inputs=self.float_inputs),
            with_targets=False,
        )
        params = {"verbose": verbose, "epochs": 1, "steps": source.steps, "samples": source.samples, "metrics": []}
        callback_list = for_inference(callbacks, model=self.model, verbose=verbose, params=params)
        modes = module_modes(self.module)  # put back after, also on an error: a frozen submodule stays frozen
        self.module.eval()
        outputs = []
        try:
            callback_list.on_predict_begin({})
            with torch.no_grad(), self.gathered():
                for step, batch in enumerate(source.epoch()):
                    callback_list.on_predict_batch_begin(step, {"batch": step, "size": batch.size})
                    output = self.predict_step(batch)
                    outputs.append(output)
                    callback_list.on_predict_batch_end(step, {"batch": step, "size": batch.size, "outputs": output})
            callback_list.on_predict_end({})
        finally:
            set_modes(modes)
        return concatenate(outputs)
