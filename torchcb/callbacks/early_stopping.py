"""EarlyStopping: stop training when a monitored quantity has stopped improving."""

from __future__ import annotations

import math
from typing import Any

import torch

from torchcb._checks import check_int
from torchcb.callbacks.base import MonitorCallback
from torchcb.utils import print_msg

__all__ = ["EarlyStopping"]


class EarlyStopping(MonitorCallback):
    """Stops training when ``monitor`` has not improved for ``patience`` epochs.

    Follows Keras 2 (the baseline semantics below) with the Keras 3 fixes: the best weights
    are recorded from the first monitored epoch and restored in ``on_train_end`` whoever
    ended training, and the state is reset in ``on_train_begin`` so one instance serves
    several ``fit`` calls.

    Args:
        monitor: the log key to watch. Default ``"val_loss"``.
        min_delta: the least change that counts as an improvement (absolute value used).
        patience: epochs without improvement after which training stops; 0 stops at the
            first epoch that does not improve.
        verbose: 1 prints ``Epoch 00005: early stopping`` and the restore message.
        mode: ``"auto"``, ``"min"`` or ``"max"``; ``monitor_op`` is ``np.greater`` or
            ``np.less`` accordingly. ``"auto"`` maximises ``acc``/``accuracy``/``auc`` names
            and metrics that say higher is better, minimises losses and decreasing metrics,
            and raises ``ValueError`` at the first epoch end for any other name (a typo such
            as ``"val_los"``): pass ``mode='max'`` or ``mode='min'`` then.
        baseline: a value to beat. ``best`` starts at it, so every epoch that does not
            beat it counts towards ``patience`` (Keras 2). With ``restore_best_weights``
            and no epoch beating it, the weights of the best epoch seen are restored all
            the same (the tf.keras and Keras 3 fix; Keras 2 restored nothing): with
            ``baseline=0.75`` and ``val_acc`` of ``[0.60, 0.70, 0.65]``, epoch 2's weights
            come back.
        restore_best_weights: restore the weights of the best epoch at the end of training.
            On torchcb's model the best weights stay on the device (no host copy).
        start_from_epoch: epochs before this one are not monitored at all (warm-up).

    Example:
        >>> from torchcb.callbacks import EarlyStopping
        >>> stop = EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
        >>> # trainer.fit(x, y, validation_split=0.1, epochs=100, callbacks=[stop])
        >>> stop.patience
        3
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0,
        patience: int = 0,
        verbose: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ) -> None:
        super().__init__(monitor, mode, baseline, min_delta)
        check_int(patience, "patience", 0)
        check_int(start_from_epoch, "start_from_epoch", 0)
        self.patience = patience
        self.verbose = verbose
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.wait = 0
        self.stopped_epoch = 0
        self.best_epoch = 0
        self.best_weights: Any = None
        self._best_seen: float | None = None  # the best value of this fit, beaten baseline or not

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.wait = 0
        self.stopped_epoch = 0
        self.best_epoch = 0
        self.best_weights = None
        self._best_seen = None
        self.reset_monitor()

    def get_state(self) -> dict[str, Any]:
        weights = self.best_weights
        if weights is not None and not isinstance(weights, dict):  # numpy arrays from a Keras-style model
            weights = [torch.as_tensor(w) for w in weights]
        return {
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "best_weights": weights,
            "best_seen": self._best_seen,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.wait = state["wait"]
        self.stopped_epoch = state["stopped_epoch"]
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self._best_seen = state.get("best_seen")  # absent from checkpoints of earlier versions
        weights = state["best_weights"]
        self.best_weights = [w.numpy() for w in weights] if isinstance(weights, list) else weights

    def _record_weights(self) -> None:
        snapshot = getattr(self.model, "weights_snapshot", None)
        self.best_weights = snapshot() if callable(snapshot) else self.model.get_weights()

    def _restore_weights(self) -> None:
        restore = getattr(self.model, "restore_weights_snapshot", None)
        if callable(restore) and isinstance(self.best_weights, dict):
            restore(self.best_weights)
        else:
            self.model.set_weights(self.best_weights)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        current = self.get_monitor_value(
            logs, "Early stopping conditioned on metric `%s` which is not available. Available metrics are: %s"
        )
        if current is None or epoch < self.start_from_epoch:
            return
        first = self.best_weights is None
        if self.restore_best_weights and first:
            self._record_weights()  # the first monitored epoch, even if its value is NaN
            self.best_epoch = epoch
        if self.is_improvement(current, self.best):
            self.best = self._best_seen = current
            self.best_epoch = epoch
            self.wait = 0
            if self.restore_best_weights:
                self._record_weights()
            return
        if self._best_seen is None or math.isnan(self._best_seen) or self.is_improvement(current, self._best_seen):
            # the best epoch so far, short of the baseline: restored if none ever beats it
            self._best_seen = current
            self.best_epoch = epoch
            if self.restore_best_weights and not first:
                self._record_weights()
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.stopped_epoch > 0 and self.verbose > 0:
            print_msg("Epoch %05d: early stopping" % (self.stopped_epoch + 1))
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print_msg(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self._restore_weights()
