"""Every torchcb callback, under its Keras name.

``from torchcb.callbacks import *`` also gives ``K`` (``torchcb.backend``) and ``np``, as
Keras 2.1 and 2.2's ``keras.callbacks`` module did: scheduler files written for it run
with that one import line changed.

Example:
    >>> from torchcb.callbacks import Callback, EarlyStopping, ModelCheckpoint
    >>> issubclass(EarlyStopping, Callback) and issubclass(ModelCheckpoint, Callback)
    True
"""

import numpy as np

from torchcb import backend as K
from torchcb.callbacks.backup_and_restore import BackupAndRestore
from torchcb.callbacks.base import Callback
from torchcb.callbacks.callback_list import CallbackList
from torchcb.callbacks.csv_logger import CSVLogger
from torchcb.callbacks.early_stopping import EarlyStopping
from torchcb.callbacks.history import BaseLogger, History
from torchcb.callbacks.lambda_callback import LambdaCallback
from torchcb.callbacks.lr import LearningRateScheduler, ReduceLROnPlateau
from torchcb.callbacks.model_checkpoint import ModelCheckpoint
from torchcb.callbacks.progbar import ProgbarLogger
from torchcb.callbacks.remote_monitor import RemoteMonitor
from torchcb.callbacks.swap_ema_weights import SwapEMAWeights
from torchcb.callbacks.tensorboard import TensorBoard
from torchcb.callbacks.terminate_on_nan import TerminateOnNaN
from torchcb.callbacks.torch_scheduler import TorchScheduler

__all__ = [
    "BackupAndRestore",
    "BaseLogger",
    "CSVLogger",
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "History",
    "K",
    "LambdaCallback",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "ProgbarLogger",
    "ReduceLROnPlateau",
    "RemoteMonitor",
    "SwapEMAWeights",
    "TensorBoard",
    "TerminateOnNaN",
    "TorchScheduler",
    "np",
]
