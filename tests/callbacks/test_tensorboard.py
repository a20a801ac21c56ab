import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch

from tests.conftest import make_data, make_trainer
from torchcb import Trainer
from torchcb.callbacks import Callback, TensorBoard

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _events(directory):
    accumulator = event_accumulator.EventAccumulator(
        str(directory), size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0}
    )
    accumulator.Reload()
    return accumulator


def _scalars(accumulator, tag):
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


def test_epoch_scalars_equal_history_in_train_and_validation(tmp_path):
    trainer = make_trainer()
    x, y = make_data(16)
    history = trainer.fit(
        x,
        y,
        batch_size=4,
        epochs=3,
        verbose=0,
        validation_split=0.25,
        callbacks=[TensorBoard(tmp_path, write_graph=False)],
    )
    assert sorted(os.listdir(tmp_path)) == ["train", "validation"]
    train = _events(tmp_path / "train")
    assert sorted(train.Tags()["scalars"]) == ["epoch_accuracy", "epoch_learning_rate", "epoch_loss"]
    assert [s for s, _ in _scalars(train, "epoch_loss")] == [0, 1, 2]
    assert [v for _, v in _scalars(train, "epoch_loss")] == pytest.approx(history.history["loss"], rel=1e-6)
    assert [v for _, v in _scalars(train, "epoch_learning_rate")] == pytest.approx([0.05] * 3)
    validation = _events(tmp_path / "validation")
    assert [v for _, v in _scalars(validation, "epoch_loss")] == pytest.approx(history.history["val_loss"], rel=1e-6)
    assert [v for _, v in _scalars(validation, "epoch_accuracy")] == pytest.approx(
        history.history["val_accuracy"], rel=1e-6
    )
    evaluation = _scalars(validation, "evaluation_loss_vs_iterations")
    assert [s for s, _ in evaluation] == [3, 6, 9]  # the optimizer step of each validation pass
    assert [v for _, v in evaluation] == pytest.approx(history.history["val_loss"], rel=1e-6)


def test_no_validation_directory_without_validation(tmp_path):
    make_trainer().fit(*make_data(8), epochs=1, verbose=0, callbacks=[TensorBoard(tmp_path, write_graph=False)])
    assert os.listdir(tmp_path) == ["train"]


def test_update_freq_batch_writes_every_batch_at_samples_seen(tmp_path):
    trainer = make_trainer()
    losses = []

    class Losses(Callback):
        def on_batch_end(self, batch, logs=None):
            losses.append(logs["loss"])

    trainer.fit(
        *make_data(10),
        batch_size=4,
        epochs=2,
        verbose=0,
        callbacks=[TensorBoard(tmp_path, update_freq="batch", write_graph=False), Losses()],
    )
    batch = _scalars(_events(tmp_path / "train"), "batch_loss")
    assert [s for s, _ in batch] == [4, 8, 10, 14, 18, 20]
    assert [v for _, v in batch] == pytest.approx(losses, rel=1e-6)


def test_update_freq_in_samples(tmp_path):
    trainer = make_trainer()
    trainer.fit(
        *make_data(40),
        batch_size=4,
        epochs=1,
        verbose=0,
        callbacks=[TensorBoard(tmp_path, update_freq=10, write_graph=False)],
    )
    # a write once at least 10 samples have passed since the last one
    assert [s for s, _ in _scalars(_events(tmp_path / "train"), "batch_loss")] == [12, 24, 36]


def test_histograms_gradients_images_and_graph(tmp_path):
    trainer = make_trainer()
    trainer.fit(
        *make_data(8),
        epochs=2,
        verbose=0,
        callbacks=[TensorBoard(tmp_path, histogram_freq=1, write_grads=True, write_images=True, write_graph=True)],
    )
    train = _events(tmp_path / "train")
    tags = train.Tags()
    assert sorted(tags["histograms"]) == sorted(
        [f"{n}/histogram" for n in ("0.weight", "0.bias", "2.weight", "2.bias")]
        + [f"{n}_grad/histogram" for n in ("0.weight", "0.bias", "2.weight", "2.bias")]
    )
    assert "0.weight/image" in tags["images"]
    assert [e.step for e in train.Histograms("0.weight/histogram")] == [0, 1]
    weight = trainer.module[0].weight.detach().numpy()
    last = train.Histograms("0.weight/histogram")[-1].histogram_value
    assert last.num == weight.size and last.sum == pytest.approx(float(weight.sum()), rel=1e-4, abs=1e-4)
    assert tags["graph"] is True


