"""Ray casting against the scene primitives (numba, one thread per ray).

Primitives are rows ``(shape, cx, cy, cz, hx, hy, hz, cos yaw, sin yaw)``
(see ``Scene.primitives_in_level``) plus the ground: the plane z = 0, or a
terrain height field (``perception4d.sim.heightfield.march_rays``), searched up to
the nearest primitive hit. Each ray keeps its nearest intersection with t > 0;
a ray whose nearest surface lies outside ``[min_range, max_range]`` gives no
return (a surface closer than ``min_range`` blocks the beam). To keep the cost
per ray low, primitives are binned by the azimuth sectors their bounding
circles cover as seen from the axis x = y = 0, grown by the largest
horizontal distance of a ray origin from that axis (0 for a level sensor; a
few cm when the ego is tilted on terrain).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from perception4d.sim.heightfield import march_rays
from perception4d.sim.terrain import Terrain

NO_HIT = -2
GROUND = -1
NUM_SECTORS = 720
_EPS = 1e-9


@nb.njit(cache=True)
def _box(p, ox, oy, oz, dx, dy, dz):
    c, s = p[7], p[8]
    rx, ry = ox - p[1], oy - p[2]
    lo = (c * rx + s * ry, -s * rx + c * ry, oz - p[3])
    ld = (c * dx + s * dy, -s * dx + c * dy, dz)
    half = (p[4], p[5], p[6])
    tnear, tfar, axis = -1e30, 1e30, -1
    for k in range(3):
        if abs(ld[k]) < 1e-12:
            if abs(lo[k]) > half[k]:
                return math.inf, 0.0, 0.0, 0.0
            continue
        t1 = (-half[k] - lo[k]) / ld[k]
        t2 = (half[k] - lo[k]) / ld[k]
        if t1 > t2:
            t1, t2 = t2, t1
        if t1 > tnear:
            tnear, axis = t1, k
        tfar = min(tfar, t2)
    if tnear > tfar or tfar <= _EPS or tnear <= _EPS or axis < 0:
        return math.inf, 0.0, 0.0, 0.0
    sgn = -1.0 if ld[axis] > 0 else 1.0
    if axis == 0:
        return tnear, sgn * c, sgn * s, 0.0
    if axis == 1:
        return tnear, -sgn * s, sgn * c, 0.0
    return tnear, 0.0, 0.0, sgn


@nb.njit(cache=True)
def _cylinder(p, ox, oy, oz, dx, dy, dz):
    r, zlo, zhi = p[4], p[3] - p[6], p[3] + p[6]
    fx, fy = ox - p[1], oy - p[2]
    best, nx, ny, nz = math.inf, 0.0, 0.0, 0.0
    a = dx * dx + dy * dy
    if a > 1e-18:
        b = fx * dx + fy * dy
        disc = b * b - a * (fx * fx + fy * fy - r * r)
        if disc >= 0.0:
            t = (-b - math.sqrt(disc)) / a
            if t > _EPS:
                z = oz + t * dz
                if zlo <= z <= zhi:
                    best, nx, ny = t, (fx + t * dx) / r, (fy + t * dy) / r
    if abs(dz) > 1e-12:
        for zc, sgn in ((zhi, 1.0), (zlo, -1.0)):
            t = (zc - oz) / dz
            if _EPS < t < best:
                qx, qy = fx + t * dx, fy + t * dy
                if qx * qx + qy * qy <= r * r:
                    best, nx, ny, nz = t, 0.0, 0.0, sgn
    return best, nx, ny, nz


@nb.njit(cache=True)
def _spheroid(p, ox, oy, oz, dx, dy, dz):
    a, c = p[4], p[6]
    fx, fy, fz = (ox - p[1]) / a, (oy - p[2]) / a, (oz - p[3]) / c
    gx, gy, gz = dx / a, dy / a, dz / c
    qa = gx * gx + gy * gy + gz * gz
    qb = fx * gx + fy * gy + fz * gz
    disc = qb * qb - qa * (fx * fx + fy * fy + fz * fz - 1.0)
    if disc < 0.0:
        return math.inf, 0.0, 0.0, 0.0
    t = (-qb - math.sqrt(disc)) / qa
    if t <= _EPS:
        return math.inf, 0.0, 0.0, 0.0
    nx, ny, nz = (fx + t * gx) / a, (fy + t * gy) / a, (fz + t * gz) / c
    n = math.sqrt(nx * nx + ny * ny + nz * nz)
    return t, nx / n, ny / n, nz / n


@nb.njit(cache=True)
def build_sectors(prims, max_range, num_sectors, origin_radius=0.0):
    """CSR lists (start (S+1,), items) of the primitives each azimuth sector may hit.

    A ray from an origin within ``origin_radius`` of the axis that meets a
    bounding circle of radius rb runs parallel to, and within
    ``origin_radius`` of, an axis ray meeting the circle grown to
    rb + ``origin_radius``; so growing the circles keeps the binning exact.
    """
    n = prims.shape[0]
    lo = np.zeros(n, np.int64)
    hi = np.full(n, -1, np.int64)
    width = 2.0 * math.pi / num_sectors
    for j in range(n):
        p = prims[j]
        rb = (math.sqrt(p[4] * p[4] + p[5] * p[5]) if p[0] == 0 else p[4]) + origin_radius
        d = math.sqrt(p[1] * p[1] + p[2] * p[2])
        if d - rb > max_range:
            continue
        if d <= rb + origin_radius + 1e-6:
            lo[j], hi[j] = 0, num_sectors - 1
            continue
        center = math.atan2(p[2], p[1]) + math.pi
        half = math.asin(min(1.0, rb / d))
        lo[j] = int(math.floor((center - half) / width)) - 1
        hi[j] = int(math.floor((center + half) / width)) + 1
    counts = np.zeros(num_sectors + 1, np.int64)
    for j in range(n):
        for k in range(lo[j], hi[j] + 1):
            counts[(k % num_sectors) + 1] += 1
    start = np.cumsum(counts)
    fill = start[:-1].copy()
    items = np.empty(start[-1], np.int64)
    for j in range(n):
        for k in range(lo[j], hi[j] + 1):
            s = k % num_sectors
            items[fill[s]] = j
            fill[s] += 1
    return start, items


@nb.njit(parallel=True, cache=True)
def cast_rays(origins, dirs, prims, sector_start, sector_items, min_range, max_range, plane=True):
    """Nearest hit per ray: range (inf: none), primitive index (-1 ground, -2 none), |cos incidence|.

    ``plane``: the ground is the plane z = 0 (else no ground: the terrain pass adds it).
    """
    num = origins.shape[0]
    num_sectors = sector_start.shape[0] - 1
    width = 2.0 * math.pi / num_sectors
    out_t = np.full(num, math.inf)
    out_prim = np.full(num, NO_HIT, np.int64)
    out_cos = np.zeros(num)
    for i in nb.prange(num):
        ox, oy, oz = origins[i, 0], origins[i, 1], origins[i, 2]
        dx, dy, dz = dirs[i, 0], dirs[i, 1], dirs[i, 2]
        best, who, cosi = math.inf, NO_HIT, 0.0
        if plane and dz < -1e-12:
            best, who, cosi = -oz / dz, GROUND, -dz
        s = int(math.floor((math.atan2(dy, dx) + math.pi) / width))
        s = min(max(s, 0), num_sectors - 1)
        for k in range(sector_start[s], sector_start[s + 1]):
            j = sector_items[k]
            p = prims[j]
            if p[0] == 0:
                t, nx, ny, nz = _box(p, ox, oy, oz, dx, dy, dz)
            elif p[0] == 1:
                t, nx, ny, nz = _cylinder(p, ox, oy, oz, dx, dy, dz)
            else:
                t, nx, ny, nz = _spheroid(p, ox, oy, oz, dx, dy, dz)
            if t < best:
                best, who, cosi = t, j, abs(nx * dx + ny * dy + nz * dz)
        if min_range <= best <= max_range:
            out_t[i], out_prim[i], out_cos[i] = best, who, cosi
    return out_t, out_prim, out_cos


def raycast(origins: np.ndarray, dirs: np.ndarray, prims: np.ndarray, min_range: float, max_range: float,
            num_sectors: int = NUM_SECTORS, terrain: Terrain | None = None,
            frame: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cast rays (origins, unit dirs (R, 3) float64) against ``prims`` (P, 9) and the ground.

    Rays and primitives share one frame with z up: the ego frame on flat
    ground, the level frame (``Scene.level_T_ego``) on terrain, placed in the
    world by ``frame`` = (x, y, yaw) so that the terrain can be evaluated.
    Returns range (R,) (inf for no return), primitive index (R,) int64 (-1
    ground, -2 no return) and the cosine of the incidence angle (R,).
    """
    prims = np.ascontiguousarray(prims, dtype=np.float64)
    origins = np.ascontiguousarray(origins, np.float64)
    radius = float(np.hypot(origins[:, 0], origins[:, 1]).max()) if len(origins) else 0.0
    start, items = build_sectors(prims, float(max_range), int(num_sectors), radius)
    dirs = np.ascontiguousarray(dirs, np.float64)
    if terrain is None or terrain.is_flat:
        return cast_rays(origins, dirs, prims, start, items, float(min_range), float(max_range))
    # primitives first (ungated), then the ground marched up to each primitive hit, then the range gate
    best, who, cosi = cast_rays(origins, dirs, prims, start, items, 0.0, math.inf, False)
    where = np.array([frame[0], frame[1], np.cos(frame[2]), np.sin(frame[2])])
    march_rays(origins, dirs, best, who, cosi, terrain.scalars, terrain.waves, where, float(min_range),
               float(max_range))
    return best, who, cosi
