import math

import numpy as np
import pytest
import torch

from tests.conftest import make_data, make_trainer
from torchcb import Trainer
from torchcb import backend as K
from torchcb.callbacks import Callback


def _two_group_trainer():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    optimizer = torch.optim.SGD(
        [{"params": net[0].parameters(), "lr": 0.1}, {"params": net[1].parameters(), "lr": 0.01}], lr=0.1
    )
    return Trainer(net, optimizer, loss="mse", device="cpu")


def test_lr_handle_behaves_as_the_float_it_holds():
    trainer = make_trainer(lr=0.25)
    lr = trainer.model.optimizer.lr
    assert float(lr) == 0.25 and lr == 0.25 and lr != 0.5
    assert lr * 2 == 0.5 and 2 * lr == 0.5 and lr + 1 == 1.25 and 1 - lr == 0.75 and lr / 5 == 0.05 and 1 / lr == 4.0
    assert lr > 0.1 and lr < 1 and lr >= 0.25 and lr <= 0.25
    assert f"{lr:.3f}" == "0.250" and str(lr) == "0.25" and repr(lr) == "0.25"
    assert np.asarray(lr) == np.float64(0.25) and np.float32(lr) == np.float32(0.25) and lr.numpy() == np.float32(0.25)
    assert math.exp(lr) == pytest.approx(math.exp(0.25))
    assert K.get_value(lr) == 0.25 and K.eval(lr) == 0.25
    assert round(lr, 1) == 0.2 and -lr == -0.25 and abs(lr) == 0.25


def test_lr_handle_is_live_and_settable_every_way():
    trainer = make_trainer(lr=0.1)
    opt = trainer.model.optimizer
    handle = opt.lr
    K.set_value(opt.lr, 0.05)
    assert trainer.optimizer.param_groups[0]["lr"] == 0.05 and float(handle) == 0.05
    opt.lr = 0.02
    assert trainer.optimizer.param_groups[0]["lr"] == 0.02
    opt.learning_rate = 0.03
    assert float(opt.lr) == 0.03 and float(opt.learning_rate) == 0.03
    opt.lr.assign(np.float32(0.5))
    assert trainer.optimizer.param_groups[0]["lr"] == 0.5
    K.set_value(opt.lr, torch.tensor(0.25))
    assert trainer.optimizer.param_groups[0]["lr"] == 0.25
    opt.lr = opt.lr * 2
    assert trainer.optimizer.param_groups[0]["lr"] == 0.5
    with pytest.raises(ValueError, match="learning rate must be a finite real number, got 'fast'"):
        opt.lr = "fast"
    with pytest.raises(ValueError, match="finite real number"):
        K.set_value(opt.lr, float("nan"))


def test_setting_the_rate_scales_every_param_group_by_the_same_ratio():
    trainer = _two_group_trainer()
    K.set_value(trainer.model.optimizer.lr, 0.05)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.05, pytest.approx(0.005)]
    assert float(trainer.model.optimizer.lr) == 0.05


def test_optimizer_facade_passes_other_attributes_through():
    trainer = make_trainer()
    opt = trainer.model.optimizer
    assert opt.param_groups is trainer.optimizer.param_groups
    assert opt.state_dict()["param_groups"][0]["lr"] == 0.05
    assert hasattr(opt, "lr") and opt.iterations == 0


def test_get_and_set_weights_round_trip_in_state_dict_order():
    trainer = make_trainer()
    weights = trainer.model.get_weights()
    state = trainer.module.state_dict()
    assert [w.shape for w in weights] == [tuple(t.shape) for t in state.values()]
    assert all(isinstance(w, np.ndarray) for w in weights)
    trainer.model.set_weights([np.zeros_like(w) for w in weights])
    assert all(float(t.abs().sum()) == 0.0 for t in trainer.module.state_dict().values())
    trainer.model.set_weights(weights)
    assert all(np.array_equal(a, b) for a, b in zip(trainer.model.get_weights(), weights))


