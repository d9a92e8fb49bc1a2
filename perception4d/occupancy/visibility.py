"""LiDAR visibility of an occupancy grid (Occ3D's ``mask_lidar``).

A voxel is observed when a ray crosses it on its way from the sensor origin to
its return: the voxels in front of the return are seen free, the return's
voxel is seen occupied, and the origin's voxel is observed too. Every other
voxel is unobserved (occluded or out of the sensor's reach). The traversal is
the simulator's 3-D DDA (``perception4d.sim.occupancy.trace_visibility``).
"""

from __future__ import annotations

import logging

import numpy as np

from perception4d.core.geometry import Geometry
from perception4d.sim.occupancy import trace_visibility

_log = logging.getLogger(__name__)


def _as_xyz(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"lidar_visibility: {name} must be (R, 3), got shape {a.shape}")
    return a


def lidar_visibility(geometry: Geometry, origins: np.ndarray, endpoints: np.ndarray) -> np.ndarray:
    """(X, Y, Z) bool mask of voxels observed by the rays ``origins[r] -> endpoints[r]``.

    Both arrays are (R, 3) in the grid's frame; ``origins`` may also be one (3,)
    origin shared by all rays. Rays with a non-finite coordinate are dropped
    (counted in a log message).
    """
    endpoints = _as_xyz("endpoints", endpoints)
    origins = np.asarray(origins, dtype=np.float64)
    if origins.shape == (3,):
        origins = np.broadcast_to(origins, endpoints.shape)
    origins = _as_xyz("origins", origins)
    if len(origins) != len(endpoints):
        raise ValueError(f"lidar_visibility: {len(origins)} origins for {len(endpoints)} endpoints")
    finite = np.isfinite(origins).all(1) & np.isfinite(endpoints).all(1)
    if not finite.all():
        _log.warning("lidar_visibility: dropped %d of %d rays with non-finite coordinates",
                     int((~finite).sum()), len(finite))
        origins, endpoints = origins[finite], endpoints[finite]
    shape = np.asarray(geometry.grid_shape, np.int64)
    visible = np.zeros(tuple(shape), dtype=np.bool_)
    trace_visibility(np.ascontiguousarray(origins), np.ascontiguousarray(endpoints),
                     np.asarray(geometry.point_range[:3], np.float64),
                     np.asarray(geometry.voxel_size, np.float64), shape, visible)
    return visible
