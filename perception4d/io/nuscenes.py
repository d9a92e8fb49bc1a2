"""nuScenes LIDAR_TOP sweeps, one sequence a scene (tables) or a log (loose files).

With the tables (``<root>/v1.0-*/sample_data.json`` ...) the sweeps, poses and
extrinsics come from nuscenes-devkit. Without them, loose
``<log>__LIDAR_TOP__<timestamp_us>.pcd.bin`` files are grouped by log and
sorted by time; poses come from mmdet3d (v1.1+) info pickles in
``<root>/mmdet3d_infos/*.pkl`` where they list the file, otherwise the frame
gets identity pose and extrinsic, ``pose_known=False`` and a logged warning.
Points stay in the LiDAR frame: columns x, y, z, intensity (scaled to [0, 1]), ring.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perception4d.core.frame import Frame
from perception4d.core.se3 import SE3
from perception4d.errors import DataFormatError
from perception4d.io._rigid import rigid_from_matrix
from perception4d.io.base import SequenceReader

_log = logging.getLogger(__name__)

COLUMNS = ("x", "y", "z", "intensity", "ring")
POINT_RECORD_BYTES = 20  # 5 x float32
CHANNEL = "LIDAR_TOP"
_NAME = re.compile(r"^(?P<log>.+)__LIDAR_TOP__(?P<ts>\d+)\.pcd\.bin$")


def read_pcd_bin(path: Path) -> np.ndarray:
    """(N, 5) float32 x, y, z, intensity, ring of one ``.pcd.bin`` sweep."""
    size = path.stat().st_size
    if size % POINT_RECORD_BYTES:
        raise DataFormatError(path, f"size {size} bytes is not a multiple of the {POINT_RECORD_BYTES}-byte "
                                    f"point record (5 x float32 x, y, z, intensity, ring)")
    pts = np.fromfile(path, dtype=np.float32).reshape(-1, 5)
    pts[:, 3] *= np.float32(1.0 / 255.0)  # stored 0..255; frames carry intensity in [0, 1]
    return pts


@dataclass(frozen=True)
class NuScenesSweep:
    """One indexed sweep: its file, time and (when known) poses."""

    path: Path
    timestamp_us: int
    pose: SE3 | None = None  # world_T_ego
    extrinsic: SE3 | None = None  # ego_T_lidar


def _se3_from_record(rec: dict, where: Path, what: str) -> SE3:
    try:
        return SE3.from_quaternion(*rec["rotation"], translation=rec["translation"])
    except (KeyError, ValueError, TypeError) as e:
        raise DataFormatError(where, f"{what} {rec.get('token', '?')}: bad rotation/translation ({e})") from None


def load_mmdet3d_poses(pkl: Path) -> dict[str, tuple[SE3, SE3]]:
    """{lidar file name: (ego2global, lidar2ego)} of an mmdet3d v1.1+ info pickle (samples and sweeps)."""
    with open(pkl, "rb") as f:
        try:
            obj = pickle.load(f)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
            raise DataFormatError(pkl, f"not a readable pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("data_list"), list):
        raise DataFormatError(pkl, "not an mmdet3d v1.1+ info file (no 'data_list' list)")
    out = {}
    for k, info in enumerate(obj["data_list"]):
        for j, entry in enumerate([info] + list(info.get("lidar_sweeps") or [])):
            lidar = entry.get("lidar_points") or {}
            if "lidar_path" not in lidar or "lidar2ego" not in lidar or "ego2global" not in entry:
                continue
            what = f"data_list[{k}]" + (f".lidar_sweeps[{j - 1}]" if j else "")
            out[Path(lidar["lidar_path"]).name] = (rigid_from_matrix(entry["ego2global"], pkl, f"{what}.ego2global"),
                                                   rigid_from_matrix(lidar["lidar2ego"], pkl, f"{what}.lidar2ego"))
    return out


class NuScenesReader(SequenceReader):
    """One nuScenes scene (tables) or log (loose files) of LIDAR_TOP sweeps, oldest first.

    Build with ``from_tables`` / ``from_files`` / ``open``; the constructor
    takes already indexed sweeps.
    """

    format = "nuscenes"

    def __init__(self, sequence_id: str, sweeps: Sequence[NuScenesSweep]):
        self._id = sequence_id
        self._sweeps = tuple(sweeps)
        if not self._sweeps:
            raise ValueError(f"nuScenes sequence {sequence_id} has no sweeps")
        for a, b in zip(self._sweeps[:-1], self._sweeps[1:]):
            if b.timestamp_us <= a.timestamp_us:
                raise DataFormatError(b.path, f"sweep at {b.timestamp_us} us follows {a.path.name} at "
                                              f"{a.timestamp_us} us in sequence {sequence_id}: times must increase")

    # construction ----------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path, version: str | None = None,
             infos_dir: str | Path | None = None) -> list["NuScenesReader"]:
        """Every sequence under ``root``: from the tables when a ``v1.0-*`` table folder exists, else loose files."""
        root = Path(root)
        if version is not None or table_versions(root):
            return cls.from_tables(root, version)
        return cls.from_files(root, infos_dir)

    @classmethod
    def from_tables(cls, root: str | Path, version: str | None = None) -> list["NuScenesReader"]:
        """One reader per scene through ``nuscenes.nuscenes.NuScenes(version, root)``."""
        root = Path(root)
        if version is None:
            found = table_versions(root)
            if len(found) != 1:
                raise DataFormatError(root, f"pass version=: found table folders {found}" if found else
                                            "no v1.0-*/sample_data.json table folder")
            version = found[0]
        from nuscenes.nuscenes import NuScenes

        try:
            nusc = NuScenes(version=version, dataroot=str(root), verbose=False)
        except (AssertionError, KeyError, FileNotFoundError, ValueError) as e:
            raise DataFormatError(root / version, f"nuscenes-devkit could not load the tables: "
                                                  f"{type(e).__name__}: {e}") from None
        readers = []
        for scene in nusc.scene:
            sweeps = []
            for sd in _scene_lidar_chain(nusc, scene):
                cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
                ego = nusc.get("ego_pose", sd["ego_pose_token"])
                sweeps.append(NuScenesSweep(
                    path=root / sd["filename"], timestamp_us=int(sd["timestamp"]),
                    pose=_se3_from_record(ego, root / version / "ego_pose.json", "ego_pose"),
                    extrinsic=_se3_from_record(cs, root / version / "calibrated_sensor.json", "calibrated_sensor")))
            if sweeps:
                readers.append(cls(scene["name"], sweeps))
        return readers

    @classmethod
    def from_files(cls, root: str | Path, infos_dir: str | Path | None = None) -> list["NuScenesReader"]:
        """One reader per log of loose ``*__LIDAR_TOP__*.pcd.bin`` files under ``root`` (searched recursively)."""
        root = Path(root)
        by_log: dict[str, dict[int, Path]] = defaultdict(dict)
        for p in sorted(root.rglob("*.pcd.bin")):
            m = _NAME.match(p.name)
            if m is None:
                continue
            log, ts = m["log"], int(m["ts"])
            if ts in by_log[log]:
                raise DataFormatError(p, f"a second file for sweep {log} at {ts} us (also {by_log[log][ts]})")
            by_log[log][ts] = p
        if not by_log:
            raise DataFormatError(root, f"no <log>__{CHANNEL}__<timestamp_us>.pcd.bin files")
        infos_dir = Path(infos_dir) if infos_dir is not None else root / "mmdet3d_infos"
        known: dict[str, tuple[SE3, SE3]] = {}
        if infos_dir.is_dir():
            for pkl in sorted(infos_dir.glob("*.pkl")):
                known.update(load_mmdet3d_poses(pkl))
        readers = []
        for log in sorted(by_log):
            sweeps, unknown = [], 0
            for ts in sorted(by_log[log]):
                path = by_log[log][ts]
                poses = known.get(path.name)
                unknown += poses is None
                sweeps.append(NuScenesSweep(path, ts, *(poses or (None, None))))
            if unknown:
                _log.warning("nuScenes %s: %d of %d sweeps have no pose in %s; they get identity pose and "
                             "extrinsic (pose_known=False)", log, unknown, len(sweeps), infos_dir)
            readers.append(cls(log, sweeps))
        return readers

    # SequenceReader --------------------------------------------------------
    @property
    def sequence_id(self) -> str:
        return self._id

    def __len__(self) -> int:
        return len(self._sweeps)

    def sweep(self, index: int) -> NuScenesSweep:
        return self._sweeps[index]

    def timestamp_ns(self, index: int) -> int:
        return self._sweeps[index].timestamp_us * 1000

    def _read(self, index: int) -> Frame:
        s = self._sweeps[index]
        known = s.pose is not None and s.extrinsic is not None
        return Frame(
            points=read_pcd_bin(s.path),
            timestamp_ns=s.timestamp_us * 1000,
            pose=s.pose if known else SE3.identity(),
            extrinsic=s.extrinsic if known else SE3.identity(),
            columns=COLUMNS,
            frame_id=f"{self._id}/{s.timestamp_us}",
            source=str(s.path),
            pose_known=known,
        )


def table_versions(root: Path) -> list[str]:
    """Names of the ``v1.0-*`` folders of ``root`` that hold a ``sample_data.json``."""
    return sorted(p.parent.name for p in Path(root).glob("v1.0-*/sample_data.json"))


def _scene_lidar_chain(nusc, scene: dict) -> list[dict]:
    """All LIDAR_TOP sample_data records of a scene in time order (key frames and sweeps)."""
    first = nusc.get("sample", scene["first_sample_token"])
    if CHANNEL not in first["data"]:
        return []

    def in_scene(sd: dict) -> bool:
        return nusc.get("sample", sd["sample_token"])["scene_token"] == scene["token"]

    sd = nusc.get("sample_data", first["data"][CHANNEL])
    while sd["prev"] and in_scene(prev := nusc.get("sample_data", sd["prev"])):
        sd = prev
    chain = [sd]
    while sd["next"] and in_scene(nxt := nusc.get("sample_data", sd["next"])):
        sd = nxt
        chain.append(sd)
    return chain
