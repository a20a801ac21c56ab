"""Two ranks on two GPUs, with the backend torchcb picks (cpu:gloo,cuda:nccl); run by tests/test_distributed.py.

python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_cuda_worker.py OUT
"""

import json
import sys

import torch

from torchcb import Trainer
from torchcb.distributed import get_rank


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    trainer = Trainer(  # device None: this rank's own GPU
        net, torch.optim.SGD(net.parameters(), lr=0.1), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=generator)
    history = trainer.fit(x, (x[:, 0] > 0).long(), batch_size=8, epochs=3, verbose=0)
    report = {
        "device": str(trainer.device),
        "backend": str(torch.distributed.get_backend()),
        "history": history.history,
        "weights": {k: v.cpu().tolist() for k, v in trainer.module.state_dict().items()},
    }
    with open(f"{out}/cuda_rank{get_rank()}.json", "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
