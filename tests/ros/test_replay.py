"""Replay of real rosbag2 files (sqlite3 and mcap) through the node's logic: outputs equal the predictor's own.

Bags are written with rosbags' writer from simulated sequences; the reference is a second streaming predictor
on the same frames (poses through quaternions, as the bag carries them).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from perception4d.inference import DEFAULT_FLOW, load_model
from perception4d.ros.core import build_predictor
from perception4d.ros.outputs import occupied_voxels
from perception4d.ros.params import NodeParams
from perception4d.ros.pointcloud2 import unpack_rgb
from perception4d.ros.replay import bag_storage, replay_bag
from perception4d.runtime import ParallelPredictor, Predictor, PredictorOptions, Warmup
from perception4d.viz.occupancy import OCC_COLOURS

from ..runtime.helpers import small_flow_spec, small_occ_spec, tiny_frames
from .helpers import BagSpec, read_bag, records, roundtrip_frames, write_bag

NO_WARMUP = Warmup(steps=0)
CLOUD_FIELDS = [("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 16, 7), ("ring", 20, 4), ("flow_x", 24, 7),
                ("flow_y", 28, 7), ("flow_z", 32, 7), ("moving_prob", 36, 7)]


@pytest.fixture(scope="module")
def frames():
    return tiny_frames(4)


@pytest.fixture(scope="module")
def flow_model():
    return load_model(DEFAULT_FLOW, device="cpu")


def test_sqlite_bag_with_tf_matches_the_predictor(tmp_path, frames, flow_model):
    bag = write_bag(tmp_path / "in", frames, BagSpec("sqlite3", "tf", tf_after_cloud_ns=20_000_000))
    params = NodeParams(checkpoints=["unused"], tasks=["flow"])
    report, core = replay_bag(bag, tmp_path / "out", params, Predictor(flow_model, "cpu", warmup=NO_WARMUP))
    assert bag_storage(tmp_path / "out") == "sqlite3" and report.clouds == 4
    ref = Predictor(flow_model, "cpu", warmup=NO_WARMUP)
    expected = [ref.step(f) for f in roundtrip_frames(frames)]
    out = read_bag(tmp_path / "out")
    assert set(out) == {"/perception4d/points", "/diagnostics", "/tf", "/tf_static"}
    clouds = out["/perception4d/points"]
    assert len(clouds) == 3  # the last sweep's flow needs a successor
    for k, (log_ns, msg) in enumerate(clouds):
        f = frames[k]
        assert log_ns == f.timestamp_ns  # written at the cloud's own bag time
        assert (msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec, msg.header.frame_id) == \
            (f.timestamp_ns, "lidar")
        assert [(x.name, x.offset, x.datatype) for x in msg.fields] == CLOUD_FIELDS
        assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, f.num_points, 40, 40 * f.num_points)
        rec = records(msg)
        np.testing.assert_array_equal(np.c_[rec["x"], rec["y"], rec["z"], rec["intensity"]],
                                      f.select_columns(("x", "y", "z", "intensity")))
        np.testing.assert_array_equal(rec["ring"], np.arange(f.num_points) % 32)
        flow = expected[k + 1].flow
        assert flow.frame_id == expected[k].frame_id
        np.testing.assert_array_equal(np.c_[rec["flow_x"], rec["flow_y"], rec["flow_z"]], flow.prediction.flow)
        assert np.isnan(rec["moving_prob"]).all()  # no MOS network configured
    diag = {kv.key: kv.value for kv in out["/diagnostics"][-1][1].status[0].values}
    assert (diag["received"], diag["stepped"], diag["published_clouds"], diag["dropped_frames"]) == ("4", "4", "3",
                                                                                                     "0")
    flow_status = out["/diagnostics"][-1][1].status[1]
    assert flow_status.name.startswith("perception4d: flow") and any(kv.key == "backbone ms (mean)" for kv in
                                                            flow_status.values)


def test_mcap_bag_with_odometry_flow_mos_and_occupancy(tmp_path, frames):
    """Two model sets (flow+MOS network, occupancy network) through a ParallelPredictor; big-endian input."""
    specs = [small_flow_spec("flowmos", channels=(8, 16, 16)), small_occ_spec("occupancy", channels=(8, 16, 16))]
    frames = frames[:3]
    bag = write_bag(tmp_path / "in", frames, BagSpec("mcap", "odometry", layout="packed", big_endian=True))
    params = NodeParams(checkpoints=["unused"], pose_source="odometry", occupancy_markers=True)
    options = PredictorOptions(warmup=NO_WARMUP)
    with ParallelPredictor(specs, workers="inline", options=options) as pp:
        report, core = replay_bag(bag, tmp_path / "out", params, pp, copy="all")
    assert core.tasks == ("flow", "mos", "occupancy") and report.storage == "mcap"
    with ParallelPredictor(specs, workers="inline", options=options) as ref:
        expected = [ref.step(f) for f in roundtrip_frames(frames)]
    out = read_bag(tmp_path / "out")
    assert bag_storage(tmp_path / "out") == "mcap"
    assert {"/points", "/odom", "/tf_static", "/perception4d/occupancy", "/perception4d/occupancy_markers"} <= set(out)
    clouds = out["/perception4d/points"]
    # every sweep has its moving probability; the last one has no successor, so no flow (NaN)
    assert [c[1].header.stamp.nanosec for c in clouds] == [f.timestamp_ns for f in frames]
    for k, (_, msg) in enumerate(clouds):
        assert msg.is_bigendian and [x.name for x in msg.fields] == ["x", "y", "z", "intensity", "flow_x", "flow_y",
                                                                     "flow_z", "moving_prob"]
        rec = records(msg)
        flow = np.c_[rec["flow_x"], rec["flow_y"], rec["flow_z"]]
        if k + 1 < len(frames):
            np.testing.assert_array_equal(flow, expected[k + 1].flow.prediction.flow)
        else:
            assert np.isnan(flow).all()
        np.testing.assert_array_equal(rec["moving_prob"], expected[k].mos.prob)
    assert core.counters.incomplete_clouds == 1
    occ = out["/perception4d/occupancy"]
    assert len(occ) == len(frames)
    for k, (log_ns, msg) in enumerate(occ):
        assert log_ns == frames[k].timestamp_ns and msg.header.frame_id == "base_link"
        centres, classes, vel = occupied_voxels(expected[k].occupancy.prediction)
        rec = records(msg)
        assert [x.name for x in msg.fields] == ["x", "y", "z", "rgb", "label", "vel_x", "vel_y", "vel_z"]
        np.testing.assert_array_equal(np.c_[rec["x"], rec["y"], rec["z"]], centres)
        np.testing.assert_array_equal(rec["label"], classes)
        np.testing.assert_array_equal(np.c_[rec["vel_x"], rec["vel_y"], rec["vel_z"]], vel)
        np.testing.assert_array_equal(unpack_rgb(rec["rgb"]), np.round(OCC_COLOURS[classes] * 255).astype(np.uint8))
    markers = out["/perception4d/occupancy_markers"][-1][1].markers
    assert markers[0].action == 3  # DELETEALL first
    centres, classes, _ = occupied_voxels(expected[-1].occupancy.prediction)
    assert sorted((mk.id, len(mk.points)) for mk in markers[1:]) == sorted(
        (int(c), int((classes == c).sum())) for c in np.unique(classes))


def test_realtime_replay_drops_old_clouds_instead_of_queueing(tmp_path, flow_model):
    """At 8x the sensor rate the network cannot keep up: clouds are superseded, memory stays bounded."""
    frames = tiny_frames(6, seed=4)
    bag = write_bag(tmp_path / "in", frames, BagSpec("sqlite3", "tf"))
    params = NodeParams(checkpoints=["unused"], tf_timeout_s=0.5, diagnostics_period_s=0.0)
    report, core = replay_bag(bag, tmp_path / "out", params, Predictor(flow_model, "cpu", warmup=NO_WARMUP),
                              rate=8.0)
    c = core.counters
    assert c.received == 6 and c.stepped + c.superseded + c.no_pose == 6 and c.superseded >= 1
    out = read_bag(tmp_path / "out")
    stamps = [m.header.stamp.nanosec for _, m in out.get("/perception4d/points", [])]
    assert stamps == sorted(stamps) and set(stamps) <= {f.timestamp_ns for f in frames}
    assert len(stamps) <= c.stepped and len(core.assembler) == 0
    diag = {kv.key: kv.value for kv in out["/diagnostics"][-1][1].status[0].values}
    assert int(diag["superseded"]) == c.superseded and float(diag["drop_rate"]) > 0


def test_shipped_yaml_and_build_predictor(tmp_path, frames):
    """The ROS parameter file drives the replay: both shipped checkpoints (flow and MOS) on the CPU."""
    from perception4d.ros.params import NodeParams as P

    from .test_ros_package import ROS

    params = replace(P.from_yaml(ROS / "config" / "perception4d.yaml"), devices=["cpu"])
    predictor = build_predictor(params, warmup=NO_WARMUP)
    bag = write_bag(tmp_path / "in", frames[:3], BagSpec("sqlite3"))
    try:
        _, core = replay_bag(bag, tmp_path / "out", params, predictor, storage="mcap", copy="none")
    finally:
        predictor.close()
    assert core.model_tasks == {"flow": ("flow",), "mos": ("mos",)}
    out = read_bag(tmp_path / "out")
    assert set(out) == {"/perception4d/points", "/diagnostics"}
    rec = [records(m) for _, m in out["/perception4d/points"]]
    assert len(rec) == 3 and all(np.isfinite(r["moving_prob"]).all() for r in rec)
    assert [bool(np.isfinite(r["flow_x"]).all()) for r in rec] == [True, True, False]
    assert np.isnan(rec[2]["flow_x"]).all()
