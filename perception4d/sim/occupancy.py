"""Ground-truth semantic occupancy, visibility and voxel velocity around the ego.

* ``semantics``: a voxel holds the compact class (``perception4d.core.labels.OCC_CLASSES``)
  of the primitive volumes it intersects (closed voxel box against the closed
  solid, grown by 1 mm), occluded space included. The ground is the solid
  half-space z <= 0, or everything below the terrain surface (see below).
  Where several volumes meet, the higher ``KindInfo.priority`` wins (ground
  lowest, movable objects highest).
* On terrain the grid (ego frame) is tilted against the upright primitives:
  each voxel is tested as its bounding box in the level frame (a few mm to
  2 cm larger per side at the ego's pitch and roll), and it is ground when the
  surface lies above one of its bottom corners, found per grid vertex line
  (``ground_levels``), with a margin of the surface's curvature bound over the
  bottom face (5 mm for 0.4 m voxels): exact for the smooth surface, while a
  curb's top edge crossing a bottom face between corners may poke up to a few
  cm into a voxel left free.
* ``visible``: voxels crossed by a segment from a ray's origin to its return
  (3-D DDA, Amanatides & Woo), the return's voxel and the origin's voxel.
  Rays without a return mark nothing.
* ``velocity``: m/s of the volume owning the voxel relative to the world,
  expressed in the ego axes (rigid motion at the voxel centre); zero for
  static volumes and free space.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numba as nb
import numpy as np

from perception4d.core.geometry import Geometry
from perception4d.core.labels import OCC_CLASSES, OCC_FREE, OCC_IGNORE
from perception4d.core.se3 import SE3
from perception4d.errors import DataFormatError
from perception4d.ops.grid_dda import dda_axis_setup
from perception4d.sim.heightfield import CURV, ground_levels
from perception4d.sim.terrain import Terrain

OCC3D_GEOMETRY = Geometry(point_range=(-40.0, -40.0, -1.0, 40.0, 40.0, 5.4), voxel_size=(0.4, 0.4, 0.4))
_GROW = 1e-3  # m: closed-set tolerance of the voxel/solid test
NO_OWNER = -2
GROUND_OWNER = -1


@dataclass
class OccupancyGT:
    """Per-frame occupancy ground truth on ``geometry`` (ego frame, (X, Y, Z) index order)."""

    semantics: np.ndarray  # (X, Y, Z) uint8 compact class, 0 = free
    visible: np.ndarray  # (X, Y, Z) bool
    velocity: np.ndarray  # (X, Y, Z, 3) float32 m/s
    geometry: Geometry

    def voxel_index(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(M, 3) integer voxel index of ego-frame points and the mask of points inside the grid."""
        idx = np.floor((np.asarray(xyz, np.float64) - self.geometry.lower) /
                       np.asarray(self.geometry.voxel_size)).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < np.asarray(self.geometry.grid_shape)), axis=1)
        return idx, inside


@nb.njit(cache=True)
def _overlaps(p, x0, y0, z0, vx, vy, vz):
    """Whether primitive row p meets the voxel box [x0, x0+vx] x [y0, y0+vy] x [z0, z0+vz]."""
    hvx, hvy, hvz = 0.5 * vx, 0.5 * vy, 0.5 * vz
    cx, cy, cz = x0 + hvx, y0 + hvy, z0 + hvz
    dx, dy, dz = p[1] - cx, p[2] - cy, p[3] - cz
    if p[0] == 0:
        c, s = p[7], p[8]
        hx, hy, hz = p[4] + _GROW, p[5] + _GROW, p[6] + _GROW
        ac, as_ = abs(c), abs(s)
        return (abs(dz) <= hvz + hz and abs(dx) <= hvx + hx * ac + hy * as_
                and abs(dy) <= hvy + hx * as_ + hy * ac
                and abs(dx * c + dy * s) <= hx + hvx * ac + hvy * as_
                and abs(-dx * s + dy * c) <= hy + hvx * as_ + hvy * ac)
    qx = min(max(p[1], x0), x0 + vx) - p[1]
    qy = min(max(p[2], y0), y0 + vy) - p[2]
    qz = min(max(p[3], z0), z0 + vz) - p[3]
    if p[0] == 1:
        r = p[4] + _GROW
        return abs(dz) <= hvz + p[6] + _GROW and qx * qx + qy * qy <= r * r
    a, cc = p[4] + _GROW, p[6] + _GROW
    return (qx / a) ** 2 + (qy / a) ** 2 + (qz / cc) ** 2 <= 1.0


