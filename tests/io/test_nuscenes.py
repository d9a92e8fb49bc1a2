"""NuScenesReader: loose .pcd.bin files (+ mmdet3d info poses) and the nuscenes-devkit table path."""

from __future__ import annotations

import json
import logging
import pickle
import shutil

import numpy as np
import pytest

from perception4d.core.se3 import SE3
from perception4d.io.nuscenes import NuScenesReader

LOG = "n015-2018-07-24-11-22-45+0800"
TS_US = 1532402927647951
NAME = f"{LOG}__LIDAR_TOP__{TS_US}.pcd.bin"


@pytest.fixture(scope="module")
def nus_root(shared_data):
    return shared_data / "nuscenes"


@pytest.fixture(scope="module")
def info(nus_root):
    with open(nus_root / "mmdet3d_infos" / f"{LOG}.pkl", "rb") as f:
        return pickle.load(f)["data_list"][0]


def test_loose_keyframe_with_info_poses(nus_root, info):
    (r,) = NuScenesReader.open(nus_root)
    assert r.sequence_id == LOG and len(r) == 1 and r.timestamp_ns(0) == TS_US * 1000
    f = r[0]
    assert f.num_points == 34688 and f.columns == ("x", "y", "z", "intensity", "ring")
    assert f.frame_id == f"{LOG}/{TS_US}" and f.source.endswith(NAME)
    for axis, (lo, hi) in enumerate([(-58.0, 96.9), (-96.3, 98.6), (-3.42, 19.0)]):
        assert abs(f.points[:, axis].min() - lo) < 0.05 and abs(f.points[:, axis].max() - hi) < 0.05
    assert f.column("intensity").max() == 1.0 and set(np.unique(f.column("ring"))) == set(range(32))
    assert f.pose_known
    np.testing.assert_allclose(f.pose.as_matrix(), info["ego2global"], atol=1e-5)
    np.testing.assert_allclose(f.extrinsic.as_matrix(), info["lidar_points"]["lidar2ego"], atol=1e-5)
    # ego frame: the LiDAR sits 1.84 m above the ego origin
    assert abs(f.xyz_in_ego()[:, 2].mean() - f.xyz[:, 2].mean() - 1.84) < 0.1


def test_tiny_fixtures_without_poses(shared_data, caplog):
    with caplog.at_level(logging.WARNING, logger="perception4d.io.nuscenes"):
        rs = NuScenesReader.open(shared_data / "mmdet3d_tiny_fixtures" / "nuscenes")
    assert [(r.sequence_id, len(r)) for r in rs] == [("n008-2018-09-18-12-07-26-0400", 1),
                                                       ("n015-2018-08-02-17-16-37+0800", 2)]
    assert "identity pose" in caplog.text
    assert rs[0][0].num_points == 400
    seq = rs[1]
    assert [seq.timestamp_ns(i) for i in range(2)] == [1533201470898274000, 1533201470948018000]
    assert seq[0].source.rsplit("/", 3)[-3] == "sweeps" and seq[1].source.rsplit("/", 3)[-3] == "samples"
    for f in seq:
        assert f.num_points == 100 and not f.pose_known and f.pose.allclose(SE3.identity())
    assert len(seq.window(1, 2)) == 2


def test_explicit_infos_dir(nus_root, tmp_path):
    (r,) = NuScenesReader.from_files(nus_root, infos_dir=tmp_path)  # no pkl there
    assert not r[0].pose_known


def _record(pose: SE3, **kw) -> dict:
    return {"rotation": list(pose.quaternion()), "translation": pose.translation.tolist(), **kw}


