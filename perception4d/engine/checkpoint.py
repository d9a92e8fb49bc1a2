"""Loading mmengine checkpoints under torch >= 2.6 (``torch.load(weights_only=True)`` by default).

mmengine 0.10 saves its message hub (``HistoryBuffer`` holding numpy arrays)
into every checkpoint, which the weights-only unpickler rejects. Instead of
turning weights_only off for all of torch, exactly the types such a
checkpoint holds are allow-listed.
"""

from __future__ import annotations

import numpy as np
import torch


def _checkpoint_types() -> list:
    from mmengine.logging.history_buffer import HistoryBuffer

    types = [HistoryBuffer, np.ndarray, np.dtype, np.core.multiarray._reconstruct, np.core.multiarray.scalar]
    # numpy's concrete dtype classes (np.dtypes.Float64DType, ...) are pickled by reference
    types += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return types


def allow_mmengine_checkpoints() -> None:
    """Allow-list the non-tensor types of mmengine checkpoints for weights-only loading (idempotent)."""
    if hasattr(torch.serialization, "add_safe_globals"):
        torch.serialization.add_safe_globals(_checkpoint_types())


def load_state_dict(path: str, map_location: str | torch.device = "cpu") -> dict:
    """The model weights of a checkpoint (mmengine format or a bare state dict), weights-only."""
    allow_mmengine_checkpoints()
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    return ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
