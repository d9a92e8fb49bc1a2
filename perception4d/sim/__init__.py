"""The package's own ray-casting LiDAR simulator: street scenes with exact per-point and
occupancy ground truth.

``simulate(preset, num_frames, seed, terrain="flat" | "urban")`` returns a ``SimSequence``;
``write_dataset(seq, out_dir)`` writes it as SemanticKITTI, Argoverse 2 and
occupancy files (layouts in docs/data_formats.md).
"""

from perception4d.sim.occupancy import OCC3D_GEOMETRY, OccupancyGT, load_occupancy, load_occupancy_geometry
from perception4d.sim.presets import HDL32E, HDL64E, PRESETS, VLP32C_X2, LidarPreset, get_preset
from perception4d.sim.layout import generate_scene
from perception4d.sim.scene import Scene, SceneObject, Shape, Street
from perception4d.sim.motion import EgoPath, Trajectory
from perception4d.sim.terrain import Terrain, TerrainConfig, terrain_config
from perception4d.sim.simulate import SimSequence, simulate
from perception4d.sim.writers import (DatasetPaths, write_av2, write_dataset, write_occupancy,
                                      write_semantickitti)

__all__ = [
    "simulate", "SimSequence", "OccupancyGT", "OCC3D_GEOMETRY", "load_occupancy", "load_occupancy_geometry",
    "LidarPreset", "PRESETS", "HDL64E", "HDL32E", "VLP32C_X2", "get_preset",
    "Scene", "SceneObject", "Shape", "Street", "EgoPath", "Trajectory", "generate_scene",
    "Terrain", "TerrainConfig", "terrain_config",
    "write_dataset", "write_semantickitti", "write_av2", "write_occupancy", "DatasetPaths",
]