def _write_tables(root, version, info):
    """A schema-valid v1.0-mini-style table set: one scene, 2 key frames, 2 sweeps, one camera image."""
    from PIL import Image

    ego2global = SE3.from_matrix(np.array(info["ego2global"]), orthonormalize=True)
    lidar2ego = SE3.from_matrix(np.array(info["lidar_points"]["lidar2ego"]), orthonormalize=True)
    (root / "maps").mkdir()
    Image.new("L", (8, 8)).save(root / "maps" / "mask.png")
    times = [TS_US - 50_000, TS_US, TS_US + 50_000, TS_US + 100_000]  # sweep, key, sweep, key
    keys = [False, True, False, True]
    sd = []
    for i, (t, key) in enumerate(zip(times, keys)):
        folder = "samples" if key else "sweeps"
        fn = f"{folder}/LIDAR_TOP/{LOG}__LIDAR_TOP__{t}.pcd.bin"
        (root / fn).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(info["_bin"], root / fn)
        sd.append({"token": f"sd{i}", "sample_token": "s0" if i < 2 else "s1", "ego_pose_token": f"ep{i}",
                   "calibrated_sensor_token": "cs_lidar", "timestamp": t, "fileformat": "pcd",
                   "is_key_frame": key, "height": 0, "width": 0, "filename": fn,
                   "prev": f"sd{i - 1}" if i else "", "next": f"sd{i + 1}" if i < 3 else ""})
    sd.append({"token": "cam0", "sample_token": "s0", "ego_pose_token": "ep1", "calibrated_sensor_token": "cs_cam",
               "timestamp": TS_US, "fileformat": "jpg", "is_key_frame": True, "height": 900, "width": 1600,
               "filename": "samples/CAM_FRONT/x.jpg", "prev": "", "next": ""})
    tables = {
        "category": [], "attribute": [], "visibility": [], "instance": [], "sample_annotation": [],
        "sensor": [{"token": "lidar", "channel": "LIDAR_TOP", "modality": "lidar"},
                   {"token": "cam", "channel": "CAM_FRONT", "modality": "camera"}],
        "calibrated_sensor": [_record(lidar2ego, token="cs_lidar", sensor_token="lidar", camera_intrinsic=[]),
                              _record(SE3.identity(), token="cs_cam", sensor_token="cam",
                                      camera_intrinsic=np.eye(3).tolist())],
        "ego_pose": [_record(SE3(ego2global.rotation, ego2global.translation + [i - 1.0, 0, 0]),
                             token=f"ep{i}", timestamp=t) for i, t in enumerate(times)],
        "log": [{"token": "log0", "logfile": LOG, "vehicle": "n015", "date_captured": "2018-07-24",
                 "location": "singapore-onenorth"}],
        "scene": [{"token": "scene0", "log_token": "log0", "nbr_samples": 2, "first_sample_token": "s0",
                   "last_sample_token": "s1", "name": "scene-0001", "description": "test"}],
        "sample": [{"token": "s0", "timestamp": TS_US, "prev": "", "next": "s1", "scene_token": "scene0"},
                   {"token": "s1", "timestamp": TS_US + 100_000, "prev": "s0", "next": "", "scene_token": "scene0"}],
        "sample_data": sd,
        "map": [{"token": "map0", "category": "semantic_prior", "filename": "maps/mask.png", "log_tokens": ["log0"]}],
    }
    (root / version).mkdir()
    for name, rows in tables.items():
        (root / version / f"{name}.json").write_text(json.dumps(rows))
    return times, ego2global, lidar2ego


def test_devkit_tables(nus_root, info, tmp_path):
    root = tmp_path / "nuscenes"
    root.mkdir()
    times, ego2global, lidar2ego = _write_tables(root, "v1.0-mini", {**info, "_bin": nus_root / "samples" /
                                                                     "LIDAR_TOP" / NAME})
    (r,) = NuScenesReader.open(root)
    assert r.sequence_id == "scene-0001" and len(r) == 4  # the sweep before the first key frame included
    assert [r.timestamp_ns(i) for i in range(4)] == [t * 1000 for t in times]
    frames = list(r)
    assert all(f.num_points == 34688 and f.pose_known for f in frames)
    assert frames[1].pose.allclose(ego2global, atol=1e-6) and frames[1].extrinsic.allclose(lidar2ego, atol=1e-6)
    steps = [frames[i + 1].pose.translation[0] - frames[i].pose.translation[0] for i in range(3)]
    np.testing.assert_allclose(steps, [1.0, 1.0, 1.0], atol=1e-9)
    # the table path and the loose-file + info path agree on the same key frame
    (loose,) = NuScenesReader.open(nus_root)
    assert loose[0].pose.allclose(frames[1].pose, atol=1e-5)
    assert loose[0].extrinsic.allclose(frames[1].extrinsic, atol=1e-5)
    np.testing.assert_array_equal(loose[0].points, frames[1].points)
