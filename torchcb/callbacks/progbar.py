"""ProgbarLogger and the Keras 2 progress-bar renderer.

On a terminal or in a notebook, ``verbose=1`` redraws one line at most every ``interval`` seconds:
``  64/1000 [=>............................] - ETA: 3s - loss: 0.6931``. When stdout is not
a terminal (a pipe, a file, CI), it writes one finished line per epoch and never a
per-batch redraw or backspace. ``verbose=2`` writes one line per epoch:
`` - 1s - loss: 0.6931 - accuracy: 0.5000``.

Batch values stay on the device between redraws; each redraw reads the batches since the
last one back in a single transfer.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

from torchcb.callbacks.base import Callback
from torchcb.distributed import is_main_process
from torchcb.logs import Logs, read_floats
from torchcb.utils import is_interactive_logging_enabled, print_msg

__all__ = ["Progbar", "ProgbarLogger", "in_notebook"]


def in_notebook() -> bool:
    """Whether this process is an IPython kernel (Jupyter, VS Code, Colab), as Keras and tqdm detect it.

    Example:
        >>> in_notebook()  # a plain interpreter, or pytest
        False
    """
    if "ipykernel" not in sys.modules:
        return False
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    return shell is not None and hasattr(shell, "kernel")


def _format_value(value: float, verbose: int) -> str:
    if verbose == 2:
        return " %.4f" % value if value > 1e-3 else " %.4e" % value
    return " %.4f" % value if abs(value) > 1e-3 else " %.4e" % value


class Progbar:
    """The Keras 2 progress bar (``width=30``), writing to ``sys.stdout``.

    Args:
        target: the total number of steps or samples, or ``None`` if unknown.
        verbose: 1 for the bar, 2 for one line at the end.
        interval: the least time between two redraws on a terminal, in seconds.
        stateful_metrics: names shown as given, not averaged.

    Example:
        >>> bar = Progbar(target=4, dynamic=False)
        >>> bar.update(4, [("loss", 0.5)], finalize=True)  # doctest: +ELLIPSIS
        4/4 [==============================] - 0s ...us/step - loss: 0.5000
    """

    width = 30

    def __init__(
        self,
        target: int | None,
        verbose: int = 1,
        interval: float = 0.05,
        stateful_metrics: Any = None,
        dynamic: bool | None = None,
    ) -> None:
        self.target = target
        self.verbose = verbose
        self.interval = interval
        self.stateful_metrics = set(stateful_metrics or [])
        stream = sys.stdout
        self._notebook = in_notebook()  # Jupyter redraws with "\r" alone and shows backspaces as they are
        tty = bool(getattr(stream, "isatty", lambda: False)())
        self.dynamic = dynamic if dynamic is not None else (tty or self._notebook)
        if not is_interactive_logging_enabled():
            self.dynamic = False  # logging gets one record per epoch, not every redraw
        self._values: dict[str, list[float]] = {}
        self._order: list[str] = []
        self._seen_so_far = 0
        self._first = 0  # where the bar started: a resumed epoch starts at the batch it resumes from
        self._total_width = 0
        self._start = time.time()
        self._last_update = 0.0

    def start_at(self, current: int) -> None:
        """Start the count at ``current`` (an epoch resumed mid-way), not at 0."""
        self._seen_so_far = self._first = current

    def due(self, current: int) -> bool:
        """Whether a redraw at ``current`` would be shown now (terminal, and the interval passed)."""
        if self.verbose != 1 or not self.dynamic:
            return False
        return time.time() - self._last_update >= self.interval and (self.target is None or current < self.target)

    def update(self, current: int, values: Any = (), finalize: bool = False) -> None:
        """Record ``values`` (means since the last update) at ``current``; draw if due or finalizing.

        With ``finalize=True`` the values are taken as final (the epoch logs), not averaged.
        """
        for key, value in values:
            if key not in self._values:
                self._order.append(key)
            if finalize or key in self.stateful_metrics:
                self._values[key] = [value, 1]
            else:
                weight = max(current - self._seen_so_far, 1)
                total = self._values.setdefault(key, [0.0, 0])
                total[0] += value * weight
                total[1] += weight
        self._seen_so_far = current
        now = time.time()
        if finalize:
            self._draw_final(current, now)
        elif self.due(current):
            self._draw_running(current, now)

    def _bar(self, current: int) -> str:
        if self.target is None:
            return "%7d/Unknown" % current
        digits = len(str(self.target))
        bar = ("%" + str(digits) + "d/%d [") % (current, self.target)
        progress = min(current / self.target, 1.0) if self.target else 1.0
        filled = int(self.width * progress)
        if filled > 0:
            bar += "=" * (filled - 1) + (">" if current < self.target else "=")
        return bar + "." * (self.width - filled) + "]"

    def _metrics(self, verbose: int) -> str:
        text = ""
        for key in self._order:
            total, count = self._values[key]
            text += " - %s:%s" % (key, _format_value(total / max(count, 1), verbose))
        return text

    def _write(self, text: str) -> None:
        print_msg(text, line_break=False)  # stdout, or the "torchcb" logger (torchcb.utils)

    def _draw_running(self, current: int, now: float) -> None:
        previous = self._total_width
        bar = self._bar(current)
        per_unit = (now - self._start) / (current - self._first) if current > self._first else 0.0
        info = ""
        if self.target is not None:
            eta = per_unit * (self.target - current)
            if eta > 3600:
                eta_text = "%d:%02d:%02d" % (eta // 3600, (eta % 3600) // 60, eta % 60)
            elif eta > 60:
                eta_text = "%d:%02d" % (eta // 60, eta % 60)
            else:
                eta_text = "%ds" % eta
            info = " - ETA: %s" % eta_text
        info += self._metrics(1)
        line = bar + info
        self._total_width = len(line)
        padding = " " * max(previous - len(line), 0)
        self._write(("" if self._notebook else "\b" * previous) + "\r" + line + padding)
        self._last_update = now

    def _draw_final(self, current: int, now: float) -> None:
        elapsed = now - self._start
        if self.verbose == 2:
            self._write(" - %.0fs%s\n" % (elapsed, self._metrics(2)))
            return
        per_unit = elapsed / (current - self._first) if current > self._first else 0.0
        if per_unit >= 1:
            timing = " %.0fs/step" % per_unit
        elif per_unit >= 1e-3:
            timing = " %.0fms/step" % (per_unit * 1e3)
        else:
            timing = " %.0fus/step" % (per_unit * 1e6)
        line = self._bar(current) + " - %.0fs" % elapsed + timing + self._metrics(1)
        erase = "" if self._notebook else "\b" * self._total_width
        prefix = (erase + "\r") if self.dynamic and self._total_width else ""
        padding = " " * max(self._total_width - len(line), 0) if prefix else ""
        self._write(prefix + line + padding + "\n")
        self._last_update = now


class ProgbarLogger(Callback):
    """Prints ``Epoch 1/5`` and a Keras 2 progress bar with the metrics.

    ``fit`` adds one by itself when ``verbose`` is 1 or 2; ``evaluate``/``predict`` too
    when their ``verbose`` is set.

    Args:
        count_mode: ``"samples"`` (the bar counts samples) or ``"steps"`` (batches).
        stateful_metrics: names shown as their last value rather than averaged.

    Example:
        >>> from torchcb.callbacks import ProgbarLogger
        >>> progbar = ProgbarLogger(count_mode="steps")
        >>> # trainer.fit(x, y, verbose=1, callbacks=[progbar]) uses it instead of its own
    """

    changes_batch_logs = False  # it only reads them: a callback after it may still take batch groups
    interval = 0.05  # seconds between two redraws on a terminal

    def __init__(self, count_mode: str = "samples", stateful_metrics: Any = None) -> None:
        super().__init__()
        if count_mode not in ("samples", "steps"):
            raise ValueError("Unknown `count_mode`: " + str(count_mode))
        self.use_steps = count_mode == "steps"
        self.stateful_metrics = set(stateful_metrics or [])
        self._in_fit = False
        self.seen = 0
        self.progbar: Progbar | None = None

    def _start_bar(self) -> None:
        steps, samples = self.params.get("steps"), self.params.get("samples")
        self.target = steps if (self.use_steps or samples is None) else samples
        self._count_steps = self.use_steps or samples is None
        self.verbose = self.params.get("verbose", 1) if is_main_process() else 0  # rank 0 prints
        self.seen = 0
        self._pending: list[tuple[dict[str, Any], int]] = []
        self.progbar = Progbar(self.target, self.verbose, self.interval, self.stateful_metrics)

    def get_state(self) -> dict[str, Any]:
        """The count of the epoch so far: a run resumed mid-epoch shows its bar from there."""
        return {"seen": self.seen}

    def set_state(self, state: dict[str, Any]) -> None:
        self.seen = int(state["seen"])
        if self.progbar is not None:
            self.progbar.start_at(self.seen)

    def _batch_end(self, batch: int, logs: dict) -> None:
        size = dict.get(logs, "size", 1)  # dict.get: never reads device values back
        if self.progbar is None:
            self._start_bar()
        if self.seen == 0 and batch > 0:  # resumed mid-epoch from a backup written without a bar
            self.seen = batch if self._count_steps else batch * (self.params.get("batch_size") or size)
            self.progbar.start_at(self.seen)  # type: ignore[union-attr]
        self.seen += 1 if self._count_steps else size
        if self.progbar is None or not self.progbar.dynamic or self.verbose != 1:
            return  # nothing is drawn before the end: keep nothing, read nothing
        items = logs.raw_items() if isinstance(logs, Logs) else logs.items()
        values = {k: v for k, v in items if k not in ("batch", "size", "outputs")}
        self._pending.append((values, size))
        if self.progbar.due(self.seen):
            self.progbar.update(self.seen, self._read_pending())

    def _read_pending(self) -> list[tuple[str, float]]:
        """The size-weighted means of the batches since the last redraw, read in one transfer."""
        sums: dict[str, Any] = {}
        weight = 0
        for values, size in self._pending:
            weight += size
            for key, value in values.items():
                if isinstance(value, (int, float, torch.Tensor)):
                    sums[key] = sums.get(key, 0) + value * size
        self._pending = []
        keys = list(sums)
        tensors = [sums[k] if isinstance(sums[k], torch.Tensor) else torch.tensor(float(sums[k])) for k in keys]
        return [(k, v / max(weight, 1)) for k, v in zip(keys, read_floats(tensors))]

    def _finish(self, logs: dict, keys: list[str]) -> None:
        if self.progbar is not None and self.verbose:
            shown = [(k, logs[k]) for k in keys if k in logs]
            self.progbar.update(self.seen, shown, finalize=True)
        self.progbar = None

    # fit
    def on_train_begin(self, logs: dict | None = None) -> None:
        self._in_fit = True
        self.epochs = self.params.get("epochs", 1)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start_bar()
        if self.verbose:
            print_msg("Epoch %d/%d" % (epoch + 1, self.epochs))

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._batch_end(batch, logs or {})

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        keys = list(self.params.get("metrics") or [])
        keys += [k for k in logs if k not in keys]
        self._finish(logs, keys)

    def on_train_end(self, logs: dict | None = None) -> None:
        self._in_fit = False

    # evaluate and predict, outside fit
    def on_test_begin(self, logs: dict | None = None) -> None:
        if not self._in_fit:
            self._start_bar()

    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if not self._in_fit:
            self._batch_end(batch, logs or {})

    def on_test_end(self, logs: dict | None = None) -> None:
        if not self._in_fit:
            self._finish(logs or {}, list(logs or {}))

    def on_predict_begin(self, logs: dict | None = None) -> None:
        self._start_bar()

    def on_predict_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._batch_end(batch, {"size": (logs or {}).get("size", 1)})

    def on_predict_end(self, logs: dict | None = None) -> None:
        self._finish({}, [])
