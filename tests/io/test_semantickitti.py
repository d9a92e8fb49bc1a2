"""SemanticKittiReader on the real sequence 00 scans 0-2 and the mmdet3d tiny fixture."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy.spatial import cKDTree

from perception4d.core.se3 import SE3
from perception4d.errors import DataFormatError
from perception4d.io import semantickitti as sk
from perception4d.io.semantickitti import SemanticKittiReader


@pytest.fixture(scope="module")
def reader(semantickitti_root):
    return SemanticKittiReader(semantickitti_root / "sequences" / "00")


@pytest.fixture(scope="module")
def frames(reader):
    return [reader[i] for i in range(len(reader))]


def test_index_and_points(reader, frames):
    assert reader.sequence_id == "00" and len(reader) == 3 and reader.format == "semantickitti"
    assert [f.num_points for f in frames] == [124668, 124605, 124478]
    assert [f.frame_id for f in frames] == ["00/000000", "00/000001", "00/000002"]
    assert frames[1].source.endswith("velodyne/000001.bin")
    # PROVENANCE.md ranges (rounded to 2 decimals there)
    expected = [((-78.09, 77.97), (-55.72, 44.88), (-11.56, 2.83)),
                ((-79.16, 79.74), (-54.59, 51.22), (-11.30, 2.82)),
                ((-79.46, 78.97), (-53.13, 44.13), (-11.03, 2.84))]
    for f, ranges in zip(frames, expected):
        assert f.points.dtype == np.float32 and f.columns == ("x", "y", "z", "intensity")
        for axis, (lo, hi) in enumerate(ranges):
            assert abs(f.points[:, axis].min() - lo) < 0.01 and abs(f.points[:, axis].max() - hi) < 0.01
        assert f.column("intensity").min() >= 0 and 0.98 < f.column("intensity").max() <= 1.0
        assert f.extrinsic.allclose(SE3(np.eye(3), [0, 0, 1.73])) and f.pose_known  # ego frame on the ground


def test_timestamps_from_times_txt(reader, frames, monkeypatch):
    assert [f.timestamp_ns for f in frames] == [0, 103735900, 207338100]

    def no_reading(path):
        raise AssertionError(f"timestamp_ns read {path}")

    monkeypatch.setattr(sk, "read_scan", no_reading)
    assert [reader.timestamp_ns(i) for i in range(3)] == [0, 103735900, 207338100]


def test_labels_moving_and_instances(frames):
    for f, n_moving in zip(frames, (88, 73, 72)):
        lab = f.labels
        assert lab.semantic.dtype == np.uint16 and lab.instance.dtype == np.uint16
        assert int(lab.moving.sum()) == n_moving
        # the 251..259 rule gives the same count as semantic >= 252 here: only class 255 moves, none is 251
        assert int((lab.semantic >= 252).sum()) == n_moving and not np.any(lab.semantic == 251)
        assert set(np.unique(lab.semantic[lab.moving]).tolist()) == {255}
        assert len(np.unique(lab.semantic)) == 17
    ids = [set(np.unique(f.labels.instance).tolist()) for f in frames]
    assert ids[0] == ids[1] == ids[2] == {0, 1, *range(208, 220), 504}


def _static(f):
    return ~f.labels.moving & (f.labels.semantic > 1)


def test_poses_align_consecutive_scans(reader, frames):
    f0, f1 = frames[0], frames[1]
    assert f0.world_T_sensor.allclose(SE3.identity(), atol=1e-6)
    rel = f0.world_T_sensor.inverse() @ f1.world_T_sensor
    assert 0.6 < rel.translation[0] < 0.75 and abs(rel.translation[1]) < 0.05  # ~0.67 m forward
    tree = cKDTree(f0.xyz)
    moved = rel.transform_points(f1.xyz[_static(f1)])
    aligned = tree.query(moved)[0].mean()
    unaligned = tree.query(f1.xyz[_static(f1)])[0].mean()
    assert aligned < 0.15 and unaligned > 0.17 and aligned < 0.65 * unaligned  # measured 0.099 m vs 0.177 m
    # PROVENANCE.md's figures (0.106 / 0.186 m) use every non-moving point, unlabelled ones included
    nm0, nm1 = ~f0.labels.moving, ~f1.labels.moving
    tree0 = cKDTree(f0.xyz[nm0])
    assert abs(tree0.query(rel.transform_points(f1.xyz[nm1]))[0].mean() - 0.106) < 0.005
    assert abs(tree0.query(f1.xyz[nm1])[0].mean() - 0.186) < 0.005
    # the reader's poses drive Window.align to the same result (expressed in scan 0's ego frame)
    aw = reader.window(1, 2).align(ref_index=0)
    np.testing.assert_allclose(aw.frame_points(1)[:, :3], f0.extrinsic.transform_points(rel.transform_points(f1.xyz)),
                               atol=1e-4)


def test_negative_index_and_bounds(reader):
    assert reader[-1].frame_id == "00/000002"
    with pytest.raises(IndexError):
        reader[3]


def test_tiny_fixture_needs_poses_unless_allowed(shared_data, caplog):
    seq = shared_data / "mmdet3d_tiny_fixtures" / "semantickitti" / "sequences" / "00"
    with pytest.raises(DataFormatError, match="poses.txt: missing"):
        SemanticKittiReader(seq, require_times=False)
    with pytest.raises(DataFormatError, match="times.txt: missing"):
        SemanticKittiReader(seq, require_poses=False)
    with caplog.at_level(logging.WARNING, logger="perception4d.io.semantickitti"):
        r = SemanticKittiReader(seq, require_poses=False, require_times=False)
    assert "identity poses" in caplog.text and "10 Hz" in caplog.text
    f = r[0]
    assert f.num_points == 50 and not f.pose_known and f.world_T_sensor.allclose(SE3.identity())
    assert set(np.unique(f.labels.semantic).tolist()) == {0, 50, 52, 70, 71, 80}
    assert not f.labels.instance.any() and not f.labels.moving.any()
    assert r.timestamp_ns(0) == 0
