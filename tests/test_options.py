"""Trainer options: precision, gradient clipping, gradient accumulation and torch.compile."""

import numpy as np
import pytest
import torch

from tests.conftest import Recorder
from torchcb import Trainer


def _linear_trainer(lr=1.0, **options):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    return Trainer(net, torch.optim.SGD(net.parameters(), lr=lr), loss="mse", device="cpu", **options)


def _big_gradient_data():
    x = np.full((4, 3), 100.0, dtype=np.float32)
    return x, np.zeros((4, 2), dtype=np.float32)


def _weights(trainer):
    return [p.detach().clone() for p in trainer.module.parameters()]


def test_clipvalue_bounds_every_gradient_element():
    trainer = _linear_trainer(clipvalue=0.5)
    before = _weights(trainer)
    trainer.fit(*_big_gradient_data(), batch_size=4, epochs=1, verbose=0)
    deltas = [b - a for a, b in zip(_weights(trainer), before)]  # SGD with lr 1: the step is the gradient
    assert max(float(d.abs().max()) for d in deltas) == pytest.approx(0.5)


def test_clipnorm_bounds_each_gradient_tensor_on_its_own():
    trainer = _linear_trainer(clipnorm=1.0)
    before = _weights(trainer)
    trainer.fit(*_big_gradient_data(), batch_size=4, epochs=1, verbose=0)
    norms = [float((b - a).norm()) for a, b in zip(_weights(trainer), before)]
    assert norms == pytest.approx([1.0, 1.0], rel=1e-4)


def test_global_clipnorm_bounds_the_total_norm():
    trainer = _linear_trainer(global_clipnorm=1.0)
    before = _weights(trainer)
    trainer.fit(*_big_gradient_data(), batch_size=4, epochs=1, verbose=0)
    total = float(torch.cat([(b - a).flatten() for a, b in zip(_weights(trainer), before)]).norm())
    assert total == pytest.approx(1.0, rel=1e-4)


def test_accumulating_two_half_batches_equals_one_full_batch():
    x = np.random.rand(16, 3).astype(np.float32)
    y = np.random.rand(16, 2).astype(np.float32)
    full = _linear_trainer(lr=0.1)
    full.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    halves = _linear_trainer(lr=0.1, accumulate_steps=2)
    halves.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(_weights(full), _weights(halves)):
        assert torch.allclose(a, b, atol=1e-6)


def test_accumulation_leaves_the_logged_loss_alone_and_steps_every_n_batches():
    x = np.random.rand(36, 3).astype(np.float32)
    y = np.random.rand(36, 2).astype(np.float32)
    logged = {}
    for steps in (1, 4):
        trainer = _linear_trainer(lr=0.1, accumulate_steps=steps)
        calls = []
        original = trainer.optimizer.step
        trainer.optimizer.step = lambda *a, calls=calls, original=original, **k: calls.append(1) or original(*a, **k)
        rec = Recorder()
        trainer.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[rec])
        logged[steps] = rec.logs_of("on_train_batch_end")[0]["loss"]
        assert len(calls) == -(-9 // steps)  # 9 batches: a last partial group still steps
    assert logged[1] == logged[4]  # the first batch's loss, not divided by the accumulation


def test_bf16_mixed_precision_on_the_cpu():
    x = torch.randn(64, 3)
    y = x @ torch.tensor([[1.0, -1.0], [0.5, 0.0], [0.0, 2.0]])
    plain = _linear_trainer(lr=0.05)
    mixed = _linear_trainer(lr=0.05, precision="bf16-mixed")
    assert mixed.predict(x).dtype == torch.bfloat16  # the forward pass runs in bfloat16
    history_plain = plain.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0)
    history_mixed = mixed.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0)
    assert history_mixed.history["loss"][-1] < history_mixed.history["loss"][0]
    assert history_mixed.history["loss"][-1] == pytest.approx(history_plain.history["loss"][-1], rel=0.05)
    assert all(p.dtype == torch.float32 for p in mixed.module.parameters())  # the weights stay float32


@pytest.mark.parametrize(
    "options, message",
    [
        ({"precision": "fp8"}, "precision must be one of 32, bf16-mixed, 16-mixed"),
        ({"precision": "16-mixed"}, "precision='16-mixed' needs a CUDA device"),
        ({"clipnorm": 0}, "clipnorm must be a positive number"),
        ({"clipvalue": -1.0}, "clipvalue must be a positive number"),
        ({"accumulate_steps": 0}, "accumulate_steps must be an int >= 1"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        _linear_trainer(**options)


def test_compile_trains_like_the_eager_module():
    x = torch.randn(32, 3)
    y = torch.randn(32, 2)
    eager = _linear_trainer(lr=0.1)
    compiled = _linear_trainer(lr=0.1, compile=True)
    history_eager = eager.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    history_compiled = compiled.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    assert history_compiled.history["loss"] == pytest.approx(history_eager.history["loss"], rel=1e-5)
    for a, b in zip(_weights(eager), _weights(compiled)):
        assert torch.allclose(a, b, atol=1e-5)
    assert list(compiled.module.state_dict()) == ["weight", "bias"]  # checkpoints keep the module's own names


def test_strategy_is_checked_before_anything_runs():
    with pytest.raises(ValueError, match="strategy must be 'ddp', 'fsdp' or a torchcb.sharded.FSDP, got 'zero3'"):
        _linear_trainer(strategy="zero3")


def test_fsdp_in_one_process_trains_unsharded_with_directory_checkpoints(tmp_path):
    from torchcb import sharded

    if not sharded.fsdp_available():  # torch before 2.6: refused when the Trainer is built
        with pytest.raises(ValueError, match=r"strategy='fsdp' needs torch.distributed.fsdp.fully_shard \(torch 2.6"):
            _linear_trainer(strategy="fsdp")
        return
    trainer = _linear_trainer(strategy="fsdp")
    history = trainer.fit(*_big_gradient_data(), batch_size=4, epochs=1, verbose=0)
    assert not sharded.is_sharded(trainer.module) and len(history.history["loss"]) == 1
    trainer.model.save(tmp_path / "ckpt")
    assert sharded.is_checkpoint_dir(tmp_path / "ckpt")
    other = _linear_trainer(strategy="fsdp")
    other.model.load_weights(tmp_path / "ckpt")
    assert all(torch.equal(a, b) for a, b in zip(_weights(trainer), _weights(other)))
