"""``p4d ros-replay`` end to end, and a bag of real SemanticKITTI scans (../shared/data) through the replay."""

from __future__ import annotations

import numpy as np
import pytest

from perception4d.cli import main
from perception4d.inference import DEFAULT_FLOW, load_model
from perception4d.ros.params import NodeParams
from perception4d.ros.replay import bag_storage, replay_bag
from perception4d.runtime import Predictor, Warmup

from ..runtime.helpers import tiny_frames
from .helpers import BagSpec, read_bag, records, roundtrip_frames, write_bag


def test_p4d_ros_replay_command(tmp_path, capsys):
    write_bag(tmp_path / "in", tiny_frames(3, seed=9), BagSpec("sqlite3", "odometry"))
    rc = main(["ros-replay", str(tmp_path / "in"), str(tmp_path / "out"), "--checkpoint", "flow_sparseunet_5f_sim.pth",
               "--device", "cpu", "--pose-source", "odometry", "--storage", "mcap", "--copy", "all"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "replayed 3 clouds of /points" in text and "/perception4d/points: 2" in text
    assert bag_storage(tmp_path / "out") == "mcap"
    out = read_bag(tmp_path / "out")
    assert {"/points", "/odom", "/tf_static", "/perception4d/points", "/diagnostics"} == set(out)
    # the output bag exists already: one clear error, status 2
    assert main(["ros-replay", str(tmp_path / "in"), str(tmp_path / "out")]) == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.slow
def test_real_semantickitti_scans_through_a_bag(tmp_path, semantickitti_root):
    """Three recorded HDL-64E scans (~120k points each) as PointCloud2 + tf: same flow as the predictor's."""
    from perception4d.io import open_dataset

    reader = open_dataset(semantickitti_root, "semantickitti")[0]
    frames = [reader[k] for k in range(3)]
    bag = write_bag(tmp_path / "in", frames, BagSpec("mcap", "tf", sensor_frame="velodyne"))
    flow = load_model(DEFAULT_FLOW, device="cpu")
    params = NodeParams(checkpoints=["unused"], tf_timeout_s=0.0)
    report, core = replay_bag(bag, tmp_path / "out", params, Predictor(flow, "cpu", warmup=Warmup(steps=0)))
    assert report.clouds == 3 and core.counters.stepped == 3 and core.gate_counters.accepted == 3
    ref = Predictor(flow, "cpu", warmup=Warmup(steps=0))
    expected = [ref.step(f) for f in roundtrip_frames(frames)]
    clouds = read_bag(tmp_path / "out")["/perception4d/points"]
    assert len(clouds) == 2
    for k, (log_ns, msg) in enumerate(clouds):
        assert log_ns == frames[k].timestamp_ns and msg.header.frame_id == "velodyne"
        rec = records(msg)
        np.testing.assert_array_equal(np.c_[rec["x"], rec["y"], rec["z"], rec["intensity"]],
                                      frames[k].select_columns(("x", "y", "z", "intensity")))
        np.testing.assert_array_equal(np.c_[rec["flow_x"], rec["flow_y"], rec["flow_z"]],
                                      expected[k + 1].flow.prediction.flow)
        assert np.abs(rec["flow_x"]).max() > 0.1  # the car moves ~1 m between scans
