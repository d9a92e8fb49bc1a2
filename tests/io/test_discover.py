"""open_dataset: format detection and sequence discovery on the shared data."""

from __future__ import annotations

import pytest

from perception4d.errors import ConfigError, DataFormatError
from perception4d.io import Av2LogReader, NuScenesReader, SemanticKittiReader, detect_formats, open_dataset


def _summary(readers):
    return [(type(r).__name__, r.sequence_id, len(r)) for r in readers]


def test_semantickitti_root_and_sequence(semantickitti_root):
    expected = [("SemanticKittiReader", "00", 3)]
    assert _summary(open_dataset(semantickitti_root)) == expected
    assert _summary(open_dataset(semantickitti_root / "sequences")) == expected
    assert _summary(open_dataset(semantickitti_root / "sequences" / "00")) == expected
    assert detect_formats(semantickitti_root) == ["semantickitti"]


def test_semantickitti_options_pass_through(shared_data):
    tiny = shared_data / "mmdet3d_tiny_fixtures" / "semantickitti"
    with pytest.raises(DataFormatError, match="poses.txt"):
        open_dataset(tiny)
    (r,) = open_dataset(tiny, require_poses=False, require_times=False)
    assert isinstance(r, SemanticKittiReader) and r[0].num_points == 50 and not r[0].pose_known


def test_av2_any_depth(shared_data, av2_log_dir):
    expected = [("Av2LogReader", av2_log_dir.name, 2)]
    for p in (shared_data / "av2", shared_data / "av2" / "sensor" / "val", av2_log_dir):
        assert _summary(open_dataset(p)) == expected
    # from the shared root the format must be named: it also holds nuScenes files
    assert _summary(open_dataset(shared_data, format="av2")) == expected


def test_av2_logs_at_different_depths(av2_log_dir, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "log1").symlink_to(av2_log_dir)
    (tmp_path / "b" / "c" / "log2").symlink_to(av2_log_dir)
    readers = open_dataset(tmp_path)
    assert all(isinstance(r, Av2LogReader) for r in readers)
    assert [r.sequence_id for r in readers] == ["log1", "log2"]


def test_nuscenes(shared_data):
    assert _summary(open_dataset(shared_data / "nuscenes")) == [
        ("NuScenesReader", "n015-2018-07-24-11-22-45+0800", 1)]
    readers = open_dataset(shared_data / "mmdet3d_tiny_fixtures" / "nuscenes", format="nuscenes")
    assert all(isinstance(r, NuScenesReader) for r in readers) and [len(r) for r in readers] == [1, 2]


def test_ambiguous_unknown_and_empty(shared_data, tmp_path):
    with pytest.raises(DataFormatError, match=r"several dataset layouts \['av2', 'nuscenes'\]"):
        open_dataset(shared_data)
    with pytest.raises(DataFormatError, match="no known dataset layout.*velodyne.*sensors/lidar.*LIDAR_TOP"):
        open_dataset(tmp_path)
    with pytest.raises(DataFormatError, match="not a folder"):
        open_dataset(tmp_path / "absent")
    with pytest.raises(ConfigError, match="unknown dataset format 'waymo'"):
        open_dataset(shared_data / "nuscenes", format="waymo")
    with pytest.raises(DataFormatError, match="no Argoverse 2 log"):
        open_dataset(shared_data / "nuscenes", format="av2")