def test_set_weights_checks_count_and_shapes():
    trainer = make_trainer()
    weights = trainer.model.get_weights()
    with pytest.raises(ValueError, match="set_weights expects a list of 4 arrays"):
        trainer.model.set_weights(weights[:2])
    with pytest.raises(ValueError, match=r"set_weights: 0.weight has shape \(8, 4\), got an array of shape \(4, 8\)"):
        trainer.model.set_weights([weights[0].T] + weights[1:])


def test_weights_snapshot_stays_on_the_device_and_restores():
    trainer = make_trainer()
    snapshot = trainer.model.weights_snapshot()
    before = trainer.model.get_weights()
    trainer.fit(*make_data(8), epochs=2, verbose=0)
    assert not np.array_equal(trainer.model.get_weights()[0], before[0])
    trainer.model.restore_weights_snapshot(snapshot)
    assert all(np.array_equal(a, b) for a, b in zip(trainer.model.get_weights(), before))
    assert all(t.device == trainer.device for t in snapshot.values())


def test_save_weights_and_load_weights(tmp_path):
    trainer = make_trainer()
    path = tmp_path / "sub" / "w.pt"
    trainer.model.save_weights(path)
    saved = trainer.model.get_weights()
    trainer.fit(*make_data(8), epochs=2, verbose=0)
    trainer.model.load_weights(path)
    assert all(np.array_equal(a, b) for a, b in zip(trainer.model.get_weights(), saved))
    with pytest.raises(FileExistsError, match="overwrite=False"):
        trainer.model.save_weights(path, overwrite=False)


def test_save_writes_a_full_checkpoint_that_load_weights_and_load_checkpoint_read(tmp_path):
    trainer = make_trainer()
    x, y = make_data(8)
    trainer.fit(x, y, epochs=3, batch_size=4, verbose=0)
    trainer.model.save(tmp_path / "full.pt")
    saved = trainer.model.get_weights()

    fresh = make_trainer()
    fresh.model.load_weights(tmp_path / "full.pt")
    assert all(np.array_equal(a, b) for a, b in zip(fresh.model.get_weights(), saved))
    epoch = fresh.load_checkpoint(tmp_path / "full.pt")
    assert epoch == 3 and fresh.model.optimizer.iterations == 6
    history = fresh.fit(x, y, epochs=4, initial_epoch=epoch, verbose=0)
    # one epoch is trained; the History saved after the first fit goes on, as in a run never interrupted
    assert fresh.model.optimizer.iterations == 7  # 8 samples in one batch of 32
    assert history.epoch == [0, 1, 2, 3] and len(history.history["loss"]) == 4


def test_layers_name_the_leaf_modules_and_their_weights():
    trainer = make_trainer()
    layers = trainer.model.layers
    assert [layer.name for layer in layers] == ["0", "1", "2"]
    assert [w.name for w in layers[0].weights] == ["0.weight", "0.bias"]
    assert layers[1].weights == []
    assert layers[2].get_weights()[0].shape == (2, 8)


def test_facade_members_as_keras_has_them():
    trainer = make_trainer()
    model = trainer.model
    x = torch.randn(3, 4)
    assert model.module is trainer.module and model.trainer is trainer
    assert model.name == "sequential"
    assert model.metrics_names == ["loss", "accuracy"]
    assert [m.name for m in model.metrics] == ["accuracy"]
    assert torch.equal(model(x), trainer.module(x))
    predictions = model.predict(x)  # numpy, as Keras' model.predict returns
    assert isinstance(predictions, np.ndarray) and np.array_equal(predictions, trainer.predict(x).numpy())
    assert model.evaluate(x, torch.zeros(3, dtype=torch.long), verbose=0) == trainer.evaluate(
        x, torch.zeros(3, dtype=torch.long), verbose=0
    )


def _with(optimizer_class, **options):
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    groups = [{"params": net[0].parameters()}, {"params": net[1].parameters()}]
    return Trainer(net, optimizer_class(groups, **options), loss="mse", device="cpu")


