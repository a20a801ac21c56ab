import csv

import numpy as np
import pytest

from tests.conftest import KerasStub, make_data, make_trainer
from torchcb.callbacks import Callback, CSVLogger, TerminateOnNaN


def _rows(path, sep=","):
    with open(path, newline="") as f:
        return list(csv.reader(f, delimiter=sep))


def test_rows_equal_history_with_sorted_columns(tmp_path):
    path = tmp_path / "runs" / "log.csv"
    history = make_trainer().fit(
        *make_data(12), epochs=3, verbose=0, validation_split=0.25, callbacks=[CSVLogger(path)]
    )
    rows = _rows(path)
    assert rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    for epoch, row in enumerate(rows[1:]):
        assert row[0] == str(epoch)
        for key, cell in zip(rows[0][1:], row[1:]):
            assert float(cell) == history.history[key][epoch]
    assert path.read_bytes().count(b"\r\n") == 4  # csv.excel line endings, as Keras writes them


def test_no_val_columns_without_validation(tmp_path):
    path = tmp_path / "log.csv"
    make_trainer().fit(*make_data(8), epochs=1, verbose=0, callbacks=[CSVLogger(path)])
    assert _rows(path)[0] == ["epoch", "accuracy", "loss"]


def test_val_columns_from_the_start_and_na_with_validation_freq(tmp_path):
    path = tmp_path / "log.csv"
    make_trainer().fit(
        *make_data(8), epochs=2, verbose=0, validation_data=make_data(4), validation_freq=2, callbacks=[CSVLogger(path)]
    )
    rows = _rows(path)
    assert rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert rows[1][3:] == ["NA", "NA"] and rows[2][3] != "NA"


def test_append_writes_no_second_header_and_continues(tmp_path):
    path = tmp_path / "log.csv"
    trainer = make_trainer()
    x, y = make_data(8)
    trainer.fit(x, y, epochs=2, verbose=0, callbacks=[CSVLogger(path)])
    trainer.fit(x, y, epochs=4, initial_epoch=2, verbose=0, callbacks=[CSVLogger(path, append=True)])
    rows = _rows(path)
    assert [row[0] for row in rows] == ["epoch", "0", "1", "2", "3"]
    trainer.fit(x, y, epochs=1, verbose=0, callbacks=[CSVLogger(path)])
    assert [row[0] for row in _rows(path)] == ["epoch", "0"]  # without append the file starts afresh


def test_separator_and_iterables_and_missing_keys_written_as_keras_does(tmp_path):
    path = tmp_path / "log.tsv"
    logger = CSVLogger(path, separator="\t")
    logger.set_model(KerasStub())
    logger.on_train_begin({})
    logger.on_epoch_end(0, {"loss": 0.5, "vec": np.array([1, 2]), "name": "a"})
    logger.on_epoch_end(1, {"loss": 0.25, "extra": 1.0})
    logger.on_train_end({})
    text = path.read_text()
    assert text.splitlines()[0] == "epoch\tloss\tname\tvec"
    assert text.splitlines()[1] == '0\t0.5\ta\t"""[1, 2]"""'
    assert text.splitlines()[2] == "1\t0.25\tNA\tNA"


def test_each_row_is_on_disk_at_epoch_end(tmp_path):
    path = tmp_path / "log.csv"
    seen = []

    class ReadBack(Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(len(_rows(path)))

    make_trainer().fit(*make_data(8), epochs=3, verbose=0, callbacks=[CSVLogger(path), ReadBack()])
    assert seen == [2, 3, 4]


def test_rows_written_before_training_raises_are_kept(tmp_path):
    path = tmp_path / "log.csv"

    class Boom(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        make_trainer().fit(*make_data(8), epochs=5, verbose=0, callbacks=[CSVLogger(path), Boom()])
    assert [row[0] for row in _rows(path)] == ["epoch", "0", "1"]


def test_nan_loss_row_with_terminate_on_nan(tmp_path, capsys):
    import torch

    from torchcb import Trainer

    net = torch.nn.Linear(1, 1)
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=1e30), loss="mse", device="cpu")
    x = np.full((8, 1), 1e10, dtype=np.float32)
    path = tmp_path / "log.csv"
    trainer.fit(x, x, batch_size=2, epochs=3, verbose=0, callbacks=[TerminateOnNaN(), CSVLogger(path)])
    rows = _rows(path)
    assert rows[0] == ["epoch", "loss"] and len(rows) == 2


def test_append_with_a_resume_keeps_the_rows_of_earlier_runs(tmp_path):
    from torchcb.callbacks import BackupAndRestore

    path, x, y = tmp_path / "log.csv", *make_data(16)

    class CrashAt(Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("crash")

    make_trainer().fit(x, y, batch_size=4, epochs=4, verbose=0, callbacks=[CSVLogger(path, append=True)])
    backup = BackupAndRestore(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="crash"):  # rows 0, 1 and 2 of the second run are written
        make_trainer().fit(
            x, y, batch_size=4, epochs=4, verbose=0, callbacks=[CSVLogger(path, append=True), backup, CrashAt()]
        )
    make_trainer().fit(x, y, batch_size=4, epochs=4, verbose=0, callbacks=[CSVLogger(path, append=True), backup])
    rows = _rows(path)
    assert rows[0] == ["epoch", "accuracy", "loss"]
    assert [row[0] for row in rows[1:]] == ["0", "1", "2", "3"] * 2  # the first run whole, the second once
