import os

import numpy as np
import pytest
import torch

from tests.conftest import KerasStub, drive, make_data, make_trainer
from torchcb.callbacks import ModelCheckpoint
from torchcb.checkpoint import safe_load


def test_save_best_only_saves_on_improvement_only_with_a_stub():
    model = KerasStub()
    callback = ModelCheckpoint("ckpt-{epoch:02d}.pt", save_best_only=True)
    drive(callback, [1.0, 0.8, 0.9, 0.7, 0.7], model=model)
    assert model.saved == [("save", "ckpt-01.pt"), ("save", "ckpt-02.pt"), ("save", "ckpt-04.pt")]


def test_save_weights_only_calls_save_weights_and_mode_max():
    model = KerasStub()
    callback = ModelCheckpoint("w.pt", monitor="val_accuracy", save_best_only=True, save_weights_only=True)
    drive(callback, [0.5, 0.4, 0.6], "val_accuracy", model=model)
    assert model.saved == [("save_weights", "w.pt"), ("save_weights", "w.pt")]


def test_initial_value_threshold_must_be_beaten():
    model = KerasStub()
    drive(
        ModelCheckpoint("{epoch}.pt", save_best_only=True, initial_value_threshold=0.85), [0.9, 0.8, 0.86], model=model
    )
    assert model.saved == [("save", "2.pt")]


def test_missing_monitor_with_save_best_only_warns_and_does_not_save():
    model = KerasStub()
    with pytest.warns(RuntimeWarning, match="Can save best model only with val_loss available, skipping."):
        drive(ModelCheckpoint("m.pt", save_best_only=True), [None], model=model)
    assert model.saved == []


def test_period_saves_every_n_epochs():
    model = KerasStub()
    drive(ModelCheckpoint("{epoch}.pt", period=2), [1, 1, 1, 1, 1], model=model)
    assert [path for _, path in model.saved] == ["2.pt", "4.pt"]


def test_verbose_messages_as_keras_prints_them(capsys):
    drive(ModelCheckpoint("m.pt", save_best_only=True, verbose=1), [1.0, 2.0])
    drive(ModelCheckpoint("n.pt", verbose=1), [1.0])
    out = capsys.readouterr().out
    assert "\nEpoch 00001: val_loss improved from inf to 1.00000, saving model to m.pt\n" in out
    assert "\nEpoch 00002: val_loss did not improve from 1.00000\n" in out
    assert "\nEpoch 00001: saving model to n.pt\n" in out


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="Unrecognized save_freq: 'batch'"):
        ModelCheckpoint("m.pt", save_freq="batch")
    with pytest.raises(IsADirectoryError, match="Please specify a non-directory filepath for ModelCheckpoint"):
        ModelCheckpoint(tmp_path)
    with pytest.raises(ValueError, match="period must be an int >= 1"):
        ModelCheckpoint("m.pt", period=0)


def test_end_to_end_epoch_files_hold_the_weights_of_that_epoch(tmp_path):
    trainer = make_trainer()
    x, y = make_data(16)
    weights = []

    class Record(ModelCheckpoint):
        def on_epoch_end(self, epoch, logs=None):
            weights.append(self.model.get_weights())
            super().on_epoch_end(epoch, logs)

    path = tmp_path / "ckpt" / "weights.{epoch:02d}-{val_loss:.2f}.pt"
    history = trainer.fit(
        x, y, epochs=3, verbose=0, validation_split=0.25, callbacks=[Record(path, save_weights_only=True)]
    )
    names = sorted(os.listdir(tmp_path / "ckpt"))
    expected = [f"weights.{e + 1:02d}-{v:.2f}.pt" for e, v in enumerate(history.history["val_loss"])]
    assert names == expected
    for name, epoch_weights in zip(names, weights):
        state = safe_load(tmp_path / "ckpt" / name)
        assert all(np.array_equal(t.numpy(), w) for t, w in zip(state.values(), epoch_weights))


