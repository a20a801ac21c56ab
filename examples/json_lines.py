"""The Keras documentation's LambdaCallback examples: print batch numbers, stream JSON lines.

Run:  python examples/json_lines.py   (writes runs/loss_log.json)
"""

import json
import os

import numpy as np
import torch

from torchcb import Trainer
from torchcb.callbacks import LambdaCallback


def main(path: str = "runs/loss_log.json") -> list:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    y = x @ rng.normal(size=(8, 1)).astype(np.float32)
    model = torch.nn.Linear(8, 1)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), loss="mse")

    # Print the batch number at the beginning of every batch.
    batch_print_callback = LambdaCallback(on_batch_begin=lambda batch, logs: print(batch))

    # Stream the epoch loss to a file in JSON format. The file content
    # is not well-formed JSON but rather has a JSON object per line.
    json_log = open(path, mode="w", buffering=1)
    json_logging_callback = LambdaCallback(
        on_epoch_end=lambda epoch, logs: json_log.write(json.dumps({"epoch": epoch, "loss": logs["loss"]}) + "\n"),
        on_train_end=lambda logs: json_log.close(),
    )

    trainer.fit(x, y, batch_size=64, epochs=5, verbose=0, callbacks=[batch_print_callback, json_logging_callback])
    with open(path) as f:
        lines = [json.loads(line) for line in f]
    print(lines)
    return lines


if __name__ == "__main__":
    main()
