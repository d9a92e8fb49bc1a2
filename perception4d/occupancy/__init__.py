"""Occupancy ground truth from labelled LiDAR sequences: multi-scan semantic aggregation and
LiDAR visibility (Occ3D ``mask_lidar``), as ``perception4d.sim.occupancy.OccupancyGT``."""

from perception4d.occupancy.aggregate import (
    AggregatedPoints,
    AggregationDrops,
    MovingPolicy,
    RaySource,
    aggregate_occupancy,
    aggregate_points,
    majority_semantics,
    voxel_velocity,
)
from perception4d.occupancy.visibility import lidar_visibility

__all__ = [
    "AggregatedPoints",
    "AggregationDrops",
    "MovingPolicy",
    "RaySource",
    "aggregate_occupancy",
    "aggregate_points",
    "lidar_visibility",
    "majority_semantics",
    "voxel_velocity",
]
