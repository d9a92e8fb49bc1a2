"""Argoverse 2 sensor-dataset logs (and logs written in the same layout).

One log folder holds ``sensors/lidar/<timestamp_ns>.feather`` sweeps (x, y, z,
intensity, laser_number, offset_ns; points already in the ego-vehicle frame),
``city_SE3_egovehicle.feather`` (ego poses by timestamp) and
``calibration/egovehicle_SE3_sensor.feather``. Scene-flow labels are read from
``flow_labels/<timestamp_ns>.feather`` (one file a sweep) or, for the log's
first sweep only, from a single ``flow_labels.feather``; the per-sweep file
wins when both exist.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from perception4d.core.frame import Frame, PointLabels
from perception4d.core.se3 import SE3
from perception4d.errors import DataFormatError
from perception4d.io.base import SequenceReader

SWEEP_COLUMNS = ("x", "y", "z", "intensity")
FLOW_COLUMNS = ("flow_tx_m", "flow_ty_m", "flow_tz_m", "classes", "dynamic", "is_ground_0")
POSE_FILE = "city_SE3_egovehicle.feather"


def _read_feather(path: Path):
    """pandas DataFrame of a feather file via av2; unreadable file -> DataFormatError."""
    import pyarrow as pa
    from av2.utils.io import read_feather

    try:
        return read_feather(Path(path))
    except (OSError, pa.ArrowException) as e:
        raise DataFormatError(path, f"not a readable feather file ({type(e).__name__}: {e})") from None


def _require_columns(path: Path, df, required: tuple[str, ...], what: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataFormatError(path, f"{what} lacks columns {missing}; it has {list(df.columns)}")


def read_sweep(path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """(N, C) float32 points and their column names of one lidar sweep feather.

    Columns: x, y, z, intensity (stored 0..255, scaled to [0, 1] as every
    reader delivers it) and, when ``offset_ns`` is present, time_offset in seconds.
    """
    df = _read_feather(path)
    _require_columns(path, df, SWEEP_COLUMNS, "lidar sweep")
    names = list(SWEEP_COLUMNS)
    cols = [df[c].to_numpy().astype(np.float32) for c in SWEEP_COLUMNS]
    cols[3] = cols[3] * np.float32(1.0 / 255.0)
    if "offset_ns" in df.columns:
        cols.append((df["offset_ns"].to_numpy().astype(np.float64) * 1e-9).astype(np.float32))
        names.append("time_offset")
    return np.ascontiguousarray(np.stack(cols, axis=1), dtype=np.float32), tuple(names)


def read_flow_labels(path: Path, num_points: int, sweep_path: Path) -> PointLabels:
    """Scene-flow labels of one sweep (AV2 ``flow_labels.feather`` columns).

    flow_valid = all three components finite (and the optional ``is_valid``
    column); invalid rows carry a zero flow vector.
    """
    df = _read_feather(path)
    _require_columns(path, df, FLOW_COLUMNS, "flow label file")
    if len(df) != num_points:
        raise DataFormatError(path, f"{len(df)} flow rows but the sweep {sweep_path} has {num_points} points")
    flow = np.stack([df[c].to_numpy().astype(np.float32) for c in FLOW_COLUMNS[:3]], axis=1)
    valid = np.isfinite(flow).all(axis=1)
    if "is_valid" in df.columns:
        valid &= df["is_valid"].to_numpy().astype(bool)
    flow[~valid] = 0.0
    return PointLabels(
        flow=np.ascontiguousarray(flow),
        flow_valid=valid,
        flow_category=df["classes"].to_numpy().astype(np.uint8),
        moving=df["dynamic"].to_numpy().astype(bool),
        ground=df["is_ground_0"].to_numpy().astype(bool),
    )


def _timestamp_files(folder: Path) -> dict[int, Path]:
    out = {}
    for p in folder.glob("*.feather"):
        if not p.stem.isdigit():
            raise DataFormatError(p, "file name is not a nanosecond timestamp "
                                     "(expected e.g. 315966265259836000.feather)")
        out[int(p.stem)] = p
    return out


class Av2LogReader(SequenceReader):
    """One Argoverse 2 log: sweeps in time order, ego poses, optional scene-flow labels.

    Points are in the ego-vehicle frame, so ``extrinsic`` is the identity and
    ``pose`` is ``city_SE3_egovehicle`` at the sweep's exact timestamp (a sweep
    without an exact pose row raises ``DataFormatError`` at construction).
    """

    format = "av2"

    def __init__(self, log_dir: str | Path):
        self.root = Path(log_dir)
        lidar = self.root / "sensors" / "lidar"
        if not lidar.is_dir():
            raise DataFormatError(self.root, "no sensors/lidar/ folder: not an Argoverse 2 log")
        sweeps = _timestamp_files(lidar)
        if not sweeps:
            raise DataFormatError(lidar, "no .feather sweeps")
        self._timestamps = sorted(sweeps)
        self._sweeps = [sweeps[t] for t in self._timestamps]
        self._poses = self._index_poses()

        self._flow: dict[int, Path] = {}
        single = self.root / "flow_labels.feather"
        if single.is_file():
            self._flow[self._timestamps[0]] = single
        if (self.root / "flow_labels").is_dir():
            self._flow.update(_timestamp_files(self.root / "flow_labels"))
        self._sensor_extrinsics: dict[str, SE3] | None = None

    def _index_poses(self) -> list[SE3]:
        from av2.utils.io import read_city_SE3_ego

        path = self.root / POSE_FILE
        if not path.is_file():
            raise DataFormatError(path, "missing (ego poses of the log)")
        df = _read_feather(path)
        _require_columns(path, df, ("timestamp_ns", "qw", "qx", "qy", "qz", "tx_m", "ty_m", "tz_m"), "pose table")
        table = read_city_SE3_ego(self.root)
        known = np.sort(df["timestamp_ns"].to_numpy())
        poses = []
        for t, sweep in zip(self._timestamps, self._sweeps):
            pose = table.get(t)
            if pose is None:
                near = f"nearest row is {int(np.abs(known - t).min())} ns away" if len(known) else "the table is empty"
                raise DataFormatError(path, f"no pose row at timestamp {t} of sweep {sweep.name} ({near})")
            try:
                poses.append(SE3(pose.rotation, pose.translation))
            except ValueError as e:
                raise DataFormatError(path, f"pose at timestamp {t}: {e}") from None
        return poses

    @property
    def sequence_id(self) -> str:
        return self.root.name

    def __len__(self) -> int:
        return len(self._sweeps)

    def timestamp_ns(self, index: int) -> int:
        return self._timestamps[index]

    def sweep_path(self, index: int) -> Path:
        return self._sweeps[index]

    def flow_label_path(self, index: int) -> Path | None:
        """The flow label file of frame ``index``, or None when it has none."""
        return self._flow.get(self._timestamps[index])

    def has_flow_labels(self, index: int) -> bool:
        """Whether frame ``index`` has a flow label file (without reading it)."""
        return self.flow_label_path(index) is not None

    def pose(self, index: int) -> SE3:
        """city_SE3_egovehicle of frame ``index``."""
        return self._poses[index]

    def sensor_extrinsic(self, sensor_name: str) -> SE3:
        """egovehicle_SE3_sensor of a named sensor (e.g. ``up_lidar``) from the log's calibration."""
        if self._sensor_extrinsics is None:
            from av2.utils.io import read_ego_SE3_sensor

            path = self.root / "calibration" / "egovehicle_SE3_sensor.feather"
            if not path.is_file():
                raise DataFormatError(path, "missing (sensor extrinsics of the log)")
            _require_columns(path, _read_feather(path),
                             ("sensor_name", "qw", "qx", "qy", "qz", "tx_m", "ty_m", "tz_m"), "calibration table")
            self._sensor_extrinsics = {str(k): SE3(v.rotation, v.translation)
                                       for k, v in read_ego_SE3_sensor(self.root).items()}
        if sensor_name not in self._sensor_extrinsics:
            raise KeyError(f"{self.root}: no sensor {sensor_name!r} in the calibration; "
                           f"sensors are {sorted(self._sensor_extrinsics)}")
        return self._sensor_extrinsics[sensor_name]

    def _read(self, index: int) -> Frame:
        path = self._sweeps[index]
        points, columns = read_sweep(path)
        flow_path = self.flow_label_path(index)
        labels = None if flow_path is None else read_flow_labels(flow_path, len(points), path)
        return Frame(
            points=points,
            timestamp_ns=self._timestamps[index],
            pose=self._poses[index],
            extrinsic=SE3.identity(),
            columns=columns,
            labels=labels,
            frame_id=f"{self.sequence_id}/{self._timestamps[index]}",
            source=str(path),
        )
