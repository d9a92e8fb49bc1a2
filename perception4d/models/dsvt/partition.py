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
ids. Coarse voxels are ordered by their coordinates (sorted region keys), hence
canonical too.

Cost. A level is planned by ``plan_level`` from sorts, cumulative sums and
scatters whose sizes follow from the number of voxels N: the coordinate columns
are read once, each window partition's cells serve its sets and its positions,
the window-major order of one axis gives the window grouping of all axes,
and windows are counted by a segmented scan over the sorted window ids (no
``unique``, no ``nonzero``, no boolean indexing, no host-to-device copies, no
Python loop over windows: the loops run over the level's few window
partitions). Only the output sizes (sets of each window partition, coarse voxels
of the pooling) depend on the data: they are read back to the host together,
the one device synchronisation of a level, after everything that does not need
them has been queued.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def _columns(coords: torch.Tensor) -> torch.Tensor:
    """(5, N) contiguous int64 rows b, x, y, z, t: one conversion per level, shared by its windows and pooling."""
    if coords.dim() != 2 or coords.shape[1] != 5:
        raise ValueError(f"coords must be (N, 5) (b, x, y, z, t), got shape {tuple(coords.shape)}")
    return coords.t().to(torch.long, memory_format=torch.contiguous_format)


def _floor_div(x: torch.Tensor, d: int) -> torch.Tensor:
    """x // d of an integer tensor by a positive divisor: a shift when d is a power of two."""
    return x >> (d.bit_length() - 1) if d & (d - 1) == 0 else x // d


