from tests.conftest import make_data, make_trainer
from torchcb.callbacks import Callback


def test_on_batch_hooks_alias_the_train_batch_hooks_only():
    calls = []

    class Old(Callback):
        def on_batch_begin(self, batch, logs=None):
            calls.append(("begin", batch))

        def on_batch_end(self, batch, logs=None):
            calls.append(("end", batch))

    trainer = make_trainer()
    x, y = make_data(4)
    trainer.fit(x, y, batch_size=2, epochs=1, verbose=0, validation_data=(x, y), callbacks=[Old()])
    trainer.evaluate(x, y, batch_size=2, verbose=0, callbacks=[Old()])
    assert calls == [("begin", 0), ("end", 0), ("begin", 1), ("end", 1)]