@nb.njit(cache=True)
def _half_extent_xy(p):
    """Half extents along x and y of a primitive's axis-aligned footprint (yawed box, or cylinder radius)."""
    if p[0] == 0:
        return abs(p[7]) * p[4] + abs(p[8]) * p[5], abs(p[8]) * p[4] + abs(p[7]) * p[5]
    return p[4], p[4]


@nb.njit(cache=True)
def _cell_span(lo, hi, lower, size, n):
    """First and last cell index (clipped to 0..n-1) of the interval [lo, hi] on an axis of cells of ``size``."""
    return max(0, int(math.floor((lo - lower) / size))), min(n - 1, int(math.floor((hi - lower) / size)))


@nb.njit(cache=True)
def _rasterize(prims, order, lower, vs, shape, owner):
    """Write each primitive's index into the voxels it meets, in ``order`` (later wins)."""
    for j in order:
        p = prims[j]
        ex, ey = _half_extent_xy(p)
        lo = (p[1] - ex - _GROW, p[2] - ey - _GROW, p[3] - p[6] - _GROW)
        hi = (p[1] + ex + _GROW, p[2] + ey + _GROW, p[3] + p[6] + _GROW)
        i0, i1 = _cell_span(lo[0], hi[0], lower[0], vs[0], shape[0])
        j0, j1 = _cell_span(lo[1], hi[1], lower[1], vs[1], shape[1])
        k0, k1 = _cell_span(lo[2], hi[2], lower[2], vs[2], shape[2])
        for ix in range(i0, i1 + 1):
            for iy in range(j0, j1 + 1):
                for iz in range(k0, k1 + 1):
                    if _overlaps(p, lower[0] + ix * vs[0], lower[1] + iy * vs[1], lower[2] + iz * vs[2],
                                 vs[0], vs[1], vs[2]):
                        owner[ix, iy, iz] = j


@nb.njit(cache=True)
def _rasterize_tilted(prims, order, lower, vs, shape, owner, rot, trans):
    """``_rasterize`` for a grid tilted against the primitives' frame: p_level = rot @ p_grid + trans."""
    for j in order:
        p = prims[j]
        ex, ey = _half_extent_xy(p)
        half = (ex + _GROW, ey + _GROW, p[6] + _GROW)
        lo = np.empty(3)
        hi = np.empty(3)
        for k in range(3):  # the primitive's box in grid coordinates: rot^T (c - trans) +- |rot|^T half
            c = (rot[0, k] * (p[1] - trans[0]) + rot[1, k] * (p[2] - trans[1]) + rot[2, k] * (p[3] - trans[2]))
            r = abs(rot[0, k]) * half[0] + abs(rot[1, k]) * half[1] + abs(rot[2, k]) * half[2]
            lo[k], hi[k] = c - r, c + r
        i0, i1 = _cell_span(lo[0], hi[0], lower[0], vs[0], shape[0])
        j0, j1 = _cell_span(lo[1], hi[1], lower[1], vs[1], shape[1])
        k0, k1 = _cell_span(lo[2], hi[2], lower[2], vs[2], shape[2])
        bx = abs(rot[0, 0]) * vs[0] + abs(rot[0, 1]) * vs[1] + abs(rot[0, 2]) * vs[2]
        by = abs(rot[1, 0]) * vs[0] + abs(rot[1, 1]) * vs[1] + abs(rot[1, 2]) * vs[2]
        bz = abs(rot[2, 0]) * vs[0] + abs(rot[2, 1]) * vs[1] + abs(rot[2, 2]) * vs[2]
        for ix in range(i0, i1 + 1):
            gx = lower[0] + (ix + 0.5) * vs[0]
            for iy in range(j0, j1 + 1):
                gy = lower[1] + (iy + 0.5) * vs[1]
                for iz in range(k0, k1 + 1):
                    gz = lower[2] + (iz + 0.5) * vs[2]
                    cx = rot[0, 0] * gx + rot[0, 1] * gy + rot[0, 2] * gz + trans[0]
                    cy = rot[1, 0] * gx + rot[1, 1] * gy + rot[1, 2] * gz + trans[1]
                    cz = rot[2, 0] * gx + rot[2, 1] * gy + rot[2, 2] * gz + trans[2]
                    if _overlaps(p, cx - 0.5 * bx, cy - 0.5 * by, cz - 0.5 * bz, bx, by, bz):
                        owner[ix, iy, iz] = j


