"""The Keras 2 backend helpers that callback code uses, for torch values.

Import it as Keras code does: ``from torchcb import backend as K``. Learning rates and the
other optimizer hyperparameters of ``self.model.optimizer`` are handles that
``get_value``/``set_value`` read and set; tensors are read as numpy arrays and set in place.

Example:
    >>> import torch
    >>> from torchcb import backend as K
    >>> weight = torch.zeros(2)
    >>> K.set_value(weight, [1.0, 2.0])
    >>> K.get_value(weight)
    array([1., 2.], dtype=float32)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = [
    "cast",
    "clear_session",
    "count_params",
    "dtype",
    "epsilon",
    "eval",
    "floatx",
    "get_value",
    "int_shape",
    "learning_phase",
    "set_value",
]

_EPSILON = 1e-7


def epsilon() -> float:
    """The fuzz factor Keras uses in numeric expressions.

    Example:
        >>> epsilon()
        1e-07
    """
    return _EPSILON


def floatx() -> str:
    """The default float type's name: torch's default dtype (``"float32"`` unless changed).

    Example:
        >>> floatx()
        'float32'
    """
    return str(torch.get_default_dtype()).removeprefix("torch.")


def get_value(x: Any) -> Any:
    """The value of ``x``: a float for a hyperparameter handle, numpy for a tensor.

    Example:
        >>> import torch
        >>> get_value(torch.tensor([0.5, 1.5]))
        array([0.5, 1.5], dtype=float32)
    """
    getter = getattr(x, "get_value", None)
    if callable(getter):
        return getter()
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return x


def eval(x: Any) -> Any:  # noqa: A001  (the Keras 2 name)
    """The value of ``x``, as :func:`get_value` gives it (Keras 2's ``K.eval``).

    Example:
        >>> import torch
        >>> float(eval(torch.tensor(2.0)))
        2.0
    """
    return get_value(x)


def set_value(x: Any, value: Any) -> None:
    """Set ``x`` to ``value``: a hyperparameter handle, or a tensor updated in place.

    Example:
        >>> import torch
        >>> bias = torch.zeros(3)
        >>> set_value(bias, 1.0)
        >>> bias
        tensor([1., 1., 1.])
    """
    setter = getattr(x, "set_value", None)
    if callable(setter):
        setter(value)
        return
    if isinstance(x, torch.Tensor):
        with torch.no_grad():
            x.copy_(torch.as_tensor(np.asarray(value), dtype=x.dtype))
        return
    raise TypeError(
        f"K.set_value expects a learning-rate handle (model.optimizer.lr, or another optimizer hyperparameter "
        f"such as model.optimizer.momentum) or a torch tensor, got {type(x).__name__}."
    )


def cast(x: Any, dtype: str | torch.dtype | np.dtype) -> Any:
    """``x`` converted to ``dtype`` (a name such as ``"float32"``): a tensor for a tensor, else numpy.

    Example:
        >>> import torch
        >>> cast(torch.tensor([1.7, 2.2]), "int64")
        tensor([1, 2])
        >>> cast([1, 2], "float32")
        array([1., 2.], dtype=float32)
    """
    if isinstance(x, torch.Tensor):
        return x.to(_torch_dtype(dtype))
    return np.asarray(get_value(x)).astype(_numpy_dtype(dtype))


def dtype(x: Any) -> str:
    """The name of ``x``'s element type, as Keras names it (``"float32"``, ``"int64"`` ...).

    Example:
        >>> import torch
        >>> dtype(torch.zeros(2)), dtype(torch.zeros(2, dtype=torch.int64))
        ('float32', 'int64')
    """
    if isinstance(x, torch.Tensor):
        return str(x.dtype).removeprefix("torch.")
    if isinstance(x, float) or hasattr(x, "get_value"):
        return floatx()  # a Python float or a hyperparameter, as a Keras variable holds it
    return str(np.asarray(x).dtype)


def int_shape(x: Any) -> tuple[int, ...]:
    """The shape of ``x`` as a tuple of ints.

    Example:
        >>> import torch
        >>> int_shape(torch.zeros(4, 3))
        (4, 3)
    """
    if isinstance(x, torch.Tensor):
        return tuple(int(d) for d in x.shape)
    return tuple(int(d) for d in np.shape(get_value(x)))


def count_params(x: Any) -> int:
    """The number of elements in ``x`` (a tensor, an array or a parameter).

    Example:
        >>> import torch
        >>> count_params(torch.nn.Linear(3, 2).weight)
        6
    """
    return math.prod(int_shape(x))


def clear_session() -> None:
    """Keras' global graph reset: nothing to do in torch (kept so callback code runs).

    Example:
        >>> clear_session()
    """


def learning_phase() -> int:
    """Keras 2's learning-phase flag; callbacks run between steps, where it is 0.

    Example:
        >>> learning_phase()
        0
    """
    return 0


def _torch_dtype(name: str | torch.dtype | np.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    resolved = getattr(torch, str(np.dtype(name)), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"cast: unknown dtype {name!r}.")
    return resolved


def _numpy_dtype(name: str | torch.dtype | np.dtype) -> np.dtype:
    if isinstance(name, torch.dtype):
        return np.dtype(str(name).removeprefix("torch."))
    return np.dtype(name)
