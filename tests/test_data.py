import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from tests.conftest import Recorder, make_trainer


def _xy(n=12):
    x = torch.randn(n, 4)
    return x, (x[:, 0] > 0).long()


def _epoch_batches(trainer, data, **kwargs):
    rec = Recorder()
    history = trainer.fit(data, verbose=0, callbacks=[rec], **kwargs)
    return rec, history


@pytest.mark.parametrize("kind", ["numpy", "tensor"])
def test_arrays_and_tensors(kind):
    x, y = _xy()
    if kind == "numpy":
        x, y = x.numpy().astype(np.float64), y.numpy().astype(np.int32)  # cast to float32 / int64 as Keras does
    trainer = make_trainer()
    rec = Recorder()
    trainer.fit(x, y, batch_size=5, epochs=1, verbose=0, callbacks=[rec])
    assert [logs["size"] for logs in rec.logs_of("on_train_batch_begin")] == [5, 5, 2]


def test_python_lists_are_arrays():
    trainer = make_trainer(inputs=2)
    history = trainer.fit([[0.0, 1.0], [1.0, 0.0]], [0, 1], verbose=0)
    assert len(history.history["loss"]) == 1


def test_in_memory_arrays_are_moved_once_and_indexed_on_the_device():
    from torchcb.data import ArraySource, Batching, Placement, make_source

    x, y = _xy(10)
    source = make_source(
        x.numpy(), y.numpy(), batching=Batching(batch_size=4, shuffle=True), placement=Placement("cpu")
    )
    assert isinstance(source, ArraySource)
    assert isinstance(source.x, torch.Tensor) and source.x.dtype == torch.float32
    batches = list(source.epoch())
    assert sorted(torch.cat([b.y for b in batches]).tolist()) == sorted(y.tolist())


def test_dataset_is_batched_with_batch_size_and_shuffle():
    x, y = _xy(10)
    trainer = make_trainer()
    rec, _ = _epoch_batches(trainer, TensorDataset(x, y), batch_size=4, epochs=1)
    assert [logs["size"] for logs in rec.logs_of("on_train_batch_begin")] == [4, 4, 2]
    assert rec.params["samples"] == 10 and rec.params["steps"] == 3


def test_dataloader_is_used_as_is_and_batch_size_with_it_is_refused():
    x, y = _xy(10)
    trainer = make_trainer()
    rec, _ = _epoch_batches(trainer, DataLoader(TensorDataset(x, y), batch_size=3), epochs=2)
    assert rec.count("on_train_batch_end") == 8
    with pytest.raises(ValueError, match="batch_size must not be given with a DataLoader"):
        trainer.fit(DataLoader(TensorDataset(x, y)), batch_size=4, verbose=0)


def test_dataloader_yielding_sample_weights():
    x, y = _xy(8)
    weights = torch.zeros(8)
    trainer = make_trainer()
    history = trainer.fit(DataLoader(TensorDataset(x, y, weights), batch_size=4), epochs=1, verbose=0)
    assert history.history["loss"] == [0.0]  # every sample weighs 0


