"""CUDA checks; they skip cleanly on machines without a GPU."""

import pytest
import torch

from torchcb import Trainer
from torchcb.logs import device_reads

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _trainer():
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    return Trainer(
        net, torch.optim.Adam(net.parameters()), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )


def test_default_device_is_cuda_and_data_lives_there():
    trainer = _trainer()
    assert trainer.device.type == "cuda"
    x, y = torch.randn(256, 16), torch.randint(0, 4, (256,))
    history = trainer.fit(x, y, batch_size=32, epochs=2, verbose=0, validation_split=0.25)
    assert len(history.history["val_loss"]) == 2
    assert trainer.predict(x).device.type == "cuda"


def test_no_per_batch_sync_with_default_callbacks():
    x, y = torch.randn(1024, 16), torch.randint(0, 4, (1024,))
    counts = []
    for batch_size in (64, 8):
        trainer = _trainer()
        with device_reads() as reads:
            trainer.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
        counts.append(reads.count)
    assert counts[0] == counts[1]
    trainer = _trainer()
    torch.cuda.set_sync_debug_mode("error")
    try:
        # The epoch average is the one read per epoch; everything before it must not sync.
        with pytest.raises(RuntimeError, match="synchroniz"):
            trainer.fit(x.cuda(), y.cuda(), batch_size=64, epochs=1, verbose=0, shuffle=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_16_mixed_uses_a_grad_scaler_saved_in_checkpoints(tmp_path):
    from torchcb.checkpoint import safe_load

    net = torch.nn.Linear(8, 2)
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", precision="16-mixed")
    assert trainer.scaler is not None
    x, y = torch.randn(64, 8), torch.randn(64, 2)
    history = trainer.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    trainer.model.save(tmp_path / "full.pt")
    assert "scaler" in safe_load(tmp_path / "full.pt")


def test_bf16_mixed_on_cuda():
    trainer = _trainer()
    trainer_mixed = Trainer(
        trainer.module,
        torch.optim.Adam(trainer.module.parameters()),
        loss="sparse_categorical_crossentropy",
        precision="bf16-mixed",
    )
    x = torch.randn(64, 16)
    assert trainer_mixed.predict(x).dtype == torch.bfloat16
