"""``perception4d.ros.bags.write_frames`` (bags from any reader) and ``tools/benchmark.py ros-replay``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from perception4d.core.se3 import SE3
from perception4d.ros.bags import BagLayout, write_frames

from ..runtime.helpers import tiny_frames
from .helpers import read_bag

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("storage, pose_source", [("sqlite3", "tf"), ("mcap", "odometry")])
def test_write_frames_carries_points_stamps_and_poses(tmp_path, storage, pose_source):
    frames = tiny_frames(2, seed=11)
    write_frames(tmp_path / "bag", frames, BagLayout(storage=storage, pose_source=pose_source))
    out = read_bag(tmp_path / "bag")
    assert set(out) == {"/points", "/tf_static", "/tf" if pose_source == "tf" else "/odom"}
    for f, (log_ns, msg) in zip(frames, out["/points"]):
        assert log_ns == f.timestamp_ns and msg.header.frame_id == "lidar" and msg.point_step == 16
        assert [(x.name, x.offset, x.datatype) for x in msg.fields] == [("x", 0, 7), ("y", 4, 7), ("z", 8, 7),
                                                                       ("intensity", 12, 7)]
        pts = np.frombuffer(msg.data.tobytes(), "<f4").reshape(-1, 4)
        np.testing.assert_array_equal(pts, f.select_columns(("x", "y", "z", "intensity")))
    if pose_source == "tf":
        q = out["/tf"][1][1].transforms[0].transform
        got = SE3.from_quaternion(q.rotation.w, q.rotation.x, q.rotation.y, q.rotation.z,
                                  [q.translation.x, q.translation.y, q.translation.z])
    else:
        p = out["/odom"][1][1].pose.pose
        got = SE3.from_quaternion(p.orientation.w, p.orientation.x, p.orientation.y, p.orientation.z,
                                  [p.position.x, p.position.y, p.position.z])
    assert got.allclose(frames[1].pose, atol=1e-9)


@pytest.mark.slow
def test_ros_replay_benchmark_prints_both_runs(capsys):
    spec = importlib.util.spec_from_file_location("p4d_benchmark_tool_ros", REPO / "tools" / "benchmark.py")
    tool = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = tool
    spec.loader.exec_module(tool)
    tool.main(["ros-replay", "--frames", "6", "--ordered-frames", "4", "--azimuth-step", "8", "--rate", "4",
               "--max-gap-s", "2.0"])
    out = capsys.readouterr().out
    assert "| every frame, in order | 4 | 4 | 0 | 0.0% |" in out
    assert "| 4x sensor rate (80 Hz) | 6 |" in out and "| flow |" in out
