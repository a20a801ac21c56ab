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
