"""Train a small network on scikit-learn's handwritten digits with Keras callbacks.

Run:  python examples/quickstart.py
The data ships with scikit-learn (no download). It reaches about 97% validation accuracy
in a few seconds on a laptop CPU, writes its checkpoint, CSV log and TensorBoard logs
under runs/, then reloads the best checkpoint into a fresh Trainer and evaluates it.
See the curves with:  tensorboard --logdir runs/tensorboard
"""

import torch
from sklearn.datasets import load_digits

from torchcb import Trainer
from torchcb.callbacks import CSVLogger, EarlyStopping, ModelCheckpoint, ReduceLROnPlateau, TensorBoard


def make_trainer() -> Trainer:
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    return Trainer(net, optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def main(run_dir: str = "runs") -> dict:
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0  # 8x8 images, pixels 0..16
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x))  # validation_split takes the last 20%: mix the classes first
    x, y = x[order], y[order]
    x_train, y_train, x_test, y_test = x[:1500], y[:1500], x[1500:], y[1500:]

    trainer = make_trainer()
    history = trainer.fit(
        x_train,
        y_train,
        batch_size=32,
        epochs=40,
        validation_split=0.2,
        callbacks=[
            EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True, verbose=1),
            ModelCheckpoint(f"{run_dir}/best.pt", monitor="val_accuracy", save_best_only=True),
            ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, verbose=1),
            CSVLogger(f"{run_dir}/log.csv"),
            TensorBoard(f"{run_dir}/tensorboard"),  # view with: tensorboard --logdir runs/tensorboard
        ],
    )
    print(f"best validation accuracy: {max(history.history['val_accuracy']):.4f}")

    # A fresh Trainer picks up the best checkpoint and scores the held-out digits.
    restored = make_trainer()
    restored.model.load_weights(f"{run_dir}/best.pt")
    scores = restored.evaluate(x_test, y_test, verbose=0, return_dict=True)
    print(f"test accuracy of the best checkpoint: {scores['accuracy']:.4f}")
    return {"history": history.history, "test": scores}


if __name__ == "__main__":
    main()
