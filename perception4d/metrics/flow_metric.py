"""mmengine metrics for scene flow: Argoverse 2 (2023 + 2024) and KITTI.

``process`` takes ``FlowSample`` objects (one per frame) and keeps only their
per-frame statistics in ``self.results``; ``compute_metrics`` sums them, so
the results of several workers merge exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from mmengine.evaluator import BaseMetric

from perception4d.metrics.flow import (
    Av2FrameStats,
    Av2Result,
    FlowSample,
    av2_2023_frame_stats,
    av2_2023_result,
)
from perception4d.metrics.flow_bucketed import (
    BUCKET_CLOSE_DISTANCE_M,
    BucketedFrameStats,
    BucketedResult,
    av2_2024_frame_stats,
    av2_2024_result,
)
from perception4d.metrics.flow_kitti import KittiFrameStats, KittiResult, kitti_frame_stats, kitti_result
from perception4d.metrics.samples import coerce_samples
from perception4d.registry import METRICS


@dataclass(frozen=True)
class Av2FrameRecord:
    frame_id: str
    stats_2023: Av2FrameStats
    stats_2024: BucketedFrameStats


@METRICS.register_module()
class Av2FlowMetric(BaseMetric):
    """Argoverse 2 scene flow: the 2023 metrics (av2 names) and the 2024 Bucket Normalized EPE.

    The 2024 numbers are reported as ``Bucketed/<CLASS>/Static EPE``,
    ``Bucketed/<CLASS>/Dynamic Normalized EPE``, ``Bucketed/Mean Static EPE``
    and ``Bucketed/Mean Dynamic Normalized EPE``.
    """

    default_prefix = "av2"

    def __init__(self, bucket_close_distance: float = BUCKET_CLOSE_DISTANCE_M, collect_device: str = "cpu",
                 prefix: str | None = None, collect_dir: str | None = None):
        super().__init__(collect_device=collect_device, prefix=prefix, collect_dir=collect_dir)
        self.bucket_close_distance = float(bucket_close_distance)

    def process(self, data_batch: Any, data_samples: Sequence[FlowSample]) -> None:
        for s in coerce_samples(data_samples, FlowSample, "to_flow_sample", type(self).__name__):
            self.results.append(Av2FrameRecord(
                frame_id=s.frame_id,
                stats_2023=av2_2023_frame_stats(s),
                stats_2024=av2_2024_frame_stats(s, close_distance=self.bucket_close_distance),
            ))

    @staticmethod
    def reduce(results: Sequence[Av2FrameRecord]) -> tuple[Av2Result, BucketedResult]:
        return (av2_2023_result(r.stats_2023 for r in results),
                av2_2024_result(r.stats_2024 for r in results))

    def compute_metrics(self, results: list) -> dict[str, float]:
        r2023, r2024 = self.reduce(results)
        out = {k: float(v) for k, v in r2023.to_av2_dict().items()}
        for cls, err in r2024.classes.items():
            out[f"Bucketed/{cls.value}/Static EPE"] = err.static_epe
            out[f"Bucketed/{cls.value}/Dynamic Normalized EPE"] = err.dynamic_error
        out["Bucketed/Mean Static EPE"] = r2024.mean_static_epe
        out["Bucketed/Mean Dynamic Normalized EPE"] = r2024.mean_dynamic_error
        return out


@METRICS.register_module()
class KittiFlowMetric(BaseMetric):
    """KITTI scene flow (FlowNet3D / HPLFlowNet): EPE3D, Acc3DS, Acc3DR, Outliers, frame-averaged."""

    default_prefix = "kitti"

    def process(self, data_batch: Any, data_samples: Sequence[FlowSample]) -> None:
        for s in coerce_samples(data_samples, FlowSample, "to_flow_sample", type(self).__name__):
            self.results.append(kitti_frame_stats(s))

    @staticmethod
    def reduce(results: Sequence[KittiFrameStats]) -> KittiResult:
        return kitti_result(results)

    def compute_metrics(self, results: list) -> dict[str, float]:
        r = self.reduce(results)
        return {"EPE3D": r.epe3d, "Acc3DS": r.acc3d_strict, "Acc3DR": r.acc3d_relax, "Outliers": r.outliers}
