"""Segment pooling of per-point values into per-voxel rows (autograd-friendly, any device).

``index`` holds the segment (voxel) row of each point, ``-1`` for points to
ignore (the convention of ``SparseTensor4D.point_to_voxel``). Ignored points
go to one extra scratch row that is cut off, so no boolean masking is needed.
With ``check=True`` the index range is verified first (one device sync);
otherwise nothing here waits for the device (the counts of ``scatter_mean``
are summed into a fixed-size tensor, not ``torch.bincount``, whose output
size is read back from the device).
"""

from __future__ import annotations

import torch


def _segment_index(values: torch.Tensor, index: torch.Tensor, num_segments: int, check: bool) -> torch.Tensor:
    """``index`` with -1 replaced by the scratch row ``num_segments``."""
    if index.dtype != torch.int64 or index.ndim != 1:
        raise ValueError(f"scatter: index must be int64 (P,), got {index.dtype} {tuple(index.shape)}")
    if values.ndim < 1 or values.shape[0] != index.shape[0]:
        raise ValueError(f"scatter: values has shape {tuple(values.shape)} but index has "
                         f"{index.shape[0]} rows")
    if values.device != index.device:
        raise ValueError(f"scatter: values on {values.device} but index on {index.device}")
    if num_segments < 0:
        raise ValueError(f"scatter: num_segments must be >= 0, got {num_segments}")
    if check and index.numel():
        lo, hi = torch.stack(torch.aminmax(index)).tolist()
        if lo < -1 or hi >= num_segments:
            raise ValueError(f"scatter: index values must lie in [-1, {num_segments}), got [{lo}, {hi}]")
    return torch.where(index < 0, num_segments, index)


def _per_row(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.view(-1, *([1] * (ndim - 1)))


def scatter_sum(values: torch.Tensor, index: torch.Tensor, num_segments: int,
                check: bool = True) -> torch.Tensor:
    """(num_segments, ...) sum of the rows of ``values`` per segment; rows with index -1 are ignored."""
    idx = _segment_index(values, index, num_segments, check)
    out = values.new_zeros((num_segments + 1, *values.shape[1:]))
    return out.index_add(0, idx, values)[:num_segments]


def scatter_mean(values: torch.Tensor, index: torch.Tensor, num_segments: int,
                 check: bool = True) -> torch.Tensor:
    """(num_segments, ...) mean of the rows of ``values`` per segment; empty segments are 0."""
    idx = _segment_index(values, index, num_segments, check)
    sums = values.new_zeros((num_segments + 1, *values.shape[1:])).index_add(0, idx, values)
    # exact integers in float32 (up to 2^24 rows a segment), in any summation order
    ones = torch.ones(idx.shape[0], dtype=torch.float32, device=idx.device)
    counts = torch.zeros(num_segments + 1, dtype=torch.float32, device=idx.device).index_add_(0, idx, ones)
    counts = counts.clamp(min=1).to(values.dtype)
    return (sums / _per_row(counts, values.ndim))[:num_segments]


def scatter_max(values: torch.Tensor, index: torch.Tensor, num_segments: int,
                check: bool = True) -> torch.Tensor:
    """(num_segments, ...) element-wise max of the rows per segment; empty segments are 0.

    The gradient flows to the rows that attain the max (split evenly among ties).
    """
    idx = _segment_index(values, index, num_segments, check)
    out = values.new_zeros((num_segments + 1, *values.shape[1:]))
    out = out.scatter_reduce(0, _per_row(idx, values.ndim).expand_as(values), values, reduce="amax",
                             include_self=False)
    return out[:num_segments]
