"""Evaluation metrics: scene flow (Argoverse 2 2023 / 2024, KITTI) and moving-object segmentation (LiDAR-MOS),
as numpy functions and mmengine metrics."""

from perception4d.metrics.flow import (
    Av2Class,
    Av2FrameStats,
    Av2Result,
    Av2Subset,
    Distance,
    FlowErrors,
    FlowSample,
    Motion,
    av2_2023_frame_stats,
    av2_2023_result,
    av2_close_mask,
    av2_dynamic_mask,
    av2_eval_mask,
    end_point_error,
    space_time_angle,
)
from perception4d.metrics.flow_bucketed import (
    BucketClass,
    BucketedClassError,
    BucketedFrameStats,
    BucketedResult,
    av2_2024_frame_stats,
    av2_2024_result,
)
from perception4d.metrics.flow_kitti import KittiFrameStats, KittiResult, kitti_frame_stats, kitti_result
from perception4d.metrics.flow_metric import Av2FlowMetric, KittiFlowMetric
from perception4d.metrics.mos import (
    MosFrameStats,
    MosResult,
    MosSample,
    MosScanScore,
    mos_frame_stats,
    mos_from_semantic,
    mos_result,
)
from perception4d.metrics.mos_metric import MosMetric

__all__ = [
    "Av2Class", "Av2FrameStats", "Av2Result", "Av2Subset", "Distance", "FlowErrors", "FlowSample",
    "KittiFrameStats", "KittiResult", "Motion", "av2_2023_frame_stats", "av2_2023_result", "av2_close_mask",
    "av2_dynamic_mask", "av2_eval_mask", "end_point_error", "kitti_frame_stats", "kitti_result",
    "space_time_angle", "BucketClass", "BucketedClassError", "BucketedFrameStats", "BucketedResult",
    "av2_2024_frame_stats", "av2_2024_result", "Av2FlowMetric", "KittiFlowMetric",
    "MosFrameStats", "MosResult", "MosSample", "MosScanScore", "mos_frame_stats", "mos_from_semantic", "mos_result",
    "MosMetric",
]

from perception4d.metrics.occupancy import (
    OccupancyFrameStats,
    OccupancyResult,
    OccupancySample,
    occupancy_frame_stats,
    occupancy_result,
)
from perception4d.metrics.occupancy_metric import OccupancyMetric
from perception4d.metrics.rayiou import (
    RayHits,
    RaySet,
    RayStats,
    cast_rays,
    occ3d_ray_directions,
    ray_frame_stats,
    uniform_ray_directions,
)

__all__ += [
    "OccupancyFrameStats", "OccupancyResult", "OccupancySample", "occupancy_frame_stats", "occupancy_result",
    "OccupancyMetric", "RayHits", "RaySet", "RayStats", "cast_rays", "occ3d_ray_directions", "ray_frame_stats",
    "uniform_ray_directions",
]
