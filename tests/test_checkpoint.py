import os
import pickle

import pytest
import torch

from torchcb.checkpoint import atomic_save, safe_load


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_atomic_save_replaces_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "a.pt"
    atomic_save({"v": torch.tensor(1)}, path)
    atomic_save({"v": torch.tensor(2)}, path)
    assert safe_load(path)["v"].item() == 2
    assert os.listdir(tmp_path) == ["a.pt"]


def test_a_failing_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.pt"
    atomic_save({"v": torch.tensor(1)}, path)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"v": Unsaveable()}, path)
    assert safe_load(path)["v"].item() == 1
    assert os.listdir(tmp_path) == ["a.pt"]


def test_a_malicious_pickle_is_refused_and_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"module": Payload()}, f, protocol=2)
    with pytest.raises(ValueError, match="Refusing to load"):
        safe_load(path)
    assert not (tmp_path / "pwned").exists()
    from tests.conftest import make_trainer

    with pytest.raises(ValueError, match="Refusing to load"):
        make_trainer().model.load_weights(path)
    assert not (tmp_path / "pwned").exists()


def test_rng_state_survives_a_file_and_restores_every_generator(tmp_path):
    import random

    import numpy as np

    from torchcb.checkpoint import rng_state, set_rng_state

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    atomic_save({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(()).item())
    saved = safe_load(tmp_path / "rng.pt")["rng"]
    assert isinstance(saved["python"][1], torch.Tensor)  # one tensor, not 625 pickled ints
    set_rng_state(saved)
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == expected
    # the python state as a list of ints, as the first torchcb release wrote it, loads too
    saved["python"][1] = saved["python"][1].tolist()
    set_rng_state(saved)
    assert random.random() == expected[0]


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write_of_its_target(tmp_path):
    stale = tmp_path / ".a.pt.k3x9_q1z.tmp"  # what a writer killed mid-save of a.pt leaves
    other_target = tmp_path / ".a.pt.bak.k3x9_q1z.tmp"  # a temporary of a.pt.bak, not of a.pt
    unrelated = tmp_path / "notes.tmp"
    for path in (stale, other_target, unrelated):
        path.write_bytes(b"partial")
    atomic_save({"v": torch.tensor(1)}, tmp_path / "a.pt")
    assert sorted(os.listdir(tmp_path)) == sorted(["a.pt", other_target.name, unrelated.name])


def _good_checkpoint(tmp_path):
    from tests.conftest import make_data, make_trainer

    trainer = make_trainer()
    trainer.fit(*make_data(8), epochs=1, verbose=0)
    trainer.model.save(tmp_path / "good.pt")
    return (tmp_path / "good.pt").read_bytes()


@pytest.mark.parametrize("content", ["empty", "text", "random", "truncated", "torn_end"])
@pytest.mark.parametrize("loader", ["load_weights", "load_checkpoint", "backup"])
def test_a_file_that_is_not_a_checkpoint_raises_one_error_naming_it(tmp_path, content, loader):
    from tests.conftest import make_data, make_trainer
    from torchcb.callbacks import BackupAndRestore
    from torchcb.checkpoint import CheckpointError

    good = _good_checkpoint(tmp_path)
    data = {
        "empty": b"",
        "text": b"epoch,loss\n0,0.5\n",
        "random": os.urandom(4096),
        "truncated": good[: len(good) // 2],
        "torn_end": good[:-10],
    }[content]
    path = tmp_path / "backup" / "latest.pt"
    path.parent.mkdir()
    path.write_bytes(data)
    trainer = make_trainer()
    before = {k: v.clone() for k, v in trainer.module.state_dict().items()}
    with pytest.raises(CheckpointError, match="not a torchcb or torch checkpoint, or it is truncated") as raised:
        if loader == "backup":
            trainer.fit(*make_data(8), epochs=1, verbose=0, callbacks=[BackupAndRestore(path.parent)])
        else:
            getattr(trainer.model if loader == "load_weights" else trainer, loader)(path)
    assert str(path) in str(raised.value)
    assert all(torch.equal(v, before[k]) for k, v in trainer.module.state_dict().items())


def test_a_load_that_does_not_fit_changes_nothing(tmp_path):
    from tests.conftest import make_data, make_trainer
    from torchcb.checkpoint import CheckpointError

    wide = make_trainer(inputs=6)  # first layer 8x6 instead of 8x4
    wide.fit(*make_data(8, inputs=6), epochs=1, verbose=0)
    wide.model.save(tmp_path / "wide.pt")
    trainer = make_trainer()
    trainer.fit(*make_data(8), epochs=1, verbose=0)  # the optimizer has state of its own now
    module_before = {k: v.clone() for k, v in trainer.module.state_dict().items()}
    optimizer_before = trainer.optimizer.state_dict()
    for load in (trainer.load_checkpoint, trainer.model.load_weights):
        with pytest.raises(CheckpointError, match=r"0\.weight: \(8, 6\) in the file, \(8, 4\) in the module"):
            load(tmp_path / "wide.pt")
    # a checkpoint whose module fits but whose optimizer has another param group layout
    from torchcb import Trainer

    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    groups = torch.optim.SGD([{"params": [p]} for p in net.parameters()], lr=0.1, momentum=0.9)
    other = Trainer(net, groups, loss="sparse_categorical_crossentropy", device="cpu")
    other.fit(*make_data(8), epochs=1, verbose=0)
    other.model.save(tmp_path / "groups.pt")
    with pytest.raises(CheckpointError, match="does not fit the optimizer"):
        trainer.load_checkpoint(tmp_path / "groups.pt")
    assert all(torch.equal(v, module_before[k]) for k, v in trainer.module.state_dict().items())
    after = trainer.optimizer.state_dict()
    assert after["param_groups"] == optimizer_before["param_groups"]
    assert after["state"].keys() == optimizer_before["state"].keys()


def _disk_full_run(tmp_path, script):
    """Run ``script`` in a process of its own with a 1 MiB filesystem mounted at tmp_path/small."""
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("a full disk is made in a private mount namespace (util-linux unshare)")
    small = tmp_path / "small"
    small.mkdir()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = f'mount -t tmpfs -o size=1m tmpfs {small} && exec {sys.executable} -c "$SCRIPT"'
    out = subprocess.run(
        ["unshare", "-rm", "sh", "-c", command],
        capture_output=True,
        text=True,
        env={**os.environ, "SCRIPT": script, "PYTHONPATH": root, "SMALL": str(small)},
        timeout=120,
    )
    if "mount" in out.stderr and out.returncode != 0 and "Traceback" not in out.stderr:
        pytest.skip(f"cannot mount a small filesystem here: {out.stderr.strip()}")
    return out


def test_a_full_disk_raises_an_error_naming_the_file_and_keeps_the_old_one(tmp_path):
    script = """
import errno, os, torch
from torchcb.checkpoint import atomic_save, safe_load
path = os.path.join(os.environ["SMALL"], "w.pt")
atomic_save({"w": torch.ones(10)}, path)
try:
    atomic_save({"w": torch.zeros(1_000_000)}, path)  # 4 MB on a 1 MiB disk
except OSError as error:
    print("errno", errno.errorcode[error.errno])
    print("message", error)
print("kept", safe_load(path)["w"].tolist() == [1.0] * 10, sorted(os.listdir(os.environ["SMALL"])))
"""
    out = _disk_full_run(tmp_path, script)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "errno ENOSPC" in out.stdout
    assert f"{tmp_path / 'small' / 'w.pt'}" in out.stdout and "the disk is full" in out.stdout
    assert "kept True ['w.pt']" in out.stdout


def test_the_background_writer_lets_the_caller_go_on_and_keeps_only_the_newest_queued_snapshot(tmp_path):
    import threading

    from torchcb.checkpoint import BackgroundWriter

    path, written = str(tmp_path / "w.pt"), []
    started, gate = threading.Event(), threading.Event()

    def write(version):
        def run():
            if version == 1:
                started.set()
                gate.wait(30)  # the first write is slow; meanwhile the caller goes on
            atomic_save({"v": torch.tensor(version)}, path)
            written.append(version)

        return run

    writer = BackgroundWriter()
    writer.submit(path, write(1))
    started.wait(30)
    writer.submit(path, write(2))  # queued behind the write in flight
    writer.submit(path, write(3))  # replaces 2, which is never written
    assert written == []  # submit returned while the first write waits
    gate.set()
    writer.wait()
    assert written == [1, 3] and safe_load(path)["v"].item() == 3
    assert not [t for t in threading.enumerate() if t.name == "torchcb-checkpoint-writer"]

    # writes that keep the file they replace (double_checkpoint) all happen, in order
    written.clear()
    started.clear()
    gate.clear()
    writer.submit(path, write(1), replaceable=False)
    started.wait(30)
    writer.submit(path, write(2), replaceable=False)
    writer.submit(path, write(3), replaceable=False)
    gate.set()
    writer.wait()
    assert written == [1, 2, 3]


def test_the_background_writer_keeps_one_thread_for_its_writes_until_wait(tmp_path):
    import threading

    from torchcb.checkpoint import BackgroundWriter

    writers, done = [], threading.Event()

    def write(version):
        def run():
            atomic_save({"v": torch.tensor(version)}, str(tmp_path / f"{version}.pt"))
            writers.append(threading.current_thread())
            done.set()

        return run

    writer = BackgroundWriter()
    writer.submit(str(tmp_path / "1.pt"), write(1))
    assert done.wait(30)
    done.clear()
    writer.submit(str(tmp_path / "2.pt"), write(2))  # after the first write ended: the same thread takes it
    assert done.wait(30)
    assert len(writers) == 2 and writers[0] is writers[1] and writers[0].is_alive()
    writer.wait()
    assert not writers[0].is_alive()
    assert [safe_load(tmp_path / f"{v}.pt")["v"].item() for v in (1, 2)] == [1, 2]


def test_a_failed_background_write_is_raised_once_in_the_caller(tmp_path):
    from torchcb.checkpoint import BackgroundWriter

    (tmp_path / "file").write_text("a file, not a directory")
    bad = str(tmp_path / "file" / "w.pt")
    writer = BackgroundWriter()
    writer.submit(bad, lambda: atomic_save({"v": torch.tensor(1)}, bad))
    with pytest.raises((NotADirectoryError, FileExistsError)):
        writer.wait()
    writer.wait()  # reported once


def test_a_checkpoint_that_fails_in_the_background_stops_fit_with_its_error(tmp_path):
    from tests.conftest import make_data, make_trainer
    from torchcb.callbacks import Callback, ModelCheckpoint

    errors = []

    class BlockEpochTwosDirectory(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                (tmp_path / "ckpt").mkdir(exist_ok=True)
                (tmp_path / "ckpt" / "2").write_text("in the way of the directory for epoch 2")

        def on_train_error(self, error):
            errors.append(error)

    checkpoint = ModelCheckpoint(str(tmp_path / "ckpt" / "{epoch}" / "w.pt"), save_weights_only=True)
    trainer = make_trainer()
    trainer.serialize_at_once_below = 0  # every checkpoint copied to the host and serialized by the writer
    with pytest.raises((NotADirectoryError, FileExistsError)):
        trainer.fit(*make_data(8), epochs=5, verbose=0, callbacks=[checkpoint, BlockEpochTwosDirectory()])
    assert len(errors) == 1 and isinstance(errors[0], (NotADirectoryError, FileExistsError))
    assert safe_load(tmp_path / "ckpt" / "1" / "w.pt").keys() == trainer.module.state_dict().keys()


def test_fit_returns_with_every_checkpoint_on_disk(tmp_path):
    import threading

    from tests.conftest import make_data, make_trainer
    from torchcb.callbacks import BackupAndRestore, ModelCheckpoint

    trainer = make_trainer()
    trainer.serialize_at_once_below = 0  # every checkpoint copied to the host and serialized by the writer
    callbacks = [
        ModelCheckpoint(str(tmp_path / "w{epoch}.pt"), save_freq=1),
        BackupAndRestore(tmp_path / "backup", save_freq=1, delete_checkpoint=False),
    ]
    trainer.fit(*make_data(64), batch_size=4, epochs=2, verbose=0, callbacks=callbacks)
    assert not [t for t in threading.enumerate() if t.name == "torchcb-checkpoint-writer"]
    assert safe_load(tmp_path / "w2.pt")["step"] == 32 and safe_load(tmp_path / "backup" / "latest.pt")["step"] == 32
    assert all(
        torch.equal(safe_load(tmp_path / "w2.pt")["module"][k], v) for k, v in trainer.module.state_dict().items()
    )


def test_a_small_checkpoint_holds_the_state_of_its_round_while_training_goes_on(tmp_path):
    from tests.conftest import make_data, make_trainer
    from torchcb.callbacks import Callback, ModelCheckpoint

    weights = {}

    class Record(Callback):  # the weights each epoch ended with; training changes them right after
        def on_epoch_end(self, epoch, logs=None):
            weights[epoch + 1] = {k: v.clone() for k, v in self.model.module.state_dict().items()}

    trainer = make_trainer()  # a few hundred bytes of weights: serialized at once, written by the writer
    callbacks = [ModelCheckpoint(str(tmp_path / "w{epoch}.pt")), Record()]
    trainer.fit(*make_data(8), epochs=3, verbose=0, callbacks=callbacks)
    for epoch in (1, 2, 3):
        saved = safe_load(tmp_path / f"w{epoch}.pt")
        assert saved["epoch"] == epoch
        assert all(torch.equal(saved["module"][k], v) for k, v in weights[epoch].items())
    assert not torch.equal(weights[1]["0.weight"], weights[3]["0.weight"])


def _slow_background_writes(monkeypatch, gate):
    """Every background write waits for ``gate`` (at most 30 s) before it writes: a write left to the writer is late."""
    from torchcb.checkpoint import BackgroundWriter

    submit = BackgroundWriter.submit

    def slow_submit(self, target, write, replaceable=True):
        def slow_write():
            gate.wait(30)
            write()

        submit(self, target, slow_write, replaceable)

    monkeypatch.setattr(BackgroundWriter, "submit", slow_submit)


def test_a_file_saved_in_a_hook_is_on_disk_when_the_call_returns_and_loads_in_a_later_hook(tmp_path, monkeypatch):
    import threading

    from tests.conftest import make_data, make_trainer
    from torchcb.callbacks import Callback, ModelCheckpoint

    gate = threading.Event()
    _slow_background_writes(monkeypatch, gate)
    path, seen = str(tmp_path / "tmp.pt"), {}

    class FindLearningRate(Callback):  # the LR-finder pattern: save at the start, go back to it later
        def on_train_begin(self, logs=None):
            self.model.save_weights(path)
            seen["on disk at once"] = os.path.exists(path)
            self.start = [w.copy() for w in self.model.get_weights()]

        def on_train_batch_end(self, batch, logs=None):
            seen["background"] = os.path.exists(tmp_path / "mc.pt")  # ModelCheckpoint's write is still held
            if batch == 3:
                self.model.load_weights(path)
                seen["restored"] = all((a == b).all() for a, b in zip(self.model.get_weights(), self.start))

        def on_train_end(self, logs=None):
            gate.set()

        def on_train_error(self, error):
            gate.set()

    callbacks = [ModelCheckpoint(tmp_path / "mc.pt", save_freq=1, save_weights_only=True), FindLearningRate()]
    make_trainer().fit(*make_data(16), batch_size=4, epochs=1, verbose=0, callbacks=callbacks)
    assert seen == {"on disk at once": True, "background": False, "restored": True}
    assert os.path.exists(tmp_path / "mc.pt")  # on disk once fit returned


def test_a_load_waits_for_the_pending_background_write_of_its_file(tmp_path, monkeypatch):
    import threading

    import torchcb.files
    from tests.conftest import make_data, make_trainer
    from torchcb.callbacks import Callback, ModelCheckpoint

    gate = threading.Event()
    _slow_background_writes(monkeypatch, gate)
    wait_for_pending_write = torchcb.files.wait_for_pending_write

    def opening_wait(path):  # the write is let go only once the load waits for it
        gate.set()
        wait_for_pending_write(path)

    monkeypatch.setattr(torchcb.files, "wait_for_pending_write", opening_wait)
    path, weights = tmp_path / "w.pt", {}

    class LoadTheCheckpoint(Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:  # ModelCheckpoint writes these weights in the background
                weights["saved"] = [w.copy() for w in self.model.get_weights()]
            if batch == 2:
                self.model.load_weights(path)
                weights["loaded"] = self.model.get_weights()

        def on_train_error(self, error):
            gate.set()

    checkpoint = ModelCheckpoint(path, save_freq=2, save_weights_only=True)  # after batches 1 and 3
    make_trainer().fit(*make_data(16), batch_size=4, epochs=1, verbose=0, callbacks=[checkpoint, LoadTheCheckpoint()])
    assert all((a == b).all() for a, b in zip(weights["loaded"], weights["saved"]))


def test_the_previous_file_is_kept_whole_under_its_new_name_without_a_copy(tmp_path):
    from torchcb.checkpoint import write_checkpoint

    path, previous = str(tmp_path / "latest.pt"), str(tmp_path / "latest.pt.bkp")
    write_checkpoint(path, {"v": torch.tensor(1)}, keep_previous=previous)
    assert sorted(os.listdir(tmp_path)) == ["latest.pt"]  # nothing to keep yet
    write_checkpoint(path, {"v": torch.tensor(2)}, keep_previous=previous)
    second = os.stat(path).st_ino
    write_checkpoint(path, {"v": torch.tensor(3)}, keep_previous=previous)
    assert safe_load(path)["v"].item() == 3 and safe_load(previous)["v"].item() == 2
    assert os.stat(previous).st_ino == second  # version 2's file itself under the new name, not a copy
    assert sorted(os.listdir(tmp_path)) == ["latest.pt", "latest.pt.bkp"]
