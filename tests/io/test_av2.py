"""Av2LogReader on the real val log 7fab2350 (2 sweeps, poses, scene-flow labels)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.feather as pf
import pytest

from perception4d.core.se3 import SE3
from perception4d.core.window import ego_motion_flow
from perception4d.io.av2 import Av2LogReader

TS = (315966265259836000, 315966265360032000)


@pytest.fixture(scope="module")
def reader(av2_log_dir):
    return Av2LogReader(av2_log_dir)


@pytest.fixture(scope="module")
def frames(reader):
    return reader[0], reader[1]


def test_index_and_points(reader, frames):
    assert reader.sequence_id == "7fab2350-7eaf-3b7e-a39d-6937a4c1bede" and len(reader) == 2
    assert [reader.timestamp_ns(i) for i in range(2)] == list(TS)
    f0, f1 = frames
    assert (f0.num_points, f1.num_points) == (99229, 99466)
    assert f0.frame_id == f"{reader.sequence_id}/{TS[0]}" and f0.source.endswith(f"{TS[0]}.feather")
    assert f0.columns == ("x", "y", "z", "intensity", "time_offset") and f0.points.dtype == np.float32
    for f, ranges in zip(frames, [((-213.4, 210.1), (-79.1, 75.9), (-4.29, 32.6)),
                                  ((-212.8, 213.9), (-79.6, 87.6), (-4.91, 28.5))]):
        for axis, (lo, hi) in enumerate(ranges):
            assert abs(f.points[:, axis].min() - lo) < 0.1 and abs(f.points[:, axis].max() - hi) < 0.1  # float16
        # stored 0..255, delivered in [0, 1]
        assert f.column("intensity").min() == 0 and f.column("intensity").max() == 1.0
        t = f.column("time_offset")  # seconds within the 0.1 s sweep
        assert 0.0 <= t.min() and 0.09 < t.max() < 0.11
        assert f.extrinsic.allclose(SE3.identity()) and f.pose_known


def test_flow_labels_only_on_first_sweep(frames):
    lab = frames[0].labels
    assert int(lab.moving.sum()) == 2037 and int(lab.ground.sum()) == 17374
    assert lab.flow.dtype == np.float32 and lab.flow.shape == (99229, 3) and lab.flow_valid.all()
    assert lab.flow_category.dtype == np.uint8
    assert lab.semantic is None and lab.instance is None
    assert frames[1].labels is None


def test_has_flow_labels_without_reading(reader):
    assert [reader.has_flow_labels(i) for i in range(2)] == [True, False]
    assert reader.flow_label_path(0).name == "flow_labels.feather"


def test_ego_motion_matches_npz(av2_log_dir, frames):
    ego1_SE3_ego0 = np.load(av2_log_dir / "ego_motion.npz")["ego_motion"][0]
    rel = frames[1].pose.inverse() @ frames[0].pose
    np.testing.assert_allclose(rel.as_matrix(), ego1_SE3_ego0, atol=1e-3)


def test_static_flow_is_ego_motion_flow(frames):
    f0, f1 = frames
    lab = f0.labels
    static = ~lab.moving & ~lab.ground
    rigid = ego_motion_flow(f0.xyz, f0.pose, f1.pose)
    err = np.linalg.norm(lab.flow[static] - rigid[static], axis=1)
    assert np.median(err) < 0.005  # measured 0.8 mm
    dyn = np.linalg.norm(lab.flow[lab.moving] - rigid[lab.moving], axis=1)
    assert np.median(dyn) > 0.3  # dynamic points really move


def test_sensor_extrinsic(reader):
    up = reader.sensor_extrinsic("up_lidar")
    np.testing.assert_allclose(up.translation, [1.35018, 0.0, 1.64042], atol=1e-4)
    with pytest.raises(KeyError, match="no sensor 'rear_lidar'"):
        reader.sensor_extrinsic("rear_lidar")


def _linked_log(src, dst):
    """A log folder whose sweeps and poses are links to the real log's files."""
    (dst / "sensors" / "lidar").mkdir(parents=True)
    for ts in TS:
        (dst / "sensors" / "lidar" / f"{ts}.feather").symlink_to(src / "sensors" / "lidar" / f"{ts}.feather")
    (dst / "city_SE3_egovehicle.feather").symlink_to(src / "city_SE3_egovehicle.feather")
    return dst


def test_per_sweep_flow_files(av2_log_dir, tmp_path):
    log = _linked_log(av2_log_dir, tmp_path / "log")
    (log / "flow_labels.feather").symlink_to(av2_log_dir / "flow_labels.feather")
    real = pf.read_table(av2_log_dir / "flow_labels.feather")
    (log / "flow_labels").mkdir()
    # per-sweep file for sweep 0 wins over the single file: all points flagged dynamic
    flipped = real.set_column(real.schema.get_field_index("dynamic"), "dynamic",
                              pa.array(np.ones(real.num_rows, dtype=bool)))
    pf.write_feather(flipped, log / "flow_labels" / f"{TS[0]}.feather")
    # sweep 1: a NaN row and an is_valid column
    n = 99466
    flow = np.full((n, 3), 0.1, dtype=np.float32)
    flow[0, 1] = np.nan
    is_valid = np.ones(n, dtype=bool)
    is_valid[1] = False
    pf.write_feather(pa.table({"flow_tx_m": flow[:, 0], "flow_ty_m": flow[:, 1], "flow_tz_m": flow[:, 2],
                               "classes": np.zeros(n, np.uint8), "dynamic": np.zeros(n, bool),
                               "is_ground_0": np.zeros(n, bool), "is_valid": is_valid}),
                     log / "flow_labels" / f"{TS[1]}.feather")
    r = Av2LogReader(log)
    assert r.flow_label_path(0).parent.name == "flow_labels"
    assert r[0].labels.moving.all()
    lab1 = r[1].labels
    assert lab1.flow_valid.sum() == n - 2 and not lab1.flow_valid[0] and not lab1.flow_valid[1]
    assert np.isfinite(lab1.flow).all() and (lab1.flow[0] == 0).all()
