"""Trainer(use_ema=True): the moving average of the weights (torchcb/ema.py)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from torchcb import Trainer
from torchcb.callbacks import BackupAndRestore, Callback
from torchcb.checkpoint import CheckpointError

LR = 0.125  # a power of two: the weights below are exact in float64


class Scalar(torch.nn.Module):
    """``w * x``: with the loss ``mean(w * x)`` on ones, every SGD step takes exactly ``lr`` off ``w``."""

    def __init__(self, start=1.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([start], dtype=torch.float64))

    def forward(self, x):
        return x * self.w


def _mean(y_pred, y_true):
    return y_pred.mean()


def _scalar_trainer(**options):
    net = Scalar()
    return Trainer(net, torch.optim.SGD(net.parameters(), lr=LR), loss=_mean, device="cpu", use_ema=True, **options)


def _ones(batches):
    return torch.ones(batches, 1, dtype=torch.float64), torch.zeros(batches, 1, dtype=torch.float64)


class WeightsAfterEachStep(Callback):
    def __init__(self):
        super().__init__()
        self.weights = []

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append(self.model.module.w.item())


def test_the_average_after_n_sgd_steps_is_the_closed_form():
    trainer = _scalar_trainer(ema_momentum=0.75)
    seen = WeightsAfterEachStep()
    trainer.fit(*_ones(6), batch_size=1, epochs=1, verbose=0, shuffle=False, callbacks=[seen])
    steps = [1.0 - LR * t for t in range(1, 7)]
    assert seen.weights == steps  # SGD takes lr off w at every step
    # Keras' momentum is 0 at the first step: a_1 = w_1, then a_t = m a_(t-1) + (1 - m) w_t, so
    # a_n = m^(n-1) w_1 + sum_(t=2..n) (1 - m) m^(n-t) w_t
    m, n = 0.75, 6
    closed_form = m ** (n - 1) * steps[0] + sum((1 - m) * m ** (n - t) * steps[t - 1] for t in range(2, n + 1))
    assert trainer.weight_average.updates == 6
    assert trainer.weight_average.averaged_weights()["w"].item() == pytest.approx(closed_form, abs=1e-12)
    # fit ends with the average in the module, as Keras' fit does
    assert trainer.module.w.item() == pytest.approx(closed_form, abs=1e-12)


def test_the_module_keeps_its_raw_weights_during_fit_without_an_overwrite_frequency():
    trainer = _scalar_trainer(ema_momentum=0.5)
    seen = WeightsAfterEachStep()
    trainer.fit(*_ones(4), batch_size=1, epochs=1, verbose=0, callbacks=[seen])
    assert seen.weights == [1.0 - LR * t for t in range(1, 5)]


def test_ema_overwrite_frequency_replaces_the_weights_every_n_steps():
    trainer = _scalar_trainer(ema_momentum=0.5, ema_overwrite_frequency=3)
    seen = WeightsAfterEachStep()
    trainer.fit(*_ones(7), batch_size=1, epochs=1, verbose=0, shuffle=False, callbacks=[seen])
    expected, w, average = [], 1.0, None
    for step in range(1, 8):
        w -= LR
        average = w if average is None else 0.5 * average + 0.5 * w
        if step % 3 == 0:
            w = average  # Keras: at iterations N, 2N, ... the variables take their average
        expected.append(w)
    assert seen.weights == pytest.approx(expected, abs=1e-12)
    # step 3: w = 0.625, its average (0.71875) replaces it; step 4 goes on from there
    assert seen.weights[2] == 0.71875 and seen.weights[3] == 0.71875 - LR


def test_a_train_step_of_ones_own_that_calls_optimizer_step_updates_the_average():
    class OwnStep(Trainer):
        def train_step(self, batch):
            loss = self.module(batch.x).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            return {"loss": loss.detach()}

    net = Scalar()
    trainer = OwnStep(net, torch.optim.SGD(net.parameters(), lr=LR), loss=_mean, device="cpu", use_ema=True)
    trainer.fit(*_ones(3), batch_size=1, epochs=1, verbose=0)
    assert trainer.weight_average.updates == 3


def test_batchnorm_statistics_are_averaged_with_the_weights_and_its_counter_is_not():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", device="cpu", use_ema=True)
    assert trainer.weight_average.names == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
    ]
    means = []

    class RunningMean(Callback):
        def on_train_batch_end(self, batch, logs=None):
            means.append(net[1].running_mean.clone())

    x = torch.randn(16, 3)
    trainer.fit(x, torch.zeros(16, 4), batch_size=4, epochs=1, verbose=0, shuffle=False, callbacks=[RunningMean()])
    expected = means[0]
    for mean in means[1:]:
        expected = 0.99 * expected + 0.01 * mean
    assert torch.allclose(trainer.weight_average.averaged_weights()["1.running_mean"], expected, atol=1e-7)
    assert int(net[1].num_batches_tracked) == 4  # the module's own counter, never averaged


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"use_ema": "yes"}, "use_ema"),
        ({"use_ema": True, "ema_momentum": 1.5}, "ema_momentum"),
        ({"use_ema": True, "ema_momentum": -0.1}, "ema_momentum"),
        ({"use_ema": True, "ema_momentum": "0.9"}, "ema_momentum"),
        ({"use_ema": True, "ema_overwrite_frequency": 0}, "ema_overwrite_frequency"),
        ({"use_ema": True, "ema_overwrite_frequency": 2.0}, "ema_overwrite_frequency"),
    ],
)
def test_bad_ema_arguments_are_refused_up_front(options, argument):
    net = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match=argument):
        Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", device="cpu", **options)


def test_without_use_ema_there_is_no_average():
    net = torch.nn.Linear(2, 1)
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", device="cpu")
    assert trainer.weight_average is None
    assert trainer.model.optimizer.use_ema is False


def _data():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=generator)
    return x, (x[:, 0] > 0).long()


def _classifier(**options):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    return Trainer(
        net, optimizer, loss="sparse_categorical_crossentropy", device="cpu", use_ema=True, ema_momentum=0.9, **options
    )


class InterruptAt(Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if self.model.optimizer.iterations == self.step:
            raise RuntimeError("interrupted")


@pytest.mark.parametrize("save_freq", ["epoch", 3])
def test_a_run_resumed_from_a_backup_has_bitwise_the_same_average(tmp_path, save_freq):
    reference = _classifier()
    reference.fit(*_data(), batch_size=8, epochs=4, verbose=0, validation_split=0.25)
    backup = str(tmp_path / "backup")
    interrupted = _classifier()
    with pytest.raises(RuntimeError, match="interrupted"):
        interrupted.fit(
            *_data(),
            batch_size=8,
            epochs=4,
            verbose=0,
            validation_split=0.25,
            callbacks=[BackupAndRestore(backup, save_freq=save_freq), InterruptAt(step=14)],
        )
    resumed = _classifier()  # a new process would start the same way
    resumed.fit(
        *_data(), batch_size=8, epochs=4, verbose=0, validation_split=0.25, callbacks=[BackupAndRestore(backup)]
    )
    assert resumed.weight_average.updates == reference.weight_average.updates == 24
    for name, value in reference.weight_average.averaged_weights().items():
        assert torch.equal(resumed.weight_average.averaged_weights()[name], value), name
    for name, value in reference.module.state_dict().items():
        assert torch.equal(resumed.module.state_dict()[name], value), name


def test_the_full_checkpoint_holds_the_average_and_loads_with_weights_only(tmp_path):
    trainer = _classifier()
    trainer.fit(*_data(), batch_size=8, epochs=1, verbose=0)
    trainer.model.save(tmp_path / "full.pt")
    state = torch.load(tmp_path / "full.pt", weights_only=True)
    assert state["ema"]["updates"] == 8 and state["ema"]["swapped"] is False
    assert list(state["ema"]["average"]) == trainer.weight_average.names
    other = _classifier()
    other.load_checkpoint(tmp_path / "full.pt")
    assert other.weight_average.updates == 8
    for name, value in trainer.weight_average.averaged_weights().items():
        assert torch.equal(other.weight_average.averaged_weights()[name], value)


def test_a_checkpoint_without_an_average_restarts_it_from_the_loaded_weights(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    plain = Trainer(
        net, torch.optim.SGD(net.parameters(), lr=0.1), loss="sparse_categorical_crossentropy", device="cpu"
    )
    plain.fit(*_data(), batch_size=8, epochs=1, verbose=0)
    plain.model.save(tmp_path / "plain.pt")
    net2 = torch.nn.Linear(4, 2)
    averaged = Trainer(
        net2, torch.optim.SGD(net2.parameters(), lr=0.1), loss="sparse_categorical_crossentropy", device="cpu",
        use_ema=True,
    )  # fmt: skip
    averaged.load_checkpoint(tmp_path / "plain.pt")
    assert averaged.weight_average.updates == 0
    assert torch.equal(averaged.weight_average.averaged_weights()["weight"], net.weight.detach())


def test_an_average_of_other_tensors_is_refused_and_nothing_changes(tmp_path):
    trainer = _classifier()
    trainer.fit(*_data(), batch_size=8, epochs=1, verbose=0)
    trainer.model.save(tmp_path / "full.pt")
    state = torch.load(tmp_path / "full.pt", weights_only=True)
    del state["ema"]["average"]["1.running_var"]
    torch.save(state, tmp_path / "bad.pt")
    other = _classifier()
    before = {k: v.clone() for k, v in other.module.state_dict().items()}
    with pytest.raises(CheckpointError, match="missing: \\['1.running_var'\\]"):
        other.load_checkpoint(tmp_path / "bad.pt")
    assert all(torch.equal(other.module.state_dict()[k], v) for k, v in before.items())


def test_fit_with_no_epoch_leaves_the_weights_alone():
    trainer = _scalar_trainer()
    trainer.fit(*_ones(2), batch_size=1, epochs=0, verbose=0)
    assert trainer.module.w.item() == 1.0 and trainer.weight_average.updates == 0


WORKER = """
import json, sys, torch
from torchcb import Trainer
from torchcb.callbacks import Callback, SwapEMAWeights
from torchcb.distributed import get_rank
torch.manual_seed(0)
# BatchNorm's statistics follow each rank's own batches: their averages must still agree
net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="sparse_categorical_crossentropy",
                  device="cpu", use_ema=True, ema_momentum=0.8)
