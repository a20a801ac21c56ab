import pytest
import torch

from tests.conftest import make_data, make_trainer
from torchcb.callbacks import EarlyStopping, TorchScheduler


def test_epoch_scheduler_steps_once_per_epoch_and_logs_the_rate_used():
    trainer = make_trainer(lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=1, gamma=0.5)
    history = trainer.fit(*make_data(8), epochs=3, verbose=0, callbacks=[TorchScheduler(scheduler)])
    assert history.history["lr"] == pytest.approx([0.1, 0.05, 0.025])
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0125)


def test_batch_scheduler_steps_every_batch():
    trainer = make_trainer(lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda step: 1.0 / (step + 1))
    trainer.fit(
        *make_data(12), batch_size=4, epochs=2, verbose=0, callbacks=[TorchScheduler(scheduler, interval="batch")]
    )
    assert scheduler.last_epoch == 6
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / 7)


def test_torch_reduce_on_plateau_with_a_monitor_beside_keras_callbacks():
    trainer = make_trainer(lr=0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(trainer.optimizer, factor=0.5, patience=0, threshold=10.0)
    history = trainer.fit(
        *make_data(8),
        epochs=3,
        verbose=0,
        validation_split=0.5,
        callbacks=[TorchScheduler(plateau, monitor="val_loss"), EarlyStopping(patience=5)],
    )
    assert history.history["lr"] == pytest.approx([0.1, 0.05, 0.025])


def test_arguments_and_the_wrong_optimizer():
    trainer = make_trainer()
    other = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="interval must be 'epoch' or 'batch'"):
        TorchScheduler(torch.optim.lr_scheduler.StepLR(other, 1), interval="step")
    with pytest.raises(ValueError, match="monitor is only for"):
        TorchScheduler(torch.optim.lr_scheduler.StepLR(other, 1), monitor="val_loss")
    with pytest.raises(ValueError, match="built on another optimizer"):
        trainer.fit(*make_data(8), verbose=0, callbacks=[TorchScheduler(torch.optim.lr_scheduler.StepLR(other, 1))])
