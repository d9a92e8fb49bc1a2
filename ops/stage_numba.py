"""Host preparation of a sweep in one pass over its rows (numba).

A sweep arrives as an (N, C) float32 array with named columns. Before it is
uploaded, the runtime copies its input columns into a staging buffer and
computes its points in the ego frame. numpy does both column by column
(strided passes over the whole array); ``stage_rows`` does them in one pass
over the rows, with the same arithmetic: the input columns (a source column
index per output column, -1 for a column of zeros) and the ego points for an
identity extrinsic (the sensor coordinates themselves) or a translation-only
one (float64 sum of the float32 coordinate and the translation, rounded to
float32: numpy's ``np.add(x, t, dtype=float64)`` into a float32 array).

Single-threaded and holding the GIL (several Python threads may stage at once).
"""

from __future__ import annotations

import numpy as np

from perception4d.ops.voxelize_numba import _jit

#: ``stage_rows`` ego modes
EGO_IDENTITY = 0
EGO_TRANSLATION = 1


@_jit()
def _stage_rows(points, sources, translation, mode, out_columns, out_ego):
    non_finite_xyz = 0
    for i in range(points.shape[0]):
        for j in range(sources.shape[0]):
            k = sources[j]
            out_columns[i, j] = points[i, k] if k >= 0 else np.float32(0.0)
        x, y, z = points[i, 0], points[i, 1], points[i, 2]
        if mode == EGO_IDENTITY:
            out_ego[i, 0], out_ego[i, 1], out_ego[i, 2] = x, y, z
        else:
            if not (np.isfinite(x) and np.isfinite(y) and np.isfinite(z)):
                non_finite_xyz += 1
            out_ego[i, 0] = np.float32(np.float64(x) + translation[0])
            out_ego[i, 1] = np.float32(np.float64(y) + translation[1])
            out_ego[i, 2] = np.float32(np.float64(z) + translation[2])
    return non_finite_xyz


def stage_rows(points: np.ndarray, sources, translation, mode: int, out_columns: np.ndarray,
               out_ego: np.ndarray) -> int:
    """Fill ``out_columns`` (N, W) and ``out_ego`` (N, 3) float32 from ``points`` (see the module docstring).

    ``sources``: W source column indices (-1: zeros); ``translation``: (3,) float64 (read for
    ``EGO_TRANSLATION`` only). Returns the rows whose x, y or z is not finite (``EGO_TRANSLATION``; 0 for
    ``EGO_IDENTITY``): their ego points follow numpy's addition, not the rotation product of a general
    extrinsic, which spreads a NaN or infinity to the row's other coordinates.
    """
    src = np.asarray(sources, dtype=np.int64)
    t = np.asarray(translation, dtype=np.float64).reshape(3)
    if points.shape[0] == 0:
        return 0
    return int(_stage_rows(points, src, t, int(mode), out_columns, out_ego))
