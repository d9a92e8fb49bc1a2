"""Low-level kernels: voxelization backends (numba CPU, torch any device) and scatter pooling.

The numba backend is imported only when used (``perception4d.ops.voxelize_numba``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from perception4d.ops.scatter import scatter_max, scatter_mean, scatter_sum


@dataclass
class VoxelArrays:
    """Raw result of a voxelization backend: numpy arrays (numba) or tensors (torch)."""

    coords: Any  # (V, 5) int32 (b, x, y, z, t), unique, sorted lexicographically
    features: Any  # (V, C) float32 per-voxel mean of the input columns
    counts: Any  # (V,) int32 points per voxel
    point_to_voxel: Any  # (P,) int64 voxel row of each point, -1 for dropped points
    out_of_range: int
    non_finite: int


__all__ = ["VoxelArrays", "scatter_sum", "scatter_mean", "scatter_max"]
