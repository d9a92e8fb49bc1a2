"""Data-dependent bookkeeping of the voxel transformer: windows, sets, pooling regions.

Everything here is integer work on voxel coordinates (int32 ``(b, x, y, z, t)``),
computed once per forward on the coordinates' device under ``torch.no_grad``, and
handed to the layers as plain index tensors. The layers only gather, attend and
scatter through these tensors, so the learnable part of the backbone is a
static-shaped-per-input graph (what the ONNX export captures, see
``perception4d.models.export``) and this module is its pre-processing.

Windows. A window tiles x and y (``wx`` × ``wy`` cells) and spans all of z. Time is
either inside the window (``wt = 0``: the window spans every time index, the voxels
of all sweeps of an x-y tile attend together) or its own window axis (``wt`` frames
per window, shifted like x and y). A shifted window adds ``shift`` to the
coordinates before tiling, so its borders fall in the middle of the unshifted ones.

Sets. Inside a window with ``N`` non-empty voxels, the voxels are sorted along one
axis (x-major: key (x, y, z, t); y-major: (y, x, z, t), local to the window) and
cut into ``n = ceil(N / S)`` consecutive chunks of balanced size: sorted rank r goes
to set ``floor(r * n / N)``. This is DSVT's evenly strided sampling (set j takes
ranks ``floor(i * N / (n * S))``, i in [jS, (j+1)S)) with its repeated ranks turned
into padding slots, so every voxel sits in exactly one set and a set holds at most
S voxels (sizes differ by one at most). Sorting on the full coordinate key makes the
partition a function of the voxel set only, not of the input row order: the
backbone is exactly equivariant to permutations of its input rows.

Pooling regions. Coarse cell = ``(x, y, z) // stride`` with time kept; the members
of a region are laid out by their offset inside it (slot ``(ox * sy + oy) * sz +
oz``), so a region's member table needs no sorting and slots double as position
ids. Coarse voxels are ordered by their coordinates (``torch.unique``), hence
canonical too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AXES = ("x", "y")


@dataclass(frozen=True)
class WindowSpec:
    """One window partition of a level: tile sizes and shift in cells of that level."""

    shape: tuple[int, int, int]  # (wx, wy, wt); wt = 0: the window spans every time index
    shift: tuple[int, int, int]  # added to (x, y, t) before tiling

    def resolved(self, num_times: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        wx, wy, wt = self.shape
        sx, sy, st = self.shift
        if wt <= 0 or wt >= num_times:
            wt, st = num_times, 0
        return (wx, wy, wt), (sx, sy, st % wt)


@dataclass
class SetPartition:
    """Voxels of one level in padded sets: ``index[s, k]`` is the voxel row in slot k of set s.

    Padding slots repeat the set's first voxel (so gathers stay finite) and are
    False in ``valid``; ``inverse[v]`` is the flat slot ``s * S + k`` of voxel v.
    """

    index: torch.Tensor  # (n_sets, S) int64
    valid: torch.Tensor  # (n_sets, S) bool
    inverse: torch.Tensor  # (N,) int64

    @property
    def num_sets(self) -> int:
        return int(self.index.shape[0])


@dataclass
class PoolMap:
    """Level l -> level l + 1: coarse voxels, their member tables and each fine voxel's place."""

    members: torch.Tensor  # (P, K) int64 fine rows by slot; empty slots repeat a member
    valid: torch.Tensor  # (P, K) bool
    parent: torch.Tensor  # (N,) int64 coarse row of each fine voxel
    slot: torch.Tensor  # (N,) int64 offset of each fine voxel in its region
    coords: torch.Tensor  # (P, 5) int32 coarse coordinates (b, x, y, z, t)
    spatial_shape: tuple[int, int, int, int]


@dataclass
class LevelPlan:
    """Everything the attention layers of one level need: sets per (window, axis), positions per window."""

    coords: torch.Tensor  # (N, 5) int32
    spatial_shape: tuple[int, int, int, int]
    partitions: dict[tuple[WindowSpec, str], SetPartition]
    positions: dict[WindowSpec, torch.Tensor]  # (N, 4) float32 in [-1, 1]

    @property
    def num_voxels(self) -> int:
        return int(self.coords.shape[0])


@dataclass
class BackbonePlan:
    levels: list[LevelPlan]
    pools: list[PoolMap]  # pools[l]: level l -> l + 1


