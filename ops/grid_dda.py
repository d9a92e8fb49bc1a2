"""Grid traversal kernels (numba) shared by visibility ray casting and RayIoU."""

from __future__ import annotations

import math

import numba as nb


@nb.njit(cache=True)
def dda_axis_setup(o, d, t0, lo, v, n):
    """Amanatides-Woo set-up along one axis of a ray ``o + t d`` entering the grid at ``t0``.

    Returns the voxel index (clamped to [0, n)), the step (+1, -1 or 0), the ray
    parameter of the next voxel face and the parameter distance between faces.
    """
    i = min(max(int(math.floor((o + t0 * d - lo) / v)), 0), n - 1)
    if d > 1e-12:
        return i, 1, (lo + (i + 1) * v - o) / d, v / d
    if d < -1e-12:
        return i, -1, (lo + i * v - o) / d, -v / d
    return i, 0, math.inf, math.inf
