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


def test_the_helpers_callback_code_calls():
    weight = torch.nn.Linear(3, 2).weight
    assert K.floatx() == "float32" and K.learning_phase() == 0 and K.clear_session() is None
    assert K.int_shape(weight) == (2, 3) and K.count_params(weight) == 6
    assert K.dtype(weight) == "float32" and K.dtype(np.zeros(2, np.int32)) == "int32"
    assert K.cast(torch.tensor([1.9]), "int32").dtype == torch.int32
    assert K.cast(np.array([1, 2]), torch.float64).dtype == np.float64
    with pytest.raises(ValueError, match="cast: unknown dtype"):
        K.cast(torch.zeros(1), "V8")  # numpy knows it, torch has no such type


def test_star_import_gives_k_and_np_as_keras_2_did():
    namespace = {}
    exec("from torchcb.callbacks import *", namespace)
    assert namespace["K"] is K and namespace["np"] is np
    assert "EarlyStopping" in namespace and "Callback" in namespace
