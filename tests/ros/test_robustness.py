"""Malformed and out-of-order input: each is logged and counted, the node keeps going, good clouds are unaffected."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from perception4d.inference import DEFAULT_FLOW, load_model
from perception4d.ros.params import NodeParams
from perception4d.ros.replay import replay_bag
from perception4d.runtime import Predictor, Warmup

from ..runtime.helpers import tiny_frames
from .helpers import BagWriter, cloud_msg, read_bag, records, roundtrip_frames, tf_message, transform_stamped

MS = 1_000_000


def test_every_kind_of_bad_message_is_counted_and_the_stream_goes_on(tmp_path, caplog):
    frames = tiny_frames(4, seed=7)
    f0, f1, f2, f3 = frames
    pts = [f.select_columns(("x", "y", "z", "intensity")) for f in frames]
    nan_rows = np.array([3, 10, 500])
    pts[2][nan_rows, 0] = np.nan  # some NaN points in a good sweep: kept, one output row each
    bag = BagWriter(tmp_path / "in", "sqlite3")
    bag.add("/tf_static", tf_message(transform_stamped(0, "base_link", "lidar", f0.extrinsic)), 0)

    def pose(f):
        bag.add("/tf", tf_message(transform_stamped(f.timestamp_ns, "odom", "base_link", f.pose)), f.timestamp_ns)

    def good(k):
        pose(frames[k])
        bag.add("/points", cloud_msg(frames[k].timestamp_ns, "lidar", pts[k]), frames[k].timestamp_ns)

    def bad(stamp, **kw):
        bag.add("/points", cloud_msg(stamp, "lidar", pts[0][:100], **kw), stamp)

    good(0)
    bad(f0.timestamp_ns + 10 * MS, point_step=28)  # wrong point_step: records do not match the data
    good(1)
    short = cloud_msg(f1.timestamp_ns + 10 * MS, "lidar", pts[1][:100])
    short.data = short.data[:-7]  # truncated data
    bag.add("/points", short, f1.timestamp_ns + 10 * MS)
    no_intensity = cloud_msg(f1.timestamp_ns + 20 * MS, "lidar", pts[1][:100], layout="packed")
    no_intensity.fields = no_intensity.fields[:3]  # missing field
    bag.add("/points", no_intensity, f1.timestamp_ns + 20 * MS)
    good(2)  # with NaN points
    all_nan = np.full((50, 4), np.nan, np.float32)
    bag.add("/points", cloud_msg(f2.timestamp_ns + 5 * MS, "lidar", all_nan), f2.timestamp_ns + 5 * MS)  # empty
    bag.add("/points", cloud_msg(f1.timestamp_ns, "lidar", pts[1]), f2.timestamp_ns + 6 * MS)  # out of order: late
    bag.add("/points", cloud_msg(f2.timestamp_ns, "lidar", pts[2]), f2.timestamp_ns + 7 * MS)  # duplicate
    bag.add("/points", cloud_msg(f2.timestamp_ns + 8 * MS, "lidar_rear", pts[2]), f2.timestamp_ns + 8 * MS)  # no tf
    good(3)
    bag.close()

    flow = load_model(DEFAULT_FLOW, device="cpu")
    params = NodeParams(checkpoints=["unused"], tf_timeout_s=0.02)
    with caplog.at_level(logging.WARNING, logger="perception4d"):
        report, core = replay_bag(tmp_path / "in", tmp_path / "out", params,
                                  Predictor(flow, "cpu", warmup=Warmup(steps=0)))
    c, g = core.counters, core.gate_counters
    assert report.clouds == 11 and c.received == 11
    assert (c.malformed_size, c.malformed_truncated, c.malformed_layout, c.no_pose) == (1, 1, 1, 1)
    assert (g.dropped_empty, g.dropped_late, g.dropped_duplicate) == (1, 1, 1)
    assert g.non_finite_points == len(nan_rows) and c.stepped == 7 and g.accepted == 4
    text = caplog.text
    for words in ("point_step 28", "data has 2393 bytes", "missing field(s) ['intensity']", "lidar_rear",
                  "dropped as late", "dropped as a duplicate", "none of its 50 points is finite"):
        assert words in text, words

    # the good sweeps' outputs are what the predictor gives on the good sweeps alone
    ref = Predictor(flow, "cpu", warmup=Warmup(steps=0))
    good_frames = roundtrip_frames(frames)
    good_frames[2].points[nan_rows, 0] = np.nan
    expected = [ref.step(f) for f in good_frames]
    out = read_bag(tmp_path / "out")
    clouds = out["/perception4d/points"]
    assert [m.header.stamp.nanosec for _, m in clouds] == [f.timestamp_ns for f in frames[:3]]
    for k, (_, msg) in enumerate(clouds):
        rec = records(msg)
        assert len(rec) == frames[k].num_points
        np.testing.assert_array_equal(np.c_[rec["flow_x"], rec["flow_y"], rec["flow_z"]],
                                      expected[k + 1].flow.prediction.flow)
    rec2 = records(clouds[2][1])
    assert np.isnan(rec2["x"][nan_rows]).all() and (rec2["flow_x"][nan_rows] == 0).all() and not clouds[2][1].is_dense
    status = out["/diagnostics"][-1][1].status[0]
    diag = {kv.key: kv.value for kv in status.values}
    assert status.level == 1 and diag["malformed"] == "3" and diag["no_pose"] == "1" and diag["dropped_frames"] == "7"
    assert diag["policy_non_finite_points"] == "3"


@pytest.mark.parametrize("change", ["cloud_topic", "odometry"])
def test_bag_problems_are_one_clear_error(tmp_path, change):
    from perception4d.errors import DataFormatError

    bag = BagWriter(tmp_path / "in", "sqlite3")
    bag.add("/velodyne_points", cloud_msg(0, "lidar", np.zeros((3, 4), np.float32)), 0)
    bag.add("/ouster/points", cloud_msg(0, "lidar", np.zeros((3, 4), np.float32)), 0)
    bag.close()
    params = NodeParams(checkpoints=["unused"], pose_source="odometry" if change == "odometry" else "tf",
                        cloud_topic="/velodyne_points" if change == "odometry" else "/points")
    predictor = Predictor(load_model(DEFAULT_FLOW, device="cpu"), "cpu", warmup=Warmup(steps=0))
    with pytest.raises(DataFormatError) as e:
        replay_bag(tmp_path / "in", tmp_path / "out", params, predictor)
    words = "no nav_msgs/msg/Odometry topic '/odom'" if change == "odometry" else \
        "PointCloud2 topics: ['/ouster/points', '/velodyne_points']"
    assert words in str(e.value) and str(tmp_path / "in") in str(e.value)
