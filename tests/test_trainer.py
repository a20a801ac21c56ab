import json
import warnings

import numpy as np
import pytest
import torch

from tests.conftest import Recorder, make_data, make_trainer
from torchcb import History, Trainer
from torchcb.callbacks import BaseLogger, Callback, ProgbarLogger
from torchcb.callbacks import History as CallbackHistory


def test_fit_hook_counts_match_keras():
    # Keras 2 callbacks_test: 10 samples, batch 2, 5 epochs, 4 validation samples.
    trainer = make_trainer()
    x, y = make_data(10)
    xv, yv = make_data(4)
    rec = Recorder()
    trainer.fit(x, y, batch_size=2, epochs=5, verbose=0, validation_data=(xv, yv), callbacks=[rec])
    assert rec.count("on_train_begin") == 1 and rec.count("on_train_end") == 1
    assert rec.count("on_epoch_begin") == 5 and rec.count("on_epoch_end") == 5
    assert rec.count("on_train_batch_begin") == 25 and rec.count("on_train_batch_end") == 25
    assert rec.count("on_test_batch_begin") == 10 and rec.count("on_test_batch_end") == 10
    assert rec.count("on_test_begin") == 5 and rec.count("on_test_end") == 5


def test_hook_order_within_an_epoch():
    trainer = make_trainer()
    x, y = make_data(4)
    rec = Recorder()
    trainer.fit(x, y, batch_size=2, epochs=1, verbose=0, validation_data=make_data(2), callbacks=[rec])
    order = [call[0] for call in rec.calls]
    assert order == [
        "on_train_begin",
        "on_epoch_begin",
        "on_train_batch_begin",
        "on_train_batch_end",
        "on_train_batch_begin",
        "on_train_batch_end",
        "on_test_begin",
        "on_test_batch_begin",
        "on_test_batch_end",
        "on_test_end",
        "on_epoch_end",
        "on_train_end",
    ]


def test_batch_logs_hold_batch_size_loss_and_metrics_as_numpy_scalars():
    trainer = make_trainer()
    x, y = make_data(10)
    rec = Recorder()
    trainer.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False, callbacks=[rec])
    begins = rec.logs_of("on_train_batch_begin")
    ends = rec.logs_of("on_train_batch_end")
    assert begins == [{"batch": 0, "size": 4}, {"batch": 1, "size": 4}, {"batch": 2, "size": 2}]
    assert [sorted(logs) for logs in ends] == [["accuracy", "batch", "loss", "size"]] * 3
    # numpy scalars, as Keras 2 logged them: float64, so json, formatting and arithmetic take them as floats
    assert all(type(logs["loss"]) is np.float64 and type(logs["accuracy"]) is np.float64 for logs in ends)


def test_epoch_logs_are_size_weighted_averages_of_batch_logs():
    trainer = make_trainer()
    x, y = make_data(10)
    rec = Recorder()
    history = trainer.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[rec])
    ends = rec.logs_of("on_train_batch_end")
    first_epoch = ends[:3]
    expected = sum(b["loss"] * b["size"] for b in first_epoch) / 10
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-6)
    expected_acc = sum(b["accuracy"] * b["size"] for b in first_epoch) / 10
    assert history.history["accuracy"][0] == pytest.approx(expected_acc, rel=1e-6)
    assert all(type(v) is np.float64 for values in history.history.values() for v in values)
    assert json.loads(json.dumps(history.history)) == history.history


def test_params_hold_the_keras_keys():
    trainer = make_trainer()
    x, y = make_data(10)
    rec = Recorder()
    trainer.fit(x, y, batch_size=4, epochs=3, verbose=0, validation_split=0.2, callbacks=[rec])
    assert rec.params == {
        "batch_size": 4,
        "epochs": 3,
        "steps": 2,
        "samples": 8,
        "verbose": 0,
        "do_validation": True,
        "metrics": ["loss", "accuracy", "val_loss", "val_accuracy"],
    }


def test_callback_order_is_baselogger_progbar_user_history():
    trainer = make_trainer()
    x, y = make_data(8)
    seen = []

    class Spy(Callback):
        def on_train_begin(self, logs=None):
            seen.extend(type(c).__name__ for c in self._list)

    spy = Spy()
    original = trainer._fit_callbacks

    def capture(*args, **kwargs):
        callback_list, history = original(*args, **kwargs)
        spy._list = callback_list.callbacks
        return callback_list, history

    trainer._fit_callbacks = capture
    trainer.fit(x, y, epochs=1, verbose=2, callbacks=[spy])
    assert seen == ["BaseLogger", "ProgbarLogger", "Spy", "History"]


