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
