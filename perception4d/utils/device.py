"""Small constant tensors kept on a device: uploaded once, not on every call of a hot path."""

from __future__ import annotations

import numpy as np
import torch

_CONSTANTS: dict = {}


def device_constant(values, device, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """A ``dtype`` tensor of ``values`` (a sequence of numbers) on ``device``, made once per (values, dtype,
    device) and then reused: no host-to-device copy per call (and none inside a CUDA-graph capture, which
    cannot copy from the host). The tensor is shared: never write to it."""
    device = torch.device(device)
    key = (tuple(np.asarray(values).tolist()), dtype, device)
    t = _CONSTANTS.get(key)
    if t is None:
        t = _CONSTANTS[key] = torch.tensor(key[0], dtype=dtype, device=device)
    return t
