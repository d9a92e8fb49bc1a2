from __future__ import annotations

import numpy as np

from perception4d.core.window import ego_motion_flow


def _box_distance(local: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Distance of object-local points to the surface of a box of half extents ``half``."""
    q = np.abs(local) - half
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=1)
    inside = np.minimum(q.max(axis=1), 0.0)
    return outside + np.abs(inside)


def _to_object(seq, xyz_ego, index_time, obj):
    world = seq.scene.ego.pose(index_time).transform_points(xyz_ego.astype(np.float64))
    x, y, yaw = obj.trajectory.state(index_time)
    c, s = np.cos(yaw), np.sin(yaw)
    d = world - np.array([x, y, obj.center_z])
    return np.c_[c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]]


def test_static_flow_is_ego_motion(exact_seq, noisy_seq):
    for seq in (exact_seq, noisy_seq):
        for i, f in enumerate(seq.frames):  # the last frame uses the extrapolated next pose
            static = ~f.labels.moving
            xyz = f.xyz_in_ego()[static]
            expected = ego_motion_flow(xyz, f.pose, seq.ego_pose(i + 1))
            np.testing.assert_allclose(f.labels.flow[static], expected, atol=1e-4)
            assert np.abs(expected).max() > 0.3  # the ego moves


def test_moving_points_follow_their_object(exact_seq):
    seq = exact_seq
    objects = {o.instance: o for o in seq.scene.objects if o.instance}
    checked = set()
    dt = seq.preset.frame_period_s
    for i, f in enumerate(seq.frames):
        lab, xyz = f.labels, f.xyz_in_ego()
        for inst in np.unique(lab.instance[lab.moving]):
            sel = lab.instance == inst
            if sel.sum() < 20:
                continue
            obj = objects[int(inst)]
            half = np.asarray(obj.half_extents)
            t0, t1 = seq.time_s(i), seq.time_s(i + 1)
            assert _box_distance(_to_object(seq, xyz[sel], t0, obj), half).max() < 1e-3
            moved = xyz[sel] + lab.flow[sel]
            assert _box_distance(_to_object(seq, moved, t1, obj), half).max() < 0.01
            # object motion = flow minus the ego-motion part, expressed in ego(t+1) axes
            own = lab.flow[sel] - ego_motion_flow(xyz[sel], f.pose, seq.ego_pose(i + 1))
            x0, y0, _ = obj.trajectory.state(t0)
            x1, y1, _ = obj.trajectory.state(t1)
            expected = seq.ego_pose(i + 1).rotation.T @ np.array([x1 - x0, y1 - y0, 0.0])
            kind = obj.trajectory.kind
            if kind in ("constant_velocity", "accelerating"):  # pure translation: every point moves the same
                np.testing.assert_allclose(own, np.broadcast_to(expected, own.shape), atol=1e-4)
            else:  # turning: the mean over the visible surface is close to the centre's displacement
                vx, vy = obj.trajectory.velocity(t0)
                assert np.linalg.norm(own.mean(0) - expected) < 0.05 * np.hypot(vx, vy) * dt + 0.02
            checked.add((kind, obj.kind))
    assert {k for k, _ in checked} == {"constant_velocity", "accelerating", "turning"}
    assert ("turning", "car") in checked
