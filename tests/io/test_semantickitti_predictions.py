"""LiDAR-MOS prediction files: layout, encoding, atomic writes, reading back, malformed files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perception4d.errors import DataFormatError
from perception4d.io.semantickitti_predictions import (
    MOS_PREDICTION_MOVING_ID,
    MOS_PREDICTION_STATIC_ID,
    mos_prediction_path,
    read_mos_predictions,
    write_mos_predictions,
)


def test_layout_and_encoding(tmp_path):
    moving = np.array([True, False, False, True, False])
    path = write_mos_predictions(tmp_path, "8", 123, moving)
    assert path == tmp_path / "sequences" / "08" / "predictions" / "000123.label"
    raw = np.fromfile(path, dtype="<u4")
    np.testing.assert_array_equal(raw, [251, 9, 9, 251, 9])
    assert (MOS_PREDICTION_MOVING_ID, MOS_PREDICTION_STATIC_ID) == (251, 9)
    assert path.stat().st_size == 4 * moving.size
    np.testing.assert_array_equal(read_mos_predictions(path, expected_count=5), moving)
    assert read_mos_predictions(path).dtype == bool


@pytest.mark.parametrize("sequence, scan, rel", [
    (0, 0, "sequences/00/predictions/000000.label"),
    ("08", "000042", "sequences/08/predictions/000042.label"),
    (np.int64(21), np.int32(4070), "sequences/21/predictions/004070.label"),
    ("123", 1234567, "sequences/123/predictions/1234567.label"),
])
def test_names_are_zero_padded_like_the_benchmark(tmp_path, sequence, scan, rel):
    assert mos_prediction_path(tmp_path, sequence, scan) == tmp_path / rel


@pytest.mark.parametrize("sequence, scan, match", [
    ("seq08", 1, "sequence"), (-1, 1, "sequence"), ("0", "12.bin", "scan"), (0, -3, "scan"), ("٣", 0, "sequence"),
])
def test_bad_names_are_refused(tmp_path, sequence, scan, match):
    with pytest.raises(ValueError, match=match):
        write_mos_predictions(tmp_path, sequence, scan, np.zeros(2, bool))
    assert not any(tmp_path.iterdir())


def test_rewrites_atomically_and_leaves_no_temporary_files(tmp_path):
    write_mos_predictions(tmp_path, 0, 1, np.zeros(4, bool))
    path = write_mos_predictions(tmp_path, 0, 1, torch.tensor([1, 0, 1], dtype=torch.uint8))
    np.testing.assert_array_equal(read_mos_predictions(path), [True, False, True])
    assert [p.name for p in path.parent.iterdir()] == ["000001.label"]
    empty = write_mos_predictions(tmp_path, 0, 2, np.zeros(0, bool))
    assert empty.stat().st_size == 0 and read_mos_predictions(empty, expected_count=0).size == 0


@pytest.mark.parametrize("moving, match", [
    (np.array([0.0, 1.0]), "boolean"), (np.array([0, 2]), "boolean"), (np.array([251, 9]), "boolean"),
    (np.zeros((2, 2), bool), r"\(N,\)"),
])
def test_bad_masks_are_refused_before_writing(tmp_path, moving, match):
    with pytest.raises(ValueError, match=match) as e:
        write_mos_predictions(tmp_path, 0, 5, moving)
    assert "000005.label" in str(e.value)
    assert not (tmp_path / "sequences" / "00" / "predictions" / "000005.label").exists()
    assert not list((tmp_path / "sequences" / "00" / "predictions").glob("*.tmp"))


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = write_mos_predictions(tmp_path, 0, 1, np.ones(3, bool))

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("perception4d.io.atomic.os.replace", broken)
    with pytest.raises(OSError, match="disk full"):
        write_mos_predictions(tmp_path, 0, 1, np.zeros(3, bool))
    np.testing.assert_array_equal(read_mos_predictions(path), [True, True, True])
    assert [p.name for p in path.parent.iterdir()] == ["000001.label"]


def test_count_mismatch_is_a_format_error(tmp_path):
    path = write_mos_predictions(tmp_path, 0, 0, np.zeros(7, bool))
    with pytest.raises(DataFormatError, match="7 predicted labels but the scan has 8 points") as e:
        read_mos_predictions(path, expected_count=8)
    assert e.value.path == path


def test_real_scan_point_count(shared_data, tmp_path):
    scan = shared_data / "semantickitti" / "sequences" / "00" / "velodyne" / "000001.bin"
    n = scan.stat().st_size // 16
    assert n == 124605
    path = write_mos_predictions(tmp_path, 0, 1, np.zeros(n - 1, bool))
    with pytest.raises(DataFormatError, match="124604 predicted labels but the scan has 124605"):
        read_mos_predictions(path, expected_count=n)


def test_malformed_files_are_format_errors(tmp_path):
    partial = tmp_path / "partial.label"
    partial.write_bytes(b"\x09\x00\x00\x00\xfb\x00")
    with pytest.raises(DataFormatError, match="not a multiple of the 4-byte"):
        read_mos_predictions(partial)
    odd = tmp_path / "odd.label"
    np.array([9, 251, 7, 400, 7], dtype="<u4").tofile(odd)
    with pytest.raises(DataFormatError, match=r"3 labels carry ids outside .*\[7, 400\]"):
        read_mos_predictions(odd)


def test_reads_instance_bits_and_other_moving_ids_like_the_evaluation(tmp_path):
    path = tmp_path / "other.label"
    words = np.array([(5 << 16) | 252, 10, (3 << 16) | 40, 259, 0, 1], dtype="<u4")
    words.tofile(path)
    np.testing.assert_array_equal(read_mos_predictions(path), [True, False, False, True, False, False])
