import pytest
import torch

from tests.conftest import make_trainer
from torchcb import Trainer
from torchcb.losses import resolve_loss
from torchcb.metrics import resolve_metrics


def _metric(name, loss="mse"):
    (metric,) = resolve_metrics([name], resolve_loss(loss))
    return metric


def test_accuracy_picks_sparse_categorical_or_binary_from_the_shapes():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [2.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 0, 0])
    acc = _metric("accuracy", "sparse_categorical_crossentropy")
    assert float(acc(logits, labels)) == 0.75
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    assert float(_metric("acc", "categorical_crossentropy")(logits, one_hot)) == 0.75
    # binary on logits: threshold 0
    binary = _metric("accuracy", "binary_crossentropy")
    assert float(binary(torch.tensor([[1.0], [-1.0], [0.5]]), torch.tensor([[1.0], [1.0], [1.0]]))) == pytest.approx(
        2 / 3
    )
    # binary on probabilities: threshold 0.5
    probabilities = _metric("accuracy", torch.nn.BCELoss())
    assert float(probabilities(torch.tensor([[0.9], [0.4]]), torch.tensor([[1.0], [1.0]]))) == 0.5


def test_named_metrics():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    labels = torch.tensor([1, 2])
    assert float(_metric("sparse_categorical_accuracy")(logits, labels)) == 0.5
    assert float(_metric("categorical_accuracy")(logits, torch.nn.functional.one_hot(labels, 3))) == 0.5
    top_k = _metric("top_k_categorical_accuracy")
    assert float(top_k(logits, labels)) == 1.0
    assert float(_metric("binary_accuracy")(torch.tensor([0.7, 0.2]), torch.tensor([1.0, 1.0]))) == 0.5
    assert float(_metric("mse")(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]))) == 5.0
    assert float(_metric("mae")(torch.tensor([1.0, -3.0]), torch.tensor([0.0, 0.0]))) == 2.0


@pytest.mark.parametrize(
    "name, torch_loss, target",
    [
        ("mse", torch.nn.functional.mse_loss, torch.randn(4, 3)),
        ("mae", torch.nn.functional.l1_loss, torch.randn(4, 3)),
        (
            "binary_crossentropy",
            torch.nn.functional.binary_cross_entropy_with_logits,
            torch.randint(0, 2, (4, 3)).float(),
        ),
        ("categorical_crossentropy", torch.nn.functional.cross_entropy, torch.softmax(torch.randn(4, 3), -1)),
        ("sparse_categorical_crossentropy", torch.nn.functional.cross_entropy, torch.randint(0, 3, (4,))),
    ],
)
def test_keras_loss_names_map_to_torch_losses_on_logits(name, torch_loss, target):
    logits = torch.randn(4, 3)
    loss = resolve_loss(name)
    assert float(loss(logits, target)) == pytest.approx(float(torch_loss(logits, target)), rel=1e-6)
    assert loss.per_sample(logits, target).shape == (4,)
    assert float(loss.per_sample(logits, target).mean()) == pytest.approx(float(loss(logits, target)), rel=1e-6)


def test_a_sparse_loss_over_one_tensor_of_integer_labels_is_cross_entropy_itself():
    loss = resolve_loss("sparse_categorical_crossentropy")
    logits = torch.randn(6, 3)
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    assert loss.for_targets(labels) is torch.nn.functional.cross_entropy  # nothing to convert: no check a batch
    # labels that need converting, (N, 1) or int32, keep the function that converts them
    for other in (labels[:, None], labels.int(), labels.numpy()):
        assert loss.for_targets(other) is loss.fn
        assert float(loss.for_targets(other)(logits, torch.as_tensor(other))) == pytest.approx(
            float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-6
        )
    assert resolve_loss("mse").for_targets(torch.zeros(6, 3)) is resolve_loss("mse").fn


def test_torch_loss_modules_and_callables():
    module = resolve_loss(torch.nn.CrossEntropyLoss())
    logits, labels = torch.randn(5, 3), torch.randint(0, 3, (5,))
    assert module.per_sample(logits, labels).shape == (5,)
    plain = resolve_loss(lambda p, t: (p - t).abs().mean())
    assert not plain.supports_weights


def test_callable_metric_named_after_the_function():
    def error_rate(y_pred, y_true):
        return (y_pred.argmax(-1) != y_true).float().mean()

    trainer = make_trainer(metrics=[error_rate, "accuracy"])
    history = trainer.fit(torch.randn(16, 4), torch.randint(0, 2, (16,)), epochs=1, verbose=0, batch_size=16)
    assert history.history["error_rate"][0] == pytest.approx(1 - history.history["accuracy"][0])


class RunningMax:
    """A stateful metric: the largest output seen since reset."""

    higher_is_better = True

    def __init__(self):
        self.reset()

    def update(self, y_pred, y_true):
        self.value = max(self.value, float(y_pred.max()))

    def compute(self):
        return torch.tensor(self.value)

    def reset(self):
        self.value = float("-inf")


def test_stateful_metric_logs_its_running_value_not_an_average():
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.ones_(net.weight)
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.0), loss="mse", metrics=[RunningMax()], device="cpu")
    x = torch.tensor([[1.0], [5.0], [2.0], [3.0]])
    history = trainer.fit(x, torch.zeros(4, 1), batch_size=1, shuffle=False, epochs=1, verbose=0)
    assert history.history["running_max"] == [5.0]  # the running value at the end, not the mean of 1, 5, 5, 5
    assert trainer.model.metrics[0].higher_is_better is True


