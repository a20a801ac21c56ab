"""TensorBoard: write scalars, histograms, images, the graph and embeddings for TensorBoard."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from torchcb import backend as K
from torchcb._checks import check_int, is_int
from torchcb.callbacks.base import Callback
from torchcb.data import Batching, Placement, make_source
from torchcb.distributed import is_main_process
from torchcb.step import module_modes, set_modes

__all__ = ["TensorBoard"]

_SKIPPED_KEYS = ("batch", "size")


def _as_image(values: np.ndarray) -> np.ndarray:
    """A weight as a one-channel CHW image in [0, 1]: rows are the first axis."""
    matrix = values.reshape(1, -1) if values.ndim <= 1 else values.reshape(values.shape[0], -1)
    low, high = float(matrix.min()), float(matrix.max())
    scaled = (matrix - low) / (high - low) if high > low else np.zeros_like(matrix)
    return scaled[np.newaxis].astype(np.float32)


def _read_metadata(path: str) -> tuple[list[Any], list[str] | None]:
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    if lines and "\t" in lines[0]:
        return [line.split("\t") for line in lines[1:]], lines[0].split("\t")
    return lines, None


class TensorBoard(Callback):
    """Writes TensorBoard event files: scalars every epoch, and optionally much more.

    Layout and tags follow Keras 3: ``log_dir/train`` holds ``epoch_<key>`` for the
    training logs and ``epoch_learning_rate``; ``log_dir/validation`` holds
    ``epoch_<key>`` for the ``val_*`` logs (without the prefix) and
    ``evaluation_<key>_vs_iterations`` for every validation pass, at the optimizer step.
    There is no ``validation`` directory without validation. A second ``fit`` with the
    same callback continues the same run: its steps keep increasing.

    Args:
        log_dir: where to write. Default ``"./logs"``.
        histogram_freq: every this many epochs, a histogram of every weight
            (``<name>/histogram``); 0 for none.
        batch_size: the batch size used to run ``embeddings_data`` through the module.
        write_graph: write the module graph, traced from the first batch (one warning if
            tracing fails; training goes on).
        write_grads: with ``histogram_freq``, also the gradient histograms (``<name>_grad/histogram``).
        write_images: with ``histogram_freq``, also every weight as an image (``<name>/image``).
        embeddings_freq: every this many epochs, write embeddings for the projector: the
            weights of the ``nn.Embedding`` layers, or, with ``embeddings_data``, the outputs
            of the layers named in ``embeddings_layer_names`` for that data.
        embeddings_layer_names: module names to project (default: every ``nn.Embedding``).
        embeddings_metadata: a TSV file of labels, or a dict of layer name to file.
        embeddings_data: inputs whose layer outputs are projected.
        update_freq: ``"epoch"``; ``"batch"`` to also write ``batch_<key>`` every batch;
            or an int: every that many **samples** (Keras 2), at the step of samples seen.
        write_steps_per_second: also write ``epoch_steps_per_second`` (training batches per
            second of the epoch) and, when ``update_freq`` writes batch scalars,
            ``batch_steps_per_second`` beside them: the batches since the last batch write
            over the time they took (with ``update_freq="batch"``, each batch's own rate),
            as Keras 3 writes both.
        profile_batch: only 0 (profiling belongs to ``torch.profiler``).

    Writers are flushed every epoch and closed at the end of training, and when training
    raises. A write that fails warns and training goes on.

    Example:
        >>> from torchcb.callbacks import TensorBoard
        >>> tensorboard = TensorBoard(log_dir="runs/tb", histogram_freq=1, update_freq="batch")
        >>> # trainer.fit(x, y, validation_split=0.1, callbacks=[tensorboard])
        >>> # then:  tensorboard --logdir runs/tb
    """

    def __init__(
        self,
        log_dir: str | os.PathLike = "./logs",
        histogram_freq: int = 0,
        batch_size: int | None = None,
        write_graph: bool = True,
        write_grads: bool = False,
        write_images: bool = False,
        embeddings_freq: int = 0,
        embeddings_layer_names: list[str] | None = None,
        embeddings_metadata: str | dict[str, str] | None = None,
        embeddings_data: Any = None,
        update_freq: str | int = "epoch",
        *,
        write_steps_per_second: bool = False,
        profile_batch: int = 0,
    ) -> None:
        super().__init__()
        check_int(histogram_freq, "histogram_freq", 0)
        check_int(embeddings_freq, "embeddings_freq", 0)
        if update_freq not in ("batch", "epoch") and (not is_int(update_freq) or update_freq <= 0):
            raise ValueError(
                f"update_freq must be 'batch', 'epoch' or a positive number of samples, got {update_freq!r}."
            )
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size <= 0):
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}.")
        if profile_batch:
            raise ValueError("profile_batch is not supported by torchcb's TensorBoard; profile with torch.profiler.")
        self.log_dir = os.fspath(log_dir)
        self.histogram_freq = histogram_freq
        self.batch_size = batch_size
        self.write_graph = write_graph
        self.write_grads = write_grads
        self.write_images = write_images
        self.embeddings_freq = embeddings_freq
        self.embeddings_layer_names = embeddings_layer_names
        self.embeddings_metadata = embeddings_metadata
        self.embeddings_data = embeddings_data
        self.update_freq = 1 if update_freq == "batch" else update_freq
        self.write_steps_per_second = write_steps_per_second
        self._writers: dict[str, Any] = {}
        self._samples_seen = 0
        self._samples_seen_at_last_write = 0
        self._last_epoch_step: int | None = None
        self._epoch_offset = 0
        self._first_epoch_of_fit = True
        self._graph_written = False
        self._epoch_start = 0.0
        self._epoch_batches = 0
        self._batch_write_time = 0.0  # when the last batch scalars were written (or the epoch began)
        self._batch_write_batches = 0  # the epoch's batch count then
        if self.update_freq != "epoch" or write_graph or write_steps_per_second:
            # only then does it listen to batches: an unused hook costs nothing
            self.on_train_batch_end = self._on_train_batch_end

    # ----------------------------------------------------------------- writers

    def _writer(self, name: str) -> Any:
        writer = self._writers.get(name)
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter  # imported when first needed: it is slow

            writer = SummaryWriter(os.path.join(self.log_dir, name))
            self._writers[name] = writer
        return writer

    def _safely(self, what: str, write: Any, *args: Any, **kwargs: Any) -> None:
        """Run one write; a failure warns and training goes on."""
        if not is_main_process():
            return
        try:
            write(*args, **kwargs)
        except Exception as error:  # a logger must not kill a run
            warnings.warn(
                f"TensorBoard could not write {what} to {self.log_dir}: {error}", RuntimeWarning, stacklevel=3
            )

    def _scalars(self, writer_name: str, scalars: dict[str, float], step: int) -> None:
        def write() -> None:
            writer = self._writer(writer_name)
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, step)

        if scalars:
            self._safely("scalars", write)

    def _close(self) -> None:
        for writer in self._writers.values():
            try:
                writer.close()
            except Exception as error:
                warnings.warn(f"TensorBoard could not close its writer: {error}", RuntimeWarning, stacklevel=3)
        self._writers = {}

    # ----------------------------------------------------------------- hooks

    def get_state(self) -> dict[str, Any]:
        return {
            "samples_seen": self._samples_seen,
            "samples_seen_at_last_write": self._samples_seen_at_last_write,
            "last_epoch_step": self._last_epoch_step,
            "epoch_offset": self._epoch_offset,
            "graph_written": self._graph_written,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._samples_seen = state["samples_seen"]
        self._samples_seen_at_last_write = state["samples_seen_at_last_write"]
        self._last_epoch_step = state["last_epoch_step"]
        self._epoch_offset = state["epoch_offset"]
        self._graph_written = state["graph_written"]
        self._first_epoch_of_fit = False  # the resumed run continues the steps it had

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._first_epoch_of_fit = True

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch_start = self._batch_write_time = time.time()
        self._epoch_batches = self._batch_write_batches = 0

    def _on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._epoch_batches += 1
        if self.update_freq == "epoch" and (self._graph_written or not self.write_graph):
            return  # nothing is written per batch
        logs = logs or {}
        raw = getattr(logs, "raw", logs.get)
        self._samples_seen += int(raw("size", 1))
        if self.write_graph and not self._graph_written:
            self._graph_written = True
            self._safely("the graph", self._write_graph)
        if not is_int(self.update_freq):  # "epoch" ("batch" is 1)
            return
        if self._samples_seen - self._samples_seen_at_last_write >= self.update_freq:
            self._samples_seen_at_last_write = self._samples_seen
            scalars = {f"batch_{k}": float(v) for k, v in logs.items() if k not in _SKIPPED_KEYS}
            if self.write_steps_per_second:
                now = time.time()
                batches = self._epoch_batches - self._batch_write_batches
                scalars["batch_steps_per_second"] = batches / max(now - self._batch_write_time, 1e-9)
                self._batch_write_time, self._batch_write_batches = now, self._epoch_batches
            self._scalars("train", scalars, self._samples_seen)

    def _epoch_step(self, epoch: int) -> int:
        if self._first_epoch_of_fit:
            self._first_epoch_of_fit = False
            if self._last_epoch_step is not None and epoch + self._epoch_offset <= self._last_epoch_step:
                self._epoch_offset = self._last_epoch_step + 1 - epoch  # a new fit from epoch 0 continues the run
        step = epoch + self._epoch_offset
        self._last_epoch_step = step
        return step

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        step = self._epoch_step(epoch)
        train = {f"epoch_{k}": float(v) for k, v in logs.items() if not k.startswith("val_") and k not in _SKIPPED_KEYS}
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and hasattr(optimizer, "lr"):
            train["epoch_learning_rate"] = float(K.get_value(optimizer.lr))
        if self.write_steps_per_second:
            train["epoch_steps_per_second"] = self._epoch_batches / max(time.time() - self._epoch_start, 1e-9)
        self._scalars("train", train, step)
        validation = {f"epoch_{k[4:]}": float(v) for k, v in logs.items() if k.startswith("val_")}
        self._scalars("validation", validation, step)
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            self._safely("histograms", self._write_histograms, step)
        if self.embeddings_freq and epoch % self.embeddings_freq == 0:
            self._safely("embeddings", self._write_embeddings, step)
        for writer in self._writers.values():
            self._safely("a flush", writer.flush)

    def on_test_end(self, logs: dict | None = None) -> None:
        optimizer = getattr(self.model, "optimizer", None)
        step = int(getattr(optimizer, "iterations", 0) or 0)
        scalars = {f"evaluation_{k}_vs_iterations": float(v) for k, v in (logs or {}).items() if k not in _SKIPPED_KEYS}
        self._scalars("validation", scalars, step)

    def on_train_end(self, logs: dict | None = None) -> None:
        self._close()

    def on_train_error(self, error: BaseException) -> None:
        self._close()

    # ----------------------------------------------------------------- what is written

    def _named_weights(self) -> list[tuple[str, Any]]:
        module = getattr(self.model, "module", None)
        if isinstance(module, torch.nn.Module):
            return list(module.named_parameters())
        return [(w.name, w) for layer in getattr(self.model, "layers", []) for w in getattr(layer, "weights", [])]

    def _write_histograms(self, step: int) -> None:
        writer = self._writer("train")
        for name, weight in self._named_weights():
            values = (
                weight.detach().cpu().float().numpy()
                if isinstance(weight, torch.Tensor)
                else np.asarray(weight.numpy())
            )
            tag = name.replace(":", "_")
            writer.add_histogram(f"{tag}/histogram", values, step)
            if self.write_images:
                writer.add_image(f"{tag}/image", _as_image(values), step, dataformats="CHW")
            grad = getattr(weight, "grad", None)
            if self.write_grads and grad is not None:
                writer.add_histogram(f"{tag}_grad/histogram", grad.detach().cpu().float().numpy(), step)

    def _write_graph(self) -> None:
        trainer = getattr(self.model, "trainer", None)
        batch = getattr(trainer, "current_batch", None)
        if trainer is None or batch is None or isinstance(batch.x, dict):
            raise ValueError("the graph is traced from positional inputs; this module takes a dict")
        module = trainer.module
        modes = module_modes(module)  # put back one by one: a submodule frozen in eval mode stays so
        module.eval()
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                inputs = tuple(batch.x) if isinstance(batch.x, (list, tuple)) else batch.x
                self._writer("train").add_graph(module, inputs)
        finally:
            set_modes(modes)

    def _metadata_for(self, name: str) -> Any:
        path = self.embeddings_metadata
        if isinstance(path, dict):
            path = path.get(name)
        return _read_metadata(path) if path else (None, None)

    def _write_embeddings(self, step: int) -> None:
        module = getattr(self.model, "module", None)
        if not isinstance(module, torch.nn.Module):
            return
        names = self.embeddings_layer_names
        if self.embeddings_data is None:
            tables = {
                name: layer.weight.detach().cpu()
                for name, layer in module.named_modules()
                if isinstance(layer, torch.nn.Embedding) and (not names or name in names)
            }
        else:
            tables = self._layer_outputs(
                module, names or [n for n, m in module.named_modules() if isinstance(m, torch.nn.Embedding)]
            )
        writer = self._writer("train")
        for name, table in tables.items():
            metadata, header = self._metadata_for(name)
            if metadata is not None and len(metadata) != table.shape[0]:
                warnings.warn(
                    f"TensorBoard: embeddings_metadata for {name!r} has {len(metadata)} rows for {table.shape[0]} "
                    "embeddings; writing them without labels.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                metadata, header = None, None
            writer.add_embedding(
                table, metadata=metadata, metadata_header=header, tag=name or "module", global_step=step
            )

    def _layer_outputs(self, module: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
        layers = dict(module.named_modules())
        unknown = [n for n in names if n not in layers]
        if unknown:
            raise ValueError(f"embeddings_layer_names: no module named {', '.join(unknown)}")
        outputs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        handles = [layers[n].register_forward_hook(_keep_outputs(outputs[n])) for n in names]
        trainer = self.model.trainer
        source = make_source(
            self.embeddings_data,
            None,
            batching=Batching(self.batch_size or 32),
            placement=Placement(trainer.device),
            with_targets=False,
        )
        modes = module_modes(module)
        module.eval()
        try:
            with torch.no_grad():
                for batch in source.epoch():
                    trainer.forward(batch.x)
        finally:
            set_modes(modes)
            for handle in handles:
                handle.remove()
        return {n: torch.cat(chunks) for n, chunks in outputs.items() if chunks}


def _keep_outputs(kept: list[torch.Tensor]) -> Callable[[torch.nn.Module, Any, torch.Tensor], None]:
    """A forward hook that keeps each output of a layer on the host, one row per sample."""

    def keep(_module: torch.nn.Module, _inputs: Any, out: torch.Tensor) -> None:
        kept.append(out.detach().reshape(out.shape[0], -1).cpu())

    return keep
