"""SemanticKITTI / KITTI odometry sequences.

Layout of one sequence folder ``sequences/<seq>/``:

* ``velodyne/<scan>.bin``: float32 records (x, y, z, intensity), 16 bytes a point;
* ``labels/<scan>.label`` (optional): uint32 a point, semantic class in the lower
  16 bits, instance id in the upper 16 bits;
* ``poses.txt``: one 3x4 row-major pose a scan (line = scan number) in the
  camera-0 frame; ``calib.txt``: ``Tr:`` (velodyne -> camera 0, 12 numbers);
* ``times.txt``: seconds since the start of the sequence, one line a scan.

The LiDAR pose is ``inv(Tr) @ P_i @ Tr``, i.e. the camera poses re-expressed in
LiDAR frames. The ego frame is the LiDAR frame moved down to the ground
(KITTI's Velodyne sits ``lidar_height`` = 1.73 m above it), so that heights
mean the same as in Argoverse 2 and the simulator: ``extrinsic`` (ego_T_lidar)
is a translation of +1.73 m in z and ``pose`` is world_T_lidar @ lidar_T_ego.
``lidar_height=0`` makes the ego frame the LiDAR frame.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from perception4d.core.frame import BASE_COLUMNS, MOVING_ID_MAX, MOVING_ID_MIN, Frame, PointLabels
from perception4d.core.se3 import SE3
from perception4d.errors import DataFormatError
from perception4d.io._rigid import rigid_from_matrix
from perception4d.io.base import SequenceReader

_log = logging.getLogger(__name__)

POINT_RECORD_BYTES = 16  # 4 x float32
LABEL_RECORD_BYTES = 4  # uint32
NOMINAL_RATE_HZ = 10.0  # KITTI HDL-64E rotation rate, used only when times.txt is absent and allowed to be


#: mounting height of KITTI's Velodyne HDL-64E above the ground (Geiger et al., IJRR 2013)
KITTI_LIDAR_HEIGHT_M = 1.73

def read_scan(path: Path) -> np.ndarray:
    """(N, 4) float32 x, y, z, intensity of one ``.bin`` scan."""
    size = path.stat().st_size
    if size % POINT_RECORD_BYTES:
        raise DataFormatError(path, f"size {size} bytes is not a multiple of the {POINT_RECORD_BYTES}-byte "
                                    f"point record (4 x float32 x, y, z, intensity)")
    return np.fromfile(path, dtype=np.float32).reshape(-1, 4)


def read_label_file(path: Path, num_points: int, scan_path: Path) -> PointLabels:
    """Semantic (lower 16 bits), instance (upper 16 bits) and moving mask of one ``.label`` file."""
    size = path.stat().st_size
    if size % LABEL_RECORD_BYTES:
        raise DataFormatError(path, f"size {size} bytes is not a multiple of the {LABEL_RECORD_BYTES}-byte "
                                    f"uint32 label record")
    if size // LABEL_RECORD_BYTES != num_points:
        raise DataFormatError(path, f"{size // LABEL_RECORD_BYTES} labels but the scan {scan_path} has "
                                    f"{num_points} points")
    raw = np.fromfile(path, dtype=np.uint32)
    semantic = (raw & 0xFFFF).astype(np.uint16)
    instance = (raw >> 16).astype(np.uint16)
    moving = (semantic >= MOVING_ID_MIN) & (semantic <= MOVING_ID_MAX)
    return PointLabels(semantic=semantic, instance=instance, moving=moving)


def _numbers(path: Path, line_no: int, text: str, expected: int) -> list[float]:
    parts = text.split()
    if len(parts) != expected:
        raise DataFormatError(path, f"line {line_no} has {len(parts)} numbers, expected {expected}")
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise DataFormatError(path, f"line {line_no} is not numeric: {text.strip()[:80]!r}") from None


def read_calib_tr(path: Path) -> SE3:
    """``Tr`` (velodyne -> camera 0) from a KITTI odometry ``calib.txt``."""
    for no, line in enumerate(path.read_text().splitlines(), 1):
        key, _, rest = line.partition(":")
        if key.strip() == "Tr":
            return rigid_from_matrix(np.array(_numbers(path, no, rest, 12)).reshape(3, 4), path, f"line {no} (Tr)")
    raise DataFormatError(path, "no 'Tr:' line (velodyne -> camera 0 transform)")


def read_pose_lines(path: Path) -> np.ndarray:
    """(L, 3, 4) float64 poses of ``poses.txt``; blank trailing lines are ignored."""
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    out = np.empty((len(lines), 3, 4))
    for no, line in enumerate(lines, 1):
        out[no - 1] = np.array(_numbers(path, no, line, 12)).reshape(3, 4)
    return out


def read_times(path: Path) -> np.ndarray:
    """(L,) float64 seconds of ``times.txt``."""
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return np.array([_numbers(path, no, line, 1)[0] for no, line in enumerate(lines, 1)], dtype=np.float64)


class SemanticKittiReader(SequenceReader):
    """One ``sequences/<seq>`` folder.

    ``require_poses=False`` accepts a sequence without ``poses.txt``/``calib.txt``:
    frames then get identity poses, ``pose_known=False`` and a logged warning.
    ``require_times=False`` accepts a missing ``times.txt``: timestamps are
    ``scan / 10 Hz`` with a logged warning. Both default to True (missing file:
    ``DataFormatError``).
    """

    format = "semantickitti"

    def __init__(self, sequence_dir: str | Path, require_poses: bool = True, require_times: bool = True,
                 lidar_height: float = KITTI_LIDAR_HEIGHT_M):
        self._ego_T_lidar = SE3(np.eye(3), np.array([0.0, 0.0, float(lidar_height)]))
        self.root = Path(sequence_dir)
        velo = self.root / "velodyne"
        if not velo.is_dir():
            raise DataFormatError(self.root, "no velodyne/ folder: not a SemanticKITTI / KITTI odometry sequence")
        scans = []
        for p in velo.glob("*.bin"):
            if not p.stem.isdigit():
                raise DataFormatError(p, "scan file name is not a scan number (expected e.g. 000123.bin)")
            scans.append(p)
        if not scans:
            raise DataFormatError(velo, "no .bin scans")
        self._scans = sorted(scans, key=lambda p: int(p.stem))
        self._numbers = np.array([int(p.stem) for p in self._scans], dtype=np.int64)

        self._label_paths: list[Path] | None = None
        labels_dir = self.root / "labels"
        if labels_dir.is_dir():
            self._label_paths = [labels_dir / f"{p.stem}.label" for p in self._scans]
            for lp in self._label_paths:
                if not lp.is_file():
                    raise DataFormatError(lp, f"labels/ exists but this label file of scan {lp.stem} is missing")

        self._pose_lines, self._tr = self._index_poses(require_poses)
        self._times = self._index_times(require_times)
        if len(self._times) <= self._numbers[-1]:
            n = len(self._times)
            raise DataFormatError(self.root / "times.txt",
                                  f"missing time for scan {self._first_beyond(n)}: times.txt has {n} lines")

    def _first_beyond(self, num_lines: int) -> str:
        """Name of the first scan whose number has no line in a file of ``num_lines`` lines."""
        return self._scans[int(np.searchsorted(self._numbers, num_lines))].stem

    # indexing ------------------------------------------------------------
    def _index_times(self, required: bool) -> np.ndarray:
        path = self.root / "times.txt"
        if path.is_file():
            return read_times(path)
        if required:
            raise DataFormatError(path, "missing (pass require_times=False to use a nominal 10 Hz)")
        _log.warning("%s: no times.txt; timestamps are scan number / %.0f Hz", self.root, NOMINAL_RATE_HZ)
        return np.arange(self._numbers[-1] + 1, dtype=np.float64) / NOMINAL_RATE_HZ

    def _index_poses(self, required: bool) -> tuple[np.ndarray | None, SE3 | None]:
        poses_path, calib_path = self.root / "poses.txt", self.root / "calib.txt"
        missing = [p for p in (poses_path, calib_path) if not p.is_file()]
        if missing:
            if required:
                raise DataFormatError(missing[0], "missing (poses need poses.txt and calib.txt; pass "
                                                  "require_poses=False to read the scans with identity poses)")
            _log.warning("%s: no %s; frames get identity poses (pose_known=False)", self.root,
                         " or ".join(p.name for p in missing))
            return None, None
        lines = read_pose_lines(poses_path)
        if len(lines) <= self._numbers[-1]:
            raise DataFormatError(poses_path, f"missing pose for scan {self._first_beyond(len(lines))}: "
                                              f"poses.txt has {len(lines)} lines")
        return lines, read_calib_tr(calib_path)

    # SequenceReader ------------------------------------------------------
    @property
    def sequence_id(self) -> str:
        return self.root.name

    @property
    def has_labels(self) -> bool:
        return self._label_paths is not None

    @property
    def has_poses(self) -> bool:
        return self._pose_lines is not None

    def __len__(self) -> int:
        return len(self._scans)

    def scan_path(self, index: int) -> Path:
        return self._scans[index]

    def timestamp_ns(self, index: int) -> int:
        return int(round(self._times[self._numbers[index]] * 1e9))

    def pose(self, index: int) -> SE3:
        """world_T_lidar of frame ``index`` (identity when the sequence has no poses)."""
        if self._pose_lines is None:
            return SE3.identity()
        n = int(self._numbers[index])
        cam = rigid_from_matrix(self._pose_lines[n], self.root / "poses.txt", f"line {n + 1}")
        return self._tr.inverse() @ cam @ self._tr

    def _read(self, index: int) -> Frame:
        path = self._scans[index]
        points = read_scan(path)
        labels = None
        if self._label_paths is not None:
            labels = read_label_file(self._label_paths[index], len(points), path)
        return Frame(
            points=points,
            timestamp_ns=self.timestamp_ns(index),
            pose=self.pose(index) @ self._ego_T_lidar.inverse(),
            extrinsic=self._ego_T_lidar,
            columns=BASE_COLUMNS,
            labels=labels,
            frame_id=f"{self.sequence_id}/{path.stem}",
            source=str(path),
            pose_known=self.has_poses,
        )
