"""Moving-object segmentation: receding-horizon Bayes fusion, clustering, ground estimate, instance refinement."""

from perception4d.mos.cluster import cluster_points, estimate_ground
from perception4d.mos.fusion import FusedScan, RecedingHorizonFusion
from perception4d.mos.refine import InstanceStats, InstanceStatus, RefineResult, Vote, refine_moving

__all__ = ["FusedScan", "InstanceStats", "InstanceStatus", "RecedingHorizonFusion", "RefineResult", "Vote",
           "cluster_points", "estimate_ground", "refine_moving"]
