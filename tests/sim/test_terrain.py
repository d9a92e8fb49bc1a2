"""Urban terrain: returns lie on the analytic surface, curbs show as steps, objects and the ego stand on
the ground, flow and occupancy ground truth stay exact, and the flat default is unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from perception4d.core.labels import OCC_CLASSES
from perception4d.core.window import ego_motion_flow
from perception4d.errors import ConfigError
from perception4d.sim import TerrainConfig, generate_scene, simulate, terrain_config
from perception4d.sim.scene import EGO_TRACK, EGO_WHEELBASE, Shape
from perception4d.sim.heightfield import _OVERSTEP, march
from perception4d.sim.terrain import draw_terrain

MOVABLE = [OCC_CLASSES.index(n) for n in ("car", "other-vehicle", "two-wheeler", "person")]
GROUND_CLASSES = [OCC_CLASSES.index(n) for n in ("road", "sidewalk", "terrain")]


@pytest.fixture(scope="module")
def urban_exact(exact_preset):
    return simulate(exact_preset, num_frames=3, seed=7, terrain="urban")


@pytest.fixture(scope="module")
def urban_noisy(exact_preset):
    preset = exact_preset.with_overrides(name="noisy", azimuth_resolution_deg=1.0, range_noise_sigma=0.02)
    return simulate(preset, num_frames=2, seed=3, occupancy=None, terrain="urban")


def _world(f) -> np.ndarray:
    return f.pose.transform_points(f.xyz_in_ego().astype(np.float64))


def test_ground_returns_lie_on_the_surface(urban_exact, urban_noisy):
    for seq, tol in ((urban_exact, 2e-5), (urban_noisy, 0.12)):
        terrain = seq.scene.terrain
        for f in seq.frames:
            w, g = _world(f), f.labels.ground
            if seq is urban_noisy:  # a range error moves a point on the steep curb face far off vertically
                g &= np.abs(np.abs(w[:, 1]) - terrain.road_half_width - 0.01) > 0.06
            dz = w[g, 2] - terrain.height(w[g, 0], w[g, 1])
            assert g.sum() > 1000 and np.abs(dz).max() < tol
        if seq is urban_noisy:  # noise along the ray: a few cm, centred
            assert 0.002 < dz.std() < 0.03 and abs(dz.mean()) < 0.005
    f = urban_exact.frames[0]  # the ground is neither flat nor level in the sensor frame
    near = f.labels.ground & (np.linalg.norm(f.xyz[:, :2], axis=1) < 25.0)
    assert np.ptp(f.xyz[near, 2]) > 0.2 and f.pose.rotation[2, 2] < 1.0 - 1e-6


def test_curb_is_a_step_at_the_sidewalk_edge(urban_exact):
    terrain = urban_exact.scene.terrain
    rw = terrain.road_half_width
    steps, face = [], 0
    for f in urban_exact.frames:
        w, g = _world(f), f.labels.ground
        a = np.abs(w[:, 1])
        on_face = g & (a >= rw) & (a <= rw + 0.02)
        face += on_face.sum()
        assert (f.labels.semantic[on_face] == 48).all()
        for side in (-1.0, 1.0):
            road = g & (np.sign(w[:, 1]) == side) & (a > rw - 0.5) & (a < rw - 0.1)
            walk = g & (np.sign(w[:, 1]) == side) & (a > rw + 0.1) & (a < rw + 0.5)
            for x0 in np.arange(-20.0, 20.0, 2.0):
                r, s = road & (w[:, 0] >= x0) & (w[:, 0] < x0 + 2), walk & (w[:, 0] >= x0) & (w[:, 0] < x0 + 2)
                if r.sum() >= 5 and s.sum() >= 5:
                    steps.append(np.median(w[s, 2]) - np.median(w[r, 2]))
    assert face >= 20  # returns from the curb face itself
    assert len(steps) >= 10
    assert np.abs(np.asarray(steps) - terrain.curb_height).max() < 0.05  # camber, sidewalk slope, relief
    assert min(steps) > 0.08


def _floating_gap(terrain, x, y, yaw, obj, bottom) -> np.ndarray:
    """bottom minus the ground over a dense sampling of the object's footprint."""
    hx, hy, _ = obj.half_extents
    u, v = np.meshgrid(np.linspace(-1, 1, 15), np.linspace(-1, 1, 15))
    if obj.shape == Shape.BOX:
        u, v = u * hx, v * hy
    else:
        keep = u ** 2 + v ** 2 <= 1.0
        u, v = u[keep] * hx, v[keep] * hx
    c, s = np.cos(yaw), np.sin(yaw)
    return bottom - terrain.height(x + c * u - s * v, y + s * u + c * v)