def _window_index(coords: torch.Tensor, spatial_shape, spec: WindowSpec):
    """(window id (N,), local (x, y, t) in the window (N, 3), resolved window shape) of each voxel."""
    c = coords.long()
    b, x, y, t = c[:, 0], c[:, 1], c[:, 2], c[:, 4]
    nx, ny, _, nt = (int(s) for s in spatial_shape)
    (wx, wy, wt), (sx, sy, st) = spec.resolved(nt)
    xs, ys, ts = x + sx, y + sy, t + st
    n_wx, n_wy, n_wt = (nx + sx + wx - 1) // wx, (ny + sy + wy - 1) // wy, (nt + st + wt - 1) // wt
    wid = ((b * n_wx + xs // wx) * n_wy + ys // wy) * n_wt + ts // wt
    return wid, torch.stack([xs % wx, ys % wy, ts % wt], dim=1), (wx, wy, wt)


@torch.no_grad()
def window_positions(coords: torch.Tensor, spatial_shape, spec: WindowSpec) -> torch.Tensor:
    """(N, 4) position inputs in [-1, 1]: x, y offsets inside the window, z and t over the grid.

    z and t are absolute (normalised by the grid's Z and T): the window spans z, and the time
    index is meaningful by itself (the windows are right-aligned: T - 1 is the newest sweep).
    """
    _, local, (wx, wy, _) = _window_index(coords, spatial_shape, spec)
    nz, nt = int(spatial_shape[2]), int(spatial_shape[3])
    c = coords.float()
    size = torch.tensor([wx, wy, nz, nt], device=coords.device, dtype=torch.float32)
    raw = torch.stack([local[:, 0].float(), local[:, 1].float(), c[:, 3], c[:, 4]], dim=1)
    return (raw + 0.5) / size * 2.0 - 1.0


@torch.no_grad()
def partition_window(coords: torch.Tensor, spatial_shape, spec: WindowSpec, set_size: int,
                     axes: tuple[str, ...] = AXES) -> dict[str, SetPartition]:
    """Sets of at most ``set_size`` voxels per window, one partition per sort axis (module docstring).

    The axes share the window grouping (the sort key is window-major, so every axis sees the same
    windows in the same order): one count of the windows, one device synchronisation, for all axes.
    """
    bad = [a for a in axes if a not in AXES]
    if bad:
        raise ValueError(f"set axes must be among {AXES}, got {bad}")
    n = int(coords.shape[0])
    dev = coords.device
    wid, local, (wx, wy, wt) = _window_index(coords, spatial_shape, spec)
    nz = int(spatial_shape[2])
    z = coords[:, 3].long()
    w_order = torch.argsort(wid)
    _, counts = torch.unique_consecutive(wid[w_order], return_counts=True)
    sets_per_window = (counts + set_size - 1) // set_size
    win = torch.repeat_interleave(torch.arange(counts.numel(), device=dev), counts, output_size=n)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n, device=dev) - starts[win]
    n_w, s_w = counts[win], sets_per_window[win]
    local_set = rank * s_w // n_w
    pos = rank - (local_set * n_w + s_w - 1) // s_w  # rank - ceil(j * N / n): slot inside the set
    set_offsets = torch.cumsum(sets_per_window, 0) - sets_per_window
    flat = (set_offsets[win] + local_set) * set_size + pos  # slot of the voxel of sorted position i
    n_sets = int(sets_per_window.sum()) if n else 0
    out = {}
    for axis in axes:
        first, second, w_second = (local[:, 0], local[:, 1], wy) if axis == "x" else (local[:, 1], local[:, 0], wx)
        key = wid * (wx * wy * nz * wt) + ((first * w_second + second) * nz + z) * wt + local[:, 2]
        order = torch.argsort(key)
        index = torch.full((n_sets * set_size,), -1, dtype=torch.long, device=dev)
        index[flat] = order
        index = index.view(n_sets, set_size)
        valid = index >= 0
        index = torch.where(valid, index, index[:, :1])  # slot 0 of every set is a voxel
        inverse = torch.empty(n, dtype=torch.long, device=dev)
        inverse[order] = flat
        out[axis] = SetPartition(index=index, valid=valid, inverse=inverse)
    return out


def partition_sets(coords: torch.Tensor, spatial_shape, spec: WindowSpec, axis: str,
                   set_size: int) -> SetPartition:
    """The partition of one sort axis (``partition_window`` for several)."""
    return partition_window(coords, spatial_shape, spec, set_size, (axis,))[axis]


@torch.no_grad()
def pool_regions(coords: torch.Tensor, spatial_shape, stride: tuple[int, int, int]) -> PoolMap:
    """Group the voxels of one level into regions of ``stride`` cells in (x, y, z), time kept."""
    sx, sy, sz = (int(s) for s in stride)
    nx, ny, nz, nt = (int(s) for s in spatial_shape)
    px, py, pz = (nx + sx - 1) // sx, (ny + sy - 1) // sy, (nz + sz - 1) // sz
    c = coords.long()
    st = torch.tensor([sx, sy, sz], device=coords.device)
    cell, off = c[:, 1:4] // st, c[:, 1:4] % st
    slot = (off[:, 0] * sy + off[:, 1]) * sz + off[:, 2]
    key = (((c[:, 0] * px + cell[:, 0]) * py + cell[:, 1]) * pz + cell[:, 2]) * nt + c[:, 4]
    uniq, parent = torch.unique(key, sorted=True, return_inverse=True)
    k = sx * sy * sz
    n, p = int(c.shape[0]), int(uniq.shape[0])
    rows = torch.arange(n, device=coords.device)
    members = torch.full((p * k,), -1, dtype=torch.long, device=coords.device)
    members[parent * k + slot] = rows
    members = members.view(p, k)
    valid = members >= 0
    any_member = torch.full((p,), n, dtype=torch.long, device=coords.device).scatter_reduce(
        0, parent, rows, reduce="amin")
    members = torch.where(valid, members, any_member[:, None])
    t = uniq % nt
    rest = uniq // nt
    z = rest % pz
    rest = rest // pz
    y = rest % py
    rest = rest // py
    x = rest % px
    b = rest // px
    parent_coords = torch.stack([b, x, y, z, t], dim=1).to(torch.int32)
    return PoolMap(members=members, valid=valid, parent=parent, slot=slot, coords=parent_coords,
                   spatial_shape=(px, py, pz, nt))
