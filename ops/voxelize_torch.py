"""Voxelization in pure torch ops, on whatever device the inputs live.

Every point gets a linear int64 key (dropped points — non-finite, or outside
the range — the one key ``prod(dims)``, beyond every voxel key; sorted as
int32 when that fits); one sort of the keys, run starts and a prefix sum give each point its voxel row (sorted
keys, so the voxel order is the lexicographic ``(b, x, y, z, t)`` order) and
one ``index_add_`` the float64 feature sums. No point is selected, so nothing
waits for the device until the single read-back of the voxel count and the
drop counts at the end (a CUDA device synchronises once a call).

Quantization is float32 with float32 bounds and a device-resident divisor (a
CPU scalar divisor would be turned into a reciprocal multiply on CUDA), which
matches the numba backend bit for bit.
"""

from __future__ import annotations

import math

import torch

from perception4d.ops import VoxelArrays
from perception4d.utils.device import device_constant


def point_keys(points: torch.Tensor, time: torch.Tensor, batch: torch.Tensor | None,
               lower: torch.Tensor, upper: torch.Tensor, voxel_size: torch.Tensor,
               dims: tuple[int, int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P,) keys of every point (``prod(dims)`` for dropped points), (P,) bool kept, and the drop counts
    [out_of_range, non_finite] as a device tensor."""
    nb, nx, ny, nz, nt = dims
    finite = torch.isfinite(points).all(dim=1)
    xyz = points[:, :3]
    inside = ((xyz >= lower) & (xyz < upper)).all(dim=1)
    keep = finite & inside
    drops = torch.stack([(finite & ~inside).sum(), (~finite).sum()])
    q = torch.floor((xyz - lower) / voxel_size).nan_to_num_(0.0, 0.0, 0.0).to(torch.int64)
    hi = device_constant((nx - 1, ny - 1, nz - 1), points.device)
    q = torch.minimum(q, hi)  # float32 rounding can land on the upper edge
    b = 0 if batch is None else batch.to(torch.int64)
    keys = (((b * nx + q[:, 0]) * ny + q[:, 1]) * nz + q[:, 2]) * nt + time.to(torch.int64)
    drop_key = nb * nx * ny * nz * nt
    return torch.where(keep, keys, torch.full_like(keys, drop_key)), keep, drops


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


def _sorted_runs(keys: torch.Tensor, dims: tuple[int, int, int, int, int]):
    """Runs of equal keys: (sorted keys, run index of each sorted point, run index of each point, number of runs
    as a (1,) device tensor). The dropped points' key is the largest: their run is last."""
    n, device = keys.shape[0], keys.device
    if math.prod(dims) < 2**31 - 1:  # the keys (and the dropped points' key) fit in 32 bits: half the sort passes
        keys = keys.to(torch.int32)
    sorted_keys, order = torch.sort(keys)
    first = torch.ones(n, dtype=torch.bool, device=device)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    run = torch.cumsum(first, 0) - 1  # voxel row of each sorted point
    inverse = torch.empty_like(run)
    inverse[order] = run
    num_runs = run[-1:] + 1 if n else torch.zeros(1, dtype=torch.int64, device=device)
    return sorted_keys, run, inverse, num_runs


def voxelize_torch(points: torch.Tensor, time: torch.Tensor, batch: torch.Tensor | None,
                   lower: torch.Tensor, upper: torch.Tensor, voxel_size: torch.Tensor,
                   dims: tuple[int, int, int, int, int],
                   read_back: torch.Tensor | None = None) -> tuple[VoxelArrays, list[int]]:
    """Voxelize validated tensors that share one device.

    points (P, C) float32; time (P,) integer in [0, T); batch (P,) integer in [0, B) or None;
    lower/upper/voxel_size float32 (3,) on the same device; dims (B, X, Y, Z, T).

    ``read_back``: further int64 values on the device (e.g. index ranges to check) read in the same
    device-to-host copy as the voxel count; returned as a list (empty without them).
    """
    c = points.shape[1]
    device = points.device
    keys, keep, drops = point_keys(points, time, batch, lower, upper, voxel_size, dims)
    sorted_keys, run, inverse, num_runs = _sorted_runs(keys, dims)
    extra = [] if read_back is None else [read_back.to(device=device, dtype=torch.int64).reshape(-1)]
    values = torch.cat([num_runs, drops, *extra]).tolist()  # the one synchronisation
    runs, n_oor, n_nf = values[:3]
    v = runs - (1 if n_oor + n_nf else 0)  # the dropped points' run is last
    ukeys = torch.zeros(runs, dtype=sorted_keys.dtype, device=device).scatter_(0, run, sorted_keys)[:v].to(torch.int64)
    p2v = torch.where(keep, inverse, torch.full_like(inverse, -1))
    sums = torch.zeros((runs, c), dtype=torch.float64, device=device)
    sums.index_add_(0, inverse, points.to(torch.float64))
    counts = torch.zeros(runs, dtype=torch.int64, device=device).index_add_(0, inverse,
                                                                             torch.ones_like(inverse))[:v]
    feats = (sums[:v] / counts.unsqueeze(1)).to(torch.float32)
    return VoxelArrays(decode_keys(ukeys, dims), feats, counts.to(torch.int32), p2v, int(n_oor),
                       int(n_nf)), values[3:]


def voxelize_static(points: torch.Tensor, time: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                    voxel_size: torch.Tensor, dims: tuple[int, int, int, int, int], capacity: int
                    ) -> tuple[VoxelArrays, torch.Tensor, torch.Tensor]:
    """``voxelize_torch`` of one window (``dims[0] == 1``) into ``capacity`` voxel rows, with no read-back.

    Every output has a size fixed by the inputs' shapes and ``capacity`` (a CUDA graph can capture the call):
    the first ``num_voxels`` rows are the voxels of ``voxelize_torch`` (same order, coordinates, means and
    counts), the rest are padding with batch index 1 (outside the window's batch) and zero features and
    counts. Returns (arrays, num_voxels (1,) int64, drops (2,) int64 [out_of_range, non_finite]), the counts
    on the device; the arrays' drop counts are left 0. With more voxels than ``capacity``, ``num_voxels``
    exceeds it and the points of the voxels beyond it get ``point_to_voxel`` -1: the caller must check.
    """
    if dims[0] != 1:
        raise ValueError(f"voxelize_static: one window (dims[0] == 1), got dims {dims}")
    c = points.shape[1]
    device = points.device
    keys, keep, drops = point_keys(points, time, None, lower, upper, voxel_size, dims)
    drop_key = math.prod(dims)
    sorted_keys, run, inverse, runs = _sorted_runs(keys, dims)
    num_voxels = runs - (drops.sum() > 0).to(torch.int64)  # the dropped points' run is last
    # runs beyond the capacity (overflow) and the dropped points write one scratch row, cut off
    slot = run.clamp(max=capacity)
    ukeys = torch.full((capacity + 1,), drop_key, dtype=sorted_keys.dtype, device=device).scatter_(0, slot, sorted_keys)
    row = torch.where(keep, inverse.clamp(max=capacity), torch.full_like(inverse, capacity))
    sums = torch.zeros((capacity + 1, c), dtype=torch.float64, device=device).index_add_(0, row, points.double())
    counts = torch.zeros(capacity + 1, dtype=torch.int64, device=device).index_add_(0, row, torch.ones_like(row))
    feats = (sums[:capacity] / counts[:capacity].clamp(min=1).unsqueeze(1)).to(torch.float32)
    p2v = torch.where(keep & (inverse < capacity), inverse, torch.full_like(inverse, -1))
    coords = decode_keys(ukeys[:capacity].to(torch.int64), dims)  # the drop key decodes to (1, 0, 0, 0, 0)
    return VoxelArrays(coords, feats, counts[:capacity].to(torch.int32), p2v, 0, 0), num_voxels, drops
