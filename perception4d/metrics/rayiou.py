"""RayIoU of semantic occupancy: rays cast through the ground-truth and predicted grids.

The definition is the one of the OpenOcc v2 / CVPR 2024 occupancy challenge
(SparseOcc, "Fully Sparse 3D Occupancy Prediction"):

* every ray is marched from its origin through the grid (3-D DDA) until the
  first occupied voxel (class != 0); its *depth* is the distance from the
  origin to where the ray leaves that voxel, as the reference renderer
  reports it, and its *label* is that voxel's class. A ray that leaves the
  grid without a hit has label 0 (free).
* only rays whose ground truth hits an occupied voxel are scored. A
  prediction is a true positive of class c when both labels are c and
  ``|depth_pred - depth_gt| < threshold`` (strict, as in the reference);
  ``FP_c = #(pred label c) - TP_c`` and ``FN_c = #(gt label c) - TP_c``, so a
  ray of the right class at the wrong depth counts as one FP and one FN.
* per threshold, ``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` over all rays of all
  frames; classes with no ray in ground truth or prediction are NaN and left
  out of the mean over classes; RayIoU is the mean over the thresholds
  (1, 2, 4 m by default).

Where this differs from the reference implementation:

* rays: the reference casts a fixed set (1-degree azimuth step,
  ``occ3d_ray_directions``) from up to 8 LiDAR origins of the sequence (past
  and future frames within 39 m, expressed in the evaluated ego frame). Here
  the caller supplies a ``RaySet``: any origins and directions (e.g. the
  directions of the frame's real LiDAR points, or the fixed set from several
  origins with ``RaySet.from_origins``).
* marching is in metres, so anisotropic voxels are handled exactly (the
  reference scales all axes by one voxel size, 0.4 m). Origins may lie
  outside the grid (the ray is clipped to the grid box; depth still counts
  from the origin); the reference requires origins inside it.
* ground-truth voxels of ``OCC_IGNORE`` stop a ray like any occupied voxel;
  such rays are not scored and are counted in ``RayStats.num_ignored``.
  A prediction may not contain ``OCC_IGNORE``.
* the visibility mask is not used (neither does the reference): occlusion
  is handled by the rays themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numba as nb
import numpy as np

from perception4d.core.geometry import Geometry
from perception4d.core.labels import OCC_FREE, OCC_IGNORE
from perception4d.ops.grid_dda import dda_axis_setup

DEFAULT_THRESHOLDS: tuple[float, ...] = (1.0, 2.0, 4.0)


# ---------------------------------------------------------------- ray sets
@dataclass(frozen=True, eq=False)
class RaySet:
    """Rays in the grid's frame (metres): ``origins`` (R, 3) and unit ``directions`` (R, 3), float64."""

    origins: np.ndarray
    directions: np.ndarray

    def __post_init__(self):
        o = np.asarray(self.origins, np.float64)
        d = np.asarray(self.directions, np.float64)
        if o.ndim != 2 or o.shape[1] != 3 or d.shape != o.shape:
            raise ValueError(f"RaySet: origins and directions must both be (R, 3), got {o.shape} and {d.shape}")
        if not (np.isfinite(o).all() and np.isfinite(d).all()):
            raise ValueError("RaySet: origins and directions must be finite")
        norm = np.sqrt((d * d).sum(axis=1))
        if (norm < 1e-9).any():
            raise ValueError(f"RaySet: {int((norm < 1e-9).sum())} directions have zero length")
        object.__setattr__(self, "origins", np.ascontiguousarray(o))
        object.__setattr__(self, "directions", np.ascontiguousarray(d / norm[:, None]))

    def __len__(self) -> int:
        return self.origins.shape[0]

    @classmethod
    def from_origins(cls, origins: np.ndarray | Sequence[float], directions: np.ndarray) -> "RaySet":
        """Every direction (D, 3) cast from every origin ((3,) or (K, 3)): K * D rays, origin-major."""
        o = np.asarray(origins, np.float64).reshape(-1, 3)
        d = np.asarray(directions, np.float64).reshape(-1, 3)
        return cls(np.repeat(o, len(d), axis=0), np.tile(d, (len(o), 1)))

    @classmethod
    def toward_points(cls, origin: np.ndarray | Sequence[float], points: np.ndarray,
                      min_distance: float = 1e-3) -> "RaySet":
        """Rays from one origin (3,) toward points (N, 3) (e.g. the frame's LiDAR returns, same frame).

        Points closer than ``min_distance`` to the origin have no direction and are dropped.
        """
        o = np.asarray(origin, np.float64).reshape(3)
        v = np.asarray(points, np.float64)[:, :3] - o
        v = v[np.sqrt((v * v).sum(axis=1)) >= min_distance]
        return cls(np.broadcast_to(o, v.shape), v)


