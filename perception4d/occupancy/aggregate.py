"""Semantic occupancy ground truth from several labelled LiDAR scans.

The labelled points of a few consecutive scans are carried into the ego frame
of a reference scan through their poses (``Window.align``: ``ref.pose⁻¹ @
frame.pose @ frame.extrinsic``), voxelized on the caller's ``Geometry`` and
every occupied voxel gets the majority compact class (``SEMANTICKITTI_TO_OCC``)
of its points. Points of class ``OCC_IGNORE`` (unlabeled, outlier) count only
when a voxel has no labelled point: such a voxel is ``OCC_IGNORE``. Ties go to
the class with more reference-scan points, then to the smaller class index.

Moving objects (``is_moving(semantic)``) would smear if accumulated in world
coordinates, so the points of moving instances of the other scans are either
left out (``MovingPolicy.REFERENCE``, the default: moving objects come from
the reference scan only) or translated onto the instance's reference position
by the shift of its centroid (``MovingPolicy.REGISTER``; instance key =
(compact class, instance id); a moving instance absent from the reference scan,
or a moving point without an instance id, is left out). The centroid shift is
a translation-only estimate: rotation (turning objects) and a change of the
visible part of the object between scans bias it.

Velocity (m/s relative to the world, reference ego axes) of a voxel holding
points of a moving instance of the reference scan is the instance's centroid
displacement from the reference scan to the next scan of the window divided by
their time difference (the previous scan when the instance is not in the next
one); the same centroid bias applies. Static voxels and free space have 0.

Visibility (``visible``): see ``perception4d.occupancy.visibility``. With
``RaySource.ALL`` (Occ3D's choice) every scan's rays are traced, each from its
own sensor origin in the reference frame, except rays ending on moving points
of the other scans (their returns are not where anything is at the reference
time); ``RaySource.REFERENCE`` traces the reference scan's rays only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from perception4d.core.frame import Frame
from perception4d.core.geometry import Geometry
from perception4d.core.labels import OCC_IGNORE, is_moving, occupancy_class
from perception4d.core.window import Window
from perception4d.errors import DataFormatError, WindowError
from perception4d.occupancy.visibility import lidar_visibility
from perception4d.sim.occupancy import OccupancyGT

_log = logging.getLogger(__name__)


class MovingPolicy(str, Enum):
    """How points of moving instances of the non-reference scans enter the grid."""

    REFERENCE = "reference"  # left out: moving objects come from the reference scan only
    REGISTER = "register"  # translated onto the instance's reference position (centroid shift)


class RaySource(str, Enum):
    """Which rays make the visibility mask."""

    REFERENCE = "reference"  # the reference scan's rays
    ALL = "all"  # every scan's rays from its own sensor origin (moving returns of other scans excluded)


@dataclass
class AggregationDrops:
    """Points counted out of the aggregation."""

    non_finite: int = 0  # points with a non-finite coordinate (all scans)
    moving_left_out: int = 0  # moving points of other scans not accumulated
    moving_without_velocity: int = 0  # moving reference points whose instance no neighbour scan holds


@dataclass
class AggregatedPoints:
    """Labelled points of a window in the reference scan's ego frame, moving policy applied."""

    xyz: np.ndarray  # (M, 3) float32 reference ego frame
    occ_class: np.ndarray  # (M,) uint8 compact class, OCC_IGNORE for unlabeled / outlier
    frame: np.ndarray  # (M,) int32 index of the scan in the window
    moving: np.ndarray  # (M,) bool moving semantic id
    velocity: np.ndarray  # (M, 3) float32 m/s of the point's moving instance; 0 where static or unknown
    origins: np.ndarray  # (T, 3) float64 sensor origin of each scan in the reference ego frame
    ref_index: int
    drops: AggregationDrops = field(default_factory=AggregationDrops)

    def rays(self, source: RaySource | str = RaySource.ALL) -> tuple[np.ndarray, np.ndarray]:
        """(R, 3) origins and (R, 3) endpoints of the rays ``source`` selects (see the module doc)."""
        source = RaySource(source)
        keep = self.frame == self.ref_index
        if source is RaySource.ALL:
            keep |= ~self.moving
        return self.origins[self.frame[keep]], self.xyz[keep].astype(np.float64)


