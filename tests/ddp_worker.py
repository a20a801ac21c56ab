"""The scenarios of the distributed tests, run under torchrun (or alone, for the reference).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py OUT
    python tests/ddp_worker.py OUT     # the single-process reference, on the same global batch

Each rank writes what it saw to OUT as JSON and tensors; tests/test_distributed.py compares.
"""

import json
import sys

import torch

from torchcb import Trainer
from torchcb.callbacks import BackupAndRestore, Callback, CSVLogger, EarlyStopping, LambdaCallback, ModelCheckpoint
from torchcb.distributed import get_rank, get_world_size, init_from_env


def _trainer(metrics=("accuracy",), **options):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    return Trainer(
        net, optimizer, loss="sparse_categorical_crossentropy", metrics=list(metrics), device="cpu", **options
    )


class FailAtStep(Callback):
    """Raises once, after the given optimizer step, on every rank."""

    def __init__(self, step):
        super().__init__()
        self.step, self.failed = step, False

    def on_train_batch_end(self, batch, logs=None):
        if not self.failed and self.model.optimizer.iterations == self.step:
            self.failed = True
            raise RuntimeError("interrupted")


def _data():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=generator)
    return x, (x[:, 0] > 0).long()


class CountBatches(Callback):
    def on_train_begin(self, logs=None):
        self.batches = 0

    def on_batch_end(self, batch, logs=None):
        self.batches += 1


class StopOnRankOne(Callback):
    def on_batch_end(self, batch, logs=None):
        if get_rank() == 1 and batch == 1:
            self.model.stop_training = True


def main():
    torch.set_num_threads(1)
    init_from_env(device="cpu")  # join torchrun's group now (a Trainer would do it too), so the ranks are known
    out = sys.argv[1]
    x, y = _data()
    rank, world = get_rank(), get_world_size()
    report = {}

    # The same global batch of 16: 8 on each of 2 ranks, or 16 in one process.
    trainer = _trainer()
    trainer.fit(x, y, batch_size=16 // world, epochs=3, shuffle=False, verbose=0)
    torch.save(trainer.module.state_dict(), f"{out}/weights_{world}_{rank}.pt")
    report["evaluate"] = trainer.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    report["predict"] = trainer.predict(x[:5]).tolist()
    if world == 1:
        with open(f"{out}/reference.json", "w") as f:
            json.dump(report, f)
        return

    # Shuffled, with validation, files and the progress bar.
    trainer = _trainer()
    history = trainer.fit(
        x,
        y,
        batch_size=8,
        epochs=3,
        verbose=1,
        validation_split=0.25,
        callbacks=[ModelCheckpoint(f"{out}/ckpt-{{epoch}}.pt"), CSVLogger(f"{out}/log.csv")],
    )
    report["history"] = history.history

    # EarlyStopping decides from the reduced logs: the same epoch on every rank.
    history = _trainer().fit(
        x, y, batch_size=8, epochs=10, verbose=0, callbacks=[EarlyStopping(monitor="loss", min_delta=10, patience=1)]
    )
    report["early_stopping_epochs"] = history.epoch

    # A stop asked on rank 1 only: every rank stops at the next agreement, none hangs.
    counter = CountBatches()
    history = _trainer(stop_check_every=2).fit(
        x, y, batch_size=4, epochs=3, verbose=0, callbacks=[StopOnRankOne(), counter]
    )
    report["stop_one_rank"] = {"epochs": history.epoch, "batches": counter.batches}

    # BackupAndRestore: the run fails in epoch 2 on every rank, and the next fit resumes it.
    class FailInEpochTwo(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2 and not self.__dict__.get("failed"):
                self.failed = True
                raise RuntimeError("interrupted")

    def fail_then_resume(backup_dir):
        backup, failure = BackupAndRestore(backup_dir), FailInEpochTwo()
        try:
            _trainer().fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=[backup, failure])
        except RuntimeError:
            pass
        began = []
        record = LambdaCallback(on_epoch_begin=lambda epoch, logs: began.append(epoch))
        history = _trainer().fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=[backup, failure, record])
        return {"began": began, "epochs": history.epoch, "loss": history.history["loss"]}

    report["resumed"] = fail_then_resume(f"{out}/backup")
    # Backups on disks the ranks do not share: rank 0's backup is sent to every rank.
    report["separate_disks"] = fail_then_resume(f"{out}/backup_rank{rank}")

    # A resume mid-epoch with a stateful metric: the epoch sums and metric states of both ranks
    # are in the backup, so the resumed History is the uninterrupted run's.
    from torchmetrics.classification import MulticlassAccuracy

    def metric_run(callbacks):
        trainer = _trainer(metrics=[MulticlassAccuracy(num_classes=2, average="micro")])
        return trainer.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=callbacks).history

    reference = metric_run([])
    backup = BackupAndRestore(f"{out}/backup_mid", save_freq=1)
    try:
        metric_run([backup, FailAtStep(6)])  # 4 batches an epoch on each rank: in the middle of epoch 1
    except RuntimeError:
        pass
    report["mid_epoch"] = {"reference": reference, "resumed": metric_run([backup])}

    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
