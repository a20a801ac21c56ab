import pytest

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