@pytest.mark.parametrize(
    "optimizer_class, options, name, key, index",
    [
        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}, "momentum", "momentum", None),
        (torch.optim.RMSprop, {"momentum": 0.5}, "momentum", "momentum", None),
        (torch.optim.RMSprop, {}, "rho", "alpha", None),
        (torch.optim.Adadelta, {}, "rho", "rho", None),
        (torch.optim.Adam, {}, "beta_1", "betas", 0),
        (torch.optim.AdamW, {}, "beta_2", "betas", 1),
        (torch.optim.Adam, {}, "epsilon", "eps", None),
    ],
)
def test_hyperparameters_are_keras_variables_live_on_every_param_group(optimizer_class, options, name, key, index):
    trainer = _with(optimizer_class, **options)
    optimizer = trainer.model.optimizer

    def in_groups():
        values = [group[key] for group in trainer.optimizer.param_groups]
        return [v if index is None else v[index] for v in values]

    assert K.get_value(getattr(optimizer, name)) == in_groups()[0]
    for value, setter in [
        (0.7, lambda v: K.set_value(getattr(optimizer, name), v)),
        (0.6, lambda v: getattr(optimizer, name).assign(v)),
        (0.5, lambda v: setattr(optimizer, name, v)),
    ]:
        setter(value)
        assert in_groups() == [value, value]
        assert float(getattr(optimizer, name)) == value and getattr(optimizer, name) * 2 == 2 * value
    if key == "betas":
        assert all(isinstance(group["betas"], tuple) for group in trainer.optimizer.param_groups)


def test_a_negative_learning_rate_is_refused_every_way_and_the_rate_is_kept():
    trainer = _two_group_trainer()
    optimizer = trainer.model.optimizer
    for setter in (
        lambda: optimizer.learning_rate.assign(-1.0),
        lambda: setattr(optimizer, "lr", -1),
        lambda: K.set_value(optimizer.lr, np.float32(-1.0)),
    ):
        with pytest.raises(ValueError, match=r"learning rate must be >= 0, as torch optimizers take it, got -1\.0"):
            setter()
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.1, 0.01]
    with pytest.raises(ValueError, match="learning rate must be a finite real number, got nan"):
        optimizer.lr.assign(float("nan"))
    optimizer.lr.assign(0.0)  # a rate of 0 is one torch takes (ReduceLROnPlateau may reach it)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.0, 0.0]


@pytest.mark.parametrize(
    "optimizer_class, options, name, bad, expected",
    [
        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}, "momentum", -0.1, ">= 0"),
        (torch.optim.Adam, {}, "beta_1", 1.0, r"in \[0, 1\)"),
        (torch.optim.AdamW, {}, "beta_2", -0.5, r"in \[0, 1\)"),
        (torch.optim.Adam, {}, "epsilon", -1e-7, ">= 0"),
        (torch.optim.Adadelta, {}, "rho", 1.5, r"in \[0, 1\]"),
        (torch.optim.RMSprop, {}, "rho", -0.9, ">= 0"),
    ],
)
def test_a_hyperparameter_torch_refuses_is_refused_when_set(optimizer_class, options, name, bad, expected):
    trainer = _with(optimizer_class, **options)
    before = [dict(g, params=None) for g in trainer.optimizer.param_groups]
    with pytest.raises(ValueError, match=rf"{name} must be {expected}, as torch optimizers take it, got {bad}"):
        getattr(trainer.model.optimizer, name).assign(bad)
    with pytest.raises(ValueError, match=name):
        setattr(trainer.model.optimizer, name, bad)
    assert [dict(g, params=None) for g in trainer.optimizer.param_groups] == before


def test_a_hyperparameter_the_optimizer_lacks_is_a_clear_attribute_error():
    optimizer = _with(torch.optim.Adam).model.optimizer
    assert not hasattr(optimizer, "momentum")  # as one-cycle schedulers test it
    with pytest.raises(
        AttributeError, match=r"Adam has no hyperparameter 'momentum' \(its param groups hold lr, betas"
    ):
        K.set_value(optimizer.momentum, 0.9)
    assert not hasattr(_with(torch.optim.SGD, lr=0.1).model.optimizer, "beta_1")