def _instance_centroids(xyz: np.ndarray, key: np.ndarray, frame: np.ndarray,
                        num_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keys (K,), centroids (T, K, 3) and presence (T, K) of the instances (key > 0) per scan."""
    sel = key > 0
    keys, k = np.unique(key[sel], return_inverse=True)
    slot = frame[sel].astype(np.int64) * len(keys) + k
    n = np.bincount(slot, minlength=num_frames * len(keys)).reshape(num_frames, len(keys))
    sums = np.stack([np.bincount(slot, weights=xyz[sel, a].astype(np.float64),
                                 minlength=num_frames * len(keys)) for a in range(3)], -1)
    cent = sums.reshape(num_frames, len(keys), 3) / np.maximum(n, 1)[..., None]
    return keys, cent, n > 0


def _instance_velocity(cent: np.ndarray, present: np.ndarray, ref: int, times_s: np.ndarray) -> np.ndarray:
    """(K, 3) centroid velocity at the reference scan (next scan, else previous); NaN when unknown."""
    vel = np.full(cent.shape[1:], np.nan)
    for other in (ref - 1, ref + 1):  # the next scan overwrites the previous one
        if 0 <= other < len(times_s):
            both = present[ref] & present[other]
            vel[both] = (cent[other, both] - cent[ref, both]) / (times_s[other] - times_s[ref])
    return vel


def _check_frames(frames: Sequence[Frame]) -> None:
    for f in frames:
        where = f.source or f.frame_id or "frame"
        if f.labels is None or f.labels.semantic is None:
            raise DataFormatError(where, "occupancy aggregation needs per-point semantic labels")
        if len(frames) > 1 and not f.pose_known:
            raise WindowError(f"{where}: pose unknown; scans cannot be accumulated without poses")


def aggregate_points(frames: Sequence[Frame], ref_index: int, *,
                     moving_policy: MovingPolicy | str = MovingPolicy.REFERENCE) -> AggregatedPoints:
    """The labelled points of ``frames`` (oldest first) in the ego frame of ``frames[ref_index]``."""
    policy = MovingPolicy(moving_policy)
    _check_frames(frames)
    window = Window(tuple(frames))
    aligned = window.align(ref_index, columns=("x", "y", "z"))
    ref = aligned.ref_index
    xyz = aligned.points
    frame = aligned.time
    semantic = np.concatenate([f.labels.semantic for f in window.frames])
    instance = np.concatenate([np.zeros(f.num_points, np.int64) if f.labels.instance is None
                               else f.labels.instance.astype(np.int64) for f in window.frames])
    drops = AggregationDrops()
    finite = np.isfinite(xyz).all(1)
    drops.non_finite = int((~finite).sum())
    occ = occupancy_class(semantic)
    moving = is_moving(semantic)
    key = np.where(instance > 0, (occ.astype(np.int64) << 16) | instance, 0)
    key[~finite] = 0

    keys, cent, present = _instance_centroids(xyz, key, frame, len(window))
    times_s = (np.asarray(aligned.timestamps_ns, np.int64) - aligned.timestamps_ns[ref]) * 1e-9
    inst_vel = _instance_velocity(cent, present, ref, times_s)
    kidx = np.searchsorted(keys, key).clip(0, max(len(keys) - 1, 0))
    has_key = (key > 0) & (len(keys) > 0)
    has_key[has_key] = keys[kidx[has_key]] == key[has_key]

    keep = finite.copy()
    other_moving = moving & (frame != ref) & finite
    if policy is MovingPolicy.REGISTER:
        reg = other_moving & has_key
        reg[reg] = present[ref, kidx[reg]]
        xyz = xyz.copy()
        xyz[reg] += (cent[ref, kidx[reg]] - cent[frame[reg], kidx[reg]]).astype(np.float32)
        keep &= ~(other_moving & ~reg)
    else:
        keep &= ~other_moving
    drops.moving_left_out = int((other_moving & ~keep).sum())

    velocity = np.zeros((len(xyz), 3), np.float32)
    vsel = moving & keep & has_key
    v = inst_vel[kidx[vsel]]
    known = np.isfinite(v).all(1)
    sel_idx = np.flatnonzero(vsel)
    velocity[sel_idx[known]] = v[known]
    drops.moving_without_velocity = int((moving & keep & (frame == ref)).sum()
                                        - (known & (frame[sel_idx] == ref)).sum())
    if drops.non_finite or drops.moving_left_out or drops.moving_without_velocity:
        _log.info("aggregate_points: %d non-finite points dropped, %d moving points of other scans left "
                  "out, %d moving reference points without a velocity estimate", drops.non_finite,
                  drops.moving_left_out, drops.moving_without_velocity)

    origins = np.stack([(t @ f.extrinsic).translation for t, f in zip(aligned.ref_T_frame, window.frames)])
    return AggregatedPoints(xyz=np.ascontiguousarray(xyz[keep]), occ_class=occ[keep], frame=frame[keep],
                            moving=moving[keep], velocity=velocity[keep], origins=origins, ref_index=ref,
                            drops=drops)


def _voxel_linear(xyz: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Linear (x, y, z) C-order voxel index of each point and the mask of points inside the grid."""
    idx = np.floor((np.asarray(xyz, np.float64) - np.asarray(geometry.point_range[:3]))
                   / np.asarray(geometry.voxel_size)).astype(np.int64)
    shape = np.asarray(geometry.grid_shape, np.int64)
    inside = np.all((idx >= 0) & (idx < shape), axis=1)
    lin = (idx[:, 0] * shape[1] + idx[:, 1]) * shape[2] + idx[:, 2]
    return lin, inside


def majority_semantics(xyz: np.ndarray, occ_class: np.ndarray, geometry: Geometry,
                       preferred: np.ndarray | None = None) -> np.ndarray:
    """(X, Y, Z) uint8 majority class of the points in each voxel, ``OCC_FREE`` (0) where none.

    ``OCC_IGNORE`` points decide only voxels without a labelled point; ties go to
    the class with more ``preferred`` points, then to the smaller class index.
    """
    lin, inside = _voxel_linear(xyz, geometry)
    cls = np.asarray(occ_class, np.int64)[inside]
    lin = lin[inside]
    sem = np.zeros(geometry.grid_shape, np.uint8)
    if not len(lin):
        return sem
    pref = np.zeros(len(lin)) if preferred is None else np.asarray(preferred, np.float64)[inside]
    pair, inv, cnt = np.unique(lin * 256 + cls, return_inverse=True, return_counts=True)
    pref_cnt = np.bincount(inv, weights=pref, minlength=len(pair)).astype(np.int64)
    vox, c = pair // 256, pair % 256
    score = np.where(c == OCC_IGNORE, -1, cnt * (len(lin) + 1) + pref_cnt)
    order = np.lexsort((c, -score, vox))
    vo = vox[order]
    first = order[np.r_[True, vo[1:] != vo[:-1]]]
    sem.reshape(-1)[vox[first]] = c[first]
    return sem


def voxel_velocity(points: AggregatedPoints, semantics: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(X, Y, Z, 3) float32 mean velocity of the moving points whose class is their voxel's class."""
    vel = np.zeros(geometry.grid_shape + (3,), np.float32)
    lin, inside = _voxel_linear(points.xyz, geometry)
    sel = inside & points.moving & np.any(points.velocity != 0, axis=1)
    sel[sel] = semantics.reshape(-1)[lin[sel]] == points.occ_class[sel]
    if not sel.any():
        return vel
    u, inv = np.unique(lin[sel], return_inverse=True)
    n = np.bincount(inv, minlength=len(u))
    flat = vel.reshape(-1, 3)
    for a in range(3):
        flat[u, a] = np.bincount(inv, weights=points.velocity[sel, a], minlength=len(u)) / n
    return vel


def aggregate_occupancy(frames: Sequence[Frame], ref_index: int, geometry: Geometry, *,
                        moving_policy: MovingPolicy | str = MovingPolicy.REFERENCE,
                        rays: RaySource | str = RaySource.ALL) -> OccupancyGT:
    """Occupancy ground truth of ``frames[ref_index]`` (its ego frame) from the labelled ``frames``.

    ``frames`` are ordered oldest first with increasing timestamps and known
    poses; each needs ``labels.semantic`` (``labels.instance`` for moving
    instances to be registered or given a velocity).
    """
    points = aggregate_points(frames, ref_index, moving_policy=moving_policy)
    semantics = majority_semantics(points.xyz, points.occ_class, geometry,
                                   preferred=points.frame == points.ref_index)
    origins, ends = points.rays(rays)
    return OccupancyGT(semantics=semantics, visible=lidar_visibility(geometry, origins, ends),
                       velocity=voxel_velocity(points, semantics, geometry), geometry=geometry)
