"""Neighbour tables of 4D sparse voxels: the "rulebooks" of submanifold, strided and inverse convolutions.

A sparse convolution needs, for every output voxel and every kernel offset,
the row of the input voxel at that offset (or none). spconv builds these
pairs inside every layer call with hash tables and device synchronisations;
here they are built once per frame for a whole U-Net from sorted linear keys
(``torch.sort`` + ``torch.searchsorted``), as dense ``(K, N)`` int32 tables
whose missing entries point at a *sentinel* row ``N`` (a zero feature row the
executor appends). Building a level costs one sort and one searchsorted over
``N * K`` queries; only the coarser levels' sizes (``torch.unique``) need the
host.

Conventions (identical to spconv, checked against it in tests/ops/test_neighbors.py):

* coordinates are ``(b, x, y, z, t)`` int rows, ``spatial_shape`` is ``(X, Y, Z, T)``;
* submanifold kernel ``k`` (kernel shape ``K``, odd sizes) reads the input at
  ``p + k - K // 2`` for output ``p``; offsets are enumerated row-major over
  the kernel shape, the order of spconv's ``(Cout, *K, Cin)`` weights;
* a strided kernel-2 / stride-2 convolution (time not strided) sends input
  ``p`` to output ``p // 2`` with kernel offset ``p % 2``; output extents are
  spconv's ``(X - 2) // 2 + 1`` (inputs beyond them belong to no output);
* the inverse convolution gives input site ``p`` the row of its parent
  ``p // 2`` and the same kernel offset.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from perception4d.ops.gather_conv import take_rows
from perception4d.utils.device import device_constant

def kernel_offsets(kernel: tuple[int, int, int, int]) -> torch.Tensor:
    """(K, 4) integer offsets ``k - K // 2`` of a centred kernel, row-major (spconv's weight order)."""
    if any(k % 2 == 0 for k in kernel):
        raise ValueError(f"submanifold kernel {kernel} must have odd sizes")
    ranges = [range(-(k // 2), k // 2 + 1) for k in kernel]
    return torch.tensor(list(itertools.product(*ranges)), dtype=torch.int64)


class KeyCodec:
    """Linear int64 keys of ``(b, x, y, z, t)`` with one padding cell on every side of every axis.

    The padding makes ``key(p + d) == key(p) + delta(d)`` for any offset ``|d| <= 1`` without wrapping
    into a neighbouring row, so neighbour queries are key additions.
    """

    def __init__(self, spatial_shape: tuple[int, int, int, int], batch_size: int):
        self.shape = tuple(int(s) for s in spatial_shape)
        self.batch_size = int(batch_size)
        self.padded = tuple(s + 2 for s in self.shape)
        strides = [1]
        for s in reversed(self.padded[1:]):
            strides.insert(0, strides[0] * s)
        self.strides = tuple(strides)  # of x, y, z, t
        self.batch_stride = strides[0] * self.padded[0]
        if self.batch_stride * max(self.batch_size, 1) >= 2 ** 62:
            raise ValueError(f"grid {self.shape} x batch {batch_size} too large for int64 voxel keys")

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        c = coords.to(torch.int64)
        key = c[:, 0] * self.batch_stride
        for axis in range(4):
            key = key + (c[:, axis + 1] + 1) * self.strides[axis]
        return key

    def decode(self, keys: torch.Tensor) -> torch.Tensor:
        out = torch.empty(keys.shape[0], 5, dtype=torch.int32, device=keys.device)
        rest = keys
        out[:, 0] = torch.div(rest, self.batch_stride, rounding_mode="floor").to(torch.int32)
        rest = rest - out[:, 0].to(torch.int64) * self.batch_stride
        for axis in range(4):
            q = torch.div(rest, self.strides[axis], rounding_mode="floor")
            out[:, axis + 1] = (q - 1).to(torch.int32)
            rest = rest - q * self.strides[axis]
        return out

    def delta(self, offsets: torch.Tensor) -> torch.Tensor:
        """Key differences of (K, 4) offsets (each component in [-1, 1])."""
        if offsets.numel() and int(offsets.abs().max()) > 1:
            raise ValueError("neighbour offsets beyond one cell need a wider key padding")
        return offsets @ torch.tensor(self.strides, dtype=torch.int64)


def submanifold_table(keys: torch.Tensor, deltas: torch.Tensor, sorted_keys: torch.Tensor | None = None,
                      order: torch.Tensor | None = None) -> torch.Tensor:
    """(K, N) int32 row of the voxel at ``key + delta[k]`` for every voxel, ``N`` where there is none.

    Offset-major, so a kernel reading offset ``k`` of consecutive voxels reads consecutive memory.
    ``deltas`` are a centred kernel's (``delta[K - 1 - k] == -delta[k]``): only the first half is searched;
    the centre is the voxel itself, and voxel ``j`` found at ``+d`` of voxel ``i`` has ``i`` at ``-d``
    (keys are unique), so the second half is the first one scattered back.

    ``sorted_keys`` / ``order`` (``torch.sort(keys)``) may be passed when known; keys must be unique.
    """
    n = keys.shape[0]
    k_all = deltas.shape[0]
    half = k_all // 2
    if k_all % 2 != 1 or not torch.equal(deltas, -deltas.flip(0)):
        raise ValueError(f"submanifold_table needs the key deltas of a centred kernel, got {deltas.tolist()}")
    if sorted_keys is None:
        sorted_keys, order = torch.sort(keys)
    ids = torch.arange(n, device=keys.device)
    table = torch.empty((k_all, n), dtype=torch.int32, device=keys.device)
    table[half] = ids
    if half == 0:
        return table
    q = keys[None, :] + device_constant(tuple(deltas[:half].tolist()), keys.device)[:, None]
    pos = torch.searchsorted(sorted_keys, q).clamp_(max=max(n - 1, 0)).view(-1)
    hit = take_rows(sorted_keys, pos).view(q.shape) == q
    rows = (pos if order is None else take_rows(order, pos)).view(q.shape)
    found = torch.where(hit, rows, torch.full_like(rows, n))  # (half, n); n: none
    table[:half] = found
    mirror = torch.full((half, n + 1), n, dtype=torch.int64, device=keys.device)  # column n: scratch
    mirror.scatter_(1, found, ids.expand(half, n))
    table[half + 1:] = mirror[:, :n].flip(0)
    return table


@dataclass
class LevelTables:
    """Tables of one U-Net level and of its step down to the next level.

    ``n`` rows are allocated (the capacity); the first ``count`` are voxels, the rest padding that
    no voxel reads (their keys lie far beyond every voxel key). The sentinel row of every table is ``n``.
    """

    n: int
    count: torch.Tensor  # 0-dim int64 (on the device): voxels at this level
    coords: torch.Tensor  # (n, 5) int32; rows >= count undefined
    spatial_shape: tuple[int, int, int, int]
    subm: dict  # kernel -> (K, n) int32 table
    down: torch.Tensor | None = None  # (8, n_next) int32 rows of this level at each kernel-2 offset, n where none
    up: torch.Tensor | None = None  # (n,) int32 flat row ``parent * 8 + offset`` into (n_next * 8) up-features,
    #                                 n_next * 8 (a sentinel) where the site has no parent


@dataclass
class UNetPlan:
    """Neighbour tables of every level of a sparse U-Net for one batch of coordinates."""

    levels: list[LevelTables]
    batch_size: int
    counts: torch.Tensor  # (L,) int64 voxels per level (device)
    overflow: torch.Tensor  # 0-dim bool (device): a level has more voxels than its capacity (tables invalid)

    @property
    def capacities(self) -> tuple[int, ...]:
        return tuple(lvl.n for lvl in self.levels)


def strided_shape(shape: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Output extents of spconv's kernel (2, 2, 2, 1) / stride (2, 2, 2, 1) convolution without padding."""
    x, y, z, t = shape
    return ((x - 2) // 2 + 1, (y - 2) // 2 + 1, (z - 2) // 2 + 1, t)


#: keys of padding rows start here (every voxel key is below it) and are ``PAD_STRIDE_CELLS`` batch strides apart
PAD_BASE = 1 << 60
PAD_STRIDE_CELLS = 4


def _pad_keys(codec: KeyCodec, n: int, device) -> torch.Tensor:
    return PAD_BASE + torch.arange(n, device=device, dtype=torch.int64) * (PAD_STRIDE_CELLS * codec.batch_stride)


def build_unet_plan(coords: torch.Tensor, spatial_shape, batch_size: int, num_levels: int,
                    kernels=((3, 3, 3, 1), (1, 1, 1, 3)), count: torch.Tensor | int | None = None,
                    capacities: tuple[int, ...] | None = None) -> UNetPlan:
    """Tables of a ``num_levels``-level U-Net: submanifold tables of ``kernels`` at every level, and the
    kernel-2 / stride-(2, 2, 2, 1) down tables and their inverse (up) tables between levels.

    ``coords``: (N, 5) int rows ``(b, x, y, z, t)`` inside ``spatial_shape``, unique among the first
    ``count`` rows (default: all N); later rows are padding and ignored.

    ``capacities``: rows allocated at levels 1.. (level 0 has N). With them every tensor has a size known in
    advance and nothing waits for the device (the plan can be captured in a CUDA graph); a level with more
    voxels than its capacity sets ``plan.overflow`` (build again with larger capacities). Without them each
    coarser level's size is read from the device (one synchronisation per level) and used as its capacity.
    """
    if coords.dim() != 2 or coords.shape[1] != 5:
        raise ValueError(f"coords must be (N, 5) (b, x, y, z, t), got {tuple(coords.shape)}")
    if capacities is not None and len(capacities) != num_levels - 1:
        raise ValueError(f"capacities: {num_levels - 1} values (levels 1..{num_levels - 1}), got {capacities}")
    device = coords.device
    shape = tuple(int(s) for s in spatial_shape)
    offsets = {k: kernel_offsets(k) for k in kernels}
    cap = int(coords.shape[0])
    if count is None:
        count_t = torch.tensor(cap, dtype=torch.int64, device=device)
    else:
        count_t = torch.as_tensor(count, dtype=torch.int64, device=device)
    levels: list[LevelTables] = []
    counts = [count_t]
    overflow = torch.zeros((), dtype=torch.bool, device=device)
    cur = coords
    codec = KeyCodec(shape, batch_size)
    rows = torch.arange(cap, device=device)
    valid = rows < count_t
    keys = torch.where(valid, codec.encode(cur), _pad_keys(codec, cap, device))
    sorted_keys, order = torch.sort(keys)
    for lvl in range(num_levels):
        tables = {k: submanifold_table(keys, codec.delta(off), sorted_keys, order) for k, off in offsets.items()}
        level = LevelTables(n=cap, count=count_t, coords=cur, spatial_shape=shape, subm=tables)
        levels.append(level)
        if lvl == num_levels - 1:
            break
        # one level down: parents p // 2 (time kept), kernel offset p % 2 over x, y, z
        nshape = strided_shape(shape)
        ncodec = KeyCodec(nshape, batch_size)
        c = cur.to(torch.int64)
        parent = torch.cat([c[:, :1], torch.div(c[:, 1:4], 2, rounding_mode="floor"), c[:, 4:]], 1)
        has_parent = valid & (parent[:, 1:4] < device_constant(nshape[:3], device)).all(1)
        offset = (c[:, 1] % 2) * 4 + (c[:, 2] % 2) * 2 + (c[:, 3] % 2)
        pkeys = torch.where(has_parent, ncodec.encode(parent), _pad_keys(ncodec, cap, device))
        s, o = torch.sort(pkeys)
        first = torch.ones_like(s, dtype=torch.bool)
        first[1:] = s[1:] != s[:-1]
        run = torch.cumsum(first, 0) - 1  # parent id of each sorted child (padding: ids beyond the parents)
        n_next_t = (first & (s < PAD_BASE)).sum()
        if capacities is None:
            ncap = max(int(n_next_t), 1)
        else:
            ncap = int(capacities[lvl])
            overflow = overflow | (n_next_t > ncap)
        ukeys = torch.zeros(ncap + 1, dtype=torch.int64, device=device)
        ukeys.scatter_(0, run.clamp(max=ncap), s)  # every child of a parent writes the same key
        nrows = torch.arange(ncap, device=device)
        nvalid = nrows < n_next_t
        ukeys = torch.where(nvalid, ukeys[:ncap], _pad_keys(ncodec, ncap, device))
        inverse = torch.empty_like(run)
        inverse[o] = run
        real = has_parent & (inverse < n_next_t) & (inverse < ncap)
        down = torch.full((8, ncap + 1), cap, dtype=torch.int32, device=device)
        down[torch.where(real, offset, 0), torch.where(real, inverse, ncap)] = torch.where(real, rows, cap).to(
            torch.int32)
        level.down = down[:, :ncap].contiguous()
        level.up = torch.where(real, inverse * 8 + offset, torch.full_like(inverse, ncap * 8)).to(torch.int32)
        cur = ncodec.decode(ukeys)
        counts.append(n_next_t)
        shape, codec, cap, count_t, rows, valid = nshape, ncodec, ncap, n_next_t, nrows, nvalid
        keys = sorted_keys = ukeys  # parents come sorted by key (padding keys last): no sort needed
        order = None
    return UNetPlan(levels=levels, batch_size=int(batch_size), counts=torch.stack(counts), overflow=overflow)
