"""TerminateOnNaN: stop training when the loss becomes NaN or infinite."""

from __future__ import annotations

import math

from torchcb.callbacks.base import Callback

__all__ = ["TerminateOnNaN"]


class TerminateOnNaN(Callback):
    """Stops training at the first batch whose ``loss`` is NaN or ±inf.

    It prints ``Batch N: Invalid loss, terminating training`` and sets
    ``model.stop_training``; the epoch still ends (``on_epoch_end`` runs) and training stops
    after it.

    Args:
        raise_error: raise ``RuntimeError`` instead of stopping (Keras 3), so no further
            hook runs.

    Example:
        >>> from torchcb.callbacks import TerminateOnNaN
        >>> # trainer.fit(x, y, callbacks=[TerminateOnNaN()])
        >>> TerminateOnNaN(raise_error=True).raise_error
        True
    """

    def __init__(self, raise_error: bool = False) -> None:
        super().__init__()
        self.raise_error = raise_error

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(loss)
        if math.isnan(loss) or math.isinf(loss):
            if self.raise_error:
                raise RuntimeError(
                    f"NaN or Inf loss encountered at batch {batch}. Loss value: {loss}. Terminating training immediately."
                )
            print("Batch %d: Invalid loss, terminating training" % batch)
            self.model.stop_training = True
