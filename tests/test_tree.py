import torch

from torchcb.tree import concatenate, tree_leaves, tree_map, tree_split


def test_tree_map_keeps_the_nest_and_its_nones():
    nest = {"a": (torch.ones(2), None), "b": [torch.zeros(1)]}
    doubled = tree_map(lambda t: t * 2, nest)
    assert isinstance(doubled["a"], tuple) and doubled["a"][1] is None
    assert doubled["a"][0].tolist() == [2.0, 2.0] and doubled["b"][0].tolist() == [0.0]


def test_tree_leaves_in_order_without_nones():
    a, b, c = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    assert [t.item() for t in tree_leaves([a, {"x": b, "skip": None}, (c,)])] == [0.0, 1.0, 2.0]


def test_concatenate_joins_batches_and_stacks_scalars():
    outputs = [{"y": torch.zeros(2, 3), "n": torch.tensor(1.0)}, {"y": torch.ones(1, 3), "n": torch.tensor(2.0)}]
    joined = concatenate(outputs)
    assert joined["y"].shape == (3, 3) and joined["n"].tolist() == [1.0, 2.0]


def test_tree_split_views_for_a_slice_and_a_gather_for_indices():
    x = torch.arange(10.0)
    views = tree_split((x,), slice(2, 7), 2)
    assert [v[0].tolist() for v in views] == [[2.0, 3.0], [4.0, 5.0], [6.0]]
    assert views[0][0].untyped_storage().data_ptr() == x.untyped_storage().data_ptr()  # a view, no copy
    gathered = tree_split({"x": x}, torch.tensor([9, 0, 5]), 2)
    assert [g["x"].tolist() for g in gathered] == [[9.0, 0.0], [5.0]]
    assert next(iter(tree_split(None, slice(0, 4), 2))) is None
