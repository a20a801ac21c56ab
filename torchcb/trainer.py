"""The Trainer: Keras ``fit``/``evaluate``/``predict`` over a user's own module and optimizer.

The whole training loop is :meth:`Trainer.fit`, readable top to bottom. Per batch it runs
the step and the batch hooks and nothing else: the step returns device tensors, the batch
logs hold them unread (see ``torchcb.logs``), and BaseLogger sums them on the device.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from torchcb import distributed
from torchcb._checks import check_int, is_int
from torchcb.callbacks.base import CallbackList, check_callback
from torchcb.callbacks.history import BaseLogger, History
from torchcb.callbacks.progbar import ProgbarLogger
from torchcb.checkpoint import FORMAT, FORMAT_VERSION, atomic_save, check_writable, rng_state, safe_load, set_rng_state
from torchcb.data import Batch, Source, is_array_input, make_source, split_arrays
from torchcb.facade import KerasModel
from torchcb.keras_interop import KerasCallback, is_keras_callback, wrap_keras_callbacks
from torchcb.logs import EpochTotals, Logs
from torchcb.metrics import resolve_loss, resolve_metrics

__all__ = ["Trainer"]

_PRECISIONS = ("32", "bf16-mixed", "16-mixed")
_NO_AUTOCAST = contextlib.nullcontext()


def _validation_schedule(validation_freq: Any) -> Any:
    """A predicate on the 0-based epoch: does validation run after it? (Keras counts from 1.)"""
    if is_int(validation_freq) and validation_freq >= 1:
        return lambda epoch: (epoch + 1) % validation_freq == 0
    if isinstance(validation_freq, (list, tuple, set, range)) and all(is_int(e) and e >= 1 for e in validation_freq):
        epochs = set(validation_freq)
        return lambda epoch: (epoch + 1) in epochs
    raise ValueError(
        f"validation_freq must be an int >= 1 or a list of 1-based epoch numbers, got {validation_freq!r}."
    )


def _concatenate(outputs: list[Any]) -> Any:
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs) if first.dim() > 0 else torch.stack(outputs)
    if isinstance(first, dict):
        return {k: _concatenate([o[k] for o in outputs]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(_concatenate(list(parts)) for parts in zip(*outputs))
    return outputs


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

    Attributes:
        model: the Keras-shaped facade every callback sees (``torchcb.facade.KerasModel``).
        history: the History of the last ``fit``.

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
    ) -> None:
        if not isinstance(module, torch.nn.Module):
            raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}.")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}.")
        local_rank = distributed.init_from_env(process_group)  # None in a single process
        self.distributed = local_rank is not None
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
            if self.distributed and device == "cuda":
                device = f"cuda:{local_rank}"  # each rank on its own GPU
                torch.cuda.set_device(local_rank)
        self.device = torch.device(device)
        self.module = module.to(self.device)
        self.optimizer = optimizer
        self.loss = resolve_loss(loss)
        if isinstance(loss, torch.nn.Module):
            loss.to(self.device)
        self.metric_objects = resolve_metrics(metrics, self.loss)
        for metric in self.metric_objects:
            if metric.stateful:
                metric.to(self.device)  # type: ignore[attr-defined]
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(_PRECISIONS)}, got {precision!r}.")
        if precision == "16-mixed" and self.device.type != "cuda":
            raise ValueError("precision='16-mixed' needs a CUDA device; use 'bf16-mixed' on the CPU.")
        for name, value in (("clipnorm", clipnorm), ("clipvalue", clipvalue), ("global_clipnorm", global_clipnorm)):
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"{name} must be a positive number or None, got {value!r}.")
        check_int(accumulate_steps, "accumulate_steps", 1)
        self.precision = precision
        self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm
        self.accumulate_steps = accumulate_steps
        self._accumulated = 0  # batches whose gradients wait for the next optimizer step
        self._autocast_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
        check_int(stop_check_every, "stop_check_every", 1)
        self.stop_check_every = stop_check_every
        self._module_call = torch.compile(module) if compile else module
        # Training steps go through DistributedDataParallel under torchrun; evaluation and
        # predict call the module itself, so ranks with uneven shards never wait on each other.
        self._train_call = self._module_call
        if self.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self._train_call = DistributedDataParallel(
                self._module_call, device_ids=device_ids, process_group=process_group
            )
        self._plain_update = (
            accumulate_steps == 1 and clipnorm is None and clipvalue is None and global_clipnorm is None
        )
        self.optimizer_steps = 0
        self.epochs_completed = 0
        self.history: History | None = None
        self.current_batch: Batch | None = None  # the batch being trained on, for callbacks that trace the module
        self.batches_done = 0  # batches finished in the current epoch
        # a GradScaler keeps float16 gradients from underflowing
        self.scaler: Any = torch.amp.GradScaler("cuda") if precision == "16-mixed" else None
        self._plain_update = self._plain_update and self.scaler is None
        self._fast_step = self._plain_update and self._autocast_dtype is None
        self._callback_list: CallbackList | None = None
        self._epoch_rng: dict[str, Any] | None = None  # random state at the start of the current epoch
        self._deferred: list[Any] = []
        self._pending_resume: dict[str, Any] | None = None  # a loaded checkpoint the next fit resumes from
        self._resume: dict[str, Any] | None = None  # the one this fit resumes from
        self.model = KerasModel(self)

    @property
    def metrics_names(self) -> list[str]:
        """``["loss", *metric names]``, the keys of the logs."""
        return ["loss"] + [m.name for m in self.metric_objects]

    # ----------------------------------------------------------------- the steps

    def forward(self, x: Any, *, training: bool = False) -> Any:
        """Call the module: a list/tuple of inputs is spread as arguments, a dict as keywords."""
        module = self._train_call if training else self._module_call
        if isinstance(x, dict):
            return module(**x)
        if isinstance(x, (list, tuple)):
            return module(*x)
        return module(x)

    def autocast(self) -> Any:
        """The mixed-precision context of ``precision`` (a no-op for ``"32"``)."""
        if self._autocast_dtype is None:
            return _NO_AUTOCAST
        return torch.autocast(device_type=self.device.type, dtype=self._autocast_dtype)

    def apply_gradients(self, loss: torch.Tensor) -> None:
        """Backward pass, then clipping and the optimizer step (every ``accumulate_steps`` batches)."""
        if self._plain_update:  # the common case, with nothing in between
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            return
        if self._accumulated == 0:
            self.optimizer.zero_grad(set_to_none=True)
        if self.accumulate_steps > 1:
            loss = loss / self.accumulate_steps
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        self._accumulated += 1
        if self._accumulated == self.accumulate_steps:
            self.step_optimizer()

    def step_optimizer(self) -> None:
        """Clip the gradients gathered so far and take the optimizer step."""
        if self._accumulated == 0:
            return
        self._accumulated = 0
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clipping sees the true gradients
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        if self.clipvalue is not None:
            torch._foreach_clamp_min_(grads, -self.clipvalue)
            torch._foreach_clamp_max_(grads, self.clipvalue)
        if self.clipnorm is not None and grads:  # each gradient tensor on its own, as Keras does
            norms = torch._foreach_norm(grads)
            scales = [torch.clamp(self.clipnorm / (norm + 1e-6), max=1.0) for norm in norms]
            torch._foreach_mul_(grads, scales)
        if self.global_clipnorm is not None and grads:
            torch.nn.utils.clip_grad_norm_(params, self.global_clipnorm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def compute_loss(self, y_pred: Any, y_true: Any, sample_weight: torch.Tensor | None = None) -> torch.Tensor:
        """The batch loss; with sample weights, the mean of the weighted per-sample losses."""
        if sample_weight is None:
            return self.loss.fn(y_pred, y_true)
        return (self.loss.per_sample(y_pred, y_true) * sample_weight).mean()

    def compute_metrics(self, y_pred: Any, y_true: Any, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batch logs: ``loss`` and each metric, as device tensors."""
        logs = {"loss": loss.detach()}
        if self.metric_objects:
            with torch.no_grad():
                for metric in self.metric_objects:
                    logs[metric.name] = metric(y_pred, y_true)
        return logs

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One optimisation step on ``batch`` (``.x``, ``.y``, ``.sample_weight``, ``.size``).

        Override it for models that are not one input and one target; return a dict of
        scalar device tensors, which become the batch logs.
        """
        x, y, sample_weight, _ = batch
        if self._fast_step:
            # The default configuration, in direct calls: a small model's step is short, and
            # every Python call around it shows in the throughput (see benchmarks/).
            y_pred = self._train_call(x) if type(x) is torch.Tensor else self.forward(x, training=True)
            loss = self.loss.fn(y_pred, y) if sample_weight is None else self.compute_loss(y_pred, y, sample_weight)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        else:  # mixed precision, clipping or gradient accumulation
            with self.autocast():
                y_pred = self.forward(x, training=True)
                loss = self.compute_loss(y_pred, y, sample_weight)
            self.apply_gradients(loss)
        if not self.metric_objects:
            return {"loss": loss.detach()}
        return self.compute_metrics(y_pred, y, loss)  # metrics run under no_grad

    def test_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Loss and metrics on ``batch``, without gradients. Override like :meth:`train_step`."""
        with self.autocast():
            y_pred = self.forward(batch.x)
            loss = self.compute_loss(y_pred, batch.y, batch.sample_weight)
        return self.compute_metrics(y_pred, batch.y, loss)

    def predict_step(self, batch: Batch) -> Any:
        """The module's outputs for ``batch.x``."""
        with self.autocast():
            return self.forward(batch.x)

    def _reset_stateful_metrics(self) -> None:
        for metric in self.metric_objects:
            if metric.stateful:
                metric.reset()  # type: ignore[attr-defined]

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

        Everything is checked before any hook runs: a bad argument raises ``ValueError``
        naming it. ``validation_split`` takes the last fraction of in-memory arrays before
        shuffling; ``validation_data`` is ``(x, y)``, ``(x, y, sample_weight)``, a Dataset,
        a DataLoader or an iterable of batches.

        Example:
            >>> import numpy as np, torch
            >>> from torchcb import Trainer
            >>> net = torch.nn.Linear(3, 1)
            >>> trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", device="cpu")
            >>> history = trainer.fit(np.ones((8, 3)), np.ones((8, 1)), batch_size=4, epochs=2, verbose=0)
            >>> history.epoch
            [0, 1]
        """
        # 1. Check the arguments and build the data, before any hook runs.
        epochs = check_int(epochs, "epochs", 0)
        initial_epoch = check_int(initial_epoch, "initial_epoch", 0)
        verbose = self._check_verbose(verbose)
        if not isinstance(shuffle, bool):
            raise ValueError(f"shuffle must be True or False, got {shuffle!r}.")
        should_validate = _validation_schedule(validation_freq)
        if not isinstance(validation_split, (int, float)) or not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split must be a float in [0, 1), got {validation_split!r}.")
        if validation_split and not is_array_input(x):
            raise ValueError(
                f"validation_split needs in-memory arrays or tensors; x is a {type(x).__name__}. "
                "Pass validation_data instead."
            )
        if validation_split and validation_data is None:
            (x, y, sample_weight), validation_data = split_arrays(x, y, sample_weight, validation_split)
        shard = (distributed.get_rank(), distributed.get_world_size()) if self.distributed else None
        train = make_source(
            x,
            y,
            batch_size=batch_size,
            shuffle=shuffle,
            device=self.device,
            steps=steps_per_epoch,
            sample_weight=sample_weight,
            class_weight=class_weight,
            shard=shard,
            seed=distributed.shared_seed() if self.distributed else None,
        )
        if (sample_weight is not None or class_weight) and not self.loss.supports_weights:
            self.loss.per_sample(None, None)  # raises the explanation
        val = self._validation_source(validation_data, batch_size, validation_steps)
        callback_list, history = self._fit_callbacks(callbacks, verbose, train)
        callback_list.set_params(
            {
                "batch_size": batch_size or (32 if is_array_input(x) else None),
                "epochs": epochs,
                "steps": train.steps,
                "samples": train.samples,
                "verbose": verbose,
                "do_validation": val is not None,
                "metrics": self.metrics_names + (["val_" + n for n in self.metrics_names] if val else []),
            }
        )

        # 2. Train.
        model = self.model
        self.history = model.history = history
        self._callback_list = callback_list
        model.stop_training = False
        callback_list.on_train_begin({})
        # A checkpoint loaded before fit or in on_train_begin (BackupAndRestore) says where to resume.
        start_epoch, skip = self._resume_point(callback_list, initial_epoch)
        epoch_logs: dict[str, Any] = {}
        ranks = self.distributed  # under torchrun, ranks agree on stopping every stop_check_every batches
        check_every = self.stop_check_every
        # The hooks of a training batch, looked up once: a small model's step is short. The
        # BaseLogger takes each step's outputs directly, so Keras' batch logs are built only
        # when some other callback looks at single batches.
        batch_begin = callback_list.methods("on_train_batch_begin")
        batch_end = callback_list.methods("on_train_batch_end")
        sums = next((c for c in callback_list if type(c) is BaseLogger), None)  # not a subclass's
        if sums is not None:
            batch_end = [hook for hook in batch_end if getattr(hook, "__self__", None) is not sums]
        batch_logs = bool(batch_begin or batch_end)
        try:
            for epoch in range(start_epoch, epochs):
                self.module.train()
                if not skip:  # a run resumed mid-epoch began this epoch before it stopped
                    self._reset_stateful_metrics()
                    callback_list.on_epoch_begin(epoch, {})
                epoch_logs = {}
                train.set_epoch(epoch)
                batches = self._epoch_batches(train, skip)
                skip = 0
                for step, batch in batches:
                    self.current_batch = batch
                    if batch_logs:
                        logs = Logs(batch=step, size=batch.size)
                        for hook in batch_begin:
                            hook(step, logs)
                    outputs = self.train_step(batch)
                    if sums is not None:
                        sums.add(outputs, batch.size)  # first, as BaseLogger is in Keras' order
                    self.optimizer_steps += 1
                    self.batches_done = step + 1
                    if batch_logs:
                        logs.update_raw(outputs)
                        for hook in batch_end:
                            hook(step, logs)
                    if self._deferred:
                        self._run_deferred()  # full checkpoints asked for in this round
                    if ranks:  # a stop asked on any rank takes effect at the next agreement
                        if (step + 1) % check_every == 0 and self._agree_on_stop():
                            break
                    elif model.stop_training:
                        break
                if ranks:
                    self._agree_on_stop()  # every rank validates, or none does
                self.step_optimizer()  # a last, partial group of accumulated gradients
                # Keras validates only an epoch that ran to its end, not after a batch-level stop
                if val is not None and not model.stop_training and should_validate(epoch):
                    val_logs = self._test_loop(val, callback_list)
                    epoch_logs.update(("val_" + key, value) for key, value in val_logs.items())
                self.epochs_completed = epoch + 1
                self.batches_done = 0
                callback_list.on_epoch_end(epoch, epoch_logs)  # BaseLogger, first, adds the training averages
                self._run_deferred()
                if ranks:
                    self._agree_on_stop()
                if model.stop_training or train.exhausted:
                    break
            callback_list.on_train_end(epoch_logs)
            self._run_deferred()
        except BaseException as error:
            callback_list.on_train_error(error)  # callbacks release files and threads; Keras' hooks stay as they are
            raise
        finally:
            self._deferred.clear()
            self._callback_list = None
            self.current_batch = None
        return history

    def _epoch_batches(self, train: Source, skip: int) -> Any:
        """``(index, batch)`` pairs for one epoch; with ``skip``, the rest of an epoch resumed mid-way."""
        resume, self._resume = self._resume, None
        if resume is not None and skip and resume.get("epoch_rng") is not None:
            set_rng_state(resume["epoch_rng"])  # rebuild the interrupted epoch's batch order
            self._epoch_rng = resume["epoch_rng"]
            batches = train.epoch(skip)
            set_rng_state(resume["rng"])  # then continue from the random state of the backup
            return enumerate(batches, start=skip)
        if resume is not None:
            set_rng_state(resume["rng"])
        self._epoch_rng = rng_state()
        return enumerate(train.epoch(skip), start=skip)

    def _eval_shard(self) -> tuple[int, int] | None:
        # Evaluation shards without padding: every sample counts once in the reduced averages.
        return (distributed.get_rank(), distributed.get_world_size()) if self.distributed else None

    def _agree_on_stop(self) -> bool:
        """Under torchrun: stop everywhere if any rank asked to (one small all-reduce)."""
        self.model.stop_training = distributed.any_rank(self.model.stop_training)
        return self.model.stop_training

    def _check_verbose(self, verbose: Any) -> int:
        if verbose == "auto":
            return 1
        if verbose not in (0, 1, 2) or isinstance(verbose, bool):
            raise ValueError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}.")
        return int(verbose)

    def _validation_source(self, validation_data: Any, batch_size: int | None, steps: int | None) -> Source | None:
        if validation_data is None:
            return None
        if isinstance(validation_data, tuple) and len(validation_data) in (2, 3) and is_array_input(validation_data[0]):
            x_val, y_val = validation_data[0], validation_data[1]
            weights = validation_data[2] if len(validation_data) == 3 else None
            return make_source(
                x_val,
                y_val,
                batch_size=batch_size,
                shuffle=False,
                device=self.device,
                steps=steps,
                sample_weight=weights,
                steps_argument="validation_steps",
                shard=self._eval_shard(),
                pad=False,
            )
        if isinstance(validation_data, (tuple, list)) and len(validation_data) not in (2, 3):
            raise ValueError(
                f"validation_data must be (x, y), (x, y, sample_weight), a Dataset, a DataLoader or an iterable "
                f"of batches; got a {type(validation_data).__name__} of {len(validation_data)} items."
            )
        return make_source(
            validation_data,
            None,
            batch_size=None if not isinstance(validation_data, torch.utils.data.Dataset) else batch_size,
            shuffle=False,
            device=self.device,
            steps=steps,
            steps_argument="validation_steps",
            shard=self._eval_shard(),
            pad=False,
        )

    def _fit_callbacks(
        self, callbacks: Iterable[Any] | None, verbose: int, train: Source
    ) -> tuple[CallbackList, History]:
        """``[BaseLogger, ProgbarLogger (if verbose), *user callbacks, History]``, as Keras 2 orders them."""
        if callbacks is not None and not isinstance(callbacks, (list, tuple)):
            raise ValueError(f"callbacks must be a list of Callback instances, got {type(callbacks).__name__}.")
        user = list(callbacks or [])
        for index, callback in enumerate(user):
            check_callback(callback, f"callbacks[{index}]")
        history = next((c for c in user if isinstance(c, History) or _is_keras(c, "History")), None)
        if history is None:
            history = History()
        else:
            user.remove(history)  # a History passed in is used, last, and keeps accumulating
        keras_progbar = any(_is_keras(c, "ProgbarLogger") for c in user)
        user = self._with_keras_adapters(user)
        stateful = [m.name for m in self.metric_objects if m.stateful]
        ordered: list[Any] = []
        if not any(isinstance(c, BaseLogger) for c in user):
            ordered.append(BaseLogger(stateful_metrics=stateful))
        if verbose and not keras_progbar and not any(isinstance(c, ProgbarLogger) for c in user):
            count_mode = (
                "samples" if train.samples is not None and not getattr(train, "_fixed_steps", False) else "steps"
            )
            ordered.append(ProgbarLogger(count_mode=count_mode, stateful_metrics=stateful))
        last = KerasCallback(history) if is_keras_callback(history) else history
        callback_list = CallbackList(ordered + user + [last])
        callback_list.set_model(self.model)
        return callback_list, history

    def _with_keras_adapters(self, callbacks: list[Any]) -> list[Any]:
        """Callbacks from the keras package run in an adapter (keras is imported only then)."""
        if not any(is_keras_callback(c) for c in callbacks):
            return callbacks
        self.model.enable_keras_metrics()
        return wrap_keras_callbacks(callbacks)

    def _test_loop(self, source: Source, callback_list: CallbackList) -> dict[str, float]:
        """Run the test hooks over ``source``; returns the size-weighted averages of the step's logs."""
        was_training = self.module.training
        self.module.eval()
        self._reset_stateful_metrics()
        totals = EpochTotals({m.name for m in self.metric_objects if m.stateful}, skip=("batch", "size"))
        callback_list.on_test_begin({})
        with torch.no_grad():
            for step, batch in enumerate(source.epoch()):
                logs = Logs(batch=step, size=batch.size)
                callback_list.on_test_batch_begin(step, logs)
                outputs = self.test_step(batch)
                logs.update_raw(outputs)
                totals.add(outputs, batch.size)
                callback_list.on_test_batch_end(step, logs)
        results = totals.result()
        callback_list.on_test_end(dict(results))
        self.module.train(was_training)
        return results

    # ----------------------------------------------------------------- evaluate / predict

    def _inference_callbacks(self, callbacks: Any, verbose: int, source: Source, metrics: list[str]) -> CallbackList:
        if callbacks is not None and not isinstance(callbacks, (list, tuple)):
            raise ValueError(f"callbacks must be a list of Callback instances, got {type(callbacks).__name__}.")
        user = self._with_keras_adapters(list(callbacks or []))
        if verbose and not any(isinstance(c, ProgbarLogger) or _is_keras(c, "ProgbarLogger") for c in user):
            user.append(ProgbarLogger(count_mode="steps"))
        callback_list = CallbackList(user)
        callback_list.set_model(self.model)
        callback_list.set_params(
            {"verbose": verbose, "epochs": 1, "steps": source.steps, "samples": source.samples, "metrics": metrics}
        )
        return callback_list

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
        verbose = self._check_verbose(verbose)
        source = make_source(
            x,
            y,
            batch_size=batch_size,
            shuffle=False,
            device=self.device,
            steps=steps,
            sample_weight=sample_weight,
            steps_argument="steps",
            shard=self._eval_shard(),
            pad=False,
        )
        callback_list = self._inference_callbacks(callbacks, verbose, source, self.metrics_names)
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
        verbose = self._check_verbose(verbose)
        source = make_source(
            x,
            None,
            batch_size=batch_size,
            shuffle=False,
            device=self.device,
            steps=steps,
            with_targets=False,
            steps_argument="steps",
        )
        callback_list = self._inference_callbacks(callbacks, verbose, source, [])
        was_training = self.module.training
        self.module.eval()
        outputs = []
        callback_list.on_predict_begin({})
        with torch.no_grad():
            for step, batch in enumerate(source.epoch()):
                callback_list.on_predict_batch_begin(step, {"batch": step, "size": batch.size})
                output = self.predict_step(batch)
                outputs.append(output)
                callback_list.on_predict_batch_end(step, {"batch": step, "size": batch.size, "outputs": output})
        callback_list.on_predict_end({})
        self.module.train(was_training)
        return _concatenate(outputs)

    # ----------------------------------------------------------------- checkpoints

    def _run_deferred(self) -> None:
        while self._deferred:
            self._deferred.pop(0)()

    def defer(self, action: Any) -> None:
        """Run ``action()`` once the current round of hooks has finished (at once outside ``fit``).

        Full checkpoints use it, so they hold the state of every callback after it has seen
        the epoch or batch, whatever the callback order.
        """
        if self._callback_list is None:
            action()
        else:
            self._deferred.append(action)

    def checkpoint_state(self) -> dict[str, Any]:
        """The full training state, as ``model.save`` writes it (see ``torchcb.checkpoint``)."""
        state: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "module": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epochs_completed,
            "batch": self.batches_done,
            "step": self.optimizer_steps,
            "rng": rng_state(),
            "callbacks": {},
        }
        if self.batches_done:
            state["epoch_rng"] = self._epoch_rng
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self._callback_list is not None:
            for key, callback in _keyed(self._callback_list):
                get_state = getattr(callback, "get_state", None)
                callback_state = get_state() if callable(get_state) else None
                if callback_state is not None:
                    state["callbacks"][key] = callback_state
        return state

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write the full training state to ``path``; inside ``fit``, once the current hook round ends."""
        if not distributed.is_main_process():
            return  # rank 0 writes; every rank holds the same weights
        check_writable(path, "checkpoint path")
        self.defer(lambda: atomic_save(self.checkpoint_state(), path))

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
        state = safe_load(path, map_location=self.device)
        if not (isinstance(state, dict) and state.get("format") == FORMAT):
            raise ValueError(f"{os.fspath(path)!r} is not a full torchcb checkpoint (written by model.save).")
        if state.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{os.fspath(path)!r} has format version {state['format_version']}; this torchcb reads up to {FORMAT_VERSION}."
            )
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.epochs_completed = int(state["epoch"])
        self.optimizer_steps = int(state["step"])
        self._pending_resume = state
        return self.epochs_completed

    def _resume_point(self, callback_list: CallbackList, initial_epoch: int) -> tuple[int, int]:
        """Apply a pending checkpoint to the callbacks; returns ``(epoch, batches to skip)``."""
        state, self._pending_resume = self._pending_resume, None
        self._resume = state
        if state is None:
            return initial_epoch, 0
        saved = state.get("callbacks", {})
        for key, callback in _keyed(callback_list):
            if key in saved and callable(getattr(callback, "set_state", None)):
                callback.set_state(saved[key])
        return int(state["epoch"]), int(state.get("batch", 0))

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load module weights from ``save_weights`` output or from a full checkpoint."""
        state = safe_load(path, map_location=self.device)
        if isinstance(state, dict) and state.get("format") == FORMAT:
            state = state["module"]
        if not isinstance(state, dict):
            raise ValueError(f"{os.fspath(path)!r} holds no state_dict.")
        self.module.load_state_dict(state)


def _is_keras(callback: Any, name: str) -> bool:
    callback = getattr(callback, "callback", callback)  # inside its adapter
    return is_keras_callback(callback) and any(k.__name__ == name for k in type(callback).__mro__)


def _keyed(callback_list: CallbackList) -> list[tuple[str, Any]]:
    """Each callback with a key that finds it again in another run: its class name, numbered if repeated."""
    counts: dict[str, int] = {}
    keyed = []
    for callback in callback_list:
        name = type(callback).__name__
        index = counts.get(name, 0)
        counts[name] = index + 1
        keyed.append((name if index == 0 else f"{name}_{index}", callback))
    return keyed
