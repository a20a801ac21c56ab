"""torchcb: the Keras callback API for plain PyTorch.

Example:
    >>> import torch
    >>> from torchcb import Trainer, History
    >>> net = torch.nn.Linear(4, 2)
    >>> trainer = Trainer(net, torch.optim.Adam(net.parameters()), loss="sparse_categorical_crossentropy",
    ...                   metrics=["accuracy"], device="cpu")
    >>> isinstance(trainer.fit(torch.randn(8, 4), torch.randint(0, 2, (8,)), verbose=0), History)
    True
"""

from torchcb import backend, callbacks, utils
from torchcb.callbacks.history import History
from torchcb.sharded import export_full
from torchcb.trainer import Trainer

__version__ = "0.1.0"

__all__ = ["History", "Trainer", "__version__", "backend", "callbacks", "export_full", "utils"]