def test_history_records_keys_added_by_user_callbacks_and_is_returned():
    class AddLr(Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["lr"] = float(self.model.optimizer.lr)

    trainer = make_trainer()
    x, y = make_data(8)
    history = trainer.fit(x, y, epochs=2, verbose=0, callbacks=[AddLr()])
    assert isinstance(history, History)
    assert history.history["lr"] == [0.05, 0.05]
    assert history.epoch == [0, 1]
    assert trainer.model.history is history and trainer.history is history


def test_history_passed_by_user_is_reused_and_keeps_accumulating():
    trainer = make_trainer()
    x, y = make_data(8)
    history = CallbackHistory()
    returned = trainer.fit(x, y, epochs=2, verbose=0, callbacks=[history])
    assert returned is history
    trainer.fit(x, y, epochs=3, initial_epoch=2, verbose=0, callbacks=[history])
    assert len(history.history["loss"]) == 3
    assert history.epoch == [2]


def test_new_history_each_fit_without_one_passed():
    trainer = make_trainer()
    x, y = make_data(8)
    first = trainer.fit(x, y, epochs=2, verbose=0)
    second = trainer.fit(x, y, epochs=1, verbose=0)
    assert first is not second and len(second.history["loss"]) == 1


def test_stop_training_at_batch_two_runs_exactly_three_batches():
    class StopAt(Callback):
        def on_batch_end(self, batch, logs=None):
            if batch == 2:
                self.model.stop_training = True

    trainer = make_trainer()
    x, y = make_data(20)
    rec = Recorder()
    history = trainer.fit(x, y, batch_size=2, epochs=3, verbose=0, callbacks=[StopAt(), rec])
    assert rec.count("on_train_batch_end") == 3
    assert rec.count("on_epoch_end") == 1 and len(history.epoch) == 1


def test_stop_training_is_reset_before_on_train_begin_and_not_by_evaluate():
    trainer = make_trainer()
    x, y = make_data(8)
    trainer.model.stop_training = True
    seen = []

    class Check(Callback):
        def on_train_begin(self, logs=None):
            seen.append(self.model.stop_training)

    history = trainer.fit(x, y, epochs=2, verbose=0, callbacks=[Check()])
    assert seen == [False] and len(history.epoch) == 2
    trainer.model.stop_training = True
    trainer.evaluate(x, y, verbose=0)
    assert trainer.model.stop_training is True


def test_stop_set_at_epoch_end_stops_after_that_epoch():
    class StopAtEpoch(Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.stop_training = True

    trainer = make_trainer()
    history = trainer.fit(*make_data(8), epochs=5, verbose=0, callbacks=[StopAtEpoch()])
    assert history.epoch == [0, 1]


def test_on_train_end_gets_the_last_epoch_logs():
    trainer = make_trainer()
    rec = Recorder()
    history = trainer.fit(*make_data(8), epochs=2, verbose=0, callbacks=[rec])
    last = rec.logs_of("on_train_end")[0]
    assert last["loss"] == history.history["loss"][-1]


def test_logs_at_begin_and_end_hooks_are_dicts_never_none():
    trainer = make_trainer()
    rec = Recorder()
    x, y = make_data(8)
    trainer.fit(x, y, epochs=1, verbose=0, validation_split=0.25, callbacks=[rec])
    trainer.evaluate(x, y, verbose=0, callbacks=[rec])
    trainer.predict(x, verbose=0, callbacks=[rec])
    assert all(isinstance(call[2], dict) for call in rec.calls)


def test_validation_freq_int_and_list():
    trainer = make_trainer()
    x, y = make_data(8)
    rec = Recorder()
    history = trainer.fit(x, y, epochs=4, verbose=0, validation_data=make_data(4), validation_freq=2, callbacks=[rec])
    assert rec.count("on_test_begin") == 2
    assert ["val_loss" in logs for logs in rec.logs_of("on_epoch_end")] == [False, True, False, True]
    assert len(history.history["val_loss"]) == 2
    rec = Recorder()
    trainer.fit(x, y, epochs=4, verbose=0, validation_data=make_data(4), validation_freq=[1, 4], callbacks=[rec])
    assert ["val_loss" in logs for logs in rec.logs_of("on_epoch_end")] == [True, False, False, True]


def test_initial_epoch_starts_the_epoch_count():
    trainer = make_trainer()
    rec = Recorder()
    history = trainer.fit(*make_data(8), epochs=5, initial_epoch=3, verbose=0, callbacks=[rec])
    assert history.epoch == [3, 4]
    assert [call[1] for call in rec.calls if call[0] == "on_epoch_begin"] == [3, 4]


def test_validation_split_takes_the_last_fraction_before_shuffling():
    trainer = make_trainer(inputs=1)
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    y = np.zeros(10, dtype=np.int64)
    seen = []
    original = trainer.test_step

    def spy(batch):
        seen.extend(batch.x[:, 0].tolist())
        return original(batch)

    trainer.test_step = spy
    trainer.fit(x, y, batch_size=4, epochs=1, verbose=0, validation_split=0.3, shuffle=True)
    assert seen == [7.0, 8.0, 9.0]


def test_shuffle_draws_a_new_order_each_epoch_and_false_keeps_it():
    trainer = make_trainer(inputs=1)
    x = np.arange(16, dtype=np.float32).reshape(16, 1)
    y = np.zeros(16, dtype=np.int64)
    orders = []
    original = trainer.train_step

    def spy(batch):
        orders[-1].extend(batch.x[:, 0].tolist())
        return original(batch)

    trainer.train_step = spy

    class NewEpoch(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            orders.append([])

    trainer.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[NewEpoch()])
    assert sorted(orders[0]) == list(range(16)) and orders[0] != orders[1]
    orders.clear()
    trainer.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False, callbacks=[NewEpoch()])
    assert orders[0] == orders[1] == [float(i) for i in range(16)]


def test_sample_weight_and_class_weight_weight_the_loss():
    x = torch.randn(6, 4)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    trainer = make_trainer(metrics=())
    per_sample = torch.nn.functional.cross_entropy(trainer.module(x), y, reduction="none").detach()
    weights = torch.tensor([1.0, 0.0, 2.0, 0.0, 1.0, 0.0])
    expected = (per_sample * weights).mean().item()
    assert trainer.evaluate(x, y, sample_weight=weights, verbose=0, batch_size=6) == pytest.approx(expected, rel=1e-5)

    rec = Recorder()
    trainer.fit(x, y, batch_size=6, epochs=1, shuffle=False, verbose=0, class_weight={0: 1.0, 1: 3.0}, callbacks=[rec])
    class_weights = torch.where(y == 1, 3.0, 1.0)
    assert rec.logs_of("on_train_batch_end")[0]["loss"] == pytest.approx(
        (per_sample * class_weights).mean().item(), rel=1e-5
    )


def test_evaluate_returns_loss_alone_list_or_dict():
    x, y = make_data(8)
    trainer = make_trainer(metrics=())
    assert isinstance(trainer.evaluate(x, y, verbose=0), float)
    trainer = make_trainer()
    values = trainer.evaluate(x, y, verbose=0)
    as_dict = trainer.evaluate(x, y, verbose=0, return_dict=True)
    assert values == [as_dict["loss"], as_dict["accuracy"]]


def test_evaluate_and_predict_hooks():
    trainer = make_trainer()
    x, y = make_data(10)
    rec = Recorder()
    trainer.evaluate(x, y, batch_size=4, verbose=0, callbacks=[rec])
    assert [rec.count(h) for h in ("on_test_begin", "on_test_batch_begin", "on_test_batch_end", "on_test_end")] == [
        1,
        3,
        3,
        1,
    ]
    assert sorted(rec.logs_of("on_test_end")[0]) == ["accuracy", "loss"]
    rec = Recorder()
    out = trainer.predict(x, batch_size=4, callbacks=[rec])
    assert out.shape == (10, 2)
    assert [rec.count(h) for h in ("on_predict_begin", "on_predict_batch_end", "on_predict_end")] == [1, 3, 1]
    outputs = [logs["outputs"] for logs in rec.logs_of("on_predict_batch_end")]
    assert torch.equal(torch.cat(outputs), out)
    assert rec.count("on_train_begin") == 0


def test_predict_matches_the_module_and_leaves_train_mode():
    trainer = make_trainer()
    x, _ = make_data(7)
    trainer.module.train()
    out = trainer.predict(x, batch_size=3)
    assert torch.allclose(out, trainer.module(torch.as_tensor(x)))
    assert trainer.module.training


def test_training_reduces_the_loss():
    x = torch.randn(256, 4)
    y = (x[:, 0] > 0).long()
    trainer = make_trainer(lr=0.5)
    history = trainer.fit(x, y, batch_size=32, epochs=10, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0] * 0.5
    assert history.history["accuracy"][-1] > 0.9


def test_custom_train_step_for_a_two_input_model():
    class TwoTowers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(2, 1)
            self.b = torch.nn.Linear(3, 1)

        def forward(self, left, right):
            return self.a(left) + self.b(right)

    class PairTrainer(Trainer):
        def train_step(self, batch):
            logs = super().train_step(batch)
            logs["extra"] = logs["loss"] * 2
            return logs

    net = TwoTowers()
    trainer = PairTrainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", device="cpu")
    left, right = np.random.rand(12, 2).astype(np.float32), np.random.rand(12, 3).astype(np.float32)
    target = left.sum(1, keepdims=True) - right.sum(1, keepdims=True)
    history = trainer.fit([left, right], target, batch_size=4, epochs=2, verbose=0)
    assert history.history["extra"] == pytest.approx([2 * v for v in history.history["loss"]])
    assert trainer.predict([left, right]).shape == (12, 1)
    history = trainer.fit({"left": left, "right": right}, target, batch_size=4, epochs=1, verbose=0)
    assert len(history.history["loss"]) == 1


def test_a_subclass_compute_loss_and_compute_metrics_drive_the_default_steps():
    class Penalised(Trainer):
        def compute_loss(self, y_pred, y_true, sample_weight=None):
            penalty = sum(p.abs().sum() for p in self.module.parameters())
            return super().compute_loss(y_pred, y_true, sample_weight) + 0.5 * penalty

        def compute_metrics(self, y_pred, y_true, loss):
            logs = super().compute_metrics(y_pred, y_true, loss)
            logs["pred_mean"] = y_pred.detach().mean()
            return logs

    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    net = torch.nn.Linear(3, 1)
    trainer = Penalised(net, torch.optim.SGD(net.parameters(), lr=0.0), loss="mse", device="cpu")
    penalty = sum(p.abs().sum() for p in net.parameters()).item()
    plain = torch.nn.functional.mse_loss(net(x), y).item()
    history = trainer.fit(x, y, batch_size=8, epochs=1, verbose=0)  # lr 0: the weights stay
    assert history.history["loss"] == [pytest.approx(plain + 0.5 * penalty)]
    assert history.history["pred_mean"] == [pytest.approx(net(x).mean().item())]
    assert trainer.evaluate(x, y, verbose=0)[0] == pytest.approx(plain + 0.5 * penalty)
    weighted = trainer.fit(x, y, batch_size=8, epochs=1, verbose=0, sample_weight=np.full(8, 2.0, np.float32))
    assert weighted.history["loss"] == [pytest.approx(2 * plain + 0.5 * penalty)]

    # the penalty reaches the gradients: with a rate, the weights shrink towards zero faster
    trainer.optimizer.param_groups[0]["lr"] = 0.1
    before = net.weight.detach().abs().sum().item()
    trainer.fit(x, torch.zeros(8, 1) + net(x).detach(), batch_size=8, epochs=1, verbose=0)
    assert net.weight.detach().abs().sum().item() < before


def test_optimizer_iterations_counts_steps():
    trainer = make_trainer()
    trainer.fit(*make_data(10), batch_size=4, epochs=2, verbose=0)
    assert trainer.model.optimizer.iterations == 6


def test_a_trainer_built_again_on_the_same_optimizer_leaves_the_old_one_behind():
    import gc
    import weakref

    net = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = make_data(8)
    first = Trainer(net, optimizer, loss="sparse_categorical_crossentropy", device="cpu", use_ema=True)
    first.fit(x, y, batch_size=4, epochs=1, verbose=0)
    first_average = weakref.ref(first.weight_average)
    first = None  # a notebook cell run again: the old Trainer is dropped, the optimizer kept
    gc.collect()
    assert first_average() is None  # its step hooks do not keep it (and its average) alive

    second = Trainer(net, optimizer, loss="sparse_categorical_crossentropy", device="cpu", use_ema=True)
    second.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert second.state.optimizer_steps == second.model.optimizer.iterations == 4
    assert len(optimizer._optimizer_step_post_hooks) == 2  # the old Trainer's hooks removed themselves


def test_optimizer_iterations_counts_the_steps_taken_not_the_batches():
    accumulating = make_trainer(accumulate_steps=4)
    accumulating.fit(*make_data(24), batch_size=4, epochs=2, verbose=0)  # 6 batches: steps after 4, and 2 at the end
    assert accumulating.model.optimizer.iterations == accumulating.state.optimizer_steps == 4

    seen = []

    class EveryOtherBatch(Trainer):  # a step of its own that calls optimizer.step() itself
        def train_step(self, batch):
            loss = self.compute_loss(self.module(batch.x), batch.y)
            self.optimizer.zero_grad()
            loss.backward()
            if len(seen) % 2 == 0:
                self.optimizer.step()
            seen.append(batch.size)
            return {"loss": loss.detach()}

    net = torch.nn.Linear(3, 1)
    trainer = EveryOtherBatch(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", device="cpu")
    trainer.fit(np.ones((16, 3)), np.ones((16, 1)), batch_size=4, epochs=1, verbose=0)
    assert len(seen) == 4 and trainer.model.optimizer.iterations == 2 and trainer.state.train_batches == 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"y": np.zeros(9, dtype=np.int64)},
            "x and y must have the same number of samples, got x with 10 and y with 9",
        ),
        ({"y": None}, "y is required"),
        ({"validation_split": 1.0}, "validation_split must be a float in [0, 1)"),
        ({"validation_split": -0.1}, "validation_split must be a float in [0, 1)"),
        ({"epochs": -1}, "epochs must be an int >= 0"),
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"validation_freq": 0}, "validation_freq must be an int >= 1"),
        ({"verbose": 3}, "verbose must be 0, 1, 2, True, False or 'auto'"),
        ({"callbacks": ["not a callback"]}, "callbacks[0] must be a Callback instance"),
        ({"callbacks": [History]}, "callbacks[0] is the class History"),
        ({"steps_per_epoch": 0}, "steps_per_epoch must be a positive int"),
        ({"x": np.array([["a", "b", "c", "d"]] * 10)}, "x holds strings (dtype <U1); expected numbers"),
        ({"x": np.array([[object()] * 4] * 10, dtype=object)}, "x holds Python objects"),
        ({"x": [[1.0, 2.0, 3.0, 4.0]] * 9 + [[1.0, 2.0]]}, "x is ragged: its nested lists have rows of different"),
        ({"y": np.array(["cat"] * 10)}, "y holds strings"),
        ({"y": [[1], [2, 3]] * 5}, "y is ragged"),
        ({"sample_weight": np.array(["a"] * 10)}, "sample_weight holds strings"),
        ({"class_weight": {"a": 1.0}}, "class_weight keys must be class indices (ints >= 0), got 'a'"),
        ({"class_weight": {0: "heavy"}}, "class_weight values must be numbers, got 'heavy'"),
        ({"class_weight": [1.0, 2.0]}, "class_weight must be a dict mapping class index to weight, got list"),
        (
            {"validation_data": (np.zeros((5, 4), np.float32), np.zeros(4, np.int64))},
            "validation_data: x and y must have the same number of samples, got x with 5 and y with 4",
        ),
        (
            {"validation_data": (np.array([["a"] * 4] * 5), np.zeros(5, np.int64))},
            "validation_data: x holds strings",
        ),
        ({"validation_data": np.zeros((5, 4), np.float32)}, "validation_data must be (x_val, y_val), (x_val, y_val"),
        (
            {"validation_data": [(np.zeros((2, 4), np.float32), np.zeros(2, np.int64))] * 2 + [np.zeros((2, 4))]},
            "validation_data: batch 2: each batch must be (x, y) or (x, y, sample_weight), got ndarray",
        ),
    ],
)
def test_bad_fit_arguments_raise_before_any_hook(kwargs, message):
    trainer = make_trainer()
    x, y = make_data(10)
    rec = Recorder()
    args = {"x": x, "y": y, "verbose": 0, "callbacks": [rec]}
    if "callbacks" in kwargs:
        kwargs = {**kwargs, "callbacks": kwargs["callbacks"] + [rec]}
    args.update(kwargs)
    with pytest.raises(ValueError) as error:
        trainer.fit(**args)
    assert message in str(error.value)
    assert rec.calls == []


