from __future__ import annotations

import numpy as np

from perception4d.core.geometry import Geometry
from perception4d.core.labels import OCC_CLASSES, occupancy_class
from perception4d.sim import (OCC3D_GEOMETRY, load_occupancy, load_occupancy_geometry, simulate,
                              write_occupancy)
from perception4d.sim.occupancy import visibility

MOVABLE = [OCC_CLASSES.index(n) for n in ("car", "other-vehicle", "two-wheeler", "person")]


def test_default_grid_is_occ3d():
    assert OCC3D_GEOMETRY.grid_shape == (200, 200, 16)
    assert OCC3D_GEOMETRY.voxel_size == (0.4, 0.4, 0.4)


def _check_frame(f, occ, sensor_origin):
    assert occ.semantics.dtype == np.uint8 and occ.visible.dtype == bool and occ.velocity.dtype == np.float32
    xyz = f.xyz_in_ego()
    idx, inside = occ.voxel_index(xyz)
    assert inside.mean() > 0.5
    i = idx[inside]
    sem = occ.semantics[i[:, 0], i[:, 1], i[:, 2]]
    assert (sem > 0).all(), "a hit point lies in a free voxel"
    assert occ.visible[i[:, 0], i[:, 1], i[:, 2]].all(), "a hit point's voxel is not visible"
    on_object = ~f.labels.ground[inside]
    agree = sem[on_object] == occupancy_class(f.labels.semantic[inside][on_object])
    assert agree.mean() > 0.98, agree.mean()
    o, o_in = occ.voxel_index(sensor_origin[None])
    assert o_in[0] and occ.visible[tuple(o[0])]
    occupied = occ.semantics > 0
    assert (occupied & ~occ.visible).sum() > 1000  # occluded space is in the ground truth
    assert (~occupied & occ.visible).sum() > 1000  # free space seen by the rays
    return i, sem


def test_occupancy_contains_and_sees_every_point(exact_seq):
    for f, occ in zip(exact_seq.frames, exact_seq.occupancy):
        _check_frame(f, occ, f.extrinsic.translation)


def test_voxel_velocity(exact_seq):
    seq = exact_seq
    objects = {o.instance: o for o in seq.scene.objects if o.instance}
    f, occ = seq.frames[0], seq.occupancy[0]
    moving_voxels = np.linalg.norm(occ.velocity, axis=-1) > 0
    assert moving_voxels.any() and np.isin(occ.semantics[moving_voxels], MOVABLE).all()
    idx, inside = occ.voxel_index(f.xyz_in_ego())
    lab = f.labels
    rot = f.pose.rotation.T
    tested = 0
    for inst in np.unique(lab.instance[inside & (lab.instance > 0)]):
        sel = inside & (lab.instance == inst)
        obj = objects[int(inst)]
        vel = occ.velocity[idx[sel, 0], idx[sel, 1], idx[sel, 2]]
        if obj.trajectory.kind in ("static", "constant_velocity", "accelerating"):  # uniform over the body
            expected = rot @ np.array([*obj.trajectory.velocity(0.0), 0.0])
            assert np.mean(np.abs(vel - expected).max(1) < 1e-4) > 0.9, obj.trajectory.kind
            tested += 1
    assert tested >= 5


def test_custom_grid_with_ground_on_a_voxel_face(exact_preset):
    geom = Geometry(point_range=(-20.0, -24.0, -2.0, 30.0, 20.0, 4.0), voxel_size=(0.5, 0.5, 0.5))
    preset = exact_preset.with_overrides(azimuth_resolution_deg=1.0)
    seq = simulate(preset, num_frames=1, seed=2, occupancy=geom)
    f, occ = seq.frames[0], seq.occupancy[0]
    assert occ.semantics.shape == (100, 88, 12) and occ.geometry == geom
    _check_frame(f, occ, f.extrinsic.translation)


def test_dda_matches_dense_sampling():
    geom = Geometry(point_range=(-4.0, -4.0, -2.0, 4.0, 4.0, 2.0), voxel_size=(0.5, 0.5, 0.25))
    rng = np.random.default_rng(0)
    origins = rng.uniform(-3.5, 3.5, (40, 3)) * [1, 1, 0.5]
    ends = rng.uniform(-6.0, 6.0, (40, 3))  # some end outside the grid
    for o, e in zip(origins, ends):
        vis = visibility(o[None], e[None], geom)
        s = np.linspace(0.0, 1.0, 20001)[:, None]
        pts = o + s * (e - o)
        idx = np.floor((pts - geom.lower) / geom.voxel_size).astype(int)
        ok = np.all((idx >= 0) & (idx < geom.grid_shape), axis=1)
        sampled = np.zeros(geom.grid_shape, bool)
        sampled[idx[ok, 0], idx[ok, 1], idx[ok, 2]] = True
        assert (vis | ~sampled).all(), "DDA missed a crossed voxel"
        assert (vis & ~sampled).sum() <= 2  # only corner-grazing extras


def test_write_and_load(exact_seq, tmp_path):
    out = write_occupancy(exact_seq, tmp_path / "occ")
    geom = load_occupancy_geometry(out / "occupancy.json")
    assert geom == exact_seq.occupancy[0].geometry
    for i, occ in enumerate(exact_seq.occupancy):
        back = load_occupancy(out / f"{i:06d}.npz", geom)
        np.testing.assert_array_equal(back.semantics, occ.semantics)
        np.testing.assert_array_equal(back.visible, occ.visible)
        np.testing.assert_array_equal(back.velocity, occ.velocity)
    with np.load(out / "000000.npz") as z:
        assert set(z.files) == {"semantics", "mask_lidar", "velocity"}