def test_objects_and_ego_rest_on_the_terrain(urban_exact):
    scene = urban_exact.scene
    terrain = scene.terrain
    resting = 0
    for t in (0.0, 0.25):
        x, y, yaw = scene.states(t)
        z = scene.object_z(t)
        for j, o in enumerate(scene.objects):
            if o.center_z - o.half_extents[2] > 0.05:  # crowns and sign plates sit on other parts
                continue
            bottom = z[j] - o.half_extents[2] - (o.center_z - o.half_extents[2])  # its base
            gap = _floating_gap(terrain, x[j], y[j], yaw[j], o, bottom)
            assert gap.max() < 0.01, (o.kind, gap.max())  # no part floats (up to roughness between samples)
            assert gap.min() < -1e-4 or abs(gap).min() < 1e-9  # it touches the ground
            resting += 1
    assert resting > 100
    moving = scene.column("moving")
    assert np.abs(scene.object_z(0.25) - scene.object_z(0.0))[moving].max() > 1e-3  # movers ride the relief
    tilts = []
    for t in (0.0, 0.1, 0.2):
        pose = urban_exact.scene.ego_pose(t)
        wheels = np.array([[0.0, 0.5, 0.0], [0.0, -0.5, 0.0], [1.0, 0.5, 0.0], [1.0, -0.5, 0.0]])
        w = pose.transform_points(wheels * [EGO_WHEELBASE, EGO_TRACK, 0.0])
        assert np.abs(w[:, 2] - terrain.height(w[:, 0], w[:, 1])).max() < 0.02
        x, y, yaw = urban_exact.scene.ego.state(np.asarray(t))
        assert pose.yaw == pytest.approx(float(yaw), abs=1e-12)
        np.testing.assert_allclose(pose.translation[:2], [x, y], atol=1e-12)
        tilts.append(np.degrees(np.arccos(pose.rotation[2, 2])))
    assert max(tilts) > 0.3  # the sensor is not level


def test_static_flow_is_ego_motion(urban_exact, urban_noisy):
    for seq in (urban_exact, urban_noisy):
        for i, f in enumerate(seq.frames):
            static = ~f.labels.moving
            xyz = f.xyz_in_ego()[static]
            expected = ego_motion_flow(xyz, f.pose, seq.ego_pose(i + 1))
            np.testing.assert_allclose(f.labels.flow[static], expected, atol=1e-4)


def _box_distance(local: np.ndarray, half: np.ndarray) -> np.ndarray:
    q = np.abs(local) - half
    return np.linalg.norm(np.maximum(q, 0.0), axis=1) + np.abs(np.minimum(q.max(axis=1), 0.0))


def test_moving_points_follow_their_object(urban_exact):
    seq, scene = urban_exact, urban_exact.scene
    index = {o.instance: j for j, o in enumerate(scene.objects) if o.instance}

    def local(xyz, t, j):
        w = scene.ego_pose(t).transform_points(xyz.astype(np.float64))
        x, y, yaw = (a[j] for a in scene.states(t))
        d = w - np.array([x, y, scene.object_z(t)[j]])
        c, s = np.cos(yaw), np.sin(yaw)
        return np.c_[c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]]

    checked, rises = 0, []
    for i, f in enumerate(seq.frames):
        lab, xyz = f.labels, f.xyz_in_ego()
        t0, t1 = seq.time_s(i), seq.time_s(i + 1)
        for inst in np.unique(lab.instance[lab.moving]):
            sel = lab.instance == inst
            j = index[int(inst)]
            half = np.asarray(scene.objects[j].half_extents)
            assert _box_distance(local(xyz[sel], t0, j), half).max() < 1e-4
            assert _box_distance(local(xyz[sel] + lab.flow[sel], t1, j), half).max() < 1e-4
            rises.append(abs(scene.object_z(t1)[j] - scene.object_z(t0)[j]))
            checked += 1
    assert checked >= 10 and max(rises) > 1e-3


