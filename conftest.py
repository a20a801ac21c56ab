"""Doctests of torchcb's modules (pytest --doctest-modules): examples that need FSDP2 skip on a torch without it."""

import pytest


def pytest_collection_modifyitems(items):
    from torchcb import sharded

    if sharded.fsdp_available():
        return
    skip = pytest.mark.skip(reason="strategy='fsdp' needs torch 2.6 or later")
    for item in items:
        if isinstance(item, pytest.DoctestItem) and item.name == "torchcb.sharded.export_full":
            item.add_marker(skip)
