"""CSVLogger: stream the epoch results to a CSV file."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from typing import Any, BinaryIO

import numpy as np
import torch

from torchcb.callbacks.base import Callback
from torchcb.distributed import is_main_process
from torchcb.files import atomic_write, check_writable

__all__ = ["CSVLogger"]


def _handle_value(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    if isinstance(value, Iterable):
        return '"[%s]"' % ", ".join(map(str, value))
    return value


class CSVLogger(Callback):
    """Writes one CSV row per epoch: ``epoch`` then every log key.

    The columns are sorted and frozen at the first epoch; a value missing later is written
    ``NA``. When validation is configured the ``val_*`` columns are there from the start
    (rows of epochs without validation hold ``NA``). 1-D iterables are written as Keras
    writes them. Each row is written and flushed at epoch end with the file closed between
    epochs, so a run that crashes keeps every finished row.

    Args:
        filename: the CSV file, e.g. ``"runs/log.csv"`` (its directory is created).
        separator: the field separator. Default ``","``.
        append: append to an existing file (its header is kept and no second header is
            written) instead of overwriting it.

    Example:
        >>> from torchcb.callbacks import CSVLogger
        >>> csv_logger = CSVLogger("training.log")
        >>> # trainer.fit(x_train, y_train, callbacks=[csv_logger])
    """

    def __init__(self, filename: str | os.PathLike, separator: str = ",", append: bool = False) -> None:
        super().__init__()
        if not isinstance(filename, (str, os.PathLike)) or not os.fspath(filename):
            raise ValueError(f"filename must be a non-empty str or os.PathLike, got {filename!r}.")
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"separator must be a single character, got {separator!r}.")
        self.sep = separator
        self.filename = os.fspath(filename)
        self.append = append
        self.keys: list[str] | None = None
        self._resumed = False
        self._first_write: str | None = "append" if append else "fresh"
        self._rows_of_earlier_runs = 0  # rows already in the file when this run began (append)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.keys = None
        self._resumed = False
        self._rows_of_earlier_runs = 0
        if not is_main_process():
            return
        check_writable(self.filename, "CSVLogger filename")
        rows: list[list[str]] = []
        if self.append and os.path.exists(self.filename):
            with open(self.filename, newline="") as f:
                rows = [row for row in csv.reader(f, delimiter=self.sep) if row]
        if rows:
            # keep the columns already in the file, so appended rows line up under them
            self.keys = rows[0][1:]
            self._rows_of_earlier_runs = len(rows) - 1
        self._first_write = "append" if self.append else "fresh"

    def get_state(self) -> dict[str, Any]:
        return {"keys": self.keys, "rows_of_earlier_runs": self._rows_of_earlier_runs}

    def set_state(self, state: dict[str, Any]) -> None:
        self.keys = state["keys"]
        self._rows_of_earlier_runs = state.get("rows_of_earlier_runs", 0)
        self._resumed = True

    def _columns(self, logs: dict) -> list[str]:
        keys = set(logs)
        if self.params.get("do_validation"):
            keys |= {name for name in self.params.get("metrics", []) if name.startswith("val_")}
        return sorted(keys)

    def _rows_before(self, epoch: int) -> list[list[str]]:
        """The header, the rows of earlier runs, and this run's rows of earlier epochs.

        A resumed run rewrites none of its own rows twice and keeps every row before them.
        """
        if not os.path.exists(self.filename):
            return []
        with open(self.filename, newline="") as f:
            rows = [row for row in csv.reader(f, delimiter=self.sep) if row]
        earlier, own = rows[: 1 + self._rows_of_earlier_runs], rows[1 + self._rows_of_earlier_runs :]
        return earlier + [row for row in own if row[0].isdigit() and int(row[0]) < epoch]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not is_main_process():
            return
        logs = logs or {}
        if self.keys is None:
            self.keys = self._columns(logs)

        row = {"epoch": epoch}
        row.update((key, _handle_value(logs.get(key, "NA"))) for key in self.keys)
        first, self._first_write = self._first_write, None
        if first is not None and self._resumed:
            # a resumed run: keep the rows of the epochs before this one, atomically
            text = io.StringIO(newline="")
            kept = self._rows_before(epoch)
            csv.writer(text, delimiter=self.sep).writerows(kept)
            writer = csv.DictWriter(text, fieldnames=["epoch"] + self.keys, delimiter=self.sep)
            if not kept:
                writer.writeheader()
            writer.writerow(row)
            data = text.getvalue().encode()

            def write_rows(file: BinaryIO) -> None:
                file.write(data)

            atomic_write(self.filename, write_rows)
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.filename)), exist_ok=True)
        with open(self.filename, "w" if first == "fresh" else "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["epoch"] + self.keys, delimiter=self.sep)
            if f.tell() == 0:
                writer.writeheader()
            writer.writerow(row)
            f.flush()  # the row survives a killed process; checkpoints are the ones fsynced
