"""Keras 3's interactive-logging switch: where the built-in callbacks' messages go.

By default (interactive logging on) the messages of the built-in callbacks (``verbose=1``
of EarlyStopping, ModelCheckpoint, LearningRateScheduler, ReduceLROnPlateau, and
TerminateOnNaN, and the progress bar with its ``Epoch 1/5`` lines) are written to stdout, as
Keras 2 printed them. With it off, the bar gives one record per epoch (its final line), not
one per redraw. On a server or in a batch
job, :func:`disable_interactive_logging` sends them to the standard :mod:`logging` logger
``"torchcb"`` instead, at level ``INFO``, without their leading line breaks (which only
separate them from a progress bar); :func:`enable_interactive_logging` turns stdout back
on. The names are Keras 3's (``keras.utils.disable_interactive_logging``...); Keras 3 logs
to ``absl.logging``, torchcb to the standard library.

Example:
    >>> import logging
    >>> from torchcb import utils
    >>> utils.print_msg("Epoch 3: early stopping")
    Epoch 3: early stopping
    >>> utils.disable_interactive_logging()
    >>> utils.is_interactive_logging_enabled()
    False
    >>> utils.print_msg("Epoch 3: early stopping")  # now a record of logging.getLogger("torchcb")
    >>> utils.enable_interactive_logging()
"""

from __future__ import annotations

import logging
import sys

__all__ = [
    "disable_interactive_logging",
    "enable_interactive_logging",
    "is_interactive_logging_enabled",
    "print_msg",
]

logger = logging.getLogger("torchcb")

_interactive_logging = True  # one switch for the process, as a user expects of a global setting


def enable_interactive_logging() -> None:
    """Write the built-in callbacks' messages to stdout (the default).

    Example:
        >>> from torchcb.utils import enable_interactive_logging, is_interactive_logging_enabled
        >>> enable_interactive_logging()
        >>> is_interactive_logging_enabled()
        True
    """
    global _interactive_logging
    _interactive_logging = True


def disable_interactive_logging() -> None:
    """Send the built-in callbacks' messages to the ``logging`` logger ``"torchcb"`` (level INFO).

    Configure logging to see them, e.g. ``logging.basicConfig(level=logging.INFO)``.

    Example:
        >>> from torchcb.utils import disable_interactive_logging, enable_interactive_logging
        >>> disable_interactive_logging()
        >>> # trainer.fit(..., callbacks=[EarlyStopping(verbose=1)])  # messages go to logging
        >>> enable_interactive_logging()
    """
    global _interactive_logging
    _interactive_logging = False


def is_interactive_logging_enabled() -> bool:
    """Whether the built-in callbacks' messages go to stdout (``True``) or to ``logging`` (``False``).

    Example:
        >>> from torchcb.utils import is_interactive_logging_enabled
        >>> is_interactive_logging_enabled()
        True
    """
    return _interactive_logging


def print_msg(message: str, line_break: bool = True) -> None:
    """Write one message of a built-in callback: to stdout, or to the ``"torchcb"`` logger.

    Args:
        message: the text, as Keras prints it (a leading ``"\\n"`` ends a progress-bar line).
        line_break: end the line on stdout (ignored for logging: a record is a line).

    Example:
        >>> from torchcb.utils import print_msg
        >>> print_msg("Epoch 00002: saving model to ckpt.pt")
        Epoch 00002: saving model to ckpt.pt
    """
    message = str(message)
    if _interactive_logging:
        sys.stdout.write(message + "\n" if line_break else message)
        sys.stdout.flush()
    else:
        logger.info(message.strip("\n"))
