"""BackupAndRestore: resume an interrupted ``fit`` exactly where its last backup left it."""

from __future__ import annotations

import contextlib
import glob
import io
import os
import shutil
import warnings
from typing import Any

from torchcb._checks import is_int
from torchcb.callbacks.base import BatchFrequency, Callback
from torchcb.checkpoint import CheckpointError, TrainingState, check_writable, wait_for_pending_write
from torchcb.distributed import barrier, broadcast_bytes, gather_ints, get_world_size, is_main_process
from torchcb.sharded import is_checkpoint_dir

__all__ = ["BackupAndRestore"]


class BackupAndRestore(Callback):
    """Backs up the full training state, and restores it when ``fit`` starts again.

    Each backup is a full torchcb checkpoint (module, optimizer, GradScaler, epoch, batch,
    optimizer step, random states, and the state of every callback), written atomically
    to ``backup_dir/latest.pt`` once every callback has seen the epoch (or batch). When a
    later ``fit`` starts with a BackupAndRestore on the same directory — after an exception,
    a kill, or a crash of the machine — it resumes there: at the next epoch, or mid-epoch
    at the next batch in the same batch order (every callback's ``on_epoch_begin`` runs for
    that epoch, and the progress bar starts at that batch), and ends with the same weights,
    History and CSV rows as a run never interrupted (bitwise on the CPU, for in-memory
    arrays, Datasets and DataLoaders).

    Backups are written by a background thread while training goes on (``fit`` returns
    with every backup on disk). A backup asked for at a batch or epoch end is written even
    when a later callback of that round raises (an interruption, a user's exception,
    ``TerminateOnNaN(raise_error=True)``: once a loss was NaN, no backup is written, so the
    last good one stays), so the interrupted run resumes from that batch or epoch.

    The previous backup is always kept, as ``latest.pt.bkp``: before a backup replaces
    ``latest.pt``, the old file is given that name too (a hard link, no copy, so it costs
    disk space for one more backup and no writing). When ``latest.pt`` cannot be read (a
    truncated or damaged file), the run resumes from ``latest.pt.bkp`` with a warning naming
    both; only when neither can be read does ``fit`` raise
    :class:`~torchcb.checkpoint.CheckpointError`. (Keras 3 falls back only with
    ``double_checkpoint=True``; torchcb always does.)

    The progress is readable as in Keras 3: ``_current_epoch`` is the epoch training goes
    on from (epochs completed), ``_last_batch_seen`` the index of the last batch seen in it
    (0 at an epoch's end, and kept only with a ``save_freq`` in batches, as Keras 3 does).

    With ``strategy="fsdp"`` the backup is a sharded checkpoint directory ``latest.pt/`` that
    every rank writes its shards into (put ``backup_dir`` on storage every rank shares); it
    resumes at any number of ranks (a mid-epoch backup, at the number that wrote it).

    Args:
        backup_dir: the directory for the backup files.
        save_freq: ``"epoch"`` to back up after every epoch, or a number of batches.
        double_checkpoint: accepted for Keras 3 code; the previous backup is always kept (a
            file, or a directory under ``strategy="fsdp"``) and read when the latest cannot be.
        delete_checkpoint: delete the backup files when training ends normally.

    Example:
        >>> from torchcb.callbacks import BackupAndRestore
        >>> backup = BackupAndRestore(backup_dir="/tmp/backup", save_freq=100)
        >>> # trainer.fit(x, y, epochs=10, callbacks=[backup])   # interrupted ...
        >>> # trainer.fit(x, y, epochs=10, callbacks=[backup])   # ... resumes where it stopped
        >>> backup._current_epoch, backup._last_batch_seen
        (0, 0)
    """

    def __init__(
        self,
        backup_dir: str | os.PathLike,
        save_freq: str | int = "epoch",
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
    ) -> None:
        super().__init__()
        if not backup_dir:
            raise ValueError("Empty `backup_dir` argument passed")
        if save_freq != "epoch" and (not is_int(save_freq) or save_freq <= 0):
            raise ValueError(
                f"Invalid value for argument save_freq. Received: save_freq={save_freq!r}. "
                "Expected either 'epoch' or a positive integer number of batches."
            )
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq
        self.double_checkpoint = double_checkpoint
        self.delete_checkpoint = delete_checkpoint
        self._batch_frequency = BatchFrequency(save_freq) if is_int(save_freq) else None
        self._current_epoch = 0  # the epoch training goes on from (Keras 3's name)
        self._last_batch_seen = 0  # the last batch index seen in it (Keras 3's name)
        if save_freq != "epoch":  # only then does it listen to batches: an unused hook costs nothing
            self.on_train_batch_end = self._on_train_batch_end

    @property
    def path(self) -> str:
        return os.path.join(self.backup_dir, "latest.pt")

    @property
    def backup_path(self) -> str:
        return self.path + ".bkp"

    def get_state(self) -> dict[str, Any]:
        return {"batch_frequency": None if self._batch_frequency is None else self._batch_frequency.state()}

    def set_state(self, state: dict[str, Any]) -> None:
        if self._batch_frequency is not None and state["batch_frequency"] is not None:
            self._batch_frequency.restore(state["batch_frequency"])

    def _trainer(self) -> Any:
        trainer = getattr(self.model, "trainer", None)
        if trainer is None:
            raise ValueError("BackupAndRestore needs torchcb's Trainer: self.model.trainer is missing.")
        return trainer

    def on_train_begin(self, logs: dict | None = None) -> None:
        if is_main_process():
            check_writable(self.path, "BackupAndRestore backup_dir")
        barrier()  # under torchrun: rank 0 has finished writing before any rank reads
        if self._batch_frequency is not None:
            self._batch_frequency.reset()
        trainer = self._trainer()
        if getattr(trainer, "sharding", None) is not None:
            self._restore_sharded(trainer)
            return
        found = self._read_backup()
        if get_world_size() > 1:
            found = self._agree_across_ranks(found)
        self._current_epoch, self._last_batch_seen = 0, 0
        if found is not None:
            state, source = found
            trainer.restore_state(state, source=source)
            self._current_epoch, self._last_batch_seen = state.epoch, max(state.batch - 1, 0)

    def _restore_sharded(self, trainer: Any) -> None:
        """Under FSDP the backup is a sharded directory every rank reads (``backup_dir`` on storage they
        share); the previous one, kept at ``latest.pt.bkp``, is the fallback as for a single file."""
        self._current_epoch, self._last_batch_seen = 0, 0
        found = [p for p in (self.path, self.backup_path) if is_checkpoint_dir(p)]
        for index, path in enumerate(found):
            try:
                trainer.load_checkpoint(path)
            except Exception as error:
                if index + 1 == len(found):
                    raise CheckpointError(
                        f"BackupAndRestore found no readable backup in {self.backup_dir}: {path} ({error}). "
                        "Remove the directory to start training afresh."
                    ) from error
                warnings.warn(
                    f"BackupAndRestore could not read the latest backup {path} ({error}); resuming from the "
                    f"previous one, {found[index + 1]}.",
                    RuntimeWarning,
                    stacklevel=3,
                )
                continue
            resumed = trainer.state.pending_resume
            self._current_epoch, self._last_batch_seen = resumed.epoch, max(resumed.batch - 1, 0)
            return

    def _read_backup(self) -> tuple[TrainingState, str] | None:
        """The latest backup in ``backup_dir``, or the previous one if the latest cannot be read; None if none."""
        failures: list[str] = []
        error: Exception | None = None
        for path in (self.path, self.backup_path):
            wait_for_pending_write(path)  # a backup still being written is read once whole
            if not os.path.exists(path):
                continue
            try:
                with open(path, "rb") as f:
                    data = f.read()
                state = TrainingState.load(io.BytesIO(data), source=path)
            except Exception as failure:  # a truncated or damaged file: try the previous backup
                failures.append(f"{path} ({failure})")
                error = failure
                continue
            if failures:
                warnings.warn(
                    f"BackupAndRestore could not read the latest backup {failures[0]}; resuming from the previous "
                    f"one, {path}.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return state, path
        if error is not None:
            if len(failures) == 1:
                failures.append(f"{self.backup_path} (missing)")
            raise CheckpointError(
                f"BackupAndRestore found no readable backup in {self.backup_dir}: {'; '.join(failures)}. Remove "
                "the directory to start training afresh."
            ) from error
        return None

    def _agree_across_ranks(self, found: tuple[TrainingState, str] | None) -> tuple[TrainingState, str] | None:
        """Under torchrun every rank resumes from the same backup: rank 0's, which is the one it writes.

        Ranks whose ``backup_dir`` is not shared find other backups (or none): rank 0 then
        sends its backup to every rank. Without one on rank 0, every rank fails alike.
        """
        state = found[0] if found is not None else None
        summary = [1, state.epoch, state.batch, state.step] if state is not None else [0, 0, 0, 0]
        summaries = gather_ints(summary)
        if all(s == summaries[0] for s in summaries):
            return found
        seen = "; ".join(
            f"rank {rank}: " + (f"epoch {s[1]} batch {s[2]}" if s[0] else "none") for rank, s in enumerate(summaries)
        )
        if not summaries[0][0]:
            raise RuntimeError(
                f"BackupAndRestore: the ranks found different backups in {self.backup_dir} ({seen}). Rank 0 writes "
                "the backups, and it has none, so the ranks cannot resume in step: remove the stale backups on every "
                "machine, or put backup_dir on storage all ranks share."
            )
        data = None
        if is_main_process():
            with open(found[1], "rb") as f:  # type: ignore[index]  # rank 0 has one: summaries[0][0] said so
                data = f.read()
        source = f"rank 0's {self.path}"
        return TrainingState.load(io.BytesIO(broadcast_bytes(data)), source=source), source

    def _on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._last_batch_seen = batch
        if self._batch_frequency.passed(batch):  # type: ignore[union-attr]  # hooked only with a batch save_freq
            self._backup()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._current_epoch, self._last_batch_seen = epoch + 1, 0
        if self.save_freq == "epoch":
            self._backup()

    def _backup(self) -> None:
        # every rank takes part (the epoch sums and metric states of all ranks go in); once
        # every callback has seen this epoch or batch; rank 0 writes, in the background,
        # after giving the backup it replaces the .bkp name
        self._trainer().save_checkpoint(self.path, all_ranks=True, keep_previous=self.backup_path, background=True)

    def on_train_end(self, logs: dict | None = None) -> None:
        if not (self.delete_checkpoint and is_main_process()):
            return
        self._trainer().wait_for_writes()  # no backup still being written comes back after the deletion
        # only the files BackupAndRestore writes: the directory may hold the user's own files
        leftovers = glob.glob(os.path.join(glob.escape(self.backup_dir), ".latest.pt*.tmp"))
        leftovers += glob.glob(os.path.join(glob.escape(self.backup_dir), ".latest.pt.*"))  # sharded: .tmp, .old
        for name in [self.path, self.backup_path, *leftovers]:
            if os.path.isdir(name):  # a sharded backup
                shutil.rmtree(name, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.remove(name)
        with contextlib.suppress(OSError):
            os.rmdir(self.backup_dir)  # only if now empty

    def __repr__(self) -> str:
        return f"BackupAndRestore({self.backup_dir!r}, save_freq={self.save_freq!r})"