def _floor_div_mod(x: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x // d, x % d) of an integer tensor by a positive divisor: a shift and a mask when d is a power of two.

    Both forms floor (two's complement shifts round toward minus infinity), so they agree for every x.
    """
    if d & (d - 1) == 0:
        return x >> (d.bit_length() - 1), x & (d - 1)
    return x // d, x % d


def _float_row(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """A small float32 tensor of host values, filled on ``device`` (a host-to-device copy would wait for the device)."""
    row = torch.empty(len(values), dtype=torch.float32, device=device)
    for i, v in enumerate(values):
        row[i:i + 1].fill_(v)
    return row


@dataclass
class _WindowCells:
    """Window id and in-window (x, y, t) of every voxel for one window partition, with its resolved shape."""

    wid: torch.Tensor  # (N,) int64
    lx: torch.Tensor  # (N,) int64
    ly: torch.Tensor  # (N,) int64
    lt: torch.Tensor  # (N,) int64
    shape: tuple[int, int, int]


def _window_cells(cols: torch.Tensor, spatial_shape: tuple[int, int, int, int], spec: WindowSpec) -> _WindowCells:
    """The window of each voxel (module docstring: windows); ``cols`` from ``_columns``.

    Time indices lie in [0, T) (the grid's contract), so a window spanning every time index has t as its local t.
    """
    b, x, y, _, t = cols
    nx, ny, _, nt = spatial_shape
    (wx, wy, wt), (sx, sy, st) = spec.resolved(nt)
    n_wx, n_wy, n_wt = (nx + sx + wx - 1) // wx, (ny + sy + wy - 1) // wy, (nt + st + wt - 1) // wt
    gx, lx = _floor_div_mod(x + sx if sx else x, wx)
    gy, ly = _floor_div_mod(y + sy if sy else y, wy)
    wid = (b * n_wx + gx) * n_wy + gy
    if wt == nt:  # resolved windows that span time have no time shift: one time window, local t = t
        lt = t
    else:
        gt, lt = _floor_div_mod(t + st if st else t, wt)
        wid = wid * n_wt + gt
    return _WindowCells(wid=wid, lx=lx, ly=ly, lt=lt, shape=(wx, wy, wt))


def _positions(cells: _WindowCells, cols: torch.Tensor, spatial_shape: tuple[int, int, int, int]) -> torch.Tensor:
    """(N, 4) float32 position inputs of one window partition (see ``window_positions``)."""
    wx, wy, _ = cells.shape
    nz, nt = spatial_shape[2], spatial_shape[3]
    raw = torch.empty((int(cols.shape[1]), 4), dtype=torch.float32, device=cols.device)
    for i, col in enumerate((cells.lx, cells.ly, cols[3], cols[4])):
        raw[:, i] = col
    return (raw + 0.5) / _float_row((wx, wy, nz, nt), cols.device) * 2.0 - 1.0


@dataclass
class _StagedSets:
    """One window partition up to the allocations that need its set count (read back with the level's other sizes)."""

    orders: dict[str, torch.Tensor]  # axis -> (N,) voxel rows in window-major axis-major order
    flat: torch.Tensor  # (N,) slot s * S + k of the voxel at each sorted position (the same for every axis)
    num_sets: torch.Tensor  # () int64, on the device
    set_size: int

    def finish(self, num_sets: int) -> dict[str, SetPartition]:
        out = {}
        size = self.set_size
        for axis, order in self.orders.items():
            index = torch.full((num_sets * size,), -1, dtype=torch.long, device=order.device)
            index = index.scatter_(0, self.flat, order).view(num_sets, size)
            valid = index >= 0
            index = torch.where(valid, index, index[:, :1])  # slot 0 of every set is a voxel
            inverse = torch.empty_like(order).scatter_(0, order, self.flat)
            out[axis] = SetPartition(index=index, valid=valid, inverse=inverse)
        return out


def _segments(sorted_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(segment ordinal, segment start flag) of each position of a sorted key: runs of equal keys are segments."""
    start = torch.ones(sorted_keys.shape, dtype=torch.bool, device=sorted_keys.device)
    torch.ne(sorted_keys[1:], sorted_keys[:-1], out=start[1:])
    return torch.cumsum(start, 0) - 1, start


def _stage_sets(cols: torch.Tensor, spatial_shape: tuple[int, int, int, int], cells: _WindowCells,
                axes: tuple[str, ...], set_size: int) -> _StagedSets:
    """Sort keys, window grouping and set slots of one window partition, with no host synchronisation.

    Every axis's key is window-major (window id, then the axis-major local key), so the windows come in the
    same order for all axes and the window ids in the first axis's order give the grouping of all of them.
    """
    bad = [a for a in axes if a not in AXES]
    if bad or not axes:
        raise ValueError(f"set axes must be one or more of {AXES}, got {list(axes)}")
    n = int(cols.shape[1])
    wx, wy, wt = cells.shape
    zt_cells = spatial_shape[2] * wt
    zt = cols[3] * wt + cells.lt  # (z, local t), the last digits of both keys
    orders = {}
    for axis in axes:
        if axis == "x":
            key = ((cells.wid * wx + cells.lx) * wy + cells.ly) * zt_cells + zt
        else:
            key = ((cells.wid * wy + cells.ly) * wx + cells.lx) * zt_cells + zt
        orders[axis] = torch.argsort(key)
    win, start = _segments(cells.wid.index_select(0, orders[axes[0]]))  # window ordinal of each sorted position
    pos_idx = torch.arange(n, device=cols.device)
    rank = pos_idx - torch.cummax(torch.where(start, pos_idx, 0), 0).values  # rank inside the window
    counts = torch.zeros(n, dtype=torch.long, device=cols.device).scatter_add_(0, win, torch.ones_like(win))
    sets_per_window = _floor_div(counts + (set_size - 1), set_size)  # 0 past the last window
    set_offsets = torch.cumsum(sets_per_window, 0) - sets_per_window
    n_w, s_w = counts.index_select(0, win), sets_per_window.index_select(0, win)
    local_set = rank * s_w // n_w
    pos = rank - (local_set * n_w + s_w - 1) // s_w  # rank - ceil(j * N / n): slot inside the set
    flat = (set_offsets.index_select(0, win) + local_set) * set_size + pos
    return _StagedSets(orders=orders, flat=flat, num_sets=sets_per_window.sum(), set_size=set_size)


@dataclass
class _StagedPool:
    """Pooling regions of one level up to the allocations that need the number of coarse voxels."""

    parent: torch.Tensor  # (N,) int64 coarse row of each fine voxel
    slot: torch.Tensor  # (N,) int64 offset of each fine voxel in its region
    coarse: tuple[torch.Tensor, ...]  # b, x, y, z, t (N,) int64: coarse coordinates of every fine voxel
    num_regions: torch.Tensor  # () int64, on the device
    region_cells: int
    spatial_shape: tuple[int, int, int, int]

    def finish(self, num_regions: int) -> PoolMap:
        n, k = int(self.parent.shape[0]), self.region_cells
        rows = torch.arange(n, device=self.parent.device)
        members = torch.full((num_regions * k,), -1, dtype=torch.long, device=rows.device)
        members = members.scatter_(0, self.parent * k + self.slot, rows).view(num_regions, k)
        valid = members >= 0
        first = torch.full((num_regions,), n, dtype=torch.long, device=rows.device).scatter_reduce_(
            0, self.parent, rows, reduce="amin")  # the region's first row: every region has one
        members = torch.where(valid, members, first[:, None])
        coords = torch.stack([c.index_select(0, first) for c in self.coarse], dim=1).to(torch.int32)
        return PoolMap(members=members, valid=valid, parent=self.parent, slot=self.slot, coords=coords,
                       spatial_shape=self.spatial_shape)


def _stage_pool(cols: torch.Tensor, spatial_shape: tuple[int, int, int, int],
                stride: tuple[int, int, int]) -> _StagedPool:
    """Regions of ``stride`` cells in (x, y, z), time kept, ordered by coarse coordinates; no host synchronisation."""
    sx, sy, sz = (int(s) for s in stride)
    nx, ny, nz, nt = spatial_shape
    px, py, pz = (nx + sx - 1) // sx, (ny + sy - 1) // sy, (nz + sz - 1) // sz
    b, x, y, z, t = cols
    (cx, ox), (cy, oy), (cz, oz) = _floor_div_mod(x, sx), _floor_div_mod(y, sy), _floor_div_mod(z, sz)
    slot = (ox * sy + oy) * sz + oz
    key = (((b * px + cx) * py + cy) * pz + cz) * nt + t
    sorted_key, order = torch.sort(key)
    region, start = _segments(sorted_key)
    parent = torch.empty_like(region).scatter_(0, order, region)
    return _StagedPool(parent=parent, slot=slot, coarse=(b, cx, cy, cz, t), num_regions=start.sum(),
                       region_cells=sx * sy * sz, spatial_shape=(px, py, pz, nt))


@torch.no_grad()
def plan_level(coords: torch.Tensor, spatial_shape, keys: Sequence[tuple[WindowSpec, str]], set_size: int,
               pool_stride: Sequence[int] | None = None) -> tuple[LevelPlan, PoolMap | None]:
    """The set partitions and positions of ``keys`` (window, axis), and the pooling to the next level if asked.

    One device synchronisation: the set count of every window partition and the number of coarse voxels are
    read back together, after all work that does not depend on them has been queued.
    """
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) != 4:
        raise ValueError(f"spatial_shape must be (X, Y, Z, T), got {spatial_shape}")
    if set_size < 1:
        raise ValueError(f"set_size must be >= 1, got {set_size}")
    cols = _columns(coords)
    axes: dict[WindowSpec, list[str]] = {}  # windows in first-use order, each with its sort axes
    for w, a in keys:
        if a not in axes.setdefault(w, []):
            axes[w].append(a)
    cells = {w: _window_cells(cols, shape, w) for w in axes}
    staged = {w: _stage_sets(cols, shape, cells[w], tuple(ax), set_size) for w, ax in axes.items()}
    positions = {w: _positions(cells[w], cols, shape) for w in axes}
    pool = _stage_pool(cols, shape, tuple(pool_stride)) if pool_stride is not None else None
    counts = [s.num_sets for s in staged.values()] + ([pool.num_regions] if pool is not None else [])
    sizes = torch.stack(counts).tolist() if counts else []  # the level's one host synchronisation
    parts = {}
    for (w, stage), num_sets in zip(staged.items(), sizes):
        for axis, part in stage.finish(int(num_sets)).items():
            parts[(w, axis)] = part
    level = LevelPlan(coords=coords, spatial_shape=shape, partitions={k: parts[k] for k in keys},
                      positions=positions)
    return level, (pool.finish(int(sizes[-1])) if pool is not None else None)


@torch.no_grad()
def window_positions(coords: torch.Tensor, spatial_shape, spec: WindowSpec) -> torch.Tensor:
    """(N, 4) position inputs in [-1, 1]: x, y offsets inside the window, z and t over the grid.

    z and t are absolute (normalised by the grid's Z and T): the window spans z, and the time
    index is meaningful by itself (the windows are right-aligned: T - 1 is the newest sweep).
    """
    shape = tuple(int(s) for s in spatial_shape)
    cols = _columns(coords)
    return _positions(_window_cells(cols, shape, spec), cols, shape)


@torch.no_grad()
def partition_window(coords: torch.Tensor, spatial_shape, spec: WindowSpec, set_size: int,
                     axes: tuple[str, ...] = AXES) -> dict[str, SetPartition]:
    """Sets of at most ``set_size`` voxels per window, one partition per sort axis (module docstring).

    The axes share the window grouping (the sort key is window-major, so every axis sees the same
    windows in the same order): one count of the windows, one device synchronisation, for all axes.
    """
    level, _ = plan_level(coords, spatial_shape, [(spec, a) for a in axes], set_size)
    return {a: level.partitions[(spec, a)] for a in axes}


def partition_sets(coords: torch.Tensor, spatial_shape, spec: WindowSpec, axis: str,
                   set_size: int) -> SetPartition:
    """The partition of one sort axis (``partition_window`` for several)."""
    return partition_window(coords, spatial_shape, spec, set_size, (axis,))[axis]


@torch.no_grad()
def pool_regions(coords: torch.Tensor, spatial_shape, stride: tuple[int, int, int]) -> PoolMap:
    """Group the voxels of one level into regions of ``stride`` cells in (x, y, z), time kept."""
    _, pool = plan_level(coords, spatial_shape, [], 1, stride)
    return pool
