"""The Keras 2 backend helpers that callback code uses, for torch values.

Import it as Keras code does: ``from torchcb import backend as K``.

Example:
    >>> import torch
    >>> from torchcb import backend as K
    >>> weight = torch.zeros(2)
    >>> K.set_value(weight, [1.0, 2.0])
    >>> K.get_value(weight)
    array([1., 2.], dtype=float32)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["epsilon", "eval", "get_value", "set_value"]

_EPSILON = 1e-7


def epsilon() -> float:
    """The fuzz factor Keras uses in numeric expressions (``1e-7``)."""
    return _EPSILON


def get_value(x: Any) -> Any:
    """The value of ``x``: a float for a learning-rate handle, numpy for a tensor."""
    getter = getattr(x, "get_value", None)
    if callable(getter):
        return getter()
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return x


eval = get_value  # noqa: A001  (the Keras 2 name)


def set_value(x: Any, value: Any) -> None:
    """Set ``x`` to ``value``: a learning-rate handle, or a tensor updated in place."""
    setter = getattr(x, "set_value", None)
    if callable(setter):
        setter(value)
        return
    if isinstance(x, torch.Tensor):
        with torch.no_grad():
            x.copy_(torch.as_tensor(np.asarray(value), dtype=x.dtype))
        return
    raise TypeError(
        f"K.set_value expects a learning-rate handle such as model.optimizer.lr or a torch tensor, "
        f"got {type(x).__name__}."
    )
