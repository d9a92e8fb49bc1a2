"""Malformed files give one DataFormatError naming the file and the problem."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.feather as pf
import pytest

from perception4d.errors import DataFormatError
from perception4d.io.av2 import Av2LogReader
from perception4d.io.nuscenes import NuScenesReader, load_mmdet3d_poses
from perception4d.io.semantickitti import SemanticKittiReader

IDENTITY_LINE = "1 0 0 0 0 1 0 0 0 0 1 0\n"


# SemanticKITTI ---------------------------------------------------------------
def _kitti_seq(root, scans=(0, 1, 2), points=5, pose_lines=None, times=True, calib=True, labels=True):
    seq = root / "sequences" / "07"
    (seq / "velodyne").mkdir(parents=True)
    if labels:
        (seq / "labels").mkdir()
    rng = np.random.default_rng(0)
    for s in scans:
        rng.random((points, 4), dtype=np.float32).tofile(seq / "velodyne" / f"{s:06d}.bin")
        if labels:
            np.full(points, 40, np.uint32).tofile(seq / "labels" / f"{s:06d}.label")
    n = max(scans) + 1
    (seq / "poses.txt").write_text(IDENTITY_LINE * (n if pose_lines is None else pose_lines))
    if calib:
        (seq / "calib.txt").write_text("P0: " + "0 " * 12 + "\nTr: " + IDENTITY_LINE)
    if times:
        (seq / "times.txt").write_text("".join(f"{0.1 * i:.6e}\n" for i in range(n)))
    return seq


def test_kitti_valid_synthetic_sequence(tmp_path):
    r = SemanticKittiReader(_kitti_seq(tmp_path, scans=(0, 2, 5)))
    assert [r[i].frame_id for i in range(3)] == ["07/000000", "07/000002", "07/000005"]
    assert r.timestamp_ns(2) == 500_000_000  # the scan number picks the times.txt line


def test_kitti_bin_size(tmp_path):
    seq = _kitti_seq(tmp_path)
    with open(seq / "velodyne" / "000001.bin", "ab") as f:
        f.write(b"\0" * 6)
    r = SemanticKittiReader(seq)
    with pytest.raises(DataFormatError, match=r"000001\.bin: size 86 bytes is not a multiple of the 16-byte"):
        r[1]


def test_kitti_label_count(tmp_path):
    seq = _kitti_seq(tmp_path)
    np.zeros(4, np.uint32).tofile(seq / "labels" / "000002.label")
    with pytest.raises(DataFormatError, match=r"000002\.label: 4 labels but the scan .*000002\.bin has 5 points"):
        SemanticKittiReader(seq)[2]


def test_kitti_missing_label_file(tmp_path):
    seq = _kitti_seq(tmp_path)
    (seq / "labels" / "000001.label").unlink()
    with pytest.raises(DataFormatError, match=r"000001\.label: labels/ exists but"):
        SemanticKittiReader(seq)


def test_kitti_short_poses(tmp_path):
    seq = _kitti_seq(tmp_path, scans=(0, 1, 2, 5), pose_lines=3)
    with pytest.raises(DataFormatError, match=r"poses\.txt: missing pose for scan 000005: poses\.txt has 3 lines"):
        SemanticKittiReader(seq)


def test_kitti_bad_pose_line(tmp_path):
    seq = _kitti_seq(tmp_path)
    (seq / "poses.txt").write_text(IDENTITY_LINE + "1 0 0\n" + IDENTITY_LINE)
    with pytest.raises(DataFormatError, match=r"poses\.txt: line 2 has 3 numbers, expected 12"):
        SemanticKittiReader(seq)
    (seq / "poses.txt").write_text(IDENTITY_LINE * 2 + "0 " * 12 + "\n")
    r = SemanticKittiReader(seq)
    with pytest.raises(DataFormatError, match=r"poses\.txt: line 3 is not a rigid transform"):
        r[2]


def test_kitti_missing_calib_times_and_tr(tmp_path, caplog):
    with pytest.raises(DataFormatError, match=r"calib\.txt: missing"):
        SemanticKittiReader(_kitti_seq(tmp_path / "a", calib=False))
    seq = _kitti_seq(tmp_path / "b", times=False)
    with pytest.raises(DataFormatError, match=r"times\.txt: missing"):
        SemanticKittiReader(seq)
    with caplog.at_level(logging.WARNING, logger="perception4d.io.semantickitti"):
        r = SemanticKittiReader(seq, require_times=False)
    assert "no times.txt" in caplog.text and r.timestamp_ns(2) == 200_000_000 and r[0].pose_known
    seq = _kitti_seq(tmp_path / "c")
    (seq / "calib.txt").write_text("P0: " + "0 " * 12 + "\n")
    with pytest.raises(DataFormatError, match=r"calib\.txt: no 'Tr:' line"):
        SemanticKittiReader(seq)
    (seq / "times.txt").write_text("0.0\n0.1\n")
    (seq / "calib.txt").write_text("Tr: " + IDENTITY_LINE)
    with pytest.raises(DataFormatError, match=r"times\.txt: missing time for scan 000002: times\.txt has 2 lines"):
        SemanticKittiReader(seq)


def test_kitti_not_a_sequence(tmp_path):
    with pytest.raises(DataFormatError, match="no velodyne/ folder"):
        SemanticKittiReader(tmp_path)
    (tmp_path / "velodyne").mkdir()
    (tmp_path / "velodyne" / "scan_a.bin").write_bytes(b"")
    with pytest.raises(DataFormatError, match=r"scan_a\.bin: scan file name is not a scan number"):
        SemanticKittiReader(tmp_path)


# Argoverse 2 -----------------------------------------------------------------
T0, T1 = 1_000_000_000, 1_100_000_000


def _av2_log(root, n=5, pose_times=(T0, T1)):
    log = root / "log"
    (log / "sensors" / "lidar").mkdir(parents=True)
    for t in (T0, T1):
        pf.write_feather(pa.table({"x": np.zeros(n, np.float16), "y": np.zeros(n, np.float16),
                                   "z": np.zeros(n, np.float16), "intensity": np.zeros(n, np.uint8),
                                   "laser_number": np.zeros(n, np.uint8), "offset_ns": np.zeros(n, np.int32)}),
                         log / "sensors" / "lidar" / f"{t}.feather")
    k = len(pose_times)
    pf.write_feather(pa.table({"timestamp_ns": np.array(pose_times, np.int64), "qw": np.ones(k), "qx": np.zeros(k),
                               "qy": np.zeros(k), "qz": np.zeros(k), "tx_m": np.arange(k, dtype=float),
                               "ty_m": np.zeros(k), "tz_m": np.zeros(k)}), log / "city_SE3_egovehicle.feather")
    return log


def _flow_table(n, drop=()):
    cols = {"flow_tx_m": np.zeros(n, np.float32), "flow_ty_m": np.zeros(n, np.float32),
            "flow_tz_m": np.zeros(n, np.float32), "classes": np.zeros(n, np.uint8),
            "dynamic": np.zeros(n, bool), "is_ground_0": np.zeros(n, bool)}
    return pa.table({k: v for k, v in cols.items() if k not in drop})


def test_av2_valid_synthetic_log(tmp_path):
    log = _av2_log(tmp_path)
    pf.write_feather(_flow_table(5), log / "flow_labels.feather")
    r = Av2LogReader(log)
    assert r[0].labels.flow_valid.all() and r[1].labels is None
    assert r[1].pose.translation[0] == 1.0


def test_av2_missing_pose_row(tmp_path):
    log = _av2_log(tmp_path, pose_times=(T0, T1 + 7))
    with pytest.raises(DataFormatError, match=rf"city_SE3_egovehicle\.feather: no pose row at timestamp {T1} "
                                              r".*nearest row is 7 ns away"):
        Av2LogReader(log)


def test_av2_missing_pose_file_and_columns(tmp_path):
    log = _av2_log(tmp_path)
    pf.write_feather(pa.table({"timestamp_ns": np.array([T0, T1])}), log / "city_SE3_egovehicle.feather")
    with pytest.raises(DataFormatError, match=r"city_SE3_egovehicle\.feather: pose table lacks columns \['qw'"):
        Av2LogReader(log)
    (log / "city_SE3_egovehicle.feather").unlink()
    with pytest.raises(DataFormatError, match=r"city_SE3_egovehicle\.feather: missing"):
        Av2LogReader(log)


def test_av2_flow_missing_columns(tmp_path):
    log = _av2_log(tmp_path)
    pf.write_feather(_flow_table(5, drop=("dynamic", "flow_tz_m")), log / "flow_labels.feather")
    with pytest.raises(DataFormatError, match=r"flow_labels\.feather: flow label file lacks columns "
                                              r"\['flow_tz_m', 'dynamic'\]"):
        Av2LogReader(log)[0]


def test_av2_flow_row_count(tmp_path):
    log = _av2_log(tmp_path)
    (log / "flow_labels").mkdir()
    pf.write_feather(_flow_table(4), log / "flow_labels" / f"{T1}.feather")
    with pytest.raises(DataFormatError, match=rf"{T1}\.feather: 4 flow rows but the sweep .*{T1}\.feather has 5"):
        Av2LogReader(log)[1]


def test_av2_bad_sweep(tmp_path):
    log = _av2_log(tmp_path)
    pf.write_feather(pa.table({"x": np.zeros(3, np.float32)}), log / "sensors" / "lidar" / f"{T0}.feather")
    (log / "sensors" / "lidar" / f"{T1}.feather").write_bytes(b"not a feather file")
    r = Av2LogReader(log)
    with pytest.raises(DataFormatError, match=r"lidar sweep lacks columns \['y', 'z', 'intensity'\]"):
        r[0]
    with pytest.raises(DataFormatError, match=rf"{T1}\.feather: not a readable feather file"):
        r[1]
    (log / "sensors" / "lidar" / "latest.feather").write_bytes(b"")
    with pytest.raises(DataFormatError, match=r"latest\.feather: file name is not a nanosecond timestamp"):
        Av2LogReader(log)


# nuScenes --------------------------------------------------------------------
def test_nuscenes_bin_size(tmp_path):
    p = tmp_path / "samples" / "LIDAR_TOP" / "n000-log__LIDAR_TOP__100.pcd.bin"
    p.parent.mkdir(parents=True)
    np.zeros(11, np.float32).tofile(p)
    (r,) = NuScenesReader.from_files(tmp_path)
    with pytest.raises(DataFormatError, match=r"__100\.pcd\.bin: size 44 bytes is not a multiple of the 20-byte"):
        r[0]


def test_nuscenes_duplicate_sweep(tmp_path):
    for folder in ("samples", "sweeps"):
        p = tmp_path / folder / "LIDAR_TOP" / "n000-log__LIDAR_TOP__100.pcd.bin"
        p.parent.mkdir(parents=True)
        np.zeros(10, np.float32).tofile(p)
    with pytest.raises(DataFormatError, match="a second file for sweep n000-log at 100 us"):
        NuScenesReader.from_files(tmp_path)


def test_nuscenes_bad_info_pickle(tmp_path):
    p = tmp_path / "x.pkl"
    p.write_bytes(pickle.dumps({"infos": []}))
    with pytest.raises(DataFormatError, match=r"x\.pkl: not an mmdet3d v1\.1\+ info file"):
        load_mmdet3d_poses(p)
    p.write_bytes(b"garbage")
    with pytest.raises(DataFormatError, match=r"x\.pkl: not a readable pickle"):
        load_mmdet3d_poses(p)
    entry = {"ego2global": np.zeros((4, 4)).tolist(), "lidar_points": {"lidar_path": "a.pcd.bin",
                                                                        "lidar2ego": np.eye(4).tolist()}}
    p.write_bytes(pickle.dumps({"data_list": [entry]}))
    with pytest.raises(DataFormatError, match=r"data_list\[0\]\.ego2global is not a rigid transform"):
        load_mmdet3d_poses(p)


def test_nuscenes_no_files(tmp_path):
    with pytest.raises(DataFormatError, match="no <log>__LIDAR_TOP__<timestamp_us>.pcd.bin files"):
        NuScenesReader.from_files(tmp_path)
    (tmp_path / "v1.0-mini").mkdir()
    (tmp_path / "v1.0-mini" / "sample_data.json").write_text("[]")
    with pytest.raises(DataFormatError, match="nuscenes-devkit could not load the tables"):
        NuScenesReader.open(tmp_path)
