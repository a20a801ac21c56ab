"""Callbacks from the keras package itself, passed to torchcb's Trainer unchanged.

Run:  pip install 'torchcb[keras]' && KERAS_BACKEND=torch python examples/keras_callbacks.py
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras 3 on PyTorch; set before importing keras

import keras  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from torchcb import Trainer  # noqa: E402


class PrintBest(keras.callbacks.Callback):
    """A callback written for Keras: it reads self.model, self.params and logs."""

    def on_train_begin(self, logs=None):
        self.best = 0.0

    def on_epoch_end(self, epoch, logs=None):
        self.best = max(self.best, logs["val_accuracy"])

    def on_train_end(self, logs=None):
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        print(f"best val_accuracy {self.best:.4f} over {self.params['epochs']} epochs; final learning rate {lr:g}")


def main(run_dir: str = "runs/keras") -> dict:
    os.makedirs(run_dir, exist_ok=True)  # Keras' CSVLogger does not create it
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x))
    x, y = x[order], y[order]

    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    trainer = Trainer(
        net, torch.optim.Adam(net.parameters(), lr=1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    history = trainer.fit(
        x,
        y,
        batch_size=32,
        epochs=30,
        validation_split=0.2,
        verbose=0,
        callbacks=[
            keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=5, restore_best_weights=True),
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2),
            keras.callbacks.ModelCheckpoint(f"{run_dir}/best.keras", monitor="val_accuracy", save_best_only=True),
            keras.callbacks.CSVLogger(f"{run_dir}/log.csv"),
            PrintBest(),
        ],
    )
    trainer.model.load_weights(f"{run_dir}/best.keras")  # torchcb's torch format, under the Keras name
    return history.history


if __name__ == "__main__":
    main()
