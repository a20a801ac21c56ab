"""The scenarios of the FSDP tests, run under torchrun (2 gloo ranks) or alone (one process).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/fsdp_worker.py SCENARIO OUT
    python tests/fsdp_worker.py SCENARIO OUT

Each rank writes what it saw to OUT as JSON and tensors; tests/test_fsdp.py compares.
"""

import json
import os
import signal
import sys

import torch

from torchcb import Trainer, sharded
from torchcb.callbacks import BackupAndRestore, Callback, EarlyStopping, ModelCheckpoint
from torchcb.distributed import get_rank, get_world_size, init_from_env

EPOCHS = 4


def _trainer(strategy="fsdp", metrics=("accuracy",)):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    return Trainer(
        net,
        optimizer,
        loss="sparse_categorical_crossentropy",
        metrics=list(metrics),
        device="cpu",
        strategy=strategy,
    )


def _data(samples=64, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 4, generator=generator)
    return x, (x[:, 0] > 0).long()


def _fit(trainer, epochs=EPOCHS, callbacks=(), validation=True, batch=16):
    """The same global batch of 16 on any world size, without shuffling; 9 validation samples
    (5 and 4 on two ranks, in 2 and 1 batches: uneven)."""
    x, y = _data()
    val = _data(9, seed=2)
    return trainer.fit(
        x,
        y,
        batch_size=batch // get_world_size(),
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=list(callbacks),
        validation_data=val if validation else None,
    )


def _weights(trainer):
    return [w.tolist() for w in trainer.model.get_weights()]


def train(out):
    """ddp against fsdp; checkpoints, weights files and callbacks under fsdp."""
    rank = get_rank()
    report = {}
    ddp = _trainer("ddp")
    report["ddp"] = _fit(ddp).history
    report["ddp_weights"] = _weights(ddp)
    fsdp = _trainer("fsdp")
    report["sharded"] = sharded.is_sharded(fsdp.module)
    report["fsdp"] = _fit(fsdp, callbacks=[ModelCheckpoint(f"{out}/ckpt-{{epoch}}")]).history
    report["fsdp_weights"] = _weights(fsdp)
    report["rank0_only_count"] = len(fsdp.model.get_weights(rank0_only=True))
    report["evaluate"] = fsdp.evaluate(*_data(9, seed=2), batch_size=4, verbose=0, return_dict=True)
    report["predict"] = fsdp.predict(_data(5)[0]).tolist()

    # a module its user sharded is used as it is, with the optimizer built over its shards
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    fully_shard(net)
    mine = Trainer(
        net,
        torch.optim.Adam(net.parameters(), lr=0.01),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        device="cpu",
        strategy="fsdp",
    )
    report["user_sharded"] = _fit(mine).history

    # save_weights writes one plain file (rank 0), load_weights and set_weights put weights back
    fsdp.model.save_weights(f"{out}/weights.pt")
    fsdp.model.save(f"{out}/final")
    other = _trainer("fsdp")
    other.model.load_weights(f"{out}/weights.pt")
    report["load_weights_file"] = _weights(other)
    other = _trainer("fsdp")
    other.model.load_weights(f"{out}/final")
    report["load_weights_dir"] = _weights(other)
    other = _trainer("fsdp")
    other.model.set_weights(fsdp.model.get_weights())
    report["set_weights"] = _weights(other)

    # EarlyStopping restores the best epoch's weights, kept sharded
    class Recorder(Callback):
        def on_train_begin(self, logs=None):
            self.weights = []

        def on_epoch_end(self, epoch, logs=None):
            self.weights.append([w.tolist() for w in self.model.get_weights()])

    recorder = Recorder()
    stop = EarlyStopping(monitor="val_loss", mode="max", patience=1, restore_best_weights=True)
    trainer = _trainer("fsdp")
    history = _fit(trainer, epochs=10, callbacks=[recorder, stop])
    best = max(range(len(history.epoch)), key=lambda i: history.history["val_loss"][i])
    report["early_stopping"] = {"epochs": history.epoch, "restored": _weights(trainer), "best": recorder.weights[best]}

    # ModelCheckpoint's full checkpoints mid-epoch under DDP: they hold every rank's epoch sums
    reference = _fit(_trainer("ddp"), validation=False).history
    trainer = _trainer("ddp")
    _fit(trainer, epochs=2, validation=False, callbacks=[ModelCheckpoint(f"{out}/ddp-mid.pt", save_freq=3)])
    resumed = _trainer("ddp")
    resumed.load_checkpoint(f"{out}/ddp-mid.pt")  # saved at batch 3 of epoch 1's 4
    report["ddp_mid"] = {"reference": reference, "resumed": _fit(resumed, validation=False).history}

    # a torchmetrics metric (its compute() syncs the ranks) computes once an epoch, not every batch
    from torchmetrics.classification import MulticlassAccuracy

    class Counted(MulticlassAccuracy):
        computes = 0

        def compute(self):
            Counted.computes += 1
            return super().compute()

    history = _fit(_trainer("ddp", metrics=[Counted(num_classes=2, average="micro")]), epochs=2, validation=False)
    report["computes"] = {"count": Counted.computes, "history": history.history}

    with open(f"{out}/train{rank}.json", "w") as f:
        json.dump(report, f)


