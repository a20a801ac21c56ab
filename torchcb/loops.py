"""The data and loops around ``fit``'s own loop: a fit's sources, the test loop, the predict loop.

``Trainer.fit`` (``torchcb/trainer.py``) builds its data with :func:`fit_sources` before any
hook runs and validates with :func:`test_loop`; ``Trainer.evaluate`` and ``Trainer.predict``
run :func:`test_loop` and :func:`predict_loop`. They take the step object, the run's state
and the callbacks (a ``CallbackList``), never the trainer.

Example:
    >>> import torch
    >>> from torchcb import Trainer
    >>> from torchcb.loops import fit_sources
    >>> net = torch.nn.Linear(2, 1)
    >>> trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", metrics=["mae"], device="cpu")
    >>> sources = fit_sources(trainer.steps, torch.ones(8, 2), torch.ones(8, 1), batch_size=4, validation_split=0.25)
    >>> [source.steps for source in sources]
    [2, 1]
"""

from __future__ import annotations

from typing import Any

import torch

from torchcb import distributed
from torchcb.data import (
    Batching,
    Placement,
    Source,
    is_array_input,
    make_source,
    split_arrays,
    validation_source,
)
from torchcb.logs import EpochTotals, Logs, resolve_pending
from torchcb.state import FitState
from torchcb.step import Steps, module_modes, set_modes
from torchcb.tree import concatenate

__all__ = ["fit_params", "fit_sources", "inference_source", "predict_loop", "shard", "test_loop"]


def shard(steps: Steps) -> tuple[int, int] | None:
    """``(rank, world size)`` under torchrun: what part of the data this process takes (else None)."""
    return (distributed.get_rank(), distributed.get_world_size()) if steps.distributed else None


def fit_sources(
    steps: Steps,
    x: Any,
    y: Any,
    batch_size: int | None = None,
    shuffle: Any = True,
    validation_split: Any = 0.0,
    validation_data: Any = None,
    class_weight: Any = None,
    sample_weight: Any = None,
    steps_per_epoch: int | None = None,
    validation_steps: int | None = None,
    default_step: bool = True,
) -> tuple[Source, Source | None]:
    """The training and validation batches of ``fit``, every argument checked (see ``Trainer.fit``)."""
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
    seed = distributed.shared_seed() if steps.distributed else None
    batching = Batching(batch_size=batch_size, shuffle=shuffle, steps=steps_per_epoch, shard=shard(steps), seed=seed)
    placement = Placement(steps.device, float_inputs=steps.float_inputs)
    train = make_source(
        x, y, batching=batching, placement=placement, sample_weight=sample_weight, class_weight=class_weight
    )
    if (sample_weight is not None or class_weight) and not steps.loss.supports_weights:
        steps.loss.per_sample(None, None)  # raises the explanation
    val = validation_source(
        validation_data, batch_size=batch_size, steps=validation_steps, placement=placement, shard=shard(steps)
    )
    steps.check_data(train, val, default_step)
    return train, val


def fit_params(
    steps: Steps, batch_size: int | None, epochs: int, verbose: int, train: Source, validating: bool
) -> dict:
    """Keras 2's ``params`` for the callbacks of a ``fit``."""
    names = steps.metrics_names
    return {
        "batch_size": batch_size,
        "epochs": epochs,
        "steps": train.steps,
        "samples": train.samples,
        "verbose": verbose,
        "do_validation": validating,
        "metrics": names + (["val_" + n for n in names] if validating else []),
    }


def inference_source(steps: Steps, x: Any, y: Any, batching: Batching, **options: Any) -> Source:
    """The batches of ``evaluate`` or ``predict``, placed as the step object runs them."""
    return make_source(
        x, y, batching=batching, placement=Placement(steps.device, float_inputs=steps.float_inputs), **options
    )


def test_loop(steps: Steps, state: FitState, test_step: Any, source: Source, callbacks: Any) -> dict[str, float]:
    """Run the test hooks of ``callbacks`` and ``test_step`` over ``source``; returns the
    size-weighted averages of the step's logs. Each submodule's mode is put back after."""
    modes = module_modes(steps.module)  # each submodule's own mode, put back after, even on an error
    steps.module.eval()
    try:
        for callback in state.callbacks or ():  # the training epoch's metric values, before the reset
            if isinstance(getattr(callback, "totals", None), EpochTotals):
                callback.totals.settle()
        steps.reset_metrics()
        totals = EpochTotals({m.name for m in steps.metric_objects if m.stateful}, skip=("batch", "size"))
        callbacks.on_test_begin({})
        batch_logs = bool(callbacks.methods("on_test_batch_begin") or callbacks.methods("on_test_batch_end"))
        with torch.no_grad(), steps.gathered():
            for step, batch in enumerate(source.epoch()):
                logs = Logs(batch=step, size=batch.size)
                callbacks.on_test_batch_begin(step, logs)
                outputs = test_step(batch)
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


def predict_loop(steps: Steps, predict_step: Any, source: Source, callbacks: Any) -> Any:
    """Run the predict hooks and ``predict_step`` over ``source``; returns the outputs, concatenated."""
    modes = module_modes(steps.module)  # put back after, also on an error: a frozen submodule stays frozen
    steps.module.eval()
    outputs = []
    try:
        callbacks.on_predict_begin({})
        with torch.no_grad(), steps.gathered():
            for step, batch in enumerate(source.epoch()):
                callbacks.on_predict_batch_begin(step, {"batch": step, "size": batch.size})
                output = predict_step(batch)
                outputs.append(output)
                callbacks.on_predict_batch_end(step, {"batch": step, "size": batch.size, "outputs": output})
        callbacks.on_predict_end({})
    finally:
        set_modes(modes)
    return concatenate(outputs)
