"""CSVLogger: stream the epoch results to a CSV file."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from torchcb.callbacks.base import Callback
from torchcb.checkpoint import check_writable
from torchcb.distributed import is_main_process

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
        self._write_header = True

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.keys = None
        if not is_main_process():
            return
        check_writable(self.filename, "CSVLogger filename")
        os.makedirs(os.path.dirname(os.path.abspath(self.filename)), exist_ok=True)
        header = ""
        if self.append and os.path.exists(self.filename):
            with open(self.filename, newline="") as f:
                header = f.readline()
        if header.strip():
            # keep the columns already in the file, so appended rows line up under them
            self.keys = next(csv.reader([header], delimiter=self.sep))[1:]
            self._write_header = False
        else:
            self._write_header = True
            if not self.append or os.path.exists(self.filename):
                open(self.filename, "w").close()  # start the file afresh

    def _columns(self, logs: dict) -> list[str]:
        keys = set(logs)
        if self.params.get("do_validation"):
            keys |= {name for name in self.params.get("metrics", []) if name.startswith("val_")}
        return sorted(keys)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not is_main_process():
            return
        logs = logs or {}
        if self.keys is None:
            self.keys = self._columns(logs)

        class Dialect(csv.excel):
            delimiter = self.sep

        row = {"epoch": epoch}
        row.update((key, _handle_value(logs.get(key, "NA"))) for key in self.keys)
        with open(self.filename, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["epoch"] + self.keys, dialect=Dialect)
            if self._write_header:
                writer.writeheader()
                self._write_header = False
            writer.writerow(row)
            f.flush()
            os.fsync(f.fileno())
