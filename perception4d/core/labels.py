"""Label vocabularies: SemanticKITTI ids, LiDAR-MOS labels and the compact occupancy classes.

SemanticKITTI stores one uint16 class id per point (``.label`` lower 16 bits).
Ids 252..259 are the moving variants of the movable classes; 251 is the
generic "moving" id of the LiDAR-MOS benchmark. ``mos_label`` maps ids to the
LiDAR-MOS convention (0 ignore, 1 static, 2 moving).

The occupancy classes (``OCC_CLASSES``) are a compact list for semantic
occupancy grids: index 0 is free space, 1..13 are occupied classes, and
``OCC_IGNORE`` (255) marks voxels occupied by unlabeled/outlier points.
``occupancy_class`` maps SemanticKITTI ids to it; the table is
``SEMANTICKITTI_TO_OCC``.
"""

from __future__ import annotations

import numpy as np

from perception4d.core.frame import MOVING_ID_MAX, MOVING_ID_MIN

SEMANTICKITTI_NAMES: dict[int, str] = {
    0: "unlabeled",
    1: "outlier",
    9: "static",  # LiDAR-MOS
    10: "car",
    11: "bicycle",
    13: "bus",
    15: "motorcycle",
    16: "on-rails",
    18: "truck",
    20: "other-vehicle",
    30: "person",
    31: "bicyclist",
    32: "motorcyclist",
    40: "road",
    44: "parking",
    48: "sidewalk",
    49: "other-ground",
    50: "building",
    51: "fence",
    52: "other-structure",
    60: "lane-marking",
    70: "vegetation",
    71: "trunk",
    72: "terrain",
    80: "pole",
    81: "traffic-sign",
    99: "other-object",
    251: "moving",  # LiDAR-MOS
    252: "moving-car",
    253: "moving-bicyclist",
    254: "moving-person",
    255: "moving-motorcyclist",
    256: "moving-on-rails",
    257: "moving-bus",
    258: "moving-truck",
    259: "moving-other-vehicle",
}

# Static class id -> its SemanticKITTI moving id.
MOVING_ID_OF: dict[int, int] = {10: 252, 31: 253, 30: 254, 32: 255, 16: 256, 13: 257, 18: 258, 20: 259}

GROUND_IDS = (40, 44, 48, 49, 60, 72)

MOS_IGNORE, MOS_STATIC, MOS_MOVING = 0, 1, 2

OCC_FREE = 0
OCC_IGNORE = 255
OCC_CLASSES: tuple[str, ...] = (
    "free",            # 0
    "car",             # 1: car, moving-car
    "other-vehicle",   # 2: bus, truck, on-rails, other-vehicle (+ moving)
    "two-wheeler",     # 3: bicycle, motorcycle, bicyclist, motorcyclist (+ moving)
    "person",          # 4: person, moving-person
    "road",            # 5: road, parking, lane-marking
    "sidewalk",        # 6
    "other-ground",    # 7
    "terrain",         # 8
    "building",        # 9
    "structure",       # 10: fence, other-structure
    "vegetation",      # 11: vegetation, trunk
    "pole",            # 12: pole, traffic-sign
    "other-object",    # 13
)

_OCC_OF_ID: dict[int, int] = {
    10: 1, 252: 1, 251: 13,
    13: 2, 16: 2, 18: 2, 20: 2, 256: 2, 257: 2, 258: 2, 259: 2,
    11: 3, 15: 3, 31: 3, 32: 3, 253: 3, 255: 3,
    30: 4, 254: 4,
    40: 5, 44: 5, 60: 5,
    48: 6, 49: 7, 72: 8, 50: 9, 51: 10, 52: 10,
    70: 11, 71: 11, 80: 12, 81: 12, 99: 13, 9: 13,
    0: OCC_IGNORE, 1: OCC_IGNORE,
}

SEMANTICKITTI_TO_OCC = np.full(1 << 16, OCC_IGNORE, dtype=np.uint8)
for _k, _v in _OCC_OF_ID.items():
    SEMANTICKITTI_TO_OCC[_k] = _v
SEMANTICKITTI_TO_OCC.setflags(write=False)


def is_valid_semantic(semantic: np.ndarray) -> np.ndarray:
    """Bool mask of ids that are in ``SEMANTICKITTI_NAMES``."""
    return np.isin(np.asarray(semantic), np.fromiter(SEMANTICKITTI_NAMES, dtype=np.int64))


def is_moving(semantic: np.ndarray) -> np.ndarray:
    """Bool mask of moving ids (251..259)."""
    s = np.asarray(semantic)
    return (s >= MOVING_ID_MIN) & (s <= MOVING_ID_MAX)


def mos_label(semantic: np.ndarray) -> np.ndarray:
    """LiDAR-MOS label uint8: 0 ignore (unlabeled 0, outlier 1), 1 static, 2 moving."""
    s = np.asarray(semantic)
    out = np.full(s.shape, MOS_STATIC, dtype=np.uint8)
    out[is_moving(s)] = MOS_MOVING
    out[(s == 0) | (s == 1)] = MOS_IGNORE
    return out


def occupancy_class(semantic: np.ndarray) -> np.ndarray:
    """Compact occupancy class (uint8) of SemanticKITTI ids; unknown ids map to ``OCC_IGNORE``."""
    s = np.asarray(semantic).astype(np.int64)
    if s.size and (s.min() < 0 or s.max() > 0xFFFF):
        raise ValueError(f"SemanticKITTI ids must be in 0..65535, got {s.min()}..{s.max()}")
    return SEMANTICKITTI_TO_OCC[s]