def test_validation_data_as_a_list_or_a_list_of_batches():
    x, y = make_data(10)
    xv, yv = make_data(6)
    batches = [(xv[i : i + 2], yv[i : i + 2]) for i in range(0, 6, 2)]
    results = []
    # a tuple is always (x, y) or (x, y, sample_weight), as in Keras; a list of batches is an iterable
    for validation_data in [(xv, yv), [xv, yv], [xv, yv.tolist()], batches, batches + batches[:1]]:
        torch.manual_seed(0)
        trainer = make_trainer()
        history = trainer.fit(x, y, batch_size=5, epochs=1, verbose=0, validation_data=validation_data)
        results.append(history.history["val_loss"][0])
    assert results[:4] == pytest.approx([results[0]] * 4, rel=1e-6)  # the same 6 samples every way


def test_empty_data_is_refused():
    trainer = make_trainer()
    with pytest.raises(ValueError, match="x: the data is empty"):
        trainer.fit(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), verbose=0)
    with pytest.raises(ValueError, match="x: the data is empty"):
        trainer.fit(
            torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(0, 4), torch.zeros(0))), verbose=0
        )


def test_validation_split_with_a_loader_is_refused():
    trainer = make_trainer()
    dataset = torch.utils.data.TensorDataset(torch.zeros(8, 4), torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="validation_split needs in-memory arrays or tensors; x is a TensorDataset"):
        trainer.fit(dataset, validation_split=0.2, verbose=0)
    with pytest.raises(ValueError, match="x is a DataLoader"):
        trainer.fit(torch.utils.data.DataLoader(dataset), validation_split=0.2, verbose=0)
    with pytest.raises(ValueError, match="x is a generator"):
        trainer.fit(
            (b for b in [(torch.zeros(2, 4), torch.zeros(2))]), steps_per_epoch=1, validation_split=0.2, verbose=0
        )


