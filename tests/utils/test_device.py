"""device_constant: one tensor per (values, dtype, device), reused by every later call."""

import numpy as np
import torch

from perception4d.utils.device import device_constant


def test_made_once_and_reused_per_values_dtype_and_device():
    a = device_constant((1, 2, 3), "cpu")
    assert a.dtype == torch.int64 and a.tolist() == [1, 2, 3]
    assert device_constant([1, 2, 3], torch.device("cpu")) is a  # any sequence of the same values
    assert device_constant(np.array([1, 2, 3]), "cpu") is a
    assert device_constant((1, 2, 4), "cpu") is not a
    f = device_constant((1, 2, 3), "cpu", torch.float32)
    assert f is not a and f.dtype == torch.float32


def test_float32_values_round_as_numpy_does():
    values = (0.1, -51.2, 1e-7)
    t = device_constant(values, "cpu", torch.float32)
    np.testing.assert_array_equal(t.numpy(), np.asarray(values, np.float32))
    assert device_constant(np.asarray(values, np.float32), "cpu", torch.float32).tolist() == t.tolist()