swapped_in = []

class Record(Callback):  # after SwapEMAWeights: the module holds the average while validating
    def on_test_begin(self, logs=None):
        swapped_in.append({k: v.tolist() for k, v in net.state_dict().items() if k.startswith("1.running")})

generator = torch.Generator().manual_seed(1)
x = torch.randn(64, 4, generator=generator)
trainer.fit(x, (x[:, 0] > 0).long(), batch_size=8, epochs=2, verbose=0, validation_split=0.25,
            callbacks=[SwapEMAWeights(), Record()])
average = {k: v.tolist() for k, v in trainer.weight_average.averaged_weights().items()}
module = {k: v.tolist() for k, v in net.state_dict().items()}
with open(f"{sys.argv[1]}/rank{get_rank()}.json", "w") as f:
    json.dump({"updates": trainer.weight_average.updates, "average": average, "module": module,
               "swapped_in": swapped_in}, f)
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_under_ddp_every_rank_holds_the_same_average(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""), "GLOO_SOCKET_IFNAME": "lo"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker)]
    run = subprocess.run([*command, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["updates"] == ranks[1]["updates"] == 6  # 24 training samples a rank, batches of 8, 2 epochs
    assert "1.running_mean" in ranks[0]["average"] and ranks[0]["average"] == ranks[1]["average"]
    assert ranks[0]["module"] == ranks[1]["module"]  # fit ends with the same average in every rank's module
    assert len(ranks[0]["swapped_in"]) == 2 and ranks[0]["swapped_in"] == ranks[1]["swapped_in"]
