import numpy as np
import pytest
import torch

from torchcb import backend as K


def test_get_and_set_value_on_tensors():
    t = torch.zeros(3)
    K.set_value(t, np.array([1.0, 2.0, 3.0]))
    assert np.array_equal(K.get_value(t), np.array([1.0, 2.0, 3.0], dtype=np.float32))
    assert K.eval(t).dtype == np.float32


def test_get_value_of_plain_numbers_and_epsilon():
    assert K.get_value(0.5) == 0.5
    assert K.epsilon() == 1e-7


def test_set_value_on_something_else_is_a_clear_error():
    with pytest.raises(TypeError, match="K.set_value expects a learning-rate handle"):
        K.set_value(0.5, 1.0)
