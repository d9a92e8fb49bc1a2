"""Argoverse 2 2024 scene-flow metric: Bucket Normalized EPE.

Definition: Khatri, Vedder et al., "I Can't Believe It's Not Scene Flow!"
(ECCV 2024, arXiv 2403.04739), used by the Argoverse 2 2024 Scene Flow
Challenge; reference implementation ``kylevedder/BucketedSceneFlowEval``
(``eval/bucketed_epe.py``, ``BucketedEPEEvaluator`` defaults). av2 0.3.6
does not ship it.

* Evaluated points: flow valid, not ground, inside the AV2 50 m box, within
  ``max(|x|, |y|) < 35`` m of the ego vehicle (strict; ``close_distance``),
  and in one of five classes (BACKGROUND, CAR, OTHER_VEHICLES, PEDESTRIAN,
  WHEELED_VRU); road signs, traffic-control trailers, ANIMAL and DOG are not
  scored.
* Speed of a point: ``|gt_flow - ego_flow|`` in metres per 0.1 s sweep
  interval (the ground-truth motion without the ego motion).
* 51 speed buckets with edges ``linspace(0, 2.0, 51)`` and ``inf``:
  [0, 0.04), [0.04, 0.08), ..., [1.96, 2.0), [2.0, inf) m per sweep
  (0.4 m/s wide up to 20 m/s).
* Per class and bucket, over all points of all frames: mean EPE and mean speed.
* Static EPE of a class: mean EPE of bucket 0. Dynamic error of a class: mean,
  over its non-empty buckets 1..50, of mean EPE / mean speed; NaN if none.
* Mean static EPE and mean dynamic error: mean over the classes that have a
  value (NaN-skipping), background included.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Iterable

import numpy as np

from perception4d.metrics.flow import AV2_CATEGORIES, FlowSample, check_finite, av2_eval_mask, end_point_error

BUCKET_CLOSE_DISTANCE_M = 35.0
BUCKET_EDGES = np.concatenate([np.linspace(0.0, 2.0, 51), [np.inf]])  # metres per sweep interval
NUM_BUCKETS = len(BUCKET_EDGES) - 1


class BucketClass(str, Enum):
    BACKGROUND = "BACKGROUND"
    CAR = "CAR"
    OTHER_VEHICLES = "OTHER_VEHICLES"
    PEDESTRIAN = "PEDESTRIAN"
    WHEELED_VRU = "WHEELED_VRU"


BUCKET_CLASS_MEMBERS: dict[BucketClass, tuple[str, ...]] = {
    BucketClass.BACKGROUND: ("NONE",),
    BucketClass.CAR: ("REGULAR_VEHICLE",),
    BucketClass.OTHER_VEHICLES: ("BOX_TRUCK", "LARGE_VEHICLE", "RAILED_VEHICLE", "TRUCK", "TRUCK_CAB",
                                 "VEHICULAR_TRAILER", "ARTICULATED_BUS", "BUS", "SCHOOL_BUS"),
    BucketClass.PEDESTRIAN: ("PEDESTRIAN", "STROLLER", "WHEELCHAIR", "OFFICIAL_SIGNALER"),
    BucketClass.WHEELED_VRU: ("BICYCLE", "BICYCLIST", "MOTORCYCLE", "MOTORCYCLIST", "WHEELED_DEVICE",
                              "WHEELED_RIDER"),
}


def _category_to_class() -> np.ndarray:
    table = np.full(len(AV2_CATEGORIES), -1, dtype=np.int64)
    for k, cls in enumerate(BucketClass):
        for name in BUCKET_CLASS_MEMBERS[cls]:
            table[AV2_CATEGORIES.index(name)] = k
    return table


CATEGORY_TO_BUCKET_CLASS = _category_to_class()  # AV2 category index -> BucketClass position, -1 = not scored


def speed_bucket(speed: np.ndarray) -> np.ndarray:
    """Bucket index k with ``BUCKET_EDGES[k] <= speed < BUCKET_EDGES[k + 1]``."""
    return np.searchsorted(BUCKET_EDGES, speed, side="right") - 1


@dataclass(frozen=True, eq=False)
class BucketedFrameStats:
    """Additive per-frame sums over (class, bucket): (5, 51) arrays in BucketClass order."""

    count: np.ndarray  # int64
    epe_sum: np.ndarray  # float64
    speed_sum: np.ndarray  # float64

    @classmethod
    def zeros(cls) -> "BucketedFrameStats":
        shape = (len(BucketClass), NUM_BUCKETS)
        return cls(np.zeros(shape, np.int64), np.zeros(shape), np.zeros(shape))

    def __add__(self, other: "BucketedFrameStats") -> "BucketedFrameStats":
        return BucketedFrameStats(self.count + other.count, self.epe_sum + other.epe_sum,
                                  self.speed_sum + other.speed_sum)


def av2_2024_frame_stats(sample: FlowSample,
                         close_distance: float = BUCKET_CLOSE_DISTANCE_M) -> BucketedFrameStats:
    """Per-frame sums of the Bucket Normalized EPE (needs xyz, ground, category and ego_flow)."""
    metric = "Argoverse 2 (2024) bucketed"
    xyz = sample.require("xyz", metric)
    keep = sample.flow_valid & av2_eval_mask(xyz, sample.require("ground", metric))
    keep &= np.maximum(np.abs(xyz[:, 0]), np.abs(xyz[:, 1])) < close_distance
    keep &= CATEGORY_TO_BUCKET_CLASS[sample.require("category", metric)] >= 0
    ego_flow = sample.require("ego_flow", metric)
    check_finite(sample, keep)
    cls = CATEGORY_TO_BUCKET_CLASS[sample.category[keep]]
    speed = end_point_error(sample.gt_flow[keep], ego_flow[keep])
    epe = end_point_error(sample.pred_flow[keep], sample.gt_flow[keep])
    cell = cls * NUM_BUCKETS + speed_bucket(speed)
    size = len(BucketClass) * NUM_BUCKETS
    shape = (len(BucketClass), NUM_BUCKETS)
    return BucketedFrameStats(
        count=np.bincount(cell, minlength=size).reshape(shape).astype(np.int64),
        epe_sum=np.bincount(cell, weights=epe, minlength=size).reshape(shape),
        speed_sum=np.bincount(cell, weights=speed, minlength=size).reshape(shape),
    )


@dataclass(frozen=True)
class BucketedClassError:
    static_epe: float
    dynamic_error: float  # normalized: EPE / speed, averaged over the non-empty dynamic buckets


@dataclass(frozen=True, eq=False)
class BucketedResult:
    classes: dict[BucketClass, BucketedClassError]
    mean_static_epe: float
    mean_dynamic_error: float
    count: np.ndarray  # (5, 51) points per class and bucket
    mean_epe: np.ndarray  # (5, 51), NaN where empty
    mean_speed: np.ndarray  # (5, 51), NaN where empty


def _nanmean(values: np.ndarray, axis=None) -> np.ndarray:
    finite = ~np.isnan(values)
    n = finite.sum(axis=axis)
    total = np.where(finite, values, 0.0).sum(axis=axis)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def av2_2024_result(stats: Iterable[BucketedFrameStats]) -> BucketedResult:
    total = BucketedFrameStats.zeros()
    for s in stats:
        total = total + s
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_epe = np.where(total.count > 0, total.epe_sum / total.count, np.nan)
        mean_speed = np.where(total.count > 0, total.speed_sum / total.count, np.nan)
        normalized = mean_epe[:, 1:] / mean_speed[:, 1:]
    static = mean_epe[:, 0]
    dynamic = _nanmean(normalized, axis=1)
    classes = {cls: BucketedClassError(float(static[k]), float(dynamic[k]))
               for k, cls in enumerate(BucketClass)}
    return BucketedResult(
        classes=classes,
        mean_static_epe=float(_nanmean(static)),
        mean_dynamic_error=float(_nanmean(dynamic)),
        count=total.count,
        mean_epe=mean_epe,
        mean_speed=mean_speed,
    )
