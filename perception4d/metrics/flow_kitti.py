"""KITTI scene-flow metrics (FlowNet3D / HPLFlowNet ``evaluate_3d`` convention).

Over the flow-valid points of a frame: EPE3D = mean ``|pred - gt|``; Acc3DS:
EPE < 0.05 m or relative < 0.05; Acc3DR: EPE < 0.1 m or relative < 0.1;
Outliers: EPE > 0.3 m or relative > 0.1; relative = EPE / (``|gt|`` + 1e-4).
The dataset value is the mean of the per-frame values (frames without a
valid point are left out, counted and logged).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from perception4d.metrics.flow import FlowSample, check_finite, end_point_error, flow_norm

log = logging.getLogger(__name__)

KITTI_RELATIVE_EPS = 1e-4


@dataclass(frozen=True)
class KittiFrameStats:
    num_points: int
    epe_sum: float
    strict_inliers: int
    relax_inliers: int
    outliers: int


@dataclass(frozen=True)
class KittiResult:
    epe3d: float
    acc3d_strict: float
    acc3d_relax: float
    outliers: float
    num_frames: int
    num_empty_frames: int  # frames without a valid point, left out of the means


def kitti_frame_stats(sample: FlowSample) -> KittiFrameStats:
    keep = sample.flow_valid
    check_finite(sample, keep)
    epe = end_point_error(sample.pred_flow[keep], sample.gt_flow[keep])
    rel = epe / (flow_norm(sample.gt_flow[keep]) + KITTI_RELATIVE_EPS)
    return KittiFrameStats(
        num_points=int(epe.size),
        epe_sum=float(epe.sum()),
        strict_inliers=int(((epe < 0.05) | (rel < 0.05)).sum()),
        relax_inliers=int(((epe < 0.1) | (rel < 0.1)).sum()),
        outliers=int(((epe > 0.3) | (rel > 0.1)).sum()),
    )


def kitti_result(stats: Iterable[KittiFrameStats]) -> KittiResult:
    stats = list(stats)
    used = [s for s in stats if s.num_points > 0]
    empty = len(stats) - len(used)
    if empty:
        log.warning("KITTI flow metric: %d of %d frames have no valid point and are left out",
                    empty, len(stats))
    if not used:
        nan = float("nan")
        return KittiResult(nan, nan, nan, nan, num_frames=0, num_empty_frames=empty)
    n = np.array([s.num_points for s in used], dtype=np.float64)

    def mean(values) -> float:
        return float(np.mean(np.asarray(values, dtype=np.float64) / n))

    return KittiResult(
        epe3d=mean([s.epe_sum for s in used]),
        acc3d_strict=mean([s.strict_inliers for s in used]),
        acc3d_relax=mean([s.relax_inliers for s in used]),
        outliers=mean([s.outliers for s in used]),
        num_frames=len(used),
        num_empty_frames=empty,
    )
