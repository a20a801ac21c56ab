"""ModelCheckpoint: save the model after every epoch (or every N batches), or only the best."""

from __future__ import annotations

import os
import string
from typing import Any

from torchcb._checks import check_int, is_int
from torchcb.callbacks.base import BatchFrequency, MonitorCallback
from torchcb.checkpoint import Checkpointer, check_writable
from torchcb.distributed import is_main_process
from torchcb.sharded import is_checkpoint_dir
from torchcb.utils import print_msg

__all__ = ["ModelCheckpoint"]


def _placeholders(filepath: str) -> list[str]:
    """The names the template fills: ``{epoch:02d}`` and ``{val_loss.real}`` give ``epoch`` and ``val_loss``."""
    fields = [field for _, field, _, _ in string.Formatter().parse(filepath) if field is not None]
    return [field.split(".")[0].split("[")[0] for field in fields]


def _check_template(filepath: str) -> None:
    """Format ``filepath`` once with stand-in values (int ``epoch``/``batch``, float logs): bad syntax fails now."""
    try:
        names = _placeholders(filepath)
        if any(name == "" or name.isdigit() for name in names):
            raise ValueError("positional placeholders such as {} or {0} have nothing to fill them")
        filepath.format(**{name: 1 if name in ("epoch", "batch") else 0.5 for name in names})
    except (ValueError, IndexError, KeyError, AttributeError, TypeError) as error:
        raise ValueError(
            f"filepath {filepath!r} is not a valid template ({error}); use placeholders such as "
            "{epoch:02d} or {val_loss:.2f}, and {{ }} for literal braces."
        ) from None