@nb.njit(parallel=True, cache=True)
def trace_visibility(origins, ends, lower, vs, shape, visible):
    """Mark the voxels crossed by each segment origin -> end (both included) in ``visible``."""
    for r in nb.prange(origins.shape[0]):
        t0, t1 = 0.0, 1.0
        for k in range(3):  # clip the segment to the grid box
            o, d = origins[r, k], ends[r, k] - origins[r, k]
            lo, hi = lower[k], lower[k] + shape[k] * vs[k]
            if abs(d) < 1e-12:
                if o < lo or o > hi:
                    t0, t1 = 1.0, 0.0
            else:
                a, b = (lo - o) / d, (hi - o) / d
                t0, t1 = max(t0, min(a, b)), min(t1, max(a, b))
        if t0 > t1:
            continue
        ix, sx, tx, dx = dda_axis_setup(origins[r, 0], ends[r, 0] - origins[r, 0], t0, lower[0], vs[0], shape[0])
        iy, sy, ty, dy = dda_axis_setup(origins[r, 1], ends[r, 1] - origins[r, 1], t0, lower[1], vs[1], shape[1])
        iz, sz, tz, dz = dda_axis_setup(origins[r, 2], ends[r, 2] - origins[r, 2], t0, lower[2], vs[2], shape[2])
        while True:
            visible[ix, iy, iz] = True
            if tx <= ty and tx <= tz:
                if tx > t1:
                    break
                ix += sx
                tx += dx
                if ix < 0 or ix >= shape[0]:
                    break
            elif ty <= tz:
                if ty > t1:
                    break
                iy += sy
                ty += dy
                if iy < 0 or iy >= shape[1]:
                    break
            else:
                if tz > t1:
                    break
                iz += sz
                tz += dz
                if iz < 0 or iz >= shape[2]:
                    break
        if t1 >= 1.0:  # the end point is inside the grid: its voxel is observed (guards DDA round-off)
            ex = min(max(int(math.floor((ends[r, 0] - lower[0]) / vs[0])), 0), shape[0] - 1)
            ey = min(max(int(math.floor((ends[r, 1] - lower[1]) / vs[1])), 0), shape[1] - 1)
            ez = min(max(int(math.floor((ends[r, 2] - lower[2]) / vs[2])), 0), shape[2] - 1)
            visible[ex, ey, ez] = True


def rasterize_owner(prims: np.ndarray, priority: np.ndarray, geometry: Geometry, terrain: Terrain | None = None,
                    world_T_ego: SE3 | None = None, level_T_ego: SE3 | None = None) -> np.ndarray:
    """(X, Y, Z) int64 owner primitive per voxel: index, ``GROUND_OWNER`` or ``NO_OWNER``.

    Flat ground: ``prims`` in the ego frame. Terrain: ``prims`` in the level
    frame, placed by ``level_T_ego``; ``world_T_ego`` places the grid on the terrain.
    """
    shape = np.asarray(geometry.grid_shape, np.int64)
    lower = np.asarray(geometry.point_range[:3], np.float64)
    vs = np.asarray(geometry.voxel_size, np.float64)
    owner = np.full(tuple(shape), NO_OWNER, np.int64)
    order = np.argsort(priority, kind="stable").astype(np.int64)
    prims = np.ascontiguousarray(prims, np.float64)
    if terrain is None or terrain.is_flat:
        ground_layers = int(np.clip(np.floor((0.0 + _GROW - lower[2]) / vs[2]) + 1, 0, shape[2]))
        owner[:, :, :ground_layers] = GROUND_OWNER
        _rasterize(prims, order, lower, vs, shape, owner)
        return owner
    if world_T_ego is None or level_T_ego is None:
        raise ValueError("rasterize_owner: terrain needs world_T_ego and level_T_ego")
    xs = lower[0] + np.arange(shape[0] + 1) * vs[0]
    ys = lower[1] + np.arange(shape[1] + 1) * vs[1]
    tol = _GROW + terrain.scalars[CURV] * (vs[0] ** 2 + vs[1] ** 2) / 8.0
    level = ground_levels(terrain.scalars, terrain.waves, world_T_ego.rotation, world_T_ego.translation, xs, ys, tol)
    top = np.maximum(np.maximum(level[:-1, :-1], level[1:, :-1]), np.maximum(level[:-1, 1:], level[1:, 1:]))
    layers = np.clip(np.floor((top - lower[2]) / vs[2]) + 1, 0, shape[2]).astype(np.int64)
    owner[np.arange(shape[2])[None, None, :] < layers[:, :, None]] = GROUND_OWNER
    _rasterize_tilted(prims, order, lower, vs, shape, owner, level_T_ego.rotation, level_T_ego.translation)
    return owner