def test_decay_is_keras_2s_time_based_decay():
    trainer = _with(torch.optim.SGD, lr=0.1)
    reference = _with(torch.optim.SGD, lr=0.1)
    reference.module.load_state_dict(trainer.module.state_dict())
    assert K.get_value(trainer.model.optimizer.decay) == 0.0
    K.set_value(trainer.model.optimizer.decay, 0.5)
    x, y = torch.ones(8, 2), torch.zeros(8, 1)
    trainer.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0)  # 4 steps
    for step in range(4):  # the same steps by hand, at lr / (1 + decay * iterations)
        for group in reference.optimizer.param_groups:
            group["lr"] = 0.1 / (1 + 0.5 * step)
        loss = torch.nn.functional.mse_loss(reference.module(x[2 * step : 2 * step + 2]), y[:2])
        reference.optimizer.zero_grad()
        loss.backward()
        reference.optimizer.step()
    assert all(torch.allclose(a, b) for a, b in zip(trainer.module.parameters(), reference.module.parameters()))
    assert trainer.optimizer.param_groups[0]["lr"] == 0.1  # lr as callbacks read it is unchanged
    with pytest.raises(ValueError, match="decay must be >= 0"):
        trainer.model.optimizer.decay = -1


def test_model_fit_is_the_trainers_and_cannot_run_inside_itself():
    trainer = _with(torch.optim.SGD, lr=0.1)
    x, y = torch.ones(8, 2), torch.zeros(8, 1)
    history = trainer.model.fit(x, y, epochs=2, verbose=False)
    assert history.epoch == [0, 1] and trainer.history is history
    errors = []

    class FitsAgain(Callback):
        def on_epoch_end(self, epoch, logs=None):
            try:
                self.model.fit(x, y, verbose=0)
            except RuntimeError as error:
                errors.append(str(error))
            self.model.evaluate(x, y, verbose=False)  # evaluate from a callback is fine

    trainer.fit(x, y, epochs=1, verbose=0, callbacks=[FitsAgain()])
    assert errors and errors[0].startswith("fit is already running on this trainer")


class _Denoiser(torch.nn.Module):
    """A module with a submodule, an attribute its forward reads, and names the facade has too."""

    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(4, 2)
        self.decoder = torch.nn.Linear(2, 4)
        self.layers = torch.nn.ModuleList([self.encoder, self.decoder])  # the facade's layers win
        self.noise = 0.5
        self.history = "the module's own"

    def forward(self, x):
        return self.decoder(self.encoder(x + self.noise * torch.randn_like(x)))

    def code_size(self):
        return self.encoder.out_features


def test_names_the_facade_does_not_define_fall_through_to_the_module():
    net = _Denoiser()
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", device="cpu")
    model = trainer.model
    assert model.encoder is net.encoder and model.noise == 0.5 and model.code_size() == 2
    assert model.state_dict().keys() == net.state_dict().keys() and model.training
    assert [layer.name for layer in model.layers] == ["encoder", "decoder"] and model.history is None
    assert net.history == "the module's own"  # the facade's own attribute did not touch the module's
    assert hasattr(model, "encoder") and not hasattr(model, "missing")
    missing = (
        r"'KerasModel' \(the model facade self.model\) has no attribute 'encodr', and the module it wraps \(_Denoiser\)"
    )
    with pytest.raises(AttributeError, match=missing + " has none either"):
        _ = model.encodr

    model.noise = 0.0  # a name the module has: set on the module, which forward reads
    assert net.noise == 0.0 and "noise" not in vars(model)
    x = torch.randn(3, 4)
    assert torch.equal(model(x), net.decoder(net.encoder(x)))
    model.stop_training = True  # the facade's own names stay on the facade
    model.seen_by_my_callback = 3  # and so does a name neither has
    assert model.stop_training and model.seen_by_my_callback == 3
    assert not hasattr(net, "stop_training") and not hasattr(net, "seen_by_my_callback")