def test_occupancy_follows_the_surface(urban_exact):
    scene = urban_exact.scene
    for i in (0, 2):
        f, occ = urban_exact.frames[i], urban_exact.occupancy[i]
        xyz = f.xyz_in_ego()
        idx, inside = occ.voxel_index(xyz)
        sem = occ.semantics[idx[inside, 0], idx[inside, 1], idx[inside, 2]]
        assert (sem > 0).all() and occ.visible[idx[inside, 0], idx[inside, 1], idx[inside, 2]].all()
        geom = occ.geometry
        cells = np.argwhere(np.ones(geom.grid_shape, bool))
        w = f.pose.transform_points(geom.voxel_centers(cells).astype(np.float64))
        depth = scene.terrain.height(w[:, 0], w[:, 1]) - w[:, 2]
        flat_sem = occ.semantics.reshape(-1)
        half_diagonal = 0.5 * np.linalg.norm(geom.voxel_size)
        below, above = depth > half_diagonal, depth < -half_diagonal - 0.02
        assert below.sum() > 10_000 and (flat_sem[below] > 0).all()  # solid below the surface
        assert not np.isin(flat_sem[above], GROUND_CLASSES).any()  # no ground above it
        assert (flat_sem[above] == 0).sum() > 100_000


def test_voxel_velocity_includes_the_climb(urban_exact):
    scene = urban_exact.scene
    f, occ = urban_exact.frames[0], urban_exact.occupancy[0]
    moving_voxels = np.linalg.norm(occ.velocity, axis=-1) > 0
    assert moving_voxels.any() and np.isin(occ.semantics[moving_voxels], MOVABLE).all()
    idx, inside = occ.voxel_index(f.xyz_in_ego())
    vz = scene.object_vz(0.0)
    index = {o.instance: j for j, o in enumerate(scene.objects) if o.instance}
    tested = 0
    for inst in np.unique(f.labels.instance[inside & f.labels.moving]):
        j = index[int(inst)]
        obj = scene.objects[j]
        if obj.trajectory.kind == "turning":
            continue
        sel = inside & (f.labels.instance == inst)
        vel = occ.velocity[idx[sel, 0], idx[sel, 1], idx[sel, 2]]
        expected = f.pose.rotation.T @ np.array([*obj.trajectory.velocity(0.0), vz[j]])
        assert np.mean(np.abs(vel - expected).max(1) < 1e-3) > 0.9
        tested += 1
    assert tested >= 3 and np.abs(vz).max() > 0.01


def test_march_finds_the_first_crossing():
    terrain = draw_terrain(TerrainConfig(kind="urban"), 8.5, 3.5, seed=11)
    sc, wv = terrain.scalars, terrain.waves
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(60):
        px, py = rng.uniform(-50.0, 50.0), rng.uniform(-7.0, 7.0)
        pz = float(terrain.height(px, py)) + rng.uniform(0.3, 2.0)
        el, az = np.deg2rad(rng.uniform(-30.0, -0.5)), rng.uniform(-np.pi, np.pi)
        u = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        t_hit, cosi = march(sc, wv, px, py, pz, u[0], u[1], u[2], 60.0)
        t_dense = np.arange(0.0, min(t_hit, 60.0), 0.002)
        f = pz + t_dense * u[2] - terrain.height(px + t_dense * u[0], py + t_dense * u[1])
        assert f.min() > -_OVERSTEP  # no deeper crossing before the one returned
        if np.isfinite(t_hit):
            p = np.array([px, py, pz]) + t_hit * u
            assert abs(p[2] - terrain.height(p[0], p[1])) < 1e-6 and 0.0 < cosi <= 1.0
            checked += 1
    assert checked > 40


def test_determinism_and_shared_layout(exact_preset):
    tiny = exact_preset.with_overrides(azimuth_resolution_deg=3.0, range_noise_sigma=0.02)
    a = simulate(tiny, num_frames=2, seed=5, terrain="urban")
    b = simulate(tiny, num_frames=2, seed=5, terrain="urban")
    for fa, fb in zip(a.frames, b.frames):
        np.testing.assert_array_equal(fa.points, fb.points)
        np.testing.assert_array_equal(fa.labels.flow, fb.labels.flow)
        assert fa.pose.allclose(fb.pose, 0.0)
    for oa, ob in zip(a.occupancy, b.occupancy):
        np.testing.assert_array_equal(oa.semantics, ob.semantics)
        np.testing.assert_array_equal(oa.velocity, ob.velocity)
    assert a.scene == b.scene
    flat = generate_scene(5, duration_s=0.2)
    other = generate_scene(6, duration_s=0.2, terrain="urban")
    assert flat.objects == a.scene.objects and flat.ego == a.scene.ego  # same street, other ground
    assert flat.terrain.is_flat and other.terrain != a.scene.terrain


