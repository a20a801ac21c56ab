"""The steps Keras lets a model override, and the options they run with.

``train_step`` takes one path: forward under ``autocast``, the loss, then
``apply_gradients`` (gradients cleared at an accumulation group's start, the scaled
backward pass, and at the group's end clipping, Keras 2's time decay and the optimizer
step), through ``torch.compile`` and DistributedDataParallel when asked for (with
``use_ema``, every optimizer step also updates the weight average of ``torchcb.ema``);
``test_step`` and ``predict_step`` run without gradients. :class:`torchcb.Trainer` holds a
:class:`Steps` and runs its steps in its loops; override one on a ``Trainer`` subclass for
a model that is not one input and one target (``self.module``, ``self.compute_loss``,
``self.apply_gradients`` ... there are this object's).

Example:
    >>> import torch
    >>> from torchcb import Trainer
    >>> class PairTrainer(Trainer):
    ...     def train_step(self, batch):
    ...         (left, right), y = batch.x, batch.y
    ...         loss = self.compute_loss(self.module(left) + self.module(right), y)
    ...         self.apply_gradients(loss)
    ...         return {"loss": loss.detach()}
    >>> net = torch.nn.Linear(3, 1)
    >>> trainer = PairTrainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", device="cpu")
    >>> x = [torch.ones(8, 3), torch.ones(8, 3)]
    >>> len(trainer.fit(x, torch.zeros(8, 1), batch_size=4, epochs=2, verbose=0).history["loss"])
    2
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from torchcb import sharded
from torchcb._checks import check_forward_keys, check_int
from torchcb.data import ArraySource, Batch, Source
from torchcb.ema import WeightAverage, check_ema_arguments
from torchcb.losses import KNOWN_LOSSES, resolve_loss, target_broadcast, target_mismatch
from torchcb.metrics import resolve_metrics
from torchcb.state import FitState

# torch._foreach_* (the fused list operations torch.optim uses) are not among the names torch exports
# pyright: reportPrivateImportUsage=false

__all__ = ["PRECISIONS", "Steps", "module_modes", "set_modes"]

PRECISIONS = ("32", "bf16-mixed", "16-mixed")
_NO_AUTOCAST = contextlib.nullcontext()
_SPARSE = "sparse_categorical_crossentropy"


def module_modes(module: torch.nn.Module) -> list[tuple[torch.nn.Module, bool]]:
    """Each submodule with its training flag, for :func:`set_modes` to put back after a switch.

    A module's ``train()``/``eval()`` set every submodule; a submodule the user froze in eval
    mode (a BatchNorm, a backbone) keeps its mode only if the flags are put back one by one.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
        >>> _ = net[1].eval()
        >>> modes = module_modes(net)
        >>> _ = net.eval()
        >>> set_modes(modes)
        >>> net.training, net[1].training
        (True, False)
    """
    return [(submodule, submodule.training) for submodule in module.modules()]


def set_modes(modes: list[tuple[torch.nn.Module, bool]]) -> None:
    """Put back the training flags :func:`module_modes` captured."""
    for submodule, training in modes:
        submodule.training = training


class Steps:
    """The module, optimizer, loss and metrics, and the steps that use them (see the module's text).

    Args:
        module, optimizer, loss, metrics, precision, clipnorm, clipvalue, global_clipnorm,
        accumulate_steps, compile, use_ema, ema_momentum, ema_overwrite_frequency: as
        :class:`torchcb.Trainer` takes them.
        device: where the module runs.
        process_group: with ``distributed`` set, the group DistributedDataParallel reduces over.
        distributed: whether training steps go through DistributedDataParallel (or FSDP).
        strategy: ``None`` for DistributedDataParallel, or a :class:`torchcb.sharded.FSDP`:
            the module is then sharded with FSDP2 under torchrun (see ``torchcb.sharded``).
        state: the run's :class:`~torchcb.state.FitState`: the optimizer's steps are counted
            there (Keras' ``iterations``, which the time decay reads).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss: Any,
        metrics: Any,
        *,
        device: torch.device,
        precision: str,
        clipnorm: float | None,
        clipvalue: float | None,
        global_clipnorm: float | None,
        accumulate_steps: int,
        compile: bool,  # noqa: A002
        process_group: Any,
        distributed: bool,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: int | None = None,
        strategy: Any = None,
        state: FitState | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
        if precision == "16-mixed" and device.type != "cuda":
            raise ValueError("precision='16-mixed' needs a CUDA device; use 'bf16-mixed' on the CPU.")
        for name, value in (("clipnorm", clipnorm), ("clipvalue", clipvalue), ("global_clipnorm", global_clipnorm)):
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"{name} must be a positive number or None, got {value!r}.")
        check_int(accumulate_steps, "accumulate_steps", 1)
        check_ema_arguments(use_ema, ema_momentum, ema_overwrite_frequency)
        self.device = device
        self.module = module.to(device)
        self.optimizer = optimizer
        self.sharding = strategy  # checkpoints are sharded directories with it, in one process too
        self.distributed = distributed  # one of several torchrun processes
        if strategy is not None and distributed:
            sharded.shard(module, optimizer, strategy)  # before compile: it compiles the sharded module
        self.loss = resolve_loss(loss)
        self._train_loss = self.loss.fn  # the batch loss of train_step; fit picks the one for its targets
        # whose compute_loss and compute_metrics the default steps call: a Trainer subclass's own
        # overrides, as Keras 3's train_step calls a Model subclass's compute_loss
        self.hooks: Any = self
        self.custom_loss = False  # whether hooks.compute_loss is the user's
        if isinstance(loss, torch.nn.Module):
            loss.to(device)
        self.metric_objects = resolve_metrics(metrics, self.loss)
        for metric in self.metric_objects:
            if metric.stateful:
                metric.to(device)  # type: ignore[attr-defined]
        self.precision = precision
        self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm
        self.accumulate_steps = accumulate_steps
        self._accumulated = 0  # batches whose gradients wait for the next optimizer step
        self._autocast_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
        # a GradScaler keeps float16 gradients from underflowing
        self.scaler: Any = torch.amp.GradScaler("cuda") if precision == "16-mixed" else None
        self._module_call = torch.compile(module) if compile else module
        # Training steps go through DistributedDataParallel under torchrun; evaluation and
        # predict call the module itself, so ranks with uneven shards never wait on each other.
        self._train_call = self._module_call
        if distributed and strategy is None:
            device_ids = [device.index] if device.type == "cuda" else None
            self._train_call = DistributedDataParallel(
                self._module_call, device_ids=device_ids, process_group=process_group
            )
        # Keras casts inputs to floatx; a module that embeds indices takes them as integers
        self.float_inputs = not any(
            isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)) for m in module.modules()
        )
        self.time_decay = 0.0  # Keras 2's optimizer decay: set through model.optimizer.decay
        self.state = state if state is not None else FitState()
        self.state.count_steps(optimizer)  # model.optimizer.iterations: the steps the optimizer takes
        self._clips = clipnorm is not None or clipvalue is not None or global_clipnorm is not None
        self._target_check: tuple[Source, Source | None] | None = None  # the sources the first batch checks
        self._test_check: Source | None = None  # evaluate's source, checked at its first batch
        # Keras' use_ema: the average follows every optimizer step through a step hook (torchcb.ema)
        self.weight_average = (
            WeightAverage(module, optimizer, ema_momentum, ema_overwrite_frequency) if use_ema else None
        )

    def set_time_decay(self, decay: float) -> None:
        """Keras 2's ``decay``: each optimizer step then uses ``lr / (1 + decay * iterations)``."""
        self.time_decay = float(decay)

    @property
    def metrics_names(self) -> list[str]:
        """``["loss", *metric names]``, the keys of the logs."""
        return ["loss"] + [m.name for m in self.metric_objects]

    def forward(self, x: Any, *, training: bool = False, module: Any = None) -> Any:
        """Call the module: a list/tuple of inputs is spread as arguments, a dict as keywords.

        ``module`` overrides the callable used (by default the compiled module, through
        DistributedDataParallel for training steps).
        """
        if module is None:
            module = self._train_call if training else self._module_call
        if isinstance(x, dict):
            return module(**x)
        if isinstance(x, (list, tuple)):
            return module(*x)
        return module(x)

    def gathered(self) -> Any:
        """Under FSDP across ranks, the whole module for an evaluation or predict loop (else a no-op)."""
        if self.sharding is None or not sharded.is_sharded(self.module):
            return _NO_AUTOCAST
        return sharded.gathered(self.module, self.sharding.options.get("reshard_after_forward", True))

    def autocast(self) -> Any:
        """The mixed-precision context of ``precision`` (a no-op for ``"32"``)."""
        if self._autocast_dtype is None:
            return _NO_AUTOCAST
        return torch.autocast(device_type=self.device.type, dtype=self._autocast_dtype)

    def apply_gradients(self, loss: torch.Tensor) -> None:
        """Backward pass, then clipping and the optimizer step (every ``accumulate_steps`` batches).

        A loss without gradients (a module with no trainable parameter, as Keras trains one)
        steps nothing.
        """
        if not loss.requires_grad:
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
        if self._clips:
            self._clip()
        if self.time_decay:  # the rate of this step only: lr itself, as callbacks read it, is unchanged
            factor = 1.0 / (1.0 + self.time_decay * self.state.optimizer_steps)
            rates = [group["lr"] for group in self.optimizer.param_groups]
            for group, rate in zip(self.optimizer.param_groups, rates):
                group["lr"] = rate * factor
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.time_decay:
            for group, rate in zip(self.optimizer.param_groups, rates):
                group["lr"] = rate

    def _clip(self) -> None:
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        if not grads:  # every optimized parameter frozen: nothing to clip, nothing to step
            return
        if self.clipvalue is not None:
            torch._foreach_clamp_min_(grads, -self.clipvalue)
            torch._foreach_clamp_max_(grads, self.clipvalue)
        if self.clipnorm is not None:  # each gradient tensor on its own, as Keras does
            norms = torch._foreach_norm(grads)
            scales = [torch.clamp(self.clipnorm / (norm + 1e-6), max=1.0) for norm in norms]
            torch._foreach_mul_(grads, scales)
        if self.global_clipnorm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.global_clipnorm)

    def pending_gradients(self) -> dict[str, Any] | None:
        """Mid accumulation group: the count of batches and their summed gradients (else None)."""
        if self._accumulated == 0:
            return None
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        return {"count": self._accumulated, "grads": [None if p.grad is None else p.grad.detach() for p in params]}

    def restore_pending_gradients(self, pending: dict[str, Any] | None) -> None:
        """Start from the gradients :meth:`pending_gradients` gave, or from none."""
        if pending is None and self._accumulated == 0:
            return  # no group is pending: the next step clears the gradients as it starts one
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.optimizer.zero_grad(set_to_none=True)
        self._accumulated = 0
        if pending is None:
            return
        for param, grad in zip(params, pending["grads"]):
            param.grad = None if grad is None else grad.to(device=param.device, dtype=param.dtype).clone()
        self._accumulated = int(pending["count"])

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

        Override it (on a ``Trainer`` subclass) for models that are not one input and one
        target; return a dict of scalar device tensors, which become the batch logs. The
        first batch of a ``fit`` checks its outputs against the targets before the loss.
        """
        x, y, sample_weight, _ = batch
        with self.autocast():
            y_pred = self.forward(x, training=True)
            if self._target_check is not None:  # the first batch of a fit
                self._check_outputs(y_pred, y)
            if sample_weight is None:
                loss = self._train_loss(y_pred, y)
            else:
                loss = self.hooks.compute_loss(y_pred, y, sample_weight)
        self.apply_gradients(loss)
        if not self.metric_objects and self.hooks is self:
            return {"loss": loss.detach()}
        return self.hooks.compute_metrics(y_pred, y, loss)  # metrics run under no_grad

    def test_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Loss and metrics on ``batch``, without gradients. Override like :meth:`train_step`.

        The first batch of an ``evaluate`` checks its outputs against the targets as ``fit``'s does
        (validation inside ``fit`` is checked by ``fit``'s first batch)."""
        with self.autocast():
            y_pred = self.forward(batch.x)
            if self._test_check is not None:  # the first batch of an evaluate
                source, self._test_check = self._test_check, None
                self._check_targets(y_pred, batch.y, source, None, stacklevel=6)  # evaluate's caller
            loss = self.hooks.compute_loss(y_pred, batch.y, batch.sample_weight)
        return self.hooks.compute_metrics(y_pred, batch.y, loss)

    def predict_step(self, batch: Batch) -> Any:
        """The module's outputs for ``batch.x``."""
        with self.autocast():
            return self.forward(batch.x)

    def reset_metrics(self) -> None:
        """Start every stateful metric again (at an epoch's start, before validation)."""
        for metric in self.metric_objects:
            if metric.stateful:
                metric.reset()  # type: ignore[attr-defined]

    def check_data(self, train: Source, val: Source | None, default_step: bool = True) -> None:
        """Refuse, before any hook runs, what the in-memory data and the module's signature show
        alone: negative labels under ``sparse_categorical_crossentropy``, and dict inputs whose keys
        ``forward`` does not take (``default_step``: the step is not one of the user's). Shapes and
        labels past the class count need the module's outputs: the first batch checks them, see
        :meth:`begin_fit_steps`."""
        for source, argument in ((train, "y"), (val, "validation y")):
            if not isinstance(source, ArraySource):
                continue
            if default_step and isinstance(source.x, dict):
                check_forward_keys(self.module, source.x, "x" if source is train else "validation x")
            y = source.y
            if self.loss.name == _SPARSE and isinstance(y, torch.Tensor) and y.numel():
                lowest = y.min().item()  # once per fit, before training
                if lowest < 0:
                    raise ValueError(
                        f"{argument} holds the negative label {_number(lowest)}; loss {_SPARSE!r} takes class "
                        "indices from 0 to the number of outputs - 1."
                    )

    def begin_fit_steps(self, train: Source, val: Source | None, default_step: bool = True) -> None:
        """Set this fit's steps up: with the default ``train_step`` (``default_step``), the first batch
        checks its targets against the module's outputs (later batches skip the check), and a module
        with no trainable parameter steps nothing (a warning says so, as Keras 3 does)."""
        if not any(p.requires_grad for p in self.module.parameters()):
            warnings.warn(
                "The module has no trainable parameter: fit runs its batches, metrics and callbacks and steps nothing.",
                stacklevel=3,
            )
        custom_loss = self.custom_loss or "compute_loss" in vars(self)  # a subclass's or one set on the trainer
        if custom_loss:
            self._train_loss = self.hooks.compute_loss
        else:  # the loss for these targets' shapes (Keras' expansion of rank-1 targets)
            self._train_loss = self.loss.for_targets(train.y) if isinstance(train, ArraySource) else self.loss.fn
        if default_step and not custom_loss and self.loss.name in KNOWN_LOSSES:
            self._target_check = (train, val)

    def begin_test_check(self, source: Source, default_step: bool = True) -> None:
        """For ``evaluate``: refuse now what :meth:`check_data` refuses for ``fit`` (naming ``y``),
        and with the default ``test_step`` (``default_step``) have its first batch check the targets
        against the outputs, as ``fit``'s first batch does; :meth:`end_test_check` undoes it."""
        self.check_data(source, None, default_step)
        custom_loss = self.custom_loss or "compute_loss" in vars(self)
        self._test_check = source if default_step and not custom_loss and self.loss.name in KNOWN_LOSSES else None

    def end_test_check(self) -> None:
        """Undo :meth:`begin_test_check` at the end of an ``evaluate``, however it ends."""
        self._test_check = None

    def end_fit_steps(self) -> None:
        """Undo :meth:`begin_fit_steps` at the end of a fit, however it ends."""
        self._target_check = None
        self._train_loss = self.loss.fn

    def _check_outputs(self, y_pred: Any, y: Any) -> None:
        """The first batch's check: targets that cannot fit the outputs under the Keras loss, and
        class labels past the outputs' count, raise ``ValueError``; targets that Keras expands
        and broadcasts to the outputs give a warning naming both shapes."""
        train, val = self._target_check  # type: ignore[misc]
        self._target_check = None
        self._check_targets(y_pred, y, train, val, stacklevel=5)  # fit's caller

    def _check_targets(self, y_pred: Any, y: Any, train: Source, val: Source | None, stacklevel: int) -> None:
        """:meth:`_check_outputs` for the batch of ``train`` (named ``y``) and the labels of ``val``;
        the warning points ``stacklevel`` frames up."""
        if not isinstance(y_pred, torch.Tensor) or not isinstance(y, torch.Tensor):
            return
        samples = train.num_samples if isinstance(train, ArraySource) else len(y)
        mismatch = target_mismatch(self.loss.name, y_pred, y, samples=samples)
        if mismatch is not None:
            raise ValueError(mismatch)
        broadcast = target_broadcast(self.loss.name, y_pred, y, samples=samples)
        if broadcast is not None:
            warnings.warn(broadcast, stacklevel=stacklevel)
        if self.loss.name != _SPARSE or y_pred.dim() < 2:
            return
        classes = y_pred.shape[1]
        for source, argument, labels in ((train, "y", y), (val, "validation y", None)):
            if isinstance(source, ArraySource) and isinstance(source.y, torch.Tensor):
                labels = source.y  # every label of the in-memory data, once per fit
            if labels is None or not labels.numel():
                continue
            highest = labels.max().item()
            if highest >= classes:
                raise ValueError(
                    f"{argument} holds the label {_number(highest)}, but the module has {classes} outputs (classes "
                    f"0 to {classes - 1}) under loss {_SPARSE!r}: give the last layer one output per class."
                )


def _number(value: float) -> int | float:
    """A label as it reads best: ``3``, not ``3.0``."""
    return int(value) if float(value).is_integer() else value
