"""Points (with a time index) -> SparseTensor4D: the one voxelization path for training and inference.

Space is quantized, time is not: ``ix = floor((x - xmin) / vx)`` (likewise y,
z) in float32 arithmetic with the bounds rounded to float32, and ``t`` is the
given time index. Voxel rows come out sorted lexicographically by
``(b, x, y, z, t)``, so the CPU (numba) and torch backends give identical
tensors. Points with a non-finite value in any column, or outside
``[min, max)`` on any axis, are dropped and counted; a time or batch index
outside its range is an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from perception4d.core.geometry import Geometry
from perception4d.core.sparse import DropStats, SparseTensor4D
from perception4d.core.window import AlignedWindow
from perception4d.errors import WindowError
from perception4d.utils.device import device_constant

log = logging.getLogger("perception4d.voxelize")

BACKENDS = ("auto", "numba", "torch")


def _as_tensor(a, name: str) -> torch.Tensor:
    if isinstance(a, np.ndarray):
        if a.dtype.kind == "u":  # torch lacks most ops on wide unsigned types
            a = a.astype(np.int64)
        if any(s < 0 for s in a.strides):  # torch.from_numpy refuses negative strides (e.g. a[::-1])
            a = np.ascontiguousarray(a)
        return torch.from_numpy(a)
    if isinstance(a, torch.Tensor):
        return a.detach()
    raise TypeError(f"voxelize: {name} must be a torch.Tensor or numpy array, got {type(a).__name__}")


def _index_array(a, name: str, n: int, device: torch.device) -> torch.Tensor:
    t = _as_tensor(a, name).to(device)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"voxelize: {name} must hold integer indices, got dtype {t.dtype}")
    if t.shape != (n,):
        raise ValueError(f"voxelize: {name} must have shape ({n},) (one entry per point), "
                         f"got {tuple(t.shape)}")
    return t


def _range_stats(time: torch.Tensor, batch: torch.Tensor | None) -> torch.Tensor:
    """(4,) int64 on the indices' device: [time min, time max, batch min, batch max] (batch: 0, 0 without one)."""
    stats = [time.min(), time.max()] + ([torch.zeros((), dtype=time.dtype, device=time.device)] * 2
                                        if batch is None else [batch.min(), batch.max()])
    return torch.stack([s.to(torch.int64) for s in stats])


def _index_ranges(time: torch.Tensor, batch: torch.Tensor | None) -> list[int]:
    """[time min, time max, batch min, batch max] now (numpy on CPU, one device sync elsewhere)."""
    if time.device.type == "cpu":
        arrays = [time.numpy()] + ([] if batch is None else [batch.numpy()])
        values = [int(f(a)) for a in arrays for f in (np.min, np.max)]
        return values + [0, 0] if batch is None else values
    return _range_stats(time, batch).tolist()


def _check_ranges(ranges: list[int], num_frames: int, batch_size: int | None) -> int:
    """Raise on a time/batch index outside its range; return the batch size (``ranges``: ``_index_ranges``)."""
    t_lo, t_hi, b_lo, b_hi = ranges
    if t_lo < 0 or t_hi >= num_frames:
        raise ValueError(f"voxelize: time index outside [0, {num_frames}) (geometry.num_frames): "
                         f"got values in [{t_lo}, {t_hi}]")
    if batch_size is None:
        batch_size = b_hi + 1
    if b_lo < 0 or b_hi >= batch_size:
        raise ValueError(f"voxelize: batch index outside [0, {batch_size}) (batch_size): "
                         f"got values in [{b_lo}, {b_hi}]")
    return int(batch_size)