def test_unknown_loss_and_metric_names_list_the_known_ones():
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(
        ValueError, match="loss: unknown loss name 'hinge'; known names are mse, .*sparse_categorical_crossentropy"
    ):
        Trainer(net, opt, loss="hinge", device="cpu")
    with pytest.raises(ValueError, match=r"metrics\[1\]: unknown metric name 'f1'; known names are accuracy, acc, "):
        Trainer(net, opt, loss="mse", metrics=["mae", "f1"], device="cpu")


def test_generator_without_steps_per_epoch_is_refused():
    trainer = make_trainer()

    def batches():
        while True:
            yield torch.zeros(2, 4), torch.zeros(2, dtype=torch.long)

    with pytest.raises(ValueError, match="steps_per_epoch .* is required when x is a generator without a length"):
        trainer.fit(batches(), verbose=0)


def test_sample_weight_needs_a_loss_with_per_sample_values():
    net = torch.nn.Linear(4, 1)
    trainer = Trainer(
        net, torch.optim.SGD(net.parameters(), lr=0.1), loss=lambda p, t: ((p - t) ** 2).mean(), device="cpu"
    )
    with pytest.raises(ValueError, match="cannot weight it"):
        trainer.fit(np.zeros((4, 4), np.float32), np.zeros((4, 1), np.float32), sample_weight=np.ones(4), verbose=0)