def save(out):
    """2 epochs of 4 on two ranks, a sharded checkpoint at the end; and the uninterrupted run."""
    trainer = _trainer()
    _fit(trainer, epochs=2)
    trainer.model.save(f"{out}/half")
    with open(f"{out}/half{get_rank()}.json", "w") as f:
        json.dump({"weights": _weights(trainer)}, f)
    full = _trainer()
    history = _fit(full)
    with open(f"{out}/uninterrupted{get_rank()}.json", "w") as f:
        json.dump({"weights": _weights(full), "history": history.history}, f)


def resume(out):
    """Resume the 2-rank checkpoint on this world size and finish the run."""
    trainer = _trainer()
    epoch = trainer.load_checkpoint(f"{out}/half")
    history = _fit(trainer)
    report = {"epoch": epoch, "epochs": history.epoch, "weights": _weights(trainer), "history": history.history}
    with open(f"{out}/resumed_{get_world_size()}_{get_rank()}.json", "w") as f:
        json.dump(report, f)


def _ema_trainer():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    trainer = Trainer(
        net, optimizer, loss="sparse_categorical_crossentropy", device="cpu", strategy="fsdp",
        use_ema=True, ema_momentum=0.8,
    )  # fmt: skip
    return trainer


class LastEpoch(Callback):
    """The raw weights, the average (gathered whole) and Keras 2's decay at the last epoch's end."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == EPOCHS - 1:
            average = self.model.optimizer.weight_average.averaged_weights()
            full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in average.items()}
            self.seen = {
                "weights": [w.tolist() for w in self.model.get_weights()],
                "average": [full[k].tolist() for k in sorted(full)],
                "decay": float(self.model.optimizer.decay),
            }


def ema_save(out):
    """use_ema and Keras 2's decay on two ranks, a sharded checkpoint after every epoch."""
    trainer = _ema_trainer()
    trainer.model.optimizer.decay = 0.01
    last = LastEpoch()
    _fit(trainer, validation=False, callbacks=[ModelCheckpoint(f"{out}/ema-{{epoch}}"), last])
    with open(f"{out}/ema_uninterrupted{get_rank()}.json", "w") as f:
        json.dump(last.seen, f)


def ema_resume(out):
    """The run saved after its second epoch, resumed on this world size (decay not set again)."""
    trainer = _ema_trainer()
    trainer.load_checkpoint(f"{out}/ema-2")
    last = LastEpoch()
    _fit(trainer, validation=False, callbacks=[last])
    with open(f"{out}/ema_resumed_{get_world_size()}_{get_rank()}.json", "w") as f:
        json.dump(last.seen, f)


class KillRankOneInThirdWrite:
    """Rank 1 is killed (SIGKILL) in the middle of the third checkpoint write: its shards written
    into the temporary directory, rank 0 waiting for it."""

    def __init__(self):
        self.writes = 0
        self.original = sharded.write_directory

    def __call__(self, path, write, keep_previous=None):
        self.writes += 1

        def dying_write(directory):
            write(directory)
            if self.writes == 3 and get_rank() == 1:
                os.kill(os.getpid(), signal.SIGKILL)

        return self.original(path, dying_write, keep_previous)


def kill(out):
    """BackupAndRestore every epoch; rank 1 dies while the third backup is written."""
    sharded.write_directory = KillRankOneInThirdWrite()
    _fit(_trainer(), callbacks=[BackupAndRestore(f"{out}/backup", delete_checkpoint=False)])


def after_kill(out):
    """The killed run, started again: it resumes from the last whole backup."""
    began = []

    class Began(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            began.append(epoch)

    trainer = _trainer()
    _fit(trainer, callbacks=[BackupAndRestore(f"{out}/backup"), Began()])
    with open(f"{out}/after_kill{get_rank()}.json", "w") as f:
        json.dump({"began": began, "weights": _weights(trainer)}, f)


def main():
    torch.set_num_threads(1)
    init_from_env(device="cpu")
    scenario, out = sys.argv[1], sys.argv[2]
    for name in scenario.split(","):
        globals()[name](out)


if __name__ == "__main__":
    main()