def test_a_callback_reaches_the_module_and_the_step_count_through_self_model():
    net = _Denoiser()
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", device="cpu")
    seen = []

    class Anneal(Callback):  # as Keras code anneals a model attribute and reads iterations
        def on_train_batch_end(self, batch, logs=None):
            seen.append((int(self.model.iterations), self.model.encoder.weight.shape))
            self.model.noise = self.model.noise / 2

    x = torch.randn(8, 4)
    trainer.fit(x, x, batch_size=2, epochs=1, shuffle=False, verbose=0, callbacks=[Anneal()])
    assert seen == [(1, (2, 4)), (2, (2, 4)), (3, (2, 4)), (4, (2, 4))]
    assert net.noise == 0.5 / 16 and trainer.model.iterations == trainer.model.optimizer.iterations == 4


def test_iterations_is_the_modules_own_when_it_has_one():
    class Counting(torch.nn.Module):  # as in Keras' own callback test, the model counts its calls
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(1, 1)
            self.register_buffer("iterations", torch.zeros((), dtype=torch.int64))

        def forward(self, x):
            self.iterations += 1
            return self.linear(x)

    net = Counting()
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss=torch.nn.MSELoss(), device="cpu")
    seen = []
    callback = Callback()
    callback.on_batch_end = lambda batch, logs=None: seen.append((batch, int(callback.model.iterations)))
    trainer.fit(torch.ones(6, 1), torch.ones(6, 1), batch_size=2, verbose=0, callbacks=[callback])
    assert [count for _, count in seen] == [batch + 1 for batch, _ in seen] == [1, 2, 3]
    trainer.predict(torch.ones(2, 1))
    assert trainer.model.iterations is net.iterations and int(net.iterations) == 4
    assert trainer.model.optimizer.iterations == 3


def test_learning_rate_has_keras_3s_variable_api_on_every_param_group():
    trainer = _two_group_trainer()
    learning_rate = trainer.model.optimizer.learning_rate
    value = learning_rate.value
    assert isinstance(value, torch.Tensor) and value.dtype == torch.float32 and value.shape == ()
    assert value == torch.tensor(0.1, dtype=torch.float32)
    numpy_value = learning_rate.numpy()
    assert isinstance(numpy_value, np.ndarray) and numpy_value.dtype == np.float32 and numpy_value.shape == ()

    returned = trainer.model.optimizer.lr.assign(0.5)  # every group scaled by the same ratio
    assert [group["lr"] for group in trainer.optimizer.param_groups] == [0.5, pytest.approx(0.05)]
    assert returned.dtype == torch.float32 and float(returned) == 0.5
    assert float(learning_rate) == 0.5 and K.get_value(trainer.model.optimizer.lr) == 0.5

    # compared at float32, as Keras 3's torch backend compares a variable's value
    trainer.optimizer.param_groups[0]["lr"] = 0.1 + 1e-10
    assert float(learning_rate) > 0.1 and not bool(learning_rate.value > 0.1)
    assert bool(learning_rate.value < 0.2) and bool(learning_rate.value == np.float32(0.1))


def test_every_hyperparameter_has_the_variable_api():
    trainer = _with(torch.optim.SGD, lr=0.1, momentum=0.9)
    optimizer = trainer.model.optimizer
    assert optimizer.momentum.value.dtype == torch.float32 and optimizer.momentum.numpy() == np.float32(0.9)
    assert float(optimizer.momentum.assign(0.8)) == pytest.approx(0.8)
    assert [group["momentum"] for group in trainer.optimizer.param_groups] == [0.8, 0.8]
    optimizer.decay.assign(0.25)
    assert trainer.time_decay == 0.25 and optimizer.decay.value == torch.tensor(0.25)