def test_torchmetrics_metric_works():
    torchmetrics = pytest.importorskip("torchmetrics")
    metric = torchmetrics.classification.MulticlassAccuracy(num_classes=2, average="micro")
    trainer = make_trainer(metrics=[metric, "accuracy"])
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    history = trainer.fit(x, y, batch_size=8, epochs=1, verbose=0, validation_data=(x, y))
    assert history.history["val_multiclass_accuracy"][0] == pytest.approx(history.history["val_accuracy"][0])


def test_duplicate_metric_names_are_refused():
    with pytest.raises(ValueError, match="mse appears twice"):
        make_trainer(metrics=["mse", "mse"])


@pytest.mark.parametrize(
    "name, torch_loss",
    [
        ("mse", torch.nn.functional.mse_loss),
        ("mae", torch.nn.functional.l1_loss),
        ("binary_crossentropy", torch.nn.functional.binary_cross_entropy_with_logits),
    ],
)
def test_element_wise_losses_expand_rank_1_targets_and_broadcast_them_as_tf_keras(name, torch_loss):
    logits, target = torch.randn(4, 3), torch.randint(0, 2, (4,)).float()
    broadcast = target[:, None].expand(4, 3)  # tf.keras: (4,) -> (4, 1), then broadcast against (4, 3)
    loss = resolve_loss(name)
    assert float(loss(logits, target)) == pytest.approx(float(torch_loss(logits, broadcast)), rel=1e-6)
    per_sample = torch_loss(logits, broadcast, reduction="none").mean(dim=1)
    assert torch.allclose(loss.per_sample(logits, target), per_sample)
    wide = torch.randint(0, 2, (4, 3)).float()  # outputs of one column against three: both broadcast
    assert float(loss(logits[:, :1], wide)) == pytest.approx(float(torch_loss(logits[:, :1].expand(4, 3), wide)))
    metric = _metric("mse" if name != "binary_crossentropy" else "binary_accuracy")
    assert metric(logits, target).shape == ()


def test_target_check_takes_what_keras_broadcasts_and_refuses_what_keras_refuses():
    from torchcb.losses import target_broadcast, target_mismatch

    outputs = torch.zeros(2, 10)
    for loss in ("mse", "mae", "binary_crossentropy"):
        assert target_mismatch(loss, outputs, torch.zeros(2), samples=5) is None
        assert target_mismatch(loss, torch.zeros(2, 4, 1), torch.zeros(2, 4, 3), samples=5) is None
        assert "y of shape (5, 3) does not fit" in target_mismatch(loss, outputs, torch.zeros(2, 3), samples=5)
        assert "y of shape (5, 2, 10) does not fit" in target_mismatch(loss, outputs, torch.zeros(2, 2, 10), samples=5)
    assert target_broadcast("mse", torch.zeros(2, 4, 1), torch.zeros(2, 4, 3), samples=5) == (
        "y of shape (5, 4, 3) is matched to the module's outputs of shape (5, 4, 1) as Keras matches them under loss "
        "'mse': broadcast to (5, 4, 3)."
    )
    assert target_broadcast("mse", outputs, torch.zeros(2, 10), samples=5) is None
    assert "y of shape (5,) does not fit" in target_mismatch("categorical_crossentropy", outputs, torch.zeros(2), 5)


class CountingMean:
    """A stateful metric that counts its compute() calls."""

    def __init__(self):
        self.computes = 0
        self.reset()

    def update(self, y_pred, y_true):
        self.total += float(y_pred.sum())
        self.count += y_pred.numel()

    def compute(self):
        self.computes += 1
        return torch.tensor(self.total / max(self.count, 1))

    def reset(self):
        self.total, self.count = 0.0, 0


def _count_computes(callbacks, validation):
    from torchcb import Trainer

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    metric = CountingMean()
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="mse", metrics=[metric], device="cpu")
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    history = trainer.fit(
        x, y, batch_size=8, epochs=2, verbose=0, callbacks=callbacks, validation_split=0.25 if validation else 0.0
    )
    return metric.computes, history


def test_a_stateful_metric_computes_once_per_logging_point_not_every_batch():
    from torchcb.callbacks import LambdaCallback

    computes, _ = _count_computes([], validation=False)
    assert computes == 2  # one an epoch end: 4 batches an epoch
    computes, history = _count_computes([], validation=True)
    assert computes == 4  # and one at each validation end (3 training batches, 1 validation batch)
    seen = []
    computes, _ = _count_computes(
        [LambdaCallback(on_batch_end=lambda b, logs: seen.append(logs["counting_mean"]))], False
    )
    assert computes == 2 + 8 and len(seen) == 8  # and one for each batch a callback is handed logs of


def test_the_epoch_value_of_a_stateful_metric_is_its_training_value_before_validation():
    from torchcb.callbacks import LambdaCallback

    _, lazy = _count_computes([], validation=True)
    # every batch computed (a batch hook asks for logs): the values Keras logs
    _, eager = _count_computes([LambdaCallback(on_batch_end=lambda b, logs: None)], validation=True)
    assert lazy.history["counting_mean"] == eager.history["counting_mean"]
    assert lazy.history["val_counting_mean"] == eager.history["val_counting_mean"]
    assert lazy.history["counting_mean"] != lazy.history["val_counting_mean"]
