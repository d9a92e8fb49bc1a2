"""mmengine metric for semantic occupancy: geometry IoU, mIoU, RayIoU@1/2/4 m, flow error.

``process`` takes ``OccupancySample`` objects (one per frame), or results that
convert themselves with ``to_occupancy_sample()``, and keeps only each frame's
additive statistics in ``self.results``; ``compute_metrics`` sums them, so the
results of several workers merge exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from mmengine.evaluator import BaseMetric

from perception4d.core.labels import OCC_CLASSES
from perception4d.errors import ConfigError
from perception4d.metrics.occupancy import (DYNAMIC_THRESHOLD, OccupancyFrameStats, OccupancyResult,
                                            OccupancySample, occupancy_frame_stats, occupancy_result)
from perception4d.metrics.rayiou import DEFAULT_THRESHOLDS, uniform_ray_directions
from perception4d.metrics.samples import coerce_samples
from perception4d.registry import METRICS


@dataclass(frozen=True)
class OccupancyFrameRecord:
    frame_id: str
    stats: OccupancyFrameStats


def _threshold_key(t: float) -> str:
    return f"rayiou@{t:g}"


@METRICS.register_module()
class OccupancyMetric(BaseMetric):
    """Semantic occupancy scores (definitions in ``perception4d.metrics.occupancy`` and ``.rayiou``).

    Reported keys: ``geometry_iou``, ``miou``, ``iou/<class>`` for the occupied
    classes, ``rayiou``, ``rayiou@1``, ``rayiou@2``, ``rayiou@4`` (one per
    threshold), ``flow_error`` (m/s); NaN where undefined.
    RayIoU uses each sample's ``rays``, or else ``uniform_ray_directions``
    (``azimuth_step_deg``, ``elevation_range_deg``, ``elevation_step_deg``)
    cast from the sample's ``sensor_origin`` or, failing that, from
    ``sensor_origin`` here (metres in the grid frame, e.g. (0, 0, mount height)).
    ``rayiou=False`` skips the ray casting.
    """

    default_prefix = "occ"

    def __init__(self, class_names: Sequence[str] = OCC_CLASSES, rayiou: bool = True,
                 ray_thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                 sensor_origin: Sequence[float] | None = None, azimuth_step_deg: float = 1.0,
                 elevation_range_deg: Sequence[float] = (-30.0, 10.0), elevation_step_deg: float = 1.0,
                 dynamic_threshold: float = DYNAMIC_THRESHOLD, collect_device: str = "cpu",
                 prefix: str | None = None, collect_dir: str | None = None):
        super().__init__(collect_device=collect_device, prefix=prefix, collect_dir=collect_dir)
        self.class_names = tuple(class_names)
        if len(self.class_names) < 2:
            raise ConfigError(f"OccupancyMetric.class_names needs free plus at least one class, "
                              f"got {self.class_names}")
        self.ray_thresholds = tuple(float(t) for t in ray_thresholds) if rayiou else None
        if self.ray_thresholds is not None and (not self.ray_thresholds or min(self.ray_thresholds) <= 0):
            raise ConfigError(f"OccupancyMetric.ray_thresholds must be positive distances, got {ray_thresholds}")
        if sensor_origin is not None and len(tuple(sensor_origin)) != 3:
            raise ConfigError(f"OccupancyMetric.sensor_origin must be (x, y, z), got {sensor_origin}")
        self.sensor_origin = None if sensor_origin is None else tuple(float(v) for v in sensor_origin)
        try:
            self.directions = uniform_ray_directions(azimuth_step_deg, tuple(elevation_range_deg),
                                                     elevation_step_deg) if rayiou else None
        except ValueError as e:
            raise ConfigError(f"OccupancyMetric: {e}") from None
        self.dynamic_threshold = float(dynamic_threshold)

    def frame_stats(self, sample: OccupancySample) -> OccupancyFrameStats:
        return occupancy_frame_stats(sample, num_classes=len(self.class_names), ray_thresholds=self.ray_thresholds,
                                     default_directions=self.directions, default_origin=self.sensor_origin,
                                     dynamic_threshold=self.dynamic_threshold)

    def process(self, data_batch: Any, data_samples: Sequence[Any]) -> None:
        for s in coerce_samples(data_samples, OccupancySample, "to_occupancy_sample", type(self).__name__):
            self.results.append(OccupancyFrameRecord(s.frame_id, self.frame_stats(s)))

    def reduce(self, results: Sequence[OccupancyFrameRecord]) -> OccupancyResult:
        return occupancy_result((r.stats for r in results), self.class_names)

    def compute_metrics(self, results: list) -> dict[str, float]:
        r = self.reduce(results)
        out = {"geometry_iou": r.geometry_iou, "miou": r.miou}
        out.update({f"iou/{name}": v for name, v in r.class_iou.items()})
        if self.ray_thresholds is not None:
            out["rayiou"] = r.rayiou
            for t in self.ray_thresholds:
                out[_threshold_key(t)] = r.rayiou_at(t) if r.ray_thresholds else float("nan")
        out["flow_error"] = r.flow_error
        return out