def test_graph_that_cannot_be_traced_warns_once_and_training_goes_on(tmp_path):
    class DictNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 1)

        def forward(self, a):
            return self.linear(a)

    net = DictNet()
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", device="cpu")
    with pytest.warns(RuntimeWarning, match="TensorBoard could not write the graph") as record:
        history = trainer.fit(
            {"a": np.ones((8, 2), np.float32)},
            np.ones((8, 1), np.float32),
            epochs=2,
            verbose=0,
            callbacks=[TensorBoard(tmp_path)],
        )
    assert len([w for w in record if "graph" in str(w.message)]) == 1
    assert len(history.epoch) == 2


def test_embeddings_of_embedding_layers_with_metadata(tmp_path):
    class Bag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.words = torch.nn.Embedding(5, 3)
            self.out = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.out(self.words(x).mean(1))

    net = Bag()
    trainer = Trainer(
        net, torch.optim.SGD(net.parameters(), lr=0.1), loss="sparse_categorical_crossentropy", device="cpu"
    )
    labels = tmp_path / "labels.tsv"
    labels.write_text("a\nb\nc\nd\ne\n")
    x = torch.randint(0, 5, (8, 4))
    y = torch.randint(0, 2, (8,))
    log_dir = tmp_path / "logs"
    trainer.fit(
        x, y, epochs=1, verbose=0, callbacks=[TensorBoard(log_dir, embeddings_freq=1, embeddings_metadata=str(labels))]
    )
    config = (log_dir / "train" / "projector_config.pbtxt").read_text()
    assert 'tensor_name: "words:00000"' in config
    folder = log_dir / "train" / "00000" / "words"
    assert (folder / "metadata.tsv").read_text().split() == ["a", "b", "c", "d", "e"]
    rows = (folder / "tensors.tsv").read_text().strip().splitlines()
    assert len(rows) == 5
    assert [float(v) for v in rows[0].split("\t")] == pytest.approx(net.words.weight[0].tolist(), rel=1e-5)


def test_embeddings_of_layer_outputs_for_embeddings_data(tmp_path):
    trainer = make_trainer()
    data = np.random.rand(6, 4).astype(np.float32)
    trainer.fit(
        *make_data(8),
        epochs=1,
        verbose=0,
        callbacks=[
            TensorBoard(
                tmp_path,
                embeddings_freq=1,
                embeddings_layer_names=["1"],
                embeddings_data=data,
                batch_size=4,
                write_graph=False,
            )
        ],
    )
    rows = (tmp_path / "train" / "00000" / "1" / "tensors.tsv").read_text().strip().splitlines()
    expected = torch.relu(trainer.module[0](torch.as_tensor(data))).detach().numpy()
    assert np.allclose(np.array([[float(v) for v in r.split("\t")] for r in rows]), expected, atol=1e-5)


def test_a_second_fit_continues_the_run(tmp_path):
    trainer = make_trainer()
    callback = TensorBoard(tmp_path, write_graph=False)
    x, y = make_data(8)
    trainer.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    trainer.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    # each fit writes its own event file; TensorBoard orders the points by step
    assert sorted(s for s, _ in _scalars(_events(tmp_path / "train"), "epoch_loss")) == [0, 1, 2, 3]


