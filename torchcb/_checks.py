"""Argument checks shared by the Trainer and the callbacks: one wording for every error."""

from __future__ import annotations

from typing import Any


def is_int(value: Any) -> bool:
    """An int, and not a bool (``True`` is an int to Python, never a count to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(value: Any, name: str, minimum: int) -> int:
    """``value`` if it is an int of at least ``minimum``; else ``ValueError`` naming ``name``."""
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return value


def validation_schedule(validation_freq: Any) -> Any:
    """A predicate on the 0-based epoch: does validation run after it? (Keras counts from 1.)"""
    if is_int(validation_freq) and validation_freq >= 1:
        return lambda epoch: (epoch + 1) % validation_freq == 0
    if isinstance(validation_freq, (list, tuple, set, range)) and all(is_int(e) and e >= 1 for e in validation_freq):
        epochs = set(validation_freq)
        return lambda epoch: (epoch + 1) in epochs
    raise ValueError(
        f"validation_freq must be an int >= 1 or a list of 1-based epoch numbers, got {validation_freq!r}."
    )


def check_verbose(verbose: Any) -> int:
    """``verbose`` as 0, 1 or 2 (``True``/``False`` and ``"auto"`` taken as Keras takes them)."""
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2):  # True and False are 1 and 0, as Keras takes them
        raise ValueError(f"verbose must be 0, 1, 2, True, False or 'auto', got {verbose!r}.")
    return int(verbose)
