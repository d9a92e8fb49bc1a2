"""One LiDAR sweep: points, timestamp, poses and optional per-point labels.

Points are float32 (N, C) with named columns; the first three are always
``x, y, z`` in the *sensor* frame; ``intensity`` is scaled to [0, 1] by every
reader (whatever the format stores); ``time_offset`` is in seconds; ``extrinsic`` is ``ego_T_sensor`` and
``pose`` is ``world_T_ego``. Readers whose sweeps are already expressed in
the ego frame (Argoverse 2) use an identity extrinsic.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from perception4d.core.se3 import SE3

BASE_COLUMNS = ("x", "y", "z", "intensity")
KNOWN_COLUMNS = BASE_COLUMNS + ("time_offset", "ring")

# SemanticKITTI convention: moving classes have ids 251..259 (251 = generic moving).
MOVING_ID_MIN, MOVING_ID_MAX = 251, 259


@dataclass
class PointLabels:
    """Optional per-point ground truth; every present array has one row per point.

    semantic: SemanticKITTI-style class id (uint16 range), instance: instance id
    (0 = none), moving: bool, flow: (N, 3) float32 displacement to the next
    sweep in metres with ego motion included (Argoverse 2 convention: position
    at t+1 in ego(t+1) minus position at t in ego(t)), flow_valid: bool mask of
    rows whose flow is defined, ground: bool.
    """

    semantic: np.ndarray | None = None
    instance: np.ndarray | None = None
    moving: np.ndarray | None = None
    flow: np.ndarray | None = None
    flow_valid: np.ndarray | None = None
    ground: np.ndarray | None = None
    flow_category: np.ndarray | None = None  # AV2 category index (uint8), when the labels carry it

    _FIELDS = ("semantic", "instance", "moving", "flow", "flow_valid", "ground", "flow_category")

    def validate(self, n: int, where: str = "labels") -> None:
        for name in self._FIELDS:
            a = getattr(self, name)
            if a is None:
                continue
            if a.shape[0] != n:
                raise ValueError(f"{where}.{name} has {a.shape[0]} rows but the frame has {n} points")
        if self.flow is not None and (self.flow.ndim != 2 or self.flow.shape[1] != 3):
            raise ValueError(f"{where}.flow must be (N, 3), got {self.flow.shape}")

    def subset(self, mask_or_index: np.ndarray) -> "PointLabels":
        kw = {}
        for name in self._FIELDS:
            a = getattr(self, name)
            kw[name] = None if a is None else a[mask_or_index]
        return PointLabels(**kw)


@dataclass
class Frame:
    points: np.ndarray  # (N, C) float32
    timestamp_ns: int
    pose: SE3 = field(default_factory=SE3.identity)  # world_T_ego
    extrinsic: SE3 = field(default_factory=SE3.identity)  # ego_T_sensor
    columns: tuple[str, ...] = BASE_COLUMNS
    labels: PointLabels | None = None
    frame_id: str = ""  # e.g. "00/000001" or "<log_id>/<timestamp_ns>"
    source: str = ""  # file the points came from (for error messages)
    pose_known: bool = True  # False: pose and extrinsic are identity placeholders (recording without poses)

    def __post_init__(self):
        pts = self.points
        where = self.source or self.frame_id or "frame"
        if not isinstance(pts, np.ndarray) or pts.ndim != 2:
            raise ValueError(f"{where}: points must be a 2-D numpy array, got {type(pts).__name__} "
                             f"{getattr(pts, 'shape', None)}")
        if pts.dtype != np.float32:
            raise ValueError(f"{where}: points must be float32, got {pts.dtype}")
        self.columns = tuple(self.columns)
        if self.columns[:3] != ("x", "y", "z"):
            raise ValueError(f"{where}: the first point columns must be x, y, z, got {self.columns}")
        if len(self.columns) != pts.shape[1]:
            raise ValueError(f"{where}: {pts.shape[1]} point columns but {len(self.columns)} names {self.columns}")
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"{where}: duplicate column names {self.columns}")
        self.timestamp_ns = int(self.timestamp_ns)
        if self.labels is not None:
            self.labels.validate(len(pts), where=f"{where} labels")

    # accessors -----------------------------------------------------------
    def __len__(self) -> int:
        return self.points.shape[0]

    @property
    def num_points(self) -> int:
        return self.points.shape[0]

    @property
    def xyz(self) -> np.ndarray:
        return self.points[:, :3]

    def column(self, name: str) -> np.ndarray:
        try:
            return self.points[:, self.columns.index(name)]
        except ValueError:
            raise KeyError(f"{self.source or self.frame_id or 'frame'} has no point column {name!r}; "
                           f"columns are {self.columns}") from None

    def has_column(self, name: str) -> bool:
        return name in self.columns

    @property
    def world_T_sensor(self) -> SE3:
        return self.pose @ self.extrinsic

    def xyz_in_ego(self) -> np.ndarray:
        return self.extrinsic.transform_points(self.xyz)

    def column_sources(self, names: tuple[str, ...]) -> list[int]:
        """The point column holding each of ``names``; -1 for a missing 'intensity' or 'time_offset' column
        (filled with zeros); any other missing column raises ``KeyError`` naming the frame."""
        out = []
        for name in names:
            if name in self.columns:
                out.append(self.columns.index(name))
            elif name in ("intensity", "time_offset"):
                out.append(-1)
            else:
                raise KeyError(f"{self.source or self.frame_id or 'frame'} has no point column {name!r}")
        return out

    def select_columns(self, names: tuple[str, ...]) -> np.ndarray:
        """(N, len(names)) float32; a missing 'intensity' or 'time_offset' column is filled with zeros."""
        out = np.zeros((self.num_points, len(names)), dtype=np.float32)
        for j, k in enumerate(self.column_sources(names)):
            if k >= 0:
                out[:, j] = self.points[:, k]
        return out

    def subset(self, mask_or_index: np.ndarray) -> "Frame":
        labels = None if self.labels is None else self.labels.subset(mask_or_index)
        return replace(self, points=np.ascontiguousarray(self.points[mask_or_index]), labels=labels)