def voxelize(points, time, geometry: Geometry, batch=None, batch_size: int | None = None,
             backend: str = "auto") -> SparseTensor4D:
    """Voxelize (P, C) points (x, y, z first) with a (P,) time index into a SparseTensor4D.

    ``points``/``time``/``batch`` are torch tensors (any device) or numpy arrays; the result lives on
    the points' device (CPU for numpy). Features are the per-voxel mean of all C columns.
    ``backend``: "numba" (CPU), "torch" (any device) or "auto" (numba on CPU, torch elsewhere).
    """
    if backend not in BACKENDS:
        raise ValueError(f"voxelize: backend must be one of {BACKENDS}, got {backend!r}")
    pts = _as_tensor(points, "points")
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"voxelize: points must be (P, C) with C >= 3 (x, y, z first), "
                         f"got {tuple(pts.shape)}")
    if not pts.dtype.is_floating_point:
        raise ValueError(f"voxelize: points must be floating point, got {pts.dtype}")
    pts = pts.to(torch.float32)
    device = pts.device
    n = pts.shape[0]
    tm = _index_array(time, "time", n, device)
    bt = None if batch is None else _index_array(batch, "batch", n, device)
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"voxelize: batch_size must be >= 1, got {batch_size}")
    if backend == "auto":
        backend = "numba" if device.type == "cpu" else "torch"
    # the torch backend reads the index ranges back with its own results (one synchronisation a call)
    deferred = backend == "torch" and batch_size is not None and n > 0
    if n == 0:
        nb = 1 if batch_size is None else int(batch_size)
    elif not deferred:
        nb = _check_ranges(_index_ranges(tm, bt), geometry.num_frames, batch_size)
    else:
        nb = int(batch_size)
    dims = (nb, *geometry.spatial_shape)
    if np.prod(np.array(dims, dtype=np.float64)) >= 2.0**63 or nb >= 2**31:
        raise ValueError(f"voxelize: grid (batch, X, Y, Z, T) = {dims} is too large for int64 voxel keys")

    lower, upper = geometry.lower, geometry.upper
    voxel_size = np.asarray(geometry.voxel_size, np.float32)
    if backend == "numba":
        if device.type != "cpu":
            raise ValueError(f"voxelize: backend 'numba' runs on CPU but the points are on {device}; "
                             f"use backend='torch' or 'auto'")
        from perception4d.ops.voxelize_numba import voxelize_numba

        # indices are range-checked above, so int32 holds them (and AlignedWindow.time is int32 already)
        res = voxelize_numba(np.ascontiguousarray(pts.numpy()), tm.numpy().astype(np.int32, copy=False),
                             None if bt is None else bt.numpy().astype(np.int32, copy=False),
                             lower, upper, voxel_size, dims)
        coords, feats = torch.from_numpy(res.coords), torch.from_numpy(res.features)
        counts, p2v = torch.from_numpy(res.counts), torch.from_numpy(res.point_to_voxel)
    else:
        from perception4d.ops.voxelize_torch import voxelize_torch

        bounds = (device_constant(v, device, torch.float32) for v in (lower, upper, voxel_size))
        res, ranges = voxelize_torch(pts, tm, bt, *bounds, dims,
                                     read_back=_range_stats(tm, bt) if deferred else None)
        if deferred:  # out-of-range indices made keys of other cells: the result is discarded
            _check_ranges(ranges, geometry.num_frames, nb)
        coords, feats, counts, p2v = res.coords, res.features, res.counts, res.point_to_voxel

    dropped = DropStats(out_of_range=res.out_of_range, non_finite=res.non_finite)
    log.debug("voxelize[%s]: %d points -> %d voxels; dropped %d out of range, %d non-finite",
              backend, n, coords.shape[0], dropped.out_of_range, dropped.non_finite)
    return SparseTensor4D(coords=coords, features=feats, spatial_shape=geometry.spatial_shape, batch_size=nb,
                          geometry=geometry, point_to_voxel=p2v, counts=counts, dropped=dropped)


