"""Every torchcb callback, under its Keras name.

Example:
    >>> from torchcb.callbacks import Callback, History, LambdaCallback
    >>> issubclass(History, Callback) and issubclass(LambdaCallback, Callback)
    True
"""

from torchcb.callbacks.base import Callback, CallbackList
from torchcb.callbacks.history import BaseLogger, History
from torchcb.callbacks.lambda_callback import LambdaCallback
from torchcb.callbacks.progbar import ProgbarLogger
from torchcb.callbacks.terminate_on_nan import TerminateOnNaN

__all__ = [
    "BaseLogger",
    "Callback",
    "CallbackList",
    "History",
    "LambdaCallback",
    "ProgbarLogger",
    "TerminateOnNaN",
]
