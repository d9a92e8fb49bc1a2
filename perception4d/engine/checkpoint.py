"""Loading mmengine checkpoints under torch >= 2.6 (``torch.load(weights_only=True)`` by default).

mmengine 0.10 saves its message hub into every checkpoint: ``HistoryBuffer``
objects holding numpy arrays and their bound statistics methods (pickled via
``getattr``), which the weights-only unpickler rejects. Instead of turning
weights_only off for all of torch, exactly the globals such a checkpoint holds
are allowed, and only while mmengine loads its own checkpoints
(``mmengine_checkpoint_globals()`` around a Runner's train/test).
"""

from __future__ import annotations

import builtins
import importlib
import codecs
from contextlib import contextmanager

import numpy as np
import torch


def _checkpoint_globals() -> list:
    from mmengine.logging.history_buffer import HistoryBuffer

    multiarray = importlib.import_module("numpy._core.multiarray" if np.__version__ >= "2" else "numpy.core.multiarray")
    types = [HistoryBuffer, np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar,
             codecs.encode, builtins.getattr]
    # numpy's concrete dtype classes (np.dtypes.Float64DType, ...) are pickled by reference
    types += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return types


@contextmanager
def mmengine_checkpoint_globals():
    """Allow the globals of mmengine checkpoints for weights-only loading, inside this block only."""
    with torch.serialization.safe_globals(_checkpoint_globals()):
        yield


def load_state_dict(path: str, map_location: str | torch.device = "cpu") -> dict:
    """The model weights of a checkpoint (mmengine format or a bare state dict), weights-only."""
    with mmengine_checkpoint_globals():
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    return ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