def test_end_to_end_full_checkpoint_reloads_into_a_fresh_trainer(tmp_path):
    trainer = make_trainer(lr=0.5)
    x, y = make_data(16)
    path = tmp_path / "best.pt"
    history = trainer.fit(
        x, y, epochs=4, verbose=0, validation_data=(x, y), callbacks=[ModelCheckpoint(path, save_best_only=True)]
    )
    state = safe_load(path)
    assert {"format", "format_version", "module", "optimizer", "epoch", "step", "rng"} <= set(state)
    best_epoch = int(np.argmin(history.history["val_loss"]))
    assert state["epoch"] == best_epoch + 1
    fresh = make_trainer()
    fresh.model.load_weights(path)
    assert fresh.evaluate(x, y, verbose=0)[0] == pytest.approx(min(history.history["val_loss"]), rel=1e-6)
    assert os.listdir(tmp_path) == ["best.pt"]  # no temporary files left


def test_save_freq_in_batches_with_1_based_batch_placeholder(tmp_path):
    trainer = make_trainer()
    x, y = make_data(20)  # 5 batches of 4 per epoch
    callback = ModelCheckpoint(tmp_path / "e{epoch}-b{batch}.pt", save_freq=3, save_weights_only=True)
    trainer.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[callback])
    # batches seen: epoch 1 -> 3, 6 (= epoch 2 batch 1), 9 (= epoch 2 batch 4)
    assert sorted(os.listdir(tmp_path)) == ["e1-b3.pt", "e2-b1.pt", "e2-b4.pt"]


def test_missing_placeholder_names_it_and_the_available_keys(tmp_path):
    trainer = make_trainer()
    with pytest.raises(KeyError, match=r"placeholder 'acc' is not in the logs; available keys: accuracy, epoch, loss"):
        trainer.fit(*make_data(8), epochs=1, verbose=0, callbacks=[ModelCheckpoint(tmp_path / "{acc}.pt")])


def test_val_placeholder_without_validation_fails_before_training(tmp_path):
    trainer = make_trainer()
    steps = []
    trainer.train_step = lambda batch: steps.append(1)
    with pytest.raises(KeyError, match="placeholder 'val_loss' needs validation data"):
        trainer.fit(*make_data(8), epochs=1, verbose=0, callbacks=[ModelCheckpoint(tmp_path / "{val_loss:.2f}.pt")])
    assert steps == []


def test_unwritable_directory_fails_before_training(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    trainer = make_trainer()
    with pytest.raises(PermissionError, match=r"ModelCheckpoint filepath: cannot write to .*file.txt/ckpt"):
        trainer.fit(*make_data(8), epochs=1, verbose=0, callbacks=[ModelCheckpoint(blocker / "ckpt" / "m.pt")])


def test_a_failed_write_never_damages_the_previous_file(tmp_path):
    trainer = make_trainer()
    x, y = make_data(8)
    path = tmp_path / "m.pt"
    trainer.fit(x, y, epochs=1, verbose=0, callbacks=[ModelCheckpoint(path, save_weights_only=True)])
    before = path.read_bytes()

    def failing_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    original = torch.save
    torch.save = failing_save
    try:
        with pytest.raises(OSError, match="disk full"):
            trainer.fit(x, y, epochs=1, verbose=0, callbacks=[ModelCheckpoint(path, save_weights_only=True)])
    finally:
        torch.save = original
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.pt"]


@pytest.mark.parametrize(
    "template, reason",
    [
        ("ckpt/{epoch", "expected '}'"),
        ("ckpt/w}.pt", "Single '}'"),
        ("ckpt/{epoch}}.pt", "Single '}'"),
        ("ckpt/{loss:d}.pt", "Unknown format code 'd'"),
        ("ckpt/{}.pt", "positional"),
        ("ckpt/{loss[0]}.pt", "not subscriptable"),
    ],
)
def test_a_template_with_bad_syntax_fails_before_training_naming_the_filepath(tmp_path, template, reason):
    path = str(tmp_path / template)
    with pytest.raises(ValueError, match=reason) as raised:
        ModelCheckpoint(path)
    assert repr(path) in str(raised.value)


def test_escaped_braces_and_format_specs_are_fine(tmp_path):
    trainer = make_trainer()
    checkpoint = ModelCheckpoint(tmp_path / "w{{x}}-{epoch:02d}-{loss:.3f}.pt", save_weights_only=True)
    history = trainer.fit(*make_data(8), epochs=1, verbose=0, callbacks=[checkpoint])
    assert [p.name for p in tmp_path.iterdir()] == [f"w{{x}}-01-{history.history['loss'][0]:.3f}.pt"]