def uniform_ray_directions(azimuth_step_deg: float = 1.0,
                           elevation_range_deg: tuple[float, float] = (-30.0, 10.0),
                           elevation_step_deg: float = 1.0) -> np.ndarray:
    """(D, 3) unit vectors on an azimuth x elevation grid (both ends of the elevation range included)."""
    lo, hi = (float(v) for v in elevation_range_deg)
    if not (azimuth_step_deg > 0 and elevation_step_deg > 0 and -90.0 <= lo <= hi <= 90.0):
        raise ValueError(f"uniform_ray_directions: need positive steps and -90 <= min <= max <= 90 degrees, got "
                         f"azimuth step {azimuth_step_deg}, elevation {elevation_range_deg} step {elevation_step_deg}")
    az = np.deg2rad(np.arange(0.0, 360.0 - 1e-9, azimuth_step_deg))
    el = np.deg2rad(np.arange(lo, hi + 1e-9, elevation_step_deg))
    return _spherical(az, el)


def occ3d_ray_directions() -> np.ndarray:
    """(D, 3) the challenge's fixed ray set: 1-degree azimuth steps; pitches -(90 deg - atan(k)) for
    k = 1..10, continued with the last pitch step until the pitch reaches 0.21 rad (nuScenes field of view)."""
    pitch = [-(math.pi / 2 - math.atan(k)) for k in range(1, 11)]
    while pitch[-1] < 0.21:
        pitch.append(2 * pitch[-1] - pitch[-2])
    return _spherical(np.deg2rad(np.arange(360.0)), np.asarray(pitch))


def _spherical(azimuth: np.ndarray, elevation: np.ndarray) -> np.ndarray:
    el, az = np.meshgrid(elevation, azimuth, indexing="ij")
    return np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1).reshape(-1, 3)


# ---------------------------------------------------------------- ray marching
@nb.njit(parallel=True, cache=True)
def _march(sem, origins, dirs, lower, vs, label, depth, entry):
    """First voxel with class != 0 along each ray: its class, exit distance and entry distance."""
    nx, ny, nz = sem.shape
    for r in nb.prange(origins.shape[0]):
        label[r] = 0
        depth[r] = np.inf
        entry[r] = np.inf
        t0, t1 = 0.0, np.inf
        for k in range(3):  # clip the half-line to the grid box
            o, d = origins[r, k], dirs[r, k]
            lo = lower[k]
            hi = lo + (nx if k == 0 else (ny if k == 1 else nz)) * vs[k]
            if abs(d) < 1e-12:
                if o < lo or o >= hi:
                    t0, t1 = 1.0, 0.0
            else:
                a, b = (lo - o) / d, (hi - o) / d
                t0, t1 = max(t0, min(a, b)), min(t1, max(a, b))
        if not t0 < t1:
            continue
        ix, sx, tx, dx = dda_axis_setup(origins[r, 0], dirs[r, 0], t0, lower[0], vs[0], nx)
        iy, sy, ty, dy = dda_axis_setup(origins[r, 1], dirs[r, 1], t0, lower[1], vs[1], ny)
        iz, sz, tz, dz = dda_axis_setup(origins[r, 2], dirs[r, 2], t0, lower[2], vs[2], nz)
        t_in = t0
        while True:
            c = sem[ix, iy, iz]
            t_out = min(tx, ty, tz)
            if c != 0:
                label[r] = c
                entry[r] = t_in
                depth[r] = max(t_out, t_in)
                break
            t_in = t_out
            if tx <= ty and tx <= tz:
                ix += sx
                tx += dx
                if ix < 0 or ix >= nx:
                    break
            elif ty <= tz:
                iy += sy
                ty += dy
                if iy < 0 or iy >= ny:
                    break
            else:
                iz += sz
                tz += dz
                if iz < 0 or iz >= nz:
                    break


@dataclass(frozen=True, eq=False)
class RayHits:
    """Per ray: ``label`` (R,) uint8 class of the first occupied voxel (0: no hit), ``depth`` (R,) float64
    distance where the ray leaves that voxel and ``entry`` (R,) where it enters it (inf without a hit)."""

    label: np.ndarray
    depth: np.ndarray
    entry: np.ndarray

    @property
    def hit(self) -> np.ndarray:
        return self.label != OCC_FREE


