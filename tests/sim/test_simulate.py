from __future__ import annotations

import numpy as np
import pytest

from perception4d.core.labels import GROUND_IDS, is_valid_semantic
from perception4d.sim import EgoPath, generate_scene, simulate
from perception4d.sim.motion import motion_states, obb_overlap
from perception4d.sim.scene import EGO_CENTER_X, EGO_HALF_EXTENTS, KINDS


def test_labels_are_consistent(exact_seq, noisy_seq):
    for seq in (exact_seq, noisy_seq):
        for f in seq.frames:
            lab = f.labels
            assert f.columns == ("x", "y", "z", "intensity", "ring") and f.num_points > 1000
            assert is_valid_semantic(lab.semantic).all()
            np.testing.assert_array_equal(lab.moving, (lab.semantic >= 252) & (lab.semantic <= 259))
            np.testing.assert_array_equal(lab.ground, np.isin(lab.semantic, GROUND_IDS))
            things = np.isin(lab.semantic, [k.semantic for k in KINDS.values() if k.thing] +
                             [k.moving_semantic for k in KINDS.values() if k.thing])
            np.testing.assert_array_equal(lab.instance > 0, things)
            assert lab.flow.dtype == np.float32 and lab.flow_valid.all()
            assert set(np.unique(lab.flow_category)) <= {0, 4, 17, 19, 21}
            np.testing.assert_array_equal(lab.flow_category[lab.semantic == 252], 19)
            assert lab.moving.any() and (~lab.moving).any()
            intensity = f.column("intensity")
            assert intensity.min() >= 0.0 and intensity.max() <= 1.0
    ts = [f.timestamp_ns for f in exact_seq.frames]
    assert ts == [0, 100_000_000, 200_000_000]


def test_determinism(exact_preset):
    TINY = exact_preset.with_overrides(azimuth_resolution_deg=3.0, range_noise_sigma=0.02)
    a = simulate(TINY, num_frames=2, seed=5)
    b = simulate(TINY, num_frames=2, seed=5)
    c = simulate(TINY, num_frames=2, seed=6, occupancy=None)
    for fa, fb in zip(a.frames, b.frames):
        np.testing.assert_array_equal(fa.points, fb.points)
        np.testing.assert_array_equal(fa.labels.flow, fb.labels.flow)
        np.testing.assert_array_equal(fa.labels.semantic, fb.labels.semantic)
        assert fa.pose.allclose(fb.pose, 0.0)
    for oa, ob in zip(a.occupancy, b.occupancy):
        np.testing.assert_array_equal(oa.semantics, ob.semantics)
        np.testing.assert_array_equal(oa.visible, ob.visible)
        np.testing.assert_array_equal(oa.velocity, ob.velocity)
    assert a.scene == b.scene and a.scene != c.scene
    assert c.occupancy is None
    assert a.frames[0].num_points != c.frames[0].num_points or not np.array_equal(a.frames[0].points,
                                                                                   c.frames[0].points)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_scene_keeps_clear_of_the_ego(seed):
    scene = generate_scene(seed, duration_s=3.0)
    kinds = scene.summary()
    for motion in ("turning", "accelerating", "constant_velocity"):
        assert kinds.get(f"car/{motion}", 0) >= 1 and kinds.get(f"pedestrian/{motion}", 0) >= 1
    assert len(scene.objects) > 100
    times = np.arange(0.005, 3.0, 0.01)  # between the generator's own check times
    ex, ey, eyaw = scene.ego.state(times)
    ego = np.stack([ex + EGO_CENTER_X * np.cos(eyaw), ey + EGO_CENTER_X * np.sin(eyaw), eyaw,
                    np.full_like(ex, EGO_HALF_EXTENTS[0]), np.full_like(ex, EGO_HALF_EXTENTS[1])], 1)
    for k, o in enumerate(scene.objects):
        if o.center_z - o.half_extents[2] >= 2 * EGO_HALF_EXTENTS[2]:
            continue  # above the ego's roof
        x, y, yaw = (a[0] for a in motion_states(o.trajectory.params()[None], times))
        box = np.stack([x, y, yaw, np.full_like(x, o.half_extents[0]), np.full_like(x, o.half_extents[1])], 1)
        assert not obb_overlap(box, ego).any(), f"object {k} ({o.kind}) meets the ego path"


def test_ego_path_turns():
    ego = EgoPath(speed=8.0, lane_y=-1.6, weave_amplitude=0.5, weave_wavelength=60.0)
    _, y, yaw = ego.state(np.linspace(0, 5, 51))
    assert np.ptp(yaw) > 0.05 and np.ptp(y) > 0.5
    p = ego.pose(0.7)
    assert p.translation[0] == pytest.approx(5.6) and p.translation[2] == 0.0