def visibility(origins: np.ndarray, ends: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(X, Y, Z) bool mask of voxels observed by segments origin -> end (ego frame)."""
    shape = np.asarray(geometry.grid_shape, np.int64)
    visible = np.zeros(tuple(shape), dtype=np.bool_)
    trace_visibility(np.ascontiguousarray(origins, np.float64), np.ascontiguousarray(ends, np.float64),
                     np.asarray(geometry.point_range[:3], np.float64),
                     np.asarray(geometry.voxel_size, np.float64),
                     shape, visible)
    return visible


def save_occupancy(occ: OccupancyGT, path: str | Path) -> None:
    """One frame as ``.npz``: semantics (uint8), mask_lidar (uint8 0/1), velocity (float32 m/s)."""
    np.savez_compressed(path, semantics=occ.semantics, mask_lidar=occ.visible.astype(np.uint8),
                        velocity=occ.velocity)


def occupancy_meta(geometry: Geometry) -> dict:
    """The JSON description written beside the ``.npz`` files (see docs/data_formats.md)."""
    return {
        "frame": "ego",
        "index_order": "x, y, z",
        "point_range": list(geometry.point_range),
        "voxel_size": list(geometry.voxel_size),
        "grid_shape": list(geometry.grid_shape),
        "classes": list(OCC_CLASSES),
        "free_index": OCC_FREE,
        "ignore_index": OCC_IGNORE,
        "velocity_units": "m/s relative to the world, ego axes",
    }


def load_occupancy(path: str | Path, geometry: Geometry) -> OccupancyGT:
    """Read one ``.npz`` written by ``save_occupancy`` (or a prediction of ``p4d infer --task occupancy``, whose
    velocity array is named ``flow``); shapes are checked against ``geometry``."""
    path = Path(path)
    with np.load(path) as z:
        vel_key = "velocity" if "velocity" in z.files else "flow"  # predictions name it "flow" (Occ3D style)
        missing = {"semantics", "mask_lidar", vel_key} - set(z.files)
        if missing:
            raise DataFormatError(path, f"missing arrays {sorted(missing)}; it has {z.files}")
        sem, vis, vel = z["semantics"], z["mask_lidar"].astype(bool), z[vel_key]
    shape = tuple(geometry.grid_shape)
    if sem.shape != shape or vis.shape != shape or vel.shape != shape + (3,):
        raise DataFormatError(path, f"arrays of shapes {sem.shape}, {vis.shape}, {vel.shape} do not "
                                    f"match the grid {shape}")
    return OccupancyGT(semantics=sem.astype(np.uint8), visible=vis, velocity=vel.astype(np.float32),
                       geometry=geometry)


def load_occupancy_geometry(meta_path: str | Path) -> Geometry:
    """The grid ``Geometry`` of an ``occupancy.json``."""
    meta_path = Path(meta_path)
    try:
        meta = json.loads(meta_path.read_text())
        return Geometry(point_range=tuple(meta["point_range"]), voxel_size=tuple(meta["voxel_size"]))
    except (KeyError, TypeError, ValueError) as e:
        raise DataFormatError(meta_path, f"not an occupancy description ({e})") from None
