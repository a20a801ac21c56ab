"""The quickstart's digits, trained with DistributedDataParallel under torchrun.

Run, on one machine with 2 processes (CPUs with gloo, or one GPU each with nccl):
    torchrun --standalone --nproc_per_node=2 examples/ddp.py
It also runs as a plain script, in one process. Each rank trains on its half of every
epoch with a batch of 32 (a global batch of 64); the logs, the History and every callback
decision are the same on all ranks, and only rank 0 prints and writes files.
"""

import torch
from sklearn.datasets import load_digits

from torchcb import Trainer
from torchcb.callbacks import CSVLogger, EarlyStopping, ModelCheckpoint
from torchcb.distributed import get_world_size, is_main_process


def main(run_dir: str = "runs/ddp") -> dict:
    torch.manual_seed(0)  # the same initial weights on every rank
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x))
    x, y = x[order], y[order]

    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    trainer = Trainer(  # under torchrun, this joins the process group and wraps the module in DDP
        net, torch.optim.Adam(net.parameters(), lr=2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    history = trainer.fit(
        x,
        y,
        batch_size=32,
        epochs=20,
        validation_split=0.2,
        verbose=2,
        callbacks=[
            EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True),
            ModelCheckpoint(f"{run_dir}/best.pt", monitor="val_accuracy", save_best_only=True),
            CSVLogger(f"{run_dir}/log.csv"),
        ],
    )
    if is_main_process():
        print(f"{get_world_size()} process(es), best validation accuracy {max(history.history['val_accuracy']):.4f}")
    return history.history


if __name__ == "__main__":
    main()