def test_trainer_checks_module_and_optimizer():
    net = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="module must be a torch.nn.Module"):
        Trainer(object(), torch.optim.SGD(net.parameters(), lr=0.1), loss="mse")
    with pytest.raises(ValueError, match="optimizer must be a torch.optim.Optimizer"):
        Trainer(net, "adam", loss="mse")


def test_device_none_picks_cuda_when_available_else_cpu():
    net = torch.nn.Linear(2, 2)
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse")
    assert trainer.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_user_baselogger_and_progbar_replace_the_default_ones(capsys):
    trainer = make_trainer()
    progbar = ProgbarLogger(count_mode="steps")
    base = BaseLogger()
    history = trainer.fit(*make_data(8), batch_size=4, epochs=1, verbose=1, callbacks=[base, progbar])
    out = capsys.readouterr().out
    assert out.count("Epoch 1/1") == 1
    assert "2/2 [" in out  # counted in steps
    assert "loss" in history.history


def test_on_train_error_receives_the_error_and_on_train_end_does_not_run():
    seen = []

    class Boom(Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyError("boom")

    class Watch(Callback):
        def on_train_error(self, error):
            seen.append(("error", repr(error)))

        def on_train_end(self, logs=None):
            seen.append(("end",))

    with pytest.raises(KeyError, match="boom"):
        make_trainer().fit(*make_data(8), epochs=2, verbose=0, callbacks=[Boom(), Watch()])
    assert seen == [("error", "KeyError('boom')")]


def test_verbose_true_and_false_are_1_and_0(capsys):
    trainer = make_trainer()
    x, y = make_data(8)
    trainer.fit(x, y, epochs=1, verbose=False)
    trainer.evaluate(x, y, verbose=False)
    trainer.predict(x, verbose=False)
    assert capsys.readouterr().out == ""
    trainer.fit(x, y, epochs=1, verbose=True)
    trainer.evaluate(x, y, verbose=True)
    out = capsys.readouterr().out
    assert "Epoch 1/1" in out and out.count("8/8 [") == 1 and "1/1 [" in out  # fit counts samples, evaluate steps


def test_integer_inputs_are_cast_to_floats_for_a_float_module():
    x = np.random.randint(0, 5, (16, 4))
    y = np.random.randint(0, 2, 16)
    as_ints, as_floats = make_trainer(), make_trainer()
    as_floats.module.load_state_dict(as_ints.module.state_dict())
    for trainer, inputs in ((as_ints, x), (as_floats, x.astype(np.float32))):
        torch.manual_seed(3)
        trainer.fit(inputs, y, batch_size=4, epochs=2, verbose=0)
    assert all(torch.equal(a, b) for a, b in zip(as_ints.module.parameters(), as_floats.module.parameters()))
    assert as_ints.predict(x).dtype == torch.float32 and as_ints.evaluate(x, y, verbose=0)[0] >= 0


def test_a_module_that_embeds_indices_keeps_integer_inputs():
    net = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Flatten(), torch.nn.Linear(12, 2))
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="sparse_categorical_crossentropy")
    history = trainer.fit(np.random.randint(0, 10, (8, 3)), np.random.randint(0, 2, 8), epochs=1, verbose=0)
    assert len(history.history["loss"]) == 1


