import json

from tests.conftest import make_data, make_trainer
from torchcb.callbacks import LambdaCallback


def test_every_keras_name_and_any_hook_by_keyword(tmp_path):
    calls = []
    callback = LambdaCallback(
        on_epoch_begin=lambda epoch, logs: calls.append(("epoch_begin", epoch)),
        on_epoch_end=lambda epoch, logs: calls.append(("epoch_end", epoch, sorted(logs))),
        on_batch_begin=lambda batch, logs: calls.append(("batch_begin", batch)),
        on_batch_end=lambda batch, logs: calls.append(("batch_end", batch)),
        on_train_begin=lambda logs: calls.append(("train_begin",)),
        on_train_end=lambda logs: calls.append(("train_end",)),
        on_test_begin=lambda logs: calls.append(("test_begin",)),
        on_predict_begin=lambda logs: calls.append(("predict_begin",)),
        custom_method=len,
    )
    trainer = make_trainer()
    x, y = make_data(4)
    trainer.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=[callback])
    assert calls == [
        ("train_begin",),
        ("epoch_begin", 0),
        ("batch_begin", 0),
        ("batch_end", 0),
        ("batch_begin", 1),
        ("batch_end", 1),
        ("epoch_end", 0, ["accuracy", "loss"]),
        ("train_end",),
    ]
    calls.clear()
    trainer.evaluate(x, y, verbose=0, callbacks=[callback])
    trainer.predict(x, callbacks=[callback])
    assert calls == [("test_begin",), ("predict_begin",)]
    assert callback.custom_method is len


def test_keras3_train_batch_names():
    seen = []
    callback = LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(logs["size"]))
    make_trainer().fit(*make_data(6), batch_size=4, epochs=1, verbose=0, callbacks=[callback])
    assert sorted(seen) == [2, 4]


def test_seed_json_lines_example(tmp_path):
    path = tmp_path / "loss_log.json"
    json_log = open(path, mode="w", buffering=1)
    json_logging_callback = LambdaCallback(
        on_epoch_end=lambda epoch, logs: json_log.write(json.dumps({"epoch": epoch, "loss": logs["loss"]}) + "\n"),
        on_train_end=lambda logs: json_log.close(),
    )
    history = make_trainer().fit(*make_data(8), epochs=3, verbose=0, callbacks=[json_logging_callback])
    assert json_log.closed
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [{"epoch": e, "loss": loss} for e, loss in enumerate(history.history["loss"])]