def test_iterable_dataset_and_plain_dataset_subclass():
    x, y = _xy(8)

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(zip(x, y))

    class Pairs(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return x[i], y[i]

    trainer = make_trainer()
    rec, _ = _epoch_batches(trainer, Stream(), batch_size=4, epochs=1, steps_per_epoch=2)
    assert rec.count("on_train_batch_end") == 2
    rec, _ = _epoch_batches(trainer, Pairs(), batch_size=4, epochs=1)
    assert rec.count("on_train_batch_end") == 2


def test_generator_with_steps_per_epoch_continues_across_epochs():
    drawn = []

    def batches():
        i = 0
        while True:
            drawn.append(i)
            x = torch.full((2, 4), float(i))
            yield x, torch.zeros(2, dtype=torch.long)
            i += 1

    trainer = make_trainer()
    rec, _ = _epoch_batches(trainer, batches(), steps_per_epoch=3, epochs=2)
    assert rec.count("on_train_batch_end") == 6
    assert drawn == [0, 1, 2, 3, 4, 5]
    assert rec.params["steps"] == 3 and rec.params["samples"] is None


def test_generator_with_sample_weights_and_one_that_runs_out():
    def three():
        for _ in range(3):
            yield torch.randn(2, 4), torch.zeros(2, dtype=torch.long), torch.ones(2)

    trainer = make_trainer()
    with pytest.warns(RuntimeWarning, match="ran out of data"):
        rec, history = _epoch_batches(trainer, three(), steps_per_epoch=2, epochs=5)
    assert rec.count("on_train_batch_end") == 3
    assert len(history.epoch) == 2  # training stops after the epoch in which the data ran out


def test_list_of_batches_is_reiterated_each_epoch():
    batches = [(torch.randn(2, 4), torch.zeros(2, dtype=torch.long)) for _ in range(3)]
    trainer = make_trainer()
    rec, _ = _epoch_batches(trainer, batches, epochs=2)
    assert rec.count("on_train_batch_end") == 6


def test_validation_data_as_loader_with_validation_steps():
    x, y = _xy(12)
    trainer = make_trainer()
    rec = Recorder()
    val = DataLoader(TensorDataset(x, y), batch_size=2)
    trainer.fit(x, y, epochs=1, verbose=0, validation_data=val, validation_steps=2, callbacks=[rec])
    assert rec.count("on_test_batch_end") == 2
    with pytest.raises(ValueError, match="validation_data must be"):
        trainer.fit(x, y, epochs=1, verbose=0, validation_data=(x,))


def test_validation_data_with_sample_weights():
    x, y = _xy(8)
    trainer = make_trainer()
    history = trainer.fit(x, y, epochs=1, verbose=0, validation_data=(x, y, np.zeros(8)))
    assert history.history["val_loss"] == [0.0]


def test_arrays_with_steps_per_epoch_stream_through_the_data():
    x, y = _xy(10)
    trainer = make_trainer()
    rec = Recorder()
    trainer.fit(x, y, batch_size=4, steps_per_epoch=5, epochs=2, verbose=0, callbacks=[rec])
    sizes = [logs["size"] for logs in rec.logs_of("on_train_batch_begin")]
    assert len(sizes) == 10 and sizes[:4] == [4, 4, 2, 4]


def test_inputs_of_different_lengths_in_a_multi_input_list():
    trainer = make_trainer()
    with pytest.raises(ValueError, match=r"all arrays in x must have the same number of samples, got lengths \[4, 3\]"):
        trainer.predict([np.zeros((4, 2)), np.zeros((3, 2))])


def test_y_with_a_loader_is_refused():
    x, y = _xy(4)
    with pytest.raises(ValueError, match="y must not be given when x is a TensorDataset"):
        make_trainer().fit(TensorDataset(x, y), y, verbose=0)


def test_bad_x_type():
    with pytest.raises(
        ValueError, match="x must be arrays, tensors, a Dataset, a DataLoader or an iterable of batches, got int"
    ):
        make_trainer().fit(3, verbose=0)


def test_malformed_batches_are_named():
    with pytest.raises(ValueError, match=r"each batch must be \(x, y\) or \(x, y, sample_weight\), got Tensor"):
        make_trainer().fit((t for t in [torch.zeros(2, 4)]), steps_per_epoch=1, verbose=0)


def test_unshuffled_batches_are_views_of_the_tensors_themselves():
    from torchcb import Trainer

    x, y = torch.randn(10, 4), torch.randint(0, 2, (10,))
    seen = []

    class Recording(Trainer):
        def _record(self, kind, batch):
            storage = batch.x.untyped_storage().data_ptr()
            y_ptr = None if batch.y is None else batch.y.data_ptr()  # predict has no targets
            seen.append((kind, storage, (batch.x.data_ptr() - x.data_ptr()) // (4 * 4), y_ptr))

        def train_step(self, batch):
            self._record("train", batch)
            return super().train_step(batch)

        def test_step(self, batch):
            self._record("test", batch)
            return super().test_step(batch)

        def predict_step(self, batch):
            self._record("predict", batch)
            return super().predict_step(batch)

    net = torch.nn.Linear(4, 2)
    trainer = Recording(
        net, torch.optim.SGD(net.parameters(), lr=0.1), loss="sparse_categorical_crossentropy", device="cpu"
    )
    trainer.fit(x, y, batch_size=4, epochs=1, shuffle=False, validation_data=(x, y), verbose=0)
    trainer.evaluate(x, y, batch_size=4, verbose=0)
    trainer.predict(x, batch_size=4)
    assert [kind for kind, *_ in seen] == ["train"] * 3 + ["test"] * 3 + ["test"] * 3 + ["predict"] * 3
    # no gather, no copy: every batch lies in the caller's own tensors, at its rows
    assert all(storage == x.untyped_storage().data_ptr() for _, storage, _, _ in seen)
    assert [first_row for _, _, first_row, _ in seen] == [0, 4, 8] * 4
    assert [y_ptr for kind, *_, y_ptr in seen if kind == "train"] == [y.data_ptr() + 8 * row for row in (0, 4, 8)]


def test_an_unshuffled_pass_of_one_chunk_cuts_its_batches_once_and_sees_later_writes():
    from torchcb.data import ArraySource, Batching

    x, y = torch.arange(20.0).reshape(10, 2), torch.arange(10)
    source = ArraySource(x, y, None, Batching(batch_size=4, shuffle=False))
    first, second = list(source.epoch()), list(source.epoch())
    assert [b.size for b in second] == [4, 4, 2]
    assert all(a.x is b.x and a.y is b.y for a, b in zip(first, second))  # the same views, not cut again
    x[8] = -1.0  # the views are of the tensors themselves: a change in place shows in the next epoch
    assert torch.equal(list(source.epoch())[2].x, torch.tensor([[-1.0, -1.0], [18.0, 19.0]]))
    resumed = list(source.epoch(skip=1))  # a resumed epoch starts mid-pass: its batches are cut for it
    assert [b.y.tolist() for b in resumed] == [[4, 5, 6, 7], [8, 9]]

    # shuffled, or a pass of several chunks: each epoch cuts its own
    shuffled = ArraySource(x, y, None, Batching(batch_size=4, shuffle=True))
    assert list(shuffled.epoch())[0].x is not list(shuffled.epoch())[0].x
    chunked = ArraySource(x, y, None, Batching(batch_size=4, shuffle=False))
    chunked.slice_chunk_batches = 2
    a, b = list(chunked.epoch()), list(chunked.epoch())
    assert a[0].x is not b[0].x and [t.y.tolist() for t in b] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_batching_options_are_checked_when_made_and_name_the_argument():
    from torchcb.data import Batching

    with pytest.raises(ValueError, match="batch_size must be a positive int or None, got 0"):
        Batching(batch_size=0)
    with pytest.raises(ValueError, match=r"validation_steps must be a positive int or None, got 2\.5"):
        Batching(steps=2.5, steps_argument="validation_steps")
    with pytest.raises(ValueError, match="validation_steps must be a positive int or None, got -1"):
        make_trainer().fit(*_xy(8), verbose=0, validation_data=_xy(4), validation_steps=-1)
    with pytest.raises(ValueError, match="steps must be a positive int or None, got 0"):
        make_trainer().evaluate(*_xy(8), verbose=0, steps=0)


def test_fixed_steps_says_whether_the_data_streams_across_epochs():
    from torchcb.data import Batching, Placement, make_source

    x, y = _xy(10)
    placement = Placement("cpu")
    per_pass = make_source(x, y, batching=Batching(batch_size=4), placement=placement)
    streamed = make_source(x, y, batching=Batching(batch_size=4, steps=5), placement=placement)
    assert (per_pass.fixed_steps, per_pass.steps, streamed.fixed_steps, streamed.steps) == (False, 3, True, 5)
    loader = make_source(DataLoader(TensorDataset(x, y), batch_size=3), None, batching=Batching(), placement=placement)
    assert (loader.fixed_steps, loader.steps, loader.samples) == (False, 4, 10)
    # an epoch counted in steps: the progress bar's count mode follows it
    rec = Recorder()
    make_trainer().fit(x, y, batch_size=4, steps_per_epoch=5, epochs=1, verbose=0, callbacks=[rec])
    assert rec.params["steps"] == 5


def test_placement_casts_integer_inputs_and_picks_the_copy_mode():
    from torchcb.data import Batching, Placement, make_source

    x = torch.arange(6).reshape(3, 2)
    y = torch.arange(3)
    floats = make_source(x, y, batching=Batching(), placement=Placement("cpu", float_inputs=True))
    kept = make_source(x, y, batching=Batching(), placement=Placement("cpu"))
    assert floats.x.dtype == torch.float32 and kept.x.dtype == torch.int64
    assert floats.y.dtype == torch.int64  # targets keep their dtype
    batches = [(x, y)]
    loaded = make_source(batches, None, batching=Batching(), placement=Placement("cpu", float_inputs=True))
    (batch,) = loaded.epoch()
    assert batch.x.dtype == torch.float32 and batch.y.dtype == torch.int64
    assert not Placement("cpu").copies_non_blocking and Placement("cuda").copies_non_blocking
    assert Placement("cpu", non_blocking=True).copies_non_blocking
    assert not Placement("cuda", non_blocking=False).copies_non_blocking


def test_pin_memory_reaches_the_loader_torchcb_builds_for_a_dataset_and_not_a_users_loader():
    from torchcb.data import Batching, Placement, make_source

    dataset = TensorDataset(*_xy(8))
    pinned = make_source(dataset, None, batching=Batching(batch_size=4), placement=Placement("cpu", pin_memory=True))
    assert pinned.data.pin_memory and pinned.data.batch_size == 4
    assert not make_source(dataset, None, batching=Batching(), placement=Placement("cpu")).data.pin_memory
    users = DataLoader(dataset, batch_size=2)
    assert make_source(users, None, batching=Batching(), placement=Placement("cpu", pin_memory=True)).data is users