class HostStaging:
    """A reusable pinned host buffer for host -> GPU copies (null object on CPU: plain numpy memory).

    Pinned memory makes ``non_blocking`` copies asynchronous and about twice as fast
    as pageable ones; allocating it is slow, so the buffer is kept and grown.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self._buf: torch.Tensor | None = None
        self._extra: list[torch.Tensor] = []  # overflow buffers of the current batch, alive until its copies end
        self._done: torch.cuda.Event | None = None
        self._used = 0

    def __getstate__(self):  # copies and pickles start with an empty buffer (events cannot be copied)
        return {"device": self.device}

    def __setstate__(self, state):
        self.__init__(state["device"])

    def begin(self) -> None:
        """Start filling a new batch (waits until the previous batch's copies have finished)."""
        if self._done is not None:
            self._done.synchronize()
            self._done = None
        self._used = 0
        self._extra.clear()

    def array(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An uninitialised numpy array of ``shape``, in pinned memory when the device is a GPU."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if self.device.type != "cuda":
            return np.empty(shape, dtype)
        start = -(-self._used // 64) * 64  # 64-byte aligned slices
        if self._buf is None or start + nbytes > self._buf.numel():
            if self._used:  # earlier slices of this batch live in the old buffer: keep them valid
                self._extra.append(torch.empty(nbytes, dtype=torch.uint8).pin_memory())
                return self._extra[-1].numpy().view(dtype).reshape(shape)
            self._buf = torch.empty(max(nbytes, 1 << 20) * 2, dtype=torch.uint8).pin_memory()
            start = 0
        self._used = start + nbytes
        return self._buf[start:start + nbytes].numpy().view(dtype).reshape(shape)

    def to_device(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(self.device, non_blocking=True)

    def end(self) -> None:
        """Mark the copies of this batch as issued (``begin`` waits for them)."""
        if self.device.type == "cuda":
            self._done = torch.cuda.Event()
            self._done.record(torch.cuda.current_stream(self.device))


@dataclass
class PackedWindows:
    """Several AlignedWindows' points concatenated on a device, with time and batch indices."""

    points: torch.Tensor  # (P, C) float32
    time: torch.Tensor  # (P,) int32
    batch: torch.Tensor  # (P,) int32
    offsets: np.ndarray  # (B + 1,) window b's points are rows offsets[b]:offsets[b + 1]
    columns: tuple[str, ...]


def pack_windows(windows: Sequence[AlignedWindow], geometry: Geometry, device: torch.device | str,
                 columns: Sequence[str] | None = None, staging: HostStaging | None = None) -> PackedWindows:
    """Concatenate aligned windows and move them to ``device`` in one copy per array.

    ``columns`` selects and orders the feature columns (default: the first window's). With a
    ``staging`` buffer the host side is written straight into pinned memory.
    """
    if len(windows) == 0:
        raise WindowError("pack_windows needs at least one window")
    cols = tuple(windows[0].columns if columns is None else columns)
    if cols[:3] != ("x", "y", "z"):
        raise WindowError(f"pack_windows: columns must start with x, y, z, got {cols}")
    sizes = []
    for k, w in enumerate(windows):
        if w.num_frames > geometry.num_frames:
            raise WindowError(f"pack_windows: window {k} has {w.num_frames} frames but "
                              f"geometry.num_frames is {geometry.num_frames}")
        missing = [name for name in cols if name not in w.columns]
        if missing:
            raise WindowError(f"pack_windows: window {k} lacks columns {missing}; it has {w.columns}")
        sizes.append(w.points.shape[0])
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    staging = staging or HostStaging(device)
    staging.begin()
    points = staging.array((int(offsets[-1]), len(cols)), np.float32)
    tb = staging.array((2, int(offsets[-1])), np.int32)  # rows: time, batch
    for k, w in enumerate(windows):
        sl = slice(offsets[k], offsets[k + 1])
        if tuple(w.columns) == cols:
            points[sl] = w.points
        else:
            points[sl] = w.points[:, [w.columns.index(name) for name in cols]]
        tb[0, sl] = w.time
        tb[1, sl] = k
    points_dev, tb_dev = staging.to_device(points), staging.to_device(tb)
    staging.end()
    return PackedWindows(points=points_dev, time=tb_dev[0], batch=tb_dev[1], offsets=offsets, columns=cols)


def voxelize_windows(windows: Sequence[AlignedWindow], geometry: Geometry, device: torch.device | str,
                     columns: Sequence[str] | None = None) -> SparseTensor4D:
    """Batch aligned windows into one SparseTensor4D on ``device`` (batch index = position in the list).

    Time indices are taken as the windows carry them: a window shorter than ``geometry.num_frames``
    keeps its newest frame at ``n - 1`` unless shifted first (``build_window_sample`` right-aligns).

    The data moves to ``device`` once; ``point_to_voxel`` follows the windows' points concatenated in
    list order. ``columns`` selects and orders the feature columns (default: the first window's).
    """
    packed = pack_windows(windows, geometry, device, columns)
    return voxelize(packed.points, packed.time, geometry, batch=packed.batch, batch_size=len(windows))
