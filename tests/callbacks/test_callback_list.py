import pytest
import torch

from torchcb.callbacks import Callback, CallbackList


def test_overriding_the_train_batch_hook_hides_the_alias_unless_super_is_called():
    calls = []

    class New(Callback):
        def on_train_batch_end(self, batch, logs=None):
            calls.append("train_batch_end")

        def on_batch_end(self, batch, logs=None):
            calls.append("batch_end")

    class NewWithSuper(Callback):
        def on_train_batch_end(self, batch, logs=None):
            calls.append("train_batch_end")
            super().on_train_batch_end(batch, logs)

        def on_batch_end(self, batch, logs=None):
            calls.append("batch_end")

    callbacks = CallbackList([New()])
    callbacks.on_train_batch_end(0, {})
    assert calls == ["train_batch_end"]
    calls.clear()
    CallbackList([NewWithSuper()]).on_batch_end(0, {})
    assert calls == ["train_batch_end", "batch_end"]


def test_callback_list_api():
    class A(Callback):
        pass

    a, b = A(), A()
    callbacks = CallbackList([a])
    callbacks.append(b)
    assert list(callbacks) == [a, b] and len(callbacks) == 2
    callbacks.set_params({"epochs": 3})
    callbacks.set_model("model")
    assert a.params == {"epochs": 3} and b.model == "model"


def test_callback_list_passes_dicts_never_none():
    seen = []

    class Spy(Callback):
        def on_train_begin(self, logs=None):
            seen.append(logs)

        def on_epoch_end(self, epoch, logs=None):
            seen.append(logs)

    callbacks = CallbackList([Spy()])
    callbacks.on_train_begin()
    callbacks.on_epoch_end(0)
    assert seen == [{}, {}]


def test_a_hook_set_on_the_instance_is_called():
    seen = []
    callback = Callback()
    callback.on_epoch_end = lambda epoch, logs: seen.append(epoch)
    CallbackList([callback]).on_epoch_end(4, {})
    assert seen == [4]


def test_callback_list_refuses_non_callbacks():
    with pytest.raises(ValueError, match=r"callbacks\[1\] must be a Callback instance, got int"):
        CallbackList([Callback(), 3])


def test_an_empty_callback_list_takes_every_hook():
    callbacks = CallbackList()
    callbacks.on_train_begin()
    callbacks.on_train_batch_end(0, {"loss": 1.0})
    callbacks.on_epoch_end(0)
    assert list(callbacks) == []


def test_queue_length_of_keras_2_is_accepted_with_a_deprecation_warning_and_changes_nothing():
    from torchcb.callbacks import History

    with pytest.warns(DeprecationWarning, match="queue_length is ignored"):
        callbacks = CallbackList([History()], queue_length=10)
    callbacks.on_train_begin()
    callbacks.on_epoch_end(0, {"loss": 0.5})
    assert callbacks.callbacks[0].history == {"loss": [0.5]}
    assert not hasattr(callbacks, "queue_length")


# ----------------------------------------------------------------- the protocol callbacks declare


class _EveryThree(Callback):
    """A new kind of callback: takes training batches three at a time, and single ones otherwise."""

    batch_group_size = 3

    def __init__(self):
        super().__init__()
        self.groups, self.single = [], []

    def on_train_batch_group_end(self, first_batch, outputs):
        self.groups.append((first_batch, [float(values["loss"]) for values in outputs]))

    def on_batch_end(self, batch, logs=None):
        self.single.append(batch)


class _Reads(Callback):
    changes_batch_logs = False  # only looks at the batch logs

    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


class _Rescales(Callback):
    def on_train_batch_end(self, batch, logs=None):
        logs["loss"] = 10 * logs["loss"]