@pytest.mark.parametrize(
    "loss, y, message",
    [
        (
            "mse",
            np.zeros((16, 3), np.float32),
            "y of shape (16, 3) does not fit the module's outputs of shape (16, 10) under loss 'mse'",
        ),
        (
            "categorical_crossentropy",
            np.zeros(16, np.int64),
            "y of shape (16,) does not fit the module's outputs of shape (16, 10) under loss 'categorical_crossentropy'",
        ),
        ("sparse_categorical_crossentropy", np.zeros((16, 10), np.float32), "y of shape (16, 10) does not fit"),
    ],
)
def test_targets_that_cannot_fit_the_outputs_fail_at_the_first_batch_before_any_step(loss, y, message):
    trainer = make_trainer(classes=10, metrics=(), loss=loss)
    before = [p.detach().clone() for p in trainer.module.parameters()]
    rec = Recorder()
    with pytest.raises(ValueError) as error:
        trainer.fit(np.zeros((16, 4), np.float32), y, verbose=0, callbacks=[rec])
    assert message in str(error.value)
    assert [call[0] for call in rec.calls] == ["on_train_begin", "on_epoch_begin", "on_train_batch_begin"]
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.module.parameters()))


def test_targets_that_fit_pass_the_check():
    for loss, y in [
        ("mse", np.zeros(16, np.float32)),  # (16,) targets for (16, 1) outputs
        ("binary_crossentropy", np.zeros((16, 1), np.float32)),
    ]:
        make_trainer(classes=1, metrics=(), loss=loss).fit(np.zeros((16, 4), np.float32), y, verbose=0)
    onehot = np.eye(10, dtype=np.float32)[np.random.randint(0, 10, 16)]
    make_trainer(classes=10, metrics=(), loss="categorical_crossentropy").fit(
        np.zeros((16, 4), np.float32), onehot, verbose=0
    )
    make_trainer(classes=10, metrics=(), loss="sparse_categorical_crossentropy").fit(
        np.zeros((16, 4), np.float32), np.zeros((16, 1), np.int64), verbose=0
    )


class _ForwardCounter:
    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.calls += 1


@pytest.mark.parametrize("loss", ["sparse_categorical_crossentropy", "mse"])
def test_fit_calls_the_module_once_per_trained_and_validation_batch(loss):
    trainer = make_trainer(metrics=(), loss=loss)
    counter = _ForwardCounter(trainer.module)
    x, y = make_data(10)
    y = y if loss != "mse" else np.eye(2, dtype=np.float32)[y]
    rec = Recorder()
    trainer.fit(x, y, batch_size=4, epochs=2, verbose=0, validation_data=(x[:6], y[:6]), callbacks=[rec])
    assert counter.calls == rec.count("on_train_batch_end") + rec.count("on_test_batch_end") == 3 * 2 + 2 * 2


def test_negative_labels_under_a_sparse_loss_are_refused_before_any_hook_or_file(tmp_path):
    from torchcb.callbacks import CSVLogger

    trainer = make_trainer()
    counter = _ForwardCounter(trainer.module)
    x, y = make_data(10)
    y[7] = -1
    rec = Recorder()
    with pytest.raises(ValueError, match="y holds the negative label -1; loss 'sparse_categorical_crossentropy'"):
        trainer.fit(x, y, verbose=0, callbacks=[rec, CSVLogger(str(tmp_path / "log.csv"))])
    with pytest.raises(ValueError, match="validation y holds the negative label -3"):
        trainer.fit(*make_data(10), verbose=0, validation_data=(x[:2], np.array([0, -3])), callbacks=[rec])
    assert rec.calls == [] and counter.calls == 0 and list(tmp_path.iterdir()) == []


def test_dict_inputs_with_keys_forward_does_not_take_are_refused_before_any_hook_or_file(tmp_path):
    from torchcb.callbacks import CSVLogger

    class Masked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 2)

        def forward(self, image, mask=None):
            return self.linear(image if mask is None else image * mask)

    net = Masked()
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="sparse_categorical_crossentropy")
    counter = _ForwardCounter(net)
    x, y = make_data(8)
    rec = Recorder()
    with pytest.raises(ValueError, match=r"x has the key 'maks', which the module's forward\(image, mask=None\)"):
        trainer.fit({"image": x, "maks": x}, y, verbose=0, callbacks=[rec, CSVLogger(str(tmp_path / "log.csv"))])
    with pytest.raises(ValueError, match="validation x has no key 'image', which the module's forward"):
        trainer.fit({"image": x}, y, verbose=0, validation_data=({"mask": x}, y), callbacks=[rec])
    assert rec.calls == [] and counter.calls == 0 and list(tmp_path.iterdir()) == []
    assert len(trainer.fit({"image": x, "mask": x}, y, verbose=0).history["loss"]) == 1


