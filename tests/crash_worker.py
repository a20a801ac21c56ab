"""A training process for the crash tests: the tests run it, kill it with SIGKILL, and run it again.

python tests/crash_worker.py churn DIR          train forever, writing full checkpoints every batch
python tests/crash_worker.py train DIR EPOCHS   train with BackupAndRestore and CSVLogger, then write
                                                the final weights to DIR/final.pt
"""

import sys

import torch

from torchcb import Trainer
from torchcb.callbacks import BackupAndRestore, Callback, CSVLogger, EarlyStopping, ModelCheckpoint


class Progress(Callback):
    """Prints the optimizer step after every batch, so the parent knows how far training got."""

    def on_train_batch_end(self, batch, logs=None):
        print(f"step {self.model.optimizer.iterations}", flush=True)


def _trainer(width):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(8, width), torch.nn.Dropout(0.2), torch.nn.ReLU(), torch.nn.Linear(width, 3)
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    return Trainer(net, optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"], device="cpu")


def _data():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(96, 8, generator=generator)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def main():
    torch.set_num_threads(1)
    mode, directory = sys.argv[1], sys.argv[2]
    x, y = _data()
    if mode == "churn":
        trainer = _trainer(width=32768)  # about 5 MB per full checkpoint, so kills land inside writes
        callbacks = [
            BackupAndRestore(f"{directory}/backup", save_freq=1),
            ModelCheckpoint(f"{directory}/model.pt", save_freq=1),
            ModelCheckpoint(f"{directory}/weights.pt", save_freq=1, save_weights_only=True),
            Progress(),
        ]
        trainer.fit(x, y, batch_size=16, epochs=10_000, verbose=0, callbacks=callbacks)
    elif mode == "train":
        epochs = int(sys.argv[3])
        trainer = _trainer(width=32)
        callbacks = [
            BackupAndRestore(f"{directory}/backup", save_freq=2),
            EarlyStopping(monitor="val_loss", patience=100),
            CSVLogger(f"{directory}/log.csv"),
            Progress(),
        ]
        trainer.fit(x, y, batch_size=8, epochs=epochs, verbose=0, validation_split=0.25, callbacks=callbacks)
        torch.save(trainer.module.state_dict(), f"{directory}/final.pt")
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
