"""mmengine metric for moving-object segmentation (LiDAR-MOS ``iou_moving`` and companions).

``process`` takes ``MosSample`` objects (one per scan), or results that convert
themselves with ``to_mos_sample()``, and keeps only each scan's counts in
``self.results``; ``compute_metrics`` sums them, so the results of several
workers merge exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from mmengine.evaluator import BaseMetric

from perception4d.metrics.mos import MosFrameStats, MosResult, MosSample, mos_result
from perception4d.metrics.samples import coerce_samples
from perception4d.registry import METRICS


@dataclass(frozen=True)
class MosFrameRecord:
    frame_id: str
    stats: MosFrameStats


@METRICS.register_module()
class MosMetric(BaseMetric):
    """Moving-object segmentation: ``iou_moving`` as evaluate_mos.py computes it, plus companions.

    Reported keys: ``iou_moving``, ``iou_static``, ``miou``, ``accuracy``
    (reference formulas, 0.0 when empty), ``precision``, ``recall``,
    ``false_moving_rate`` and ``mean_scan_iou`` (NaN when undefined).
    ``ignore_unknown_ids``: ground-truth ids outside the LiDAR-MOS vocabulary
    are ignored (as the reference script does) instead of raising.
    """

    default_prefix = "mos"

    def __init__(self, ignore_unknown_ids: bool = False, collect_device: str = "cpu", prefix: str | None = None,
                 collect_dir: str | None = None):
        super().__init__(collect_device=collect_device, prefix=prefix, collect_dir=collect_dir)
        self.ignore_unknown_ids = bool(ignore_unknown_ids)

    def process(self, data_batch: Any, data_samples: Sequence[Any]) -> None:
        for s in coerce_samples(data_samples, MosSample, "to_mos_sample", type(self).__name__):
            self.results.append(MosFrameRecord(s.frame_id, s.stats(self.ignore_unknown_ids)))

    @staticmethod
    def reduce(results: Sequence[MosFrameRecord]) -> MosResult:
        return mos_result(r.stats for r in results)

    def compute_metrics(self, results: list) -> dict[str, float]:
        r = self.reduce(results)
        return {
            "iou_moving": r.iou_moving,
            "iou_static": r.iou_static,
            "miou": r.miou,
            "accuracy": r.accuracy,
            "precision": r.precision,
            "recall": r.recall,
            "false_moving_rate": r.false_moving_rate,
            "mean_scan_iou": r.mean_scan_iou,
        }
