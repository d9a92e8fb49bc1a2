"""Error against distance and against speed, per task, as additive per-frame histograms.

The metrics give one number per dataset; these profiles say where the errors
are. Each frame contributes counts and sums per bin, so profiles of any set
of frames (a sequence, the dataset, the frames of several workers) are exact
sums, like the metrics' own statistics.

* flow: mean end-point error of the valid, non-ground points (the AV2
  evaluation's points, without its 50 m box) by horizontal distance from the
  ego and by true speed relative to the scene, ``|gt - ego flow| / dt``;
* MOS: moving-class IoU of the labelled points by distance (the labels carry
  no per-point speed);
* occupancy: geometry IoU (occupied vs free) of the evaluated voxels by
  distance of the voxel centre, and the mean velocity error of voxels that are
  occupied in both grids by true speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DISTANCE_EDGES_M = (0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 70.0)  # the last bin is open
SPEED_EDGES_MPS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def bin_labels(edges: tuple[float, ...], unit: str) -> list[str]:
    return [f"{a:g}-{b:g} {unit}" for a, b in zip(edges[:-1], edges[1:])] + [f">= {edges[-1]:g} {unit}"]


def _bins(values: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    return np.clip(np.searchsorted(np.asarray(edges), values, side="right") - 1, 0, len(edges) - 1)


@dataclass(frozen=True, eq=False)
class BinnedMean:
    """Sum and count of an error per bin; ``mean`` is NaN for empty bins."""

    edges: tuple[float, ...]
    count: np.ndarray  # (B,) int64
    total: np.ndarray  # (B,) float64

    @classmethod
    def of(cls, values: np.ndarray, error: np.ndarray, edges: tuple[float, ...]) -> "BinnedMean":
        b = _bins(np.asarray(values, np.float64), edges)
        n = len(edges)
        return cls(tuple(edges), np.bincount(b, minlength=n).astype(np.int64),
                   np.bincount(b, weights=np.asarray(error, np.float64), minlength=n))

    def __add__(self, other: "BinnedMean") -> "BinnedMean":
        return BinnedMean(self.edges, self.count + other.count, self.total + other.total)

    @property
    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.total / np.maximum(self.count, 1), np.nan)


@dataclass(frozen=True, eq=False)
class BinnedIoU:
    """True positives, false positives and false negatives per bin; ``iou`` is NaN where all are 0."""

    edges: tuple[float, ...]
    tp: np.ndarray  # (B,) int64
    fp: np.ndarray
    fn: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray, pred: np.ndarray, gt: np.ndarray, edges: tuple[float, ...]) -> "BinnedIoU":
        b = _bins(np.asarray(values, np.float64), edges)
        n = len(edges)

        def count(mask):
            return np.bincount(b[mask], minlength=n).astype(np.int64)

        return cls(tuple(edges), count(pred & gt), count(pred & ~gt), count(~pred & gt))

    def __add__(self, other: "BinnedIoU") -> "BinnedIoU":
        return BinnedIoU(self.edges, self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def count(self) -> np.ndarray:
        return self.tp + self.fp + self.fn

    @property
    def iou(self) -> np.ndarray:
        d = self.count
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(d > 0, self.tp / np.maximum(d, 1), np.nan)


@dataclass(frozen=True, eq=False)
class ErrorProfile:
    """One frame's (or a sum of frames') error by distance and by speed; either may be None."""

    by_distance: BinnedMean | BinnedIoU | None = None
    by_speed: BinnedMean | BinnedIoU | None = None

    def __add__(self, other: "ErrorProfile") -> "ErrorProfile":
        return ErrorProfile(_add(self.by_distance, other.by_distance), _add(self.by_speed, other.by_speed))


def _add(a, b):
    if a is None:
        return b
    return a if b is None else a + b


def sum_profiles(profiles) -> ErrorProfile | None:
    total = None
    for p in profiles:
        if p is not None:
            total = p if total is None else total + p
    return total


def flow_profile(xyz: np.ndarray, pred_flow: np.ndarray, gt_flow: np.ndarray, ego_flow: np.ndarray,
                 valid: np.ndarray, ground: np.ndarray, dt: float) -> ErrorProfile:
    keep = np.asarray(valid, bool) & ~np.asarray(ground, bool)
    epe = np.linalg.norm(pred_flow[keep].astype(np.float64) - gt_flow[keep], axis=1)
    distance = np.hypot(xyz[keep, 0], xyz[keep, 1])
    speed = np.linalg.norm(gt_flow[keep].astype(np.float64) - ego_flow[keep], axis=1) / max(dt, 1e-3)
    return ErrorProfile(BinnedMean.of(distance, epe, DISTANCE_EDGES_M), BinnedMean.of(speed, epe, SPEED_EDGES_MPS))


def mos_profile(xyz: np.ndarray, moving: np.ndarray, gt_mos: np.ndarray) -> ErrorProfile:
    from perception4d.core.labels import MOS_IGNORE, MOS_MOVING

    keep = gt_mos != MOS_IGNORE
    distance = np.hypot(xyz[keep, 0], xyz[keep, 1])
    return ErrorProfile(BinnedIoU.of(distance, np.asarray(moving, bool)[keep], gt_mos[keep] == MOS_MOVING,
                                     DISTANCE_EDGES_M))


def occupancy_profile(pred_semantics: np.ndarray, pred_velocity: np.ndarray | None, gt) -> ErrorProfile:
    """``gt``: an ``OccupancyGT`` on the prediction's grid (semantics, visible, velocity, geometry)."""
    from perception4d.core.labels import OCC_FREE, OCC_IGNORE

    g = gt.geometry
    keep = gt.semantics != OCC_IGNORE
    if gt.visible is not None:
        keep &= gt.visible
    idx = np.nonzero(keep)
    lo, size = np.asarray(g.point_range[:3]), np.asarray(g.voxel_size)
    cx = lo[0] + (idx[0] + 0.5) * size[0]
    cy = lo[1] + (idx[1] + 0.5) * size[1]
    pred_occ, gt_occ = pred_semantics[idx] != OCC_FREE, gt.semantics[idx] != OCC_FREE
    by_distance = BinnedIoU.of(np.hypot(cx, cy), pred_occ, gt_occ, DISTANCE_EDGES_M)
    by_speed = None
    if pred_velocity is not None and gt.velocity is not None:
        both = pred_occ & gt_occ
        v_gt = gt.velocity[idx][both].astype(np.float64)
        err = np.linalg.norm(pred_velocity[idx][both].astype(np.float64) - v_gt, axis=1)
        by_speed = BinnedMean.of(np.linalg.norm(v_gt, axis=1), err, SPEED_EDGES_MPS)
    return ErrorProfile(by_distance, by_speed)
