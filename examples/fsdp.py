"""The quickstart's digits, trained with FSDP2 under torchrun: the module sharded across ranks.

Run, on one machine with 2 processes (CPUs with gloo, or one GPU each with nccl):
    torchrun --standalone --nproc_per_node=2 examples/fsdp.py
It also runs as a plain script, in one process (nothing is sharded then). Each rank holds half
of every parameter and of the optimizer state; the logs, History and callback decisions are
the same on all ranks. Checkpoints are directories that every rank writes its shards into:
BackupAndRestore resumes a killed run (at any number of ranks), and the best checkpoint is
exported to one plain state_dict at the end.
"""

import os

import torch
from sklearn.datasets import load_digits

import torchcb
from torchcb import Trainer
from torchcb.callbacks import BackupAndRestore, EarlyStopping, ModelCheckpoint
from torchcb.distributed import get_world_size, is_main_process


def main(run_dir: str = "runs/fsdp") -> dict:
    torch.manual_seed(0)  # the same initial weights on every rank
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x))
    x, y = x[order], y[order]

    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    # the optimizer is built over the module's parameters as usual: torchcb points it at the shards
    trainer = Trainer(
        net,
        torch.optim.Adam(net.parameters(), lr=2e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        strategy="fsdp",  # under torchrun: fully_shard on each Linear, then on the whole module
    )
    history = trainer.fit(
        x,
        y,
        batch_size=32,
        epochs=15,
        validation_split=0.2,
        verbose=2,
        callbacks=[
            BackupAndRestore(f"{run_dir}/backup"),
            EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True),
            ModelCheckpoint(f"{run_dir}/best", monitor="val_accuracy", save_best_only=True),
        ],
    )
    if is_main_process():  # one plain torch.save file, loadable without torchcb
        torchcb.export_full(f"{run_dir}/best", f"{run_dir}/best_full.pt")
        plain = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
        plain.load_state_dict(torch.load(f"{run_dir}/best_full.pt", weights_only=True))
        print(
            f"{get_world_size()} process(es), best validation accuracy {max(history.history['val_accuracy']):.4f}, "
            f"exported {os.path.getsize(f'{run_dir}/best_full.pt')} bytes"
        )
    return history.history


if __name__ == "__main__":
    main()
