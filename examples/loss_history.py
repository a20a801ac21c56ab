"""The Keras documentation's LossHistory callback, unchanged but for the imports.

Run:  python examples/loss_history.py
"""

import numpy as np
import torch

from torchcb import Trainer
from torchcb.callbacks import Callback  # was: import keras; keras.callbacks.Callback


class LossHistory(Callback):
    def on_train_begin(self, logs={}):  # noqa: B006  (the seed document's signature)
        self.losses = []

    def on_batch_end(self, batch, logs={}):  # noqa: B006
        self.losses.append(logs.get("loss"))


def main() -> list:
    rng = np.random.default_rng(0)
    x_train = rng.random((1000, 784), dtype=np.float32)
    y_train = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 1000)]

    # was: Sequential([Dense(10, input_dim=784, kernel_initializer='uniform'), Activation('softmax')])
    # torch losses take logits, so the softmax lives in the loss; Keras' RMSprop default lr is 0.001.
    model = torch.nn.Linear(784, 10)
    trainer = Trainer(model, torch.optim.RMSprop(model.parameters(), lr=0.001), loss="categorical_crossentropy")

    history = LossHistory()
    trainer.fit(x_train, y_train, batch_size=128, epochs=20, verbose=0, callbacks=[history])
    print(history.losses)
    return history.losses


if __name__ == "__main__":
    main()