def test_labels_past_the_class_count_raise_a_value_error_naming_y_the_label_and_the_classes():
    trainer = make_trainer(classes=3, metrics=())
    before = [p.detach().clone() for p in trainer.module.parameters()]
    x, y = make_data(10, classes=3)
    y[9] = 3  # in the last batch: the check covers every label of the data at the first batch
    expected = r"y holds the label 3, but the module has 3 outputs \(classes 0 to 2\)"
    with pytest.raises(ValueError, match=expected):
        trainer.fit(x, y, batch_size=4, verbose=0)
    with pytest.raises(ValueError, match="validation " + expected.replace("3,", "5,")):
        trainer.fit(x[:8], y[:8], batch_size=4, verbose=0, validation_data=(x[:2], np.array([0, 5])))
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.module.parameters()))


def test_evaluate_refuses_bad_labels_as_fit_does_negative_ones_before_any_hook():
    trainer = make_trainer(classes=3, metrics=("accuracy",))
    counter = _ForwardCounter(trainer.module)
    x, y = make_data(10, classes=3)
    rec = Recorder()
    y[7] = -1
    with pytest.raises(ValueError, match="y holds the negative label -1; loss 'sparse_categorical_crossentropy'"):
        trainer.evaluate(x, y, verbose=0, callbacks=[rec])
    assert rec.calls == [] and counter.calls == 0
    y[7], y[9] = 0, 7  # in the last batch: every label of the data is checked at the first batch
    with pytest.raises(ValueError, match=r"y holds the label 7, but the module has 3 outputs \(classes 0 to 2\)"):
        trainer.evaluate(x, y, batch_size=4, verbose=0, callbacks=[rec])
    assert [call[0] for call in rec.calls] == ["on_test_begin", "on_test_batch_begin"] and counter.calls == 1
    y[9] = 2
    assert set(trainer.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)) == {"loss", "accuracy"}


def test_evaluate_refuses_targets_that_cannot_fit_the_outputs_at_its_first_batch():
    trainer = make_trainer(classes=3, metrics=(), loss="mse")
    counter = _ForwardCounter(trainer.module)
    rec = Recorder()
    with pytest.raises(ValueError) as error:
        trainer.evaluate(np.zeros((16, 4), np.float32), np.zeros((16, 5)), verbose=0, callbacks=[rec])
    assert "y of shape (16, 5) does not fit the module's outputs of shape (16, 3) under loss 'mse'" in str(error.value)
    assert [call[0] for call in rec.calls] == ["on_test_begin", "on_test_batch_begin"] and counter.calls == 1


def test_evaluate_matches_rank_1_targets_to_the_outputs_as_keras_and_fit_do():
    trainer = make_trainer(classes=10, metrics=("mae",), loss="mse")
    x = np.random.rand(5, 4).astype(np.float32)
    with pytest.warns(UserWarning, match=r"y of shape \(5,\) is matched to the module's outputs of shape \(5, 10\)"):
        flat = trainer.evaluate(x, np.ones(5, np.float32), verbose=0, return_dict=True)
    assert flat == trainer.evaluate(x, np.ones((5, 10), np.float32), verbose=0, return_dict=True)


def test_validation_inside_fit_is_checked_once_by_fit_not_again_by_the_test_loop():
    trainer = make_trainer(classes=10, metrics=(), loss="mse")
    counter = _ForwardCounter(trainer.module)
    x, y = np.random.rand(8, 4).astype(np.float32), np.zeros(8, np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(x, y, batch_size=4, epochs=2, verbose=0, validation_data=(x, y))
    assert [str(w.message).split(" is matched")[0] for w in caught] == ["y of shape (8,)"]
    assert counter.calls == 2 * 2 + 2 * 2  # trained and validation batches, nothing more


def _batchnorm_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2)
    )


def _modes(module):
    return [m.training for m in module.modules()]


def test_a_frozen_batchnorm_keeps_its_eval_mode_and_running_stats_through_fit():
    net = _batchnorm_net()
    net[1].eval()  # frozen, as when fine-tuning a pretrained backbone
    stats = {k: v.clone() for k, v in net[1].named_buffers()}  # running mean, variance, batch count
    seen = []
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="sparse_categorical_crossentropy")
    probe = Callback()
    probe.on_train_batch_begin = lambda batch, logs=None: seen.append(_modes(net))
    x, y = make_data(16)
    trainer.fit(x, y, batch_size=4, epochs=3, verbose=0, validation_data=make_data(8), callbacks=[probe])
    assert seen == [[True, True, False, True, True]] * 12  # training mode, but for the frozen BatchNorm
    assert all(torch.equal(stats[k], v) for k, v in net[1].named_buffers())
    assert _modes(net) == [True, True, False, True, True]


