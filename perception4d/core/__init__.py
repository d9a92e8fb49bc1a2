"""The 4D core shared by every task: frames, windows, geometry, sparse tensors, voxelization."""

from perception4d.core.frame import BASE_COLUMNS, Frame, PointLabels
from perception4d.core.geometry import Geometry
from perception4d.core.se3 import SE3
from perception4d.core.window import AlignedWindow, Window, ego_motion_flow

__all__ = ["SE3", "Frame", "PointLabels", "BASE_COLUMNS", "Geometry", "Window", "AlignedWindow",
           "ego_motion_flow"]