def cast_rays(semantics: np.ndarray, geometry: Geometry, rays: RaySet) -> RayHits:
    """March ``rays`` through an (X, Y, Z) class grid on ``geometry`` (any nonzero class is occupied)."""
    sem = np.ascontiguousarray(semantics, np.uint8)
    if sem.shape != tuple(geometry.grid_shape):
        raise ValueError(f"cast_rays: semantics of shape {sem.shape} do not match the grid {geometry.grid_shape}")
    r = len(rays)
    label, depth, entry = np.empty(r, np.uint8), np.empty(r), np.empty(r)
    _march(sem, rays.origins, rays.directions, np.asarray(geometry.point_range[:3], np.float64),
           np.asarray(geometry.voxel_size, np.float64), label, depth, entry)
    return RayHits(label=label, depth=depth, entry=entry)


# ---------------------------------------------------------------- statistics
@dataclass(frozen=True, eq=False)
class RayStats:
    """Additive ray counts: ``tp``, ``fp``, ``fn`` (T, C) int64 per threshold and class (column 0, free,
    stays 0); ``num_rays``: scored rays, ``num_ignored``: rays whose ground truth hit ``OCC_IGNORE``,
    ``num_cast``: all rays cast."""

    thresholds: tuple[float, ...]
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    num_rays: int = 0
    num_ignored: int = 0
    num_cast: int = 0

    @classmethod
    def zeros(cls, thresholds: Sequence[float], num_classes: int) -> "RayStats":
        z = np.zeros((len(thresholds), num_classes), np.int64)
        return cls(tuple(float(t) for t in thresholds), z, z.copy(), z.copy())

    def __add__(self, other: "RayStats") -> "RayStats":
        if self.thresholds != other.thresholds or self.tp.shape != other.tp.shape:
            raise ValueError(f"RayStats: cannot add counts of thresholds {self.thresholds} / {self.tp.shape[1]} "
                             f"classes and {other.thresholds} / {other.tp.shape[1]} classes")
        return RayStats(self.thresholds, self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
                        self.num_rays + other.num_rays, self.num_ignored + other.num_ignored,
                        self.num_cast + other.num_cast)

    def class_iou(self) -> np.ndarray:
        """(T, C - 1) float64 IoU of classes 1..C-1 per threshold, NaN where the class has no ray."""
        tp, fp, fn = (a[:, 1:].astype(np.float64) for a in (self.tp, self.fp, self.fn))
        den = tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, tp / np.where(den > 0, den, 1.0), np.nan)


def ray_frame_stats(pred: np.ndarray, gt: np.ndarray, geometry: Geometry, rays: RaySet,
                    thresholds: Sequence[float] = DEFAULT_THRESHOLDS, num_classes: int = 14) -> RayStats:
    """Ray counts of one frame; ``pred`` and ``gt`` are (X, Y, Z) compact class grids (0 free)."""
    stats = RayStats.zeros(thresholds, num_classes)
    g = cast_rays(gt, geometry, rays)
    p = cast_rays(pred, geometry, rays)
    ignored = g.label == OCC_IGNORE
    scored = g.hit & ~ignored
    gl, pl = g.label[scored].astype(np.int64), p.label[scored].astype(np.int64)
    if gl.size and gl.max() >= num_classes:
        raise ValueError(f"ray_frame_stats: ground-truth class {int(gl.max())} >= num_classes {num_classes}")
    if pl.size and pl.max() >= num_classes:
        raise ValueError(f"ray_frame_stats: predicted class {int(pl.max())} >= num_classes {num_classes}")
    err = np.abs(p.depth[scored] - g.depth[scored])
    same = gl == pl
    gt_count = np.bincount(gl, minlength=num_classes)
    pred_count = np.bincount(pl, minlength=num_classes)
    pred_count[OCC_FREE] = 0  # a ray without a predicted hit is a false negative only
    for j, thr in enumerate(stats.thresholds):
        tp = np.bincount(gl[same & (err < thr)], minlength=num_classes)
        stats.tp[j] = tp
        stats.fp[j] = pred_count - tp
        stats.fn[j] = gt_count - tp
    return RayStats(stats.thresholds, stats.tp, stats.fp, stats.fn, num_rays=int(scored.sum()),
                    num_ignored=int(ignored.sum()), num_cast=len(rays))
