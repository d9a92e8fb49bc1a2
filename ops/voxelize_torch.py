"""Voxelization in pure torch ops, on whatever device the inputs live.

One ``torch.unique`` over linear int64 keys (sorted, so the voxel order is
the lexicographic ``(b, x, y, z, t)`` order), one ``index_add_`` for the
float64 feature sums. Quantization is float32 with float32 bounds and a
device-resident divisor (a CPU scalar divisor would be turned into a
reciprocal multiply on CUDA), which matches the numba backend bit for bit.
"""

from __future__ import annotations

import torch

from perception4d.ops import VoxelArrays


def point_keys(points: torch.Tensor, time: torch.Tensor, batch: torch.Tensor | None,
               lower: torch.Tensor, upper: torch.Tensor, voxel_size: torch.Tensor,
               dims: tuple[int, int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(keys of kept points, their row index, drop counts [out_of_range, non_finite] as a device tensor)."""
    _, nx, ny, nz, nt = dims
    finite = torch.isfinite(points).all(dim=1)
    xyz = points[:, :3]
    inside = ((xyz >= lower) & (xyz < upper)).all(dim=1)
    keep = finite & inside
    drops = torch.stack([(finite & ~inside).sum(), (~finite).sum()])
    rows = torch.nonzero(keep).squeeze(1)
    q = torch.floor((xyz[rows] - lower) / voxel_size).to(torch.int64)
    hi = torch.tensor([nx - 1, ny - 1, nz - 1], dtype=torch.int64, device=points.device)
    q = torch.minimum(q, hi)  # float32 rounding can land on the upper edge
    b = torch.zeros_like(rows) if batch is None else batch[rows].to(torch.int64)
    t = time[rows].to(torch.int64)
    keys = (((b * nx + q[:, 0]) * ny + q[:, 1]) * nz + q[:, 2]) * nt + t
    return keys, rows, drops


def decode_keys(keys: torch.Tensor, dims: tuple[int, int, int, int, int]) -> torch.Tensor:
    """(V, 5) int32 (b, x, y, z, t) from linear keys."""
    _, nx, ny, nz, nt = dims
    out = torch.empty((keys.shape[0], 5), dtype=torch.int64, device=keys.device)
    k = keys
    for col, size in ((4, nt), (3, nz), (2, ny), (1, nx)):
        out[:, col] = k % size
        k = torch.div(k, size, rounding_mode="floor")
    out[:, 0] = k
    return out.to(torch.int32)


def voxelize_torch(points: torch.Tensor, time: torch.Tensor, batch: torch.Tensor | None,
                   lower: torch.Tensor, upper: torch.Tensor, voxel_size: torch.Tensor,
                   dims: tuple[int, int, int, int, int]) -> VoxelArrays:
    """Voxelize validated tensors that share one device.

    points (P, C) float32; time (P,) integer in [0, T); batch (P,) integer in [0, B) or None;
    lower/upper/voxel_size float32 (3,) on the same device; dims (B, X, Y, Z, T).
    """
    n, c = points.shape
    keys, rows, drops = point_keys(points, time, batch, lower, upper, voxel_size, dims)
    ukeys, inverse, counts = torch.unique(keys, sorted=True, return_inverse=True, return_counts=True)
    p2v = torch.full((n,), -1, dtype=torch.int64, device=points.device)
    p2v[rows] = inverse
    sums = torch.zeros((ukeys.shape[0], c), dtype=torch.float64, device=points.device)
    sums.index_add_(0, inverse, points[rows].to(torch.float64))
    feats = (sums / counts.unsqueeze(1)).to(torch.float32)
    n_oor, n_nf = drops.tolist()
    return VoxelArrays(decode_keys(ukeys, dims), feats, counts.to(torch.int32), p2v, int(n_oor), int(n_nf))