def test_flat_default_is_unchanged(exact_preset):
    tiny = exact_preset.with_overrides(azimuth_resolution_deg=3.0)
    a = simulate(tiny, num_frames=2, seed=4)
    b = simulate(tiny, num_frames=2, seed=4, terrain=TerrainConfig())
    for fa, fb, oa, ob in zip(a.frames, b.frames, a.occupancy, b.occupancy):
        np.testing.assert_array_equal(fa.points, fb.points)
        np.testing.assert_array_equal(oa.semantics, ob.semantics)
        assert fa.pose.translation[2] == 0.0 and fa.pose.rotation[2, 2] == 1.0
        w = _world(fa)
        np.testing.assert_allclose(w[fa.labels.ground, 2], 0.0, atol=1e-5)
    assert a.scene.terrain.is_flat
    np.testing.assert_array_equal(a.scene.object_z(0.1), a.scene.center_z)


def test_terrain_config_is_checked():
    assert terrain_config("urban") == TerrainConfig(kind="urban")
    assert terrain_config({"kind": "urban", "curb_height_m": [0.12, 0.12]}).curb_height_m == (0.12, 0.12)
    with pytest.raises(ConfigError, match="terrain.kind"):
        terrain_config("hills")
    with pytest.raises(ConfigError, match="unknown fields \\['curb'\\]"):
        terrain_config({"kind": "urban", "curb": 0.1})
    with pytest.raises(ConfigError, match="terrain.relief_m"):
        TerrainConfig(kind="urban", relief_m=(0.5, 0.2))
    with pytest.raises(ConfigError, match="max_grade"):
        TerrainConfig(kind="urban", max_grade=0.5)


def test_dropout_loses_returns(exact_preset):
    tiny = exact_preset.with_overrides(azimuth_resolution_deg=2.0)
    full = simulate(tiny, num_frames=1, seed=2, occupancy=None)
    lossy = simulate(tiny.with_overrides(dropout_prob=0.2), num_frames=1, seed=2, occupancy=None)
    ratio = lossy.frames[0].num_points / full.frames[0].num_points
    assert 0.75 < ratio < 0.85
    kept = {tuple(p) for p in full.frames[0].points[:, :3].round(4)}
    assert all(tuple(p) in kept for p in lossy.frames[0].points[:, :3].round(4))  # a subset, nothing moved
    assert len(lossy.frames[0].labels.semantic) == lossy.frames[0].num_points
    with pytest.raises(ConfigError, match="dropout_prob"):
        tiny.with_overrides(dropout_prob=1.0)


def test_cli_and_dataset_take_the_terrain(tmp_path):
    from perception4d.cli import main
    from perception4d.datasets.window_dataset import SimWindowDataset

    out = tmp_path / "sim"
    assert main(["simulate", "--out", str(out), "--frames", "2", "--preset", "hdl32e", "--terrain", "urban",
                 "--no-occupancy", "--dropout", "0.05"]) == 0
    meta = json.loads((out / "simulation.json").read_text())
    assert meta["terrain"]["kind"] == "urban" and meta["preset"]["dropout_prob"] == 0.05
    geometry = dict(point_range=(-51.2, -51.2, -3.2, 51.2, 51.2, 3.2), voxel_size=(0.4, 0.4, 0.4), num_frames=2)
    ds = SimWindowDataset(geometry, seeds=(1,), frames_per_sequence=3, preset="hdl32e",
                          preset_overrides=dict(azimuth_resolution_deg=2.0), terrain="urban")
    sample = ds[0]["inputs"]
    static = ~sample.targets.dynamic
    np.testing.assert_allclose(sample.targets.flow[static], sample.ego_flow[static], atol=1e-4)
    assert np.abs(sample.ego_flow[:, 2]).max() > 1e-3  # the ego climbs and pitches