class ModelCheckpoint(MonitorCallback):
    """Saves the model with ``torch.save``, atomically, at the end of every epoch or every N batches.

    ``filepath`` may hold placeholders filled from the logs: ``{epoch}`` and ``{batch}``
    (both 1-based) and any log key, e.g. ``"ckpt/weights.{epoch:02d}-{val_loss:.2f}.pt"``.
    Parent directories are created. Any file name works; the format is torch's. Under
    torchcb's Trainer the state is taken once every callback has seen the epoch (or batch)
    and written by a background thread while training goes on; ``fit`` returns with every
    file on disk, and a load of the file waits for its pending write.

    Args:
        filepath: where to save; a ``str`` or ``os.PathLike``, not an existing directory
            (with ``strategy="fsdp"``, full checkpoints are sharded directories at that path).
        monitor: the log key to compare with ``save_best_only``. Default ``"val_loss"``.
        verbose: 1 prints a message for every save (and skipped save) as Keras does.
        save_best_only: save only when ``monitor`` improves on the best so far; with the
            monitor missing from the logs, warn and do not save.
        save_weights_only: save the module's ``state_dict`` (``model.save_weights``) rather
            than the full training checkpoint (``model.save``: module, optimizer, epoch,
            step, RNG states; resume with ``trainer.load_checkpoint``).
        mode: ``"auto"``, ``"min"`` or ``"max"``, for ``save_best_only`` (``monitor_op`` is
            ``np.greater`` or ``np.less`` accordingly). In ``"auto"``, a monitor that is
            neither a loss nor a metric of the fit raises ``ValueError`` at the first save
            with ``save_best_only``; without it the monitor is not used and nothing is raised.
        period: save every ``period`` epochs (Keras 2).
        save_freq: ``"epoch"``, or a number of batches between saves (Keras 3).
        initial_value_threshold: the value the monitor must beat for the first save.

    Example:
        >>> from torchcb.callbacks import ModelCheckpoint
        >>> checkpointer = ModelCheckpoint(filepath="/tmp/weights.pt", verbose=1, save_best_only=True)
        >>> # trainer.fit(x, y, validation_data=(x_test, y_test), callbacks=[checkpointer])
    """

    def __init__(
        self,
        filepath: str | os.PathLike,
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        save_weights_only: bool = False,
        mode: str = "auto",
        period: int = 1,
        save_freq: str | int = "epoch",
        initial_value_threshold: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(monitor, mode, None, 0.0)
        unexpected = set(kwargs) - {"options"}  # tf.keras' `options` has no meaning for torch files
        if unexpected:
            raise TypeError(f"ModelCheckpoint got unexpected arguments: {', '.join(sorted(unexpected))}.")
        if not isinstance(filepath, (str, os.PathLike)) or not os.fspath(filepath):
            raise ValueError(f"filepath must be a non-empty str or os.PathLike, got {filepath!r}.")
        self.filepath = os.fspath(filepath)
        _check_template(self.filepath)
        self._log_placeholders = {name for name in _placeholders(self.filepath) if name not in ("epoch", "batch")}
        if os.path.isdir(self.filepath):
            raise IsADirectoryError(
                f"Please specify a non-directory filepath for ModelCheckpoint. "
                f"Filepath used is an existing directory: {self.filepath}"
            )
        if save_freq != "epoch" and (not is_int(save_freq) or save_freq <= 0):
            raise ValueError(
                f"Unrecognized save_freq: {save_freq!r}; expected 'epoch' or a positive number of batches."
            )
        check_int(period, "period", 1)
        self.verbose = verbose
        self.save_best_only = save_best_only
        self.save_weights_only = save_weights_only
        self.period = period
        self.save_freq = save_freq
        self.initial_value_threshold = initial_value_threshold
        self.epochs_since_last_save = 0
        self._batch_frequency = BatchFrequency(save_freq) if is_int(save_freq) else None
        self._current_epoch = 0
        self.reset_monitor(initial_value_threshold)
        if save_freq != "epoch":  # only then does it listen to batches: an unused hook costs nothing
            self.on_train_batch_end = self._on_train_batch_end

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.reset_monitor(self.initial_value_threshold)
        self.epochs_since_last_save = 0
        if self._batch_frequency is not None:
            self._batch_frequency.reset()
        if self.params and not self.params.get("do_validation", True):
            missing = [name for name in _placeholders(self.filepath) if name.startswith("val_")]
            if missing:
                raise KeyError(
                    f"Failed to format this callback filepath: {self.filepath!r}: placeholder "
                    f"{missing[0]!r} needs validation data, and fit has none (pass validation_data or validation_split)."
                )
        directory = os.path.dirname(self.filepath)
        if "{" not in directory and is_main_process():
            check_writable(self.filepath, "ModelCheckpoint filepath")

    def get_state(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "epochs_since_last_save": self.epochs_since_last_save,
            "batch_frequency": None if self._batch_frequency is None else self._batch_frequency.state(),
            "current_epoch": self._current_epoch,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.epochs_since_last_save = state["epochs_since_last_save"]
        if self._batch_frequency is not None and state["batch_frequency"] is not None:
            self._batch_frequency.restore(state["batch_frequency"])
        self._current_epoch = state["current_epoch"]

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._current_epoch = epoch

    def _on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self._batch_frequency.passed(batch):  # type: ignore[union-attr]  # hooked only with a batch save_freq
            self._save(self._current_epoch, batch, logs or {})

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.save_freq != "epoch":
            return
        self.epochs_since_last_save += 1
        if self.epochs_since_last_save >= self.period:
            self.epochs_since_last_save = 0
            self._save(epoch, None, logs or {})

    def _format_path(self, epoch: int, batch: int | None, logs: dict) -> str:
        # only the values the template names are read: device logs stay unread otherwise
        values = {name: logs[name] for name in self._log_placeholders if name in logs}
        values["epoch"] = epoch + 1
        if batch is not None:
            values["batch"] = batch + 1
        try:
            return self.filepath.format(**values)
        except KeyError as error:
            available = sorted({*logs, *values})
            raise KeyError(
                f"Failed to format this callback filepath: {self.filepath!r}. Reason: the placeholder "
                f"{error.args[0]!r} is not in the logs; available keys: {', '.join(available)}."
            ) from None

    def _save(self, epoch: int, batch: int | None, logs: dict) -> None:
        filepath = self._format_path(epoch, batch, logs)
        # Every rank saves (the checkpoint holds all ranks' sums; under FSDP every rank writes
        # its shards); the saves themselves leave the files to rank 0, and rank 0 prints.
        main = is_main_process()
        sharded_dir = getattr(getattr(self.model, "trainer", None), "sharding", None) is not None
        if main and os.path.isdir(filepath) and not (sharded_dir and is_checkpoint_dir(filepath)):
            raise IsADirectoryError(
                f"Please specify a non-directory filepath for ModelCheckpoint. Filepath used is an existing directory: {filepath}"
            )
        if self.save_best_only:
            current = self.get_monitor_value(
                logs, "Can save best model only with %s available, skipping. Available keys: %s"
            )
            if current is None:
                return
            if not self.is_improvement(current, self.best):
                if self.verbose > 0 and main:
                    print_msg("\nEpoch %05d: %s did not improve from %0.5f" % (epoch + 1, self.monitor, self.best))
                return
            if self.verbose > 0 and main:
                print_msg(
                    "\nEpoch %05d: %s improved from %0.5f to %0.5f, saving model to %s"
                    % (epoch + 1, self.monitor, self.best, current, filepath)
                )
            self.best = current
        elif self.verbose > 0 and main:
            print_msg("\nEpoch %05d: saving model to %s" % (epoch + 1, filepath))
        checkpointer = getattr(getattr(self.model, "trainer", None), "checkpointer", None)
        if isinstance(checkpointer, Checkpointer):  # torchcb's trainer: written in the background
            if self.save_weights_only:
                checkpointer.save_weights(filepath, background=True)
            else:
                checkpointer.save_checkpoint(filepath, background=True)
        elif self.save_weights_only:
            self.model.save_weights(filepath, overwrite=True)
        else:
            self.model.save(filepath, overwrite=True)
