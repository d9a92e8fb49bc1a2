"""Instance-aware refinement of per-point moving probabilities.

A rigid object moves as a whole, so its points should share one moving state.
``refine_moving`` groups the points into instances and replaces each point's
probability by its instance's vote. The rule, exactly:

1. Ground: ``ground`` if given, else ``estimate_ground(xyz)`` when no
   ``instance_ids`` are given, else no ground. Ground points belong to no
   instance and keep their probability.
2. Instances: points with equal ``instance_ids`` (negative ids = none), or
   else ``cluster_points`` of the non-ground points at ``radius``.
3. Vote of an instance: ``"mean"``, the mean of its points' probabilities;
   ``"logodds"``, the sigmoid of the mean log-odds, probabilities clipped
   to [1e-6, 1 - 1e-6].
4. Guards, in this order: fewer than ``min_points`` points -> TOO_SMALL;
   bounding-box diagonal (axis-aligned, 3-D) above ``max_extent`` metres
   (a building, a wall) -> TOO_LARGE; both leave the points unchanged.
   With ``speed`` (m/s per point) given, an instance whose median speed is
   below ``min_speed`` is SLOW: each point gets min(own probability, vote),
   so the vote can lower but never raise it.
5. With ``agreement`` a: an instance whose points disagree (the share of
   points with probability > 0.5 lies strictly between 1 - a and a) is
   MIXED and left unchanged: a Euclidean cluster that joins a moving object
   to static structure (a kerb, a parked neighbour) must not be voted either
   way. ``agreement=0.5`` turns this guard off.
6. Every other instance is VOTED: all its points get the vote.

The function is pure and deterministic; permuting the input points permutes
the output (up to float rounding of the sums). On SemanticKITTI 00/000000
(124 668 points, ground estimated and clustering included) it takes about
40-60 ms on a 2-core CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

import numpy as np

from perception4d.mos.cluster import cluster_points, estimate_ground

_EPS = 1e-6


class Vote(str, Enum):
    MEAN = "mean"
    LOGODDS = "logodds"


class InstanceStatus(IntEnum):
    VOTED = 0  # all points got the vote
    SLOW = 1  # speed guard: points got min(own, vote)
    TOO_SMALL = 2  # fewer than min_points: unchanged
    TOO_LARGE = 3  # extent diagonal above max_extent: unchanged
    MIXED = 4  # its points disagree (agreement guard): unchanged


@dataclass
class InstanceStats:
    """One row per instance (the row index is ``RefineResult.instance``)."""

    source_id: np.ndarray  # (K,) int64 the given instance id, or the cluster label
    num_points: np.ndarray  # (K,) int64
    extent: np.ndarray  # (K, 3) float64 axis-aligned bounding-box side lengths, metres
    vote: np.ndarray  # (K,) float64 instance probability (rule 3)
    speed: np.ndarray  # (K,) float64 median point speed in m/s; NaN when no speed was given
    status: np.ndarray  # (K,) uint8 InstanceStatus

    def __len__(self) -> int:
        return len(self.source_id)


@dataclass
class RefineResult:
    prob: np.ndarray  # (N,) float32 refined moving probability
    instance: np.ndarray  # (N,) int64 row of ``stats``; -1 for ground points and points without instance
    ground: np.ndarray  # (N,) bool ground mask used (given or estimated)
    stats: InstanceStats


def _per_point(a, n: int, name: str, dtype=None) -> np.ndarray:
    a = np.asarray(a) if dtype is None else np.asarray(a, dtype=dtype)
    if a.shape != (n,):
        raise ValueError(f"refine_moving: {name} must have shape ({n},) (one value per point), got {a.shape}")
    return a


def _group_medians(values: np.ndarray, group: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Median of ``values`` within each group 0..K-1 (every group non-empty)."""
    ordered = values[np.lexsort((values, group))]
    starts = np.cumsum(counts) - counts
    return 0.5 * (ordered[starts + (counts - 1) // 2] + ordered[starts + counts // 2])


def refine_moving(xyz: np.ndarray, prob: np.ndarray, *, instance_ids: np.ndarray | None = None,
                  ground: np.ndarray | None = None, speed: np.ndarray | None = None, radius: float = 0.5,
                  min_points: int = 5, max_extent: float = 20.0, vote: str | Vote = Vote.MEAN,
                  min_speed: float = 0.5, agreement: float = 0.5) -> RefineResult:
    """Make the moving probability consistent within each instance (rule in the module docstring).

    ``xyz`` (N, 3) metres; ``prob`` (N,) in [0, 1]; ``instance_ids`` (N,) integers,
    negative for none; ``ground`` (N,) bool; ``speed`` (N,) m/s, e.g. the norm
    of a per-point scene flow divided by the frame period.
    """
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"refine_moving: xyz must be (N, 3), got shape {xyz.shape}")
    xyz = xyz.astype(np.float64, copy=False)
    n = len(xyz)
    if not np.isfinite(xyz).all():
        raise ValueError(f"refine_moving: xyz has {int((~np.isfinite(xyz).all(1)).sum())} non-finite rows")
    p_in = _per_point(prob, n, "prob", np.float64)
    if not (np.isfinite(p_in).all() and ((p_in >= 0) & (p_in <= 1)).all()):
        raise ValueError("refine_moving: prob must be finite and within [0, 1]")
    try:
        vote = Vote(vote)
    except ValueError:
        raise ValueError(f"refine_moving: vote must be one of {[v.value for v in Vote]}, got {vote!r}") from None
    if not 0.5 <= agreement <= 1.0:
        raise ValueError(f"refine_moving: agreement must be within [0.5, 1], got {agreement}")
    if int(min_points) < 1 or not max_extent > 0 or not radius > 0 or not min_speed >= 0:
        raise ValueError(f"refine_moving: need min_points >= 1, max_extent > 0, radius > 0, min_speed >= 0; got "
                         f"{min_points}, {max_extent}, {radius}, {min_speed}")
    if speed is not None:
        speed = _per_point(speed, n, "speed", np.float64)
        if not (np.isfinite(speed).all() and (speed >= 0).all()):
            raise ValueError("refine_moving: speed must be finite and >= 0")

    if ground is not None:
        ground = _per_point(ground, n, "ground")
        if ground.dtype != bool:
            raise ValueError(f"refine_moving: ground must be a bool mask, got dtype {ground.dtype}")
    elif instance_ids is None:
        ground = estimate_ground(xyz)
    else:
        ground = np.zeros(n, dtype=bool)

    labels = np.full(n, -1, dtype=np.int64)
    if instance_ids is None:
        labels[~ground] = cluster_points(xyz[~ground], radius)
    else:
        ids = _per_point(instance_ids, n, "instance_ids")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"refine_moving: instance_ids must be integers, got dtype {ids.dtype}")
        labels = np.where(ground, -1, ids.astype(np.int64))
    sel = np.flatnonzero(labels >= 0)
    source_id, inv = np.unique(labels[sel], return_inverse=True)
    k = len(source_id)
    instance = np.full(n, -1, dtype=np.int64)
    instance[sel] = inv

    counts = np.bincount(inv, minlength=k)
    extent = np.zeros((k, 3))
    if k:
        grouped = xyz[sel[np.argsort(inv, kind="stable")]]
        starts = np.cumsum(counts) - counts
        extent = np.maximum.reduceat(grouped, starts) - np.minimum.reduceat(grouped, starts)
    p = p_in[sel]
    if vote is Vote.MEAN:
        votes = np.bincount(inv, weights=p, minlength=k) / np.maximum(counts, 1)
    else:
        q = np.clip(p, _EPS, 1.0 - _EPS)
        mean_logit = np.bincount(inv, weights=np.log(q) - np.log1p(-q), minlength=k) / np.maximum(counts, 1)
        votes = 1.0 / (1.0 + np.exp(-mean_logit))
    inst_speed = np.full(k, np.nan)
    if speed is not None and k:
        inst_speed = _group_medians(speed[sel], inv, counts)

    status = np.full(k, InstanceStatus.VOTED, dtype=np.uint8)
    status[inst_speed < min_speed] = InstanceStatus.SLOW  # NaN compares False
    status[np.linalg.norm(extent, axis=1) > max_extent] = InstanceStatus.TOO_LARGE
    status[counts < int(min_points)] = InstanceStatus.TOO_SMALL
    if k:
        share = np.bincount(inv, weights=(p > 0.5).astype(np.float64), minlength=k) / np.maximum(counts, 1)
        mixed = (share > 1.0 - agreement) & (share < agreement) & (status == InstanceStatus.VOTED)
        status[mixed] = InstanceStatus.MIXED

    st, pv = status[inv], votes[inv]
    refined = p_in.copy()
    refined[sel] = np.where(st == InstanceStatus.VOTED, pv, np.where(st == InstanceStatus.SLOW, np.minimum(p, pv), p))
    stats = InstanceStats(source_id=source_id.astype(np.int64), num_points=counts.astype(np.int64), extent=extent,
                          vote=votes, speed=inst_speed, status=status)
    return RefineResult(prob=refined.astype(np.float32), instance=instance, ground=ground, stats=stats)
