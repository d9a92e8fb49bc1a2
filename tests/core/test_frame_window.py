import numpy as np
import pytest

from perception4d.core import SE3, Frame, PointLabels, Window, ego_motion_flow
from perception4d.errors import WindowError


def _frame(n=10, ts=0, pose=None, seed=0, labels=None):
    pts = np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)
    return Frame(pts, ts, pose=pose or SE3.identity(), labels=labels, frame_id=f"f{ts}")


def test_frame_validation_messages():
    with pytest.raises(ValueError, match="float32"):
        Frame(np.zeros((3, 4)), 0)
    with pytest.raises(ValueError, match="first point columns"):
        Frame(np.zeros((3, 4), np.float32), 0, columns=("y", "x", "z", "intensity"))
    with pytest.raises(ValueError, match="4 point columns but 5 names"):
        Frame(np.zeros((3, 4), np.float32), 0, columns=("x", "y", "z", "intensity", "ring"))
    with pytest.raises(ValueError, match="semantic has 2 rows"):
        Frame(np.zeros((3, 4), np.float32), 0, labels=PointLabels(semantic=np.zeros(2)))


def test_select_columns_fills_missing_optional():
    f = _frame()
    out = f.select_columns(("x", "y", "z", "intensity", "time_offset"))
    assert out.shape == (10, 5) and np.all(out[:, 4] == 0)
    with pytest.raises(KeyError, match="ring"):
        f.select_columns(("x", "ring"))


def test_subset_keeps_labels_aligned():
    f = _frame(labels=PointLabels(semantic=np.arange(10)))
    s = f.subset(np.arange(10) % 2 == 0)
    assert s.num_points == 5 and list(s.labels.semantic) == [0, 2, 4, 6, 8]


def test_window_rejects_non_increasing_timestamps():
    with pytest.raises(WindowError, match="must increase"):
        Window((_frame(ts=10), _frame(ts=10)))
    with pytest.raises(WindowError, match="at least one"):
        Window(())


def test_align_static_world_point_lands_on_itself():
    """A world point seen from two moving poses aligns to one location in the reference frame."""
    world_pt = np.array([[10.0, 5.0, 1.0]])
    poses = [SE3.from_yaw(0.1 * k, [2.0 * k, 0.3 * k, 0]) for k in range(3)]
    frames = []
    for k, p in enumerate(poses):
        ext = SE3.from_yaw(0.05, [1.0, 0.0, 1.7])  # sensor mounted on the ego
        sensor_pt = (p @ ext).inverse().transform_points(world_pt)
        pts = np.hstack([sensor_pt, [[0.5]]]).astype(np.float32)
        frames.append(Frame(pts, 100 * k, pose=p, extrinsic=ext))
    aligned = Window(tuple(frames)).align()
    expect = poses[-1].inverse().transform_points(world_pt)
    np.testing.assert_allclose(aligned.points[:, :3], np.repeat(expect, 3, 0), atol=1e-4)
    assert list(aligned.time) == [0, 1, 2] and list(aligned.offsets) == [0, 1, 2, 3]
    assert aligned.ref_index == 2
    np.testing.assert_allclose(aligned.points[:, 3], 0.5)


def test_ego_motion_flow_of_static_point():
    p0, p1 = SE3.from_yaw(0.0, [0, 0, 0]), SE3.from_yaw(0.02, [1.0, 0.1, 0])
    world = np.array([[20.0, -3.0, 0.5]])
    x0 = p0.inverse().transform_points(world)
    x1 = p1.inverse().transform_points(world)
    np.testing.assert_allclose(ego_motion_flow(x0.astype(np.float32), p0, p1), x1 - x0, atol=1e-5)