def test_writers_are_closed_when_training_raises_and_what_was_written_stays(tmp_path):
    class Boom(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("boom")

    callback = TensorBoard(tmp_path, write_graph=False)
    with pytest.raises(RuntimeError, match="boom"):
        make_trainer().fit(*make_data(8), epochs=3, verbose=0, callbacks=[callback, Boom()])
    assert callback._writers == {}
    assert [s for s, _ in _scalars(_events(tmp_path / "train"), "epoch_loss")] == [0]


def test_a_failing_write_warns_and_training_goes_on(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.warns(RuntimeWarning, match="TensorBoard could not write scalars"):
        history = make_trainer().fit(
            *make_data(8), epochs=2, verbose=0, callbacks=[TensorBoard(blocker / "logs", write_graph=False)]
        )
    assert len(history.epoch) == 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="update_freq must be 'batch', 'epoch' or a positive number of samples"):
        TensorBoard(update_freq="step")
    with pytest.raises(ValueError, match="histogram_freq must be an int >= 0"):
        TensorBoard(histogram_freq=-1)
    with pytest.raises(ValueError, match="profile_batch is not supported"):
        TensorBoard(profile_batch=2)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_real_tensorboard_program_serves_the_tags(tmp_path):
    program = shutil.which("tensorboard") or os.path.join(os.path.dirname(sys.executable), "tensorboard")
    if not os.path.exists(program):
        pytest.skip("the tensorboard program is not installed")
    make_trainer().fit(
        *make_data(8),
        epochs=2,
        verbose=0,
        validation_split=0.25,
        callbacks=[TensorBoard(tmp_path / "logs", write_graph=False)],
    )
    port = _free_port()
    server = subprocess.Popen(
        [
            program,
            "--logdir",
            str(tmp_path / "logs"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--load_fast",
            "false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        tags = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5) as response:
                    tags = json.load(response)
                if tags.get("train") and tags.get("validation"):
                    break
            except OSError:
                pass
            time.sleep(0.5)  # the program takes a few seconds to start serving
        if tags is None:
            pytest.skip("the tensorboard program did not start")
        assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"} <= set(tags["train"])
        assert {"epoch_loss", "evaluation_loss_vs_iterations"} <= set(tags["validation"])
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_write_steps_per_second_writes_batch_and_epoch_rates(tmp_path):
    trainer = make_trainer()
    callback = TensorBoard(tmp_path, write_graph=False, update_freq="batch", write_steps_per_second=True)
    trainer.fit(*make_data(16), batch_size=4, epochs=2, verbose=0, callbacks=[callback])
    train = _events(tmp_path / "train")
    assert {"batch_steps_per_second", "epoch_steps_per_second"} <= set(train.Tags()["scalars"])
    batch_rates = _scalars(train, "batch_steps_per_second")
    assert [s for s, _ in batch_rates] == [s for s, _ in _scalars(train, "batch_loss")] == list(range(4, 33, 4))
    assert all(v > 0 and np.isfinite(v) for _, v in batch_rates)
    assert [s for s, _ in _scalars(train, "epoch_steps_per_second")] == [0, 1]
    # at epoch level only, no batch rate
    epoch_only = tmp_path / "epoch_only"
    trainer.fit(
        *make_data(16),
        batch_size=4,
        epochs=1,
        verbose=0,
        callbacks=[TensorBoard(epoch_only, write_graph=False, write_steps_per_second=True)],
    )
    assert "batch_steps_per_second" not in _events(epoch_only / "train").Tags()["scalars"]


def test_graph_and_embeddings_passes_keep_a_frozen_submodule_in_eval_mode(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    net[1].eval()  # frozen statistics: no pass of the callback may switch them back to training
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.05), loss="sparse_categorical_crossentropy")
    stats = net[1].running_mean.clone()
    data = np.random.rand(6, 4).astype(np.float32)
    trainer.fit(
        *make_data(8),
        batch_size=4,
        epochs=2,
        verbose=0,
        callbacks=[
            TensorBoard(
                tmp_path, write_graph=True, embeddings_freq=1, embeddings_layer_names=["0"], embeddings_data=data
            )
        ],
    )
    assert _events(tmp_path / "train").Tags()["graph"] is True
    assert (tmp_path / "train" / "00000" / "0" / "tensors.tsv").exists()
    assert net[1].training is False and net[0].training is True
    assert torch.equal(net[1].running_mean, stats)
