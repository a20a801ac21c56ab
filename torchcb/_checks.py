"""Argument checks shared by the Trainer and the callbacks: one wording for every error."""

from __future__ import annotations

import inspect
from typing import Any, TypeGuard


def is_int(value: Any) -> TypeGuard[int]:
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


def check_forward_keys(module: Any, inputs: dict[str, Any], argument: str) -> None:
    """Refuse dict inputs whose keys ``module.forward`` does not take, or that leave out one it needs.

    A ``forward`` with ``**kwargs`` takes any key; one whose signature cannot be read is not checked.

    Example:
        >>> import torch
        >>> class Pair(torch.nn.Module):
        ...     def forward(self, left, right=None):
        ...         return left
        >>> check_forward_keys(Pair(), {"left": 1, "rigth": 2}, "x")
        Traceback (most recent call last):
        ...
        ValueError: x has the key 'rigth', which the module's forward(left, right=None) does not take.
    """
    try:
        signature = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return
    parameters = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    named = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = [key for key in inputs if key not in named]
    if unknown:
        keys = ", ".join(repr(key) for key in unknown)
        raise ValueError(
            f"{argument} has the key{'s' if len(unknown) > 1 else ''} {keys}, which the module's "
            f"forward{signature} does not take."
        )
    missing = [
        p.name
        for p in parameters
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in inputs
    ]
    if missing:
        raise ValueError(
            f"{argument} has no key {missing[0]!r}, which the module's forward{signature} needs "
            f"(its keys: {', '.join(repr(key) for key in inputs)})."
        )