def _run_batches(callbacks, batches=7):
    """Drive ``callbacks`` as fit does: one epoch of ``batches`` training batches whose loss is the index."""
    callback_list = CallbackList(callbacks)
    callback_list.on_train_begin()
    callback_list.on_epoch_begin(0)
    for step in range(batches):
        logs = callback_list.train_batch_begin(step, 2)
        callback_list.train_batch_end(step, 2, {"loss": torch.tensor(float(step))}, logs)
    callback_list.on_epoch_end(0, {})


def test_a_new_callback_that_declares_batch_groups_is_handed_them_and_the_rest_at_the_epoch_end():
    grouped = _EveryThree()
    _run_batches([grouped])
    assert grouped.groups == [(0, [0.0, 1.0, 2.0]), (3, [3.0, 4.0, 5.0]), (6, [6.0])]
    assert grouped.single == []


def test_a_callback_that_only_reads_batch_logs_leaves_the_groups_of_the_callbacks_after_it():
    reads, grouped = _Reads(), _EveryThree()
    _run_batches([reads, grouped])
    assert reads.losses == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert [first for first, _ in grouped.groups] == [0, 3, 6] and grouped.single == []


def test_after_a_callback_that_may_change_the_batch_logs_a_grouping_callback_gets_single_batches():
    grouped = _EveryThree()
    _run_batches([_Rescales(), grouped])
    assert grouped.groups == [] and grouped.single == [0, 1, 2, 3, 4, 5, 6]


def test_a_subclass_overriding_a_batch_hook_is_taken_to_change_the_logs_unless_it_says_otherwise():
    class ReadsAndRescales(_Reads):
        def on_train_batch_end(self, batch, logs=None):
            logs["loss"] = 10 * logs["loss"]

    class ReadsMore(ReadsAndRescales):
        changes_batch_logs = False

        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(float(logs["loss"]))

    grouped = _EveryThree()
    _run_batches([ReadsAndRescales(), grouped])
    assert grouped.single == [0, 1, 2, 3, 4, 5, 6]
    grouped = _EveryThree()
    _run_batches([ReadsMore(), grouped])
    assert grouped.single == [] and len(grouped.groups) == 3


def test_a_callback_that_declines_a_hook_it_has_is_not_called_for_it():
    class OnlyEpochs(_Reads):
        def implements(self, hook):
            return hook != "on_train_batch_end" and super().implements(hook)

        def on_epoch_end(self, epoch, logs=None):
            self.losses.append("epoch")

    only_epochs = OnlyEpochs()
    _run_batches([only_epochs])
    assert only_epochs.losses == ["epoch"]


def test_a_plain_object_with_callback_methods_is_called_for_the_hooks_it_has():
    class Plain:
        def __init__(self):
            self.seen = []

        def set_model(self, model):
            pass

        def set_params(self, params):
            pass

        def on_train_batch_end(self, batch, logs=None):
            self.seen.append((batch, float(logs["loss"])))

    plain = Plain()
    _run_batches([plain], batches=3)
    assert plain.seen == [(0, 0.0), (1, 1.0), (2, 2.0)]


def test_all_ranks_reaches_only_the_callbacks_that_declare_they_take_it():
    class SumsOverRanks(Callback):
        state_takes_all_ranks = True

        def get_state(self, all_ranks=False):
            return {"all_ranks": all_ranks}

    class Counts(Callback):
        def get_state(self):
            return {"count": 1}

    states = CallbackList([SumsOverRanks(), Counts(), Callback()]).states(all_ranks=True)
    assert states == {"SumsOverRanks": {"all_ranks": True}, "Counts": {"count": 1}}


def test_the_callback_list_module_imports_no_concrete_callback():
    import ast
    import pathlib

    import torchcb.callbacks.callback_list as module

    imported = set()
    for node in ast.walk(ast.parse(pathlib.Path(module.__file__).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    callbacks = {name for name in imported if name.startswith("torchcb.callbacks")}
    assert callbacks and all(name.startswith("torchcb.callbacks.base") for name in callbacks), callbacks