def test_fit_evaluate_and_predict_put_every_submodule_mode_back_also_when_a_callback_raises():
    net = _batchnorm_net()
    net[1].eval()
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="sparse_categorical_crossentropy")
    x, y = make_data(8)
    frozen = _modes(net)
    trainer.fit(x, y, epochs=1, verbose=0, validation_data=(x, y))
    trainer.evaluate(x, y, verbose=0)
    trainer.predict(x)
    assert _modes(net) == frozen

    class Boom(Callback):
        def __init__(self, hook):
            super().__init__()
            setattr(self, hook, self.boom)

        def boom(self, *args, **kwargs):
            raise RuntimeError("boom")

    for call, hook in [
        (
            lambda cb: trainer.fit(x, y, epochs=1, verbose=0, validation_data=(x, y), callbacks=[cb]),
            "on_test_batch_end",
        ),
        (lambda cb: trainer.fit(x, y, epochs=1, verbose=0, callbacks=[cb]), "on_train_batch_end"),
        (lambda cb: trainer.evaluate(x, y, verbose=0, callbacks=[cb]), "on_test_batch_end"),
        (lambda cb: trainer.predict(x, callbacks=[cb]), "on_predict_batch_end"),
    ]:
        with pytest.raises(RuntimeError, match="boom"):
            call(Boom(hook))
        assert _modes(net) == frozen, hook


def test_a_module_in_eval_mode_trains_in_training_mode_and_goes_back_to_eval():
    net = _batchnorm_net().eval()
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="sparse_categorical_crossentropy")
    seen = []
    probe = Callback()
    probe.on_train_batch_begin = lambda batch, logs=None: seen.append(_modes(net))
    trainer.fit(*make_data(8), batch_size=4, epochs=2, verbose=0, validation_data=make_data(4), callbacks=[probe])
    assert seen == [[True] * 5] * 4
    assert _modes(net) == [False] * 5


class _Doubler(torch.nn.Module):
    """A module with no parameter at all."""

    def forward(self, x):
        return x[:, :2] * 2


_CLIPPING = [
    {},
    {"clipnorm": 1.0},
    {"clipvalue": 0.5},
    {"global_clipnorm": 1.0},
    {"accumulate_steps": 2, "clipvalue": 0.5},
]


@pytest.mark.parametrize("options", _CLIPPING)
@pytest.mark.parametrize("frozen", ["parameters frozen", "no parameter"])
def test_a_module_with_nothing_to_train_fits_runs_its_hooks_and_steps_nothing(frozen, options):
    if frozen == "no parameter":
        net = _Doubler()
        weights = [torch.nn.Parameter(torch.ones(3))]  # the optimizer holds a parameter the module never uses
    else:
        net = torch.nn.Linear(4, 2).requires_grad_(False)
        weights = list(net.parameters())
    before = [w.detach().clone() for w in weights]
    trainer = Trainer(
        net, torch.optim.SGD(weights, lr=0.1, momentum=0.9), loss="sparse_categorical_crossentropy",
        metrics=["accuracy"], **options,
    )  # fmt: skip
    rec = Recorder()
    x, y = make_data(10)
    with pytest.warns(UserWarning, match="The module has no trainable parameter"):
        history = trainer.fit(x, y, batch_size=4, epochs=2, verbose=0, validation_data=(x, y), callbacks=[rec])
    expected = trainer.evaluate(x, y, verbose=0, return_dict=True)
    assert history.history["val_loss"] == pytest.approx([expected["loss"]] * 2)
    assert len(history.history["loss"]) == 2 and all(np.isfinite(history.history["loss"]))
    assert rec.count("on_train_batch_end") == 6 and rec.count("on_epoch_end") == 2
    assert all(torch.equal(a, b) for a, b in zip(before, weights))


@pytest.mark.parametrize("options", _CLIPPING)
def test_an_optimizer_over_frozen_parameters_only_steps_nothing_with_any_clipping(options):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    net[0].requires_grad_(False)  # the module trains net[1], but the optimizer holds net[0] only
    before = [p.detach().clone() for p in net.parameters()]
    trainer = Trainer(net, torch.optim.SGD(net[0].parameters(), lr=0.1, momentum=0.9), loss="mse", **options)
    history = trainer.fit(
        np.random.rand(8, 4).astype(np.float32), np.zeros((8, 2), np.float32), batch_size=4, epochs=2, verbose=0
    )
    assert len(history.history["loss"]) == 2
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_a_callback_keeps_its_own_validation_data_when_fit_has_none():
    x_val, y_val = make_data(4)
    seen = []

    class F1(Callback):  # as tf.keras-era callbacks are written
        def __init__(self, validation_data):
            super().__init__()
            self.validation_data = validation_data

        def on_batch_end(self, batch, logs=None):
            seen.append(len(self.validation_data[0]))

    callback = F1((x_val, y_val))
    trainer = make_trainer()
    trainer.fit(*make_data(8), batch_size=4, epochs=1, verbose=0, callbacks=[callback])
    assert seen == [4, 4] and callback.validation_data[0] is x_val
    trainer.fit(*make_data(8), batch_size=4, epochs=1, verbose=0, callbacks=[callback], validation_data=make_data(6))
    assert seen[2:] == [6, 6] and len(callback.validation_data) == 3  # K2 layout: x, y, sample weights
    plain = Callback()
    trainer.fit(*make_data(8), epochs=1, verbose=0, callbacks=[plain], validation_data=make_data(6))
    trainer.fit(*make_data(8), epochs=1, verbose=0, callbacks=[plain])
    assert plain.validation_data is None  # the arrays an earlier fit gave are taken back
