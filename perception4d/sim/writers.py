"""Write a simulated sequence to disk: SemanticKITTI, Argoverse 2 and occupancy layouts.

The layouts are described in docs/data_formats.md. Each writer refuses a
target folder that already holds files unless ``overwrite=True``, which
removes that one folder first (so no stale frame of an earlier run survives).
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from perception4d.core.se3 import SE3
from perception4d.errors import ConfigError
from perception4d.sim.occupancy import occupancy_meta, save_occupancy
from perception4d.sim.simulate import SimSequence

# Velodyne -> camera 0 (cam x right, y down, z forward); the camera sits 0.27 m ahead, 0.08 m below.
VELO_TO_CAM = SE3(np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]]),
                  np.array([0.0, -0.08, -0.27]))
_FOCAL, _CX, _CY = 721.5, 609.6, 172.9
_CAMERA_X_OFFSETS = (0.0, -0.54, 0.06, -0.48)  # P0..P3: camera centre along cam-0 x (m)
_SIM_NAMESPACE = uuid.UUID("8a7c4b2e-3f1d-5e6a-9b0c-1d2e3f4a5b6c")


@dataclass(frozen=True)
class DatasetPaths:
    """Where ``write_dataset`` put each layout."""

    semantickitti: Path  # .../semantickitti/sequences/<sequence>
    av2: Path  # .../av2/<log_id>
    occupancy: Path | None  # .../occupancy
    metadata: Path  # .../simulation.json


def _prepare(folder: Path, overwrite: bool) -> Path:
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise ConfigError(f"{folder} already holds files; choose an empty folder or pass overwrite=True")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _rows(m: np.ndarray) -> str:
    return " ".join(f"{v:.12e}" for v in np.asarray(m, np.float64)[:3].reshape(-1))


def write_semantickitti(seq: SimSequence, root: str | Path, sequence: str = "00",
                        overwrite: bool = False) -> Path:
    """``root/sequences/<sequence>/{velodyne, labels, poses.txt, calib.txt, times.txt}``; returns that folder.

    Scans hold sensor-frame x, y, z, intensity (0..1); labels are
    ``semantic | instance << 16``. ``poses.txt`` line i is
    ``Tr @ world_T_lidar_i @ inv(Tr)`` so that ``inv(Tr) @ P_i @ Tr`` gives the
    simulator's world_T_lidar back (P_0 is not the identity).
    """
    out = _prepare(Path(root) / "sequences" / sequence, overwrite)
    (out / "velodyne").mkdir()
    (out / "labels").mkdir()
    tr, tr_inv = VELO_TO_CAM.as_matrix(), VELO_TO_CAM.inverse().as_matrix()
    poses, times = [], []
    t0 = seq.frames[0].timestamp_ns
    for i, f in enumerate(seq.frames):
        np.ascontiguousarray(f.select_columns(("x", "y", "z", "intensity")), np.float32).tofile(
            out / "velodyne" / f"{i:06d}.bin")
        lab = f.labels
        (lab.semantic.astype(np.uint32) | (lab.instance.astype(np.uint32) << 16)).tofile(
            out / "labels" / f"{i:06d}.label")
        poses.append(_rows(tr @ f.world_T_sensor.as_matrix() @ tr_inv))
        times.append(f"{(f.timestamp_ns - t0) * 1e-9:.9f}")
    (out / "poses.txt").write_text("\n".join(poses) + "\n")
    (out / "times.txt").write_text("\n".join(times) + "\n")
    lines = []
    for k, x_offset in enumerate(_CAMERA_X_OFFSETS):
        p = np.array([[_FOCAL, 0.0, _CX, _FOCAL * x_offset], [0.0, _FOCAL, _CY, 0.0], [0.0, 0.0, 1.0, 0.0]])
        lines.append(f"P{k}: {_rows(p)}")
    lines.append(f"Tr: {_rows(tr)}")
    (out / "calib.txt").write_text("\n".join(lines) + "\n")
    return out


def default_log_id(seq: SimSequence) -> str:
    """A UUID derived from the preset, seed, length (and terrain unless flat), so reruns name the log the same."""
    key = f"{seq.preset.name}/{seq.seed}/{len(seq)}/{seq.start_time_ns}"
    if not seq.scene.terrain.is_flat:
        key += f"/{seq.scene.terrain.kind}"
    return str(uuid.uuid5(_SIM_NAMESPACE, key))


def _pose_columns(poses: list[SE3]) -> dict[str, np.ndarray]:
    q = np.array([p.quaternion() for p in poses], np.float64).reshape(-1, 4)
    t = np.array([p.translation for p in poses], np.float64).reshape(-1, 3)
    return {"qw": q[:, 0], "qx": q[:, 1], "qy": q[:, 2], "qz": q[:, 3],
            "tx_m": t[:, 0], "ty_m": t[:, 1], "tz_m": t[:, 2]}


def write_av2(seq: SimSequence, root: str | Path, log_id: str | None = None, overwrite: bool = False) -> Path:
    """An Argoverse 2 sensor-dataset log with per-sweep scene-flow labels; returns ``root/<log_id>``."""
    import pyarrow as pa
    import pyarrow.feather as feather

    out = _prepare(Path(root) / (log_id or default_log_id(seq)), overwrite)
    for sub in ("sensors/lidar", "calibration", "flow_labels"):
        (out / sub).mkdir(parents=True)
    for f in seq.frames:
        xyz = f.xyz_in_ego().astype(np.float32)
        sweep = {
            "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2],
            "intensity": np.clip(np.round(f.column("intensity") * 255.0), 0, 255).astype(np.uint8),
            "laser_number": f.column("ring").astype(np.uint8),
            "offset_ns": np.zeros(f.num_points, np.int32),  # instantaneous sweep
        }
        feather.write_feather(pa.table(sweep), out / "sensors" / "lidar" / f"{f.timestamp_ns}.feather")
        lab = f.labels
        flow = {
            "flow_tx_m": lab.flow[:, 0].astype(np.float32), "flow_ty_m": lab.flow[:, 1].astype(np.float32),
            "flow_tz_m": lab.flow[:, 2].astype(np.float32), "classes": lab.flow_category.astype(np.uint8),
            "dynamic": lab.moving.astype(bool), "is_ground_0": lab.ground.astype(bool),
        }
        feather.write_feather(pa.table(flow), out / "flow_labels" / f"{f.timestamp_ns}.feather")
    poses = {"timestamp_ns": np.array([f.timestamp_ns for f in seq.frames], np.int64),
             **_pose_columns([f.pose for f in seq.frames])}
    feather.write_feather(pa.table(poses), out / "city_SE3_egovehicle.feather")
    p = seq.preset
    sensors = [("up_lidar", SE3(np.eye(3), [0.0, 0.0, p.mount_height]))]
    if p.second_elevation_deg is not None:
        sensors.append(("down_lidar", SE3(np.eye(3), [0.0, 0.0, p.mount_height + p.second_unit_dz])))
    calib = {"sensor_name": [name for name, _ in sensors], **_pose_columns([s for _, s in sensors])}
    feather.write_feather(pa.table(calib), out / "calibration" / "egovehicle_SE3_sensor.feather")
    return out


def write_occupancy(seq: SimSequence, out_dir: str | Path, overwrite: bool = False) -> Path:
    """``out_dir/<frame:06d>.npz`` per frame and ``out_dir/occupancy.json`` (grid and classes)."""
    if seq.occupancy is None:
        raise ConfigError("write_occupancy: the sequence was simulated without occupancy (occupancy=None)")
    out = _prepare(Path(out_dir), overwrite)
    for i, occ in enumerate(seq.occupancy):
        save_occupancy(occ, out / f"{i:06d}.npz")
    meta = occupancy_meta(seq.occupancy[0].geometry)
    meta["frames"] = [{"index": i, "timestamp_ns": f.timestamp_ns} for i, f in enumerate(seq.frames)]
    (out / "occupancy.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out


def write_dataset(seq: SimSequence, out_dir: str | Path, overwrite: bool = False) -> DatasetPaths:
    """All layouts under ``out_dir``: semantickitti/, av2/, occupancy/ (when simulated), simulation.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kitti = write_semantickitti(seq, out / "semantickitti", overwrite=overwrite)
    av2 = write_av2(seq, out / "av2", overwrite=overwrite)
    occ = write_occupancy(seq, out / "occupancy", overwrite=overwrite) if seq.occupancy is not None else None
    meta = {
        "generator": "perception4d.sim.simulate",
        "preset": {k: v for k, v in asdict(seq.preset).items()},
        "seed": seq.seed,
        "num_frames": len(seq),
        "start_time_ns": seq.start_time_ns,
        "scene": seq.scene.summary(),
        "ego_speed_mps": seq.scene.ego.speed,
        "terrain": asdict(seq.scene.terrain),
        "semantickitti": str(kitti.relative_to(out)),
        "av2": str(av2.relative_to(out)),
        "occupancy": None if occ is None else str(occ.relative_to(out)),
    }
    (out / "simulation.json").write_text(json.dumps(meta, indent=1) + "\n")
    return DatasetPaths(semantickitti=kitti, av2=av2, occupancy=occ, metadata=out / "simulation.json")
