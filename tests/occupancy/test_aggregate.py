from __future__ import annotations

import time

import numpy as np
import pytest

from perception4d.core.frame import Frame, PointLabels
from perception4d.core.geometry import Geometry
from perception4d.core.labels import OCC_CLASSES, OCC_IGNORE, occupancy_class
from perception4d.core.se3 import SE3
from perception4d.core.window import Window
from perception4d.errors import DataFormatError, WindowError
from perception4d.io import SemanticKittiReader
from perception4d.occupancy import (
    MovingPolicy,
    RaySource,
    aggregate_occupancy,
    aggregate_points,
    majority_semantics,
)
from perception4d.sim import HDL64E, simulate
from perception4d.sim.occupancy import OCC3D_GEOMETRY

CAR, TWO_WHEELER, ROAD, BUILDING = (OCC_CLASSES.index(n) for n in ("car", "two-wheeler", "road", "building"))
SSC = Geometry(point_range=(0.0, -25.6, -2.0, 51.2, 25.6, 4.4), voxel_size=(0.2, 0.2, 0.2))
GRID = Geometry(point_range=(-4.0, -8.0, -1.0, 28.0, 8.0, 4.0), voxel_size=(0.5, 0.5, 0.5))
DT_NS = 100_000_000
MOUNT = SE3(np.eye(3), [0.0, 0.0, 1.7])
CAR_SPEED = 10.0  # m/s along world x


def _voxels(geom: Geometry, xyz: np.ndarray) -> set[tuple[int, int, int]]:
    i = np.floor((np.asarray(xyz, float) - geom.lower) / np.asarray(geom.voxel_size)).astype(int)
    i = i[np.all((i >= 0) & (i < geom.grid_shape), axis=1)]
    return set(map(tuple, i))


def _ego_pose(k: int) -> SE3:
    return SE3.from_yaw(0.03 * k, [2.0 * k, 0.3 * k, 0.0])


def _car_world(k: int) -> np.ndarray:
    """The same body-fixed samples of a 4 x 2 x 1.5 m box, moved to frame k's position."""
    rng = np.random.default_rng(5)
    body = rng.uniform([-2.0, -1.0, 0.0], [2.0, 1.0, 1.5], (300, 3))
    return body + [10.0 + CAR_SPEED * k * DT_NS * 1e-9, 3.0, 0.6]  # clear of the road voxels


def _synthetic_frames() -> list[Frame]:
    """3 frames: ego driving and turning, a wall, a road, a moving car (instance 5), a moving person
    seen in frame 0 only (instance 9) and a moving point without an instance id in frame 2."""
    frames = []
    for k in range(3):
        rng = np.random.default_rng(k)
        wall = np.c_[np.full(400, 24.2), rng.uniform(-6, 6, 400), rng.uniform(0.2, 3.5, 400)]
        road = np.c_[rng.uniform(4, 26, 600), rng.uniform(-6, 6, 600), np.full(600, 0.05)]
        xyz = [wall, road, _car_world(k)]
        sem = [np.full(400, 50), np.full(600, 40), np.full(300, 252)]
        inst = [np.zeros(400), np.zeros(600), np.full(300, 5)]
        if k == 0:
            xyz.append(np.array([[6.0, -4.0, 1.0], [6.1, -4.0, 1.2]]))
            sem.append(np.array([254, 254]))
            inst.append(np.array([9, 9]))
        if k == 2:
            xyz.append(np.array([[20.0, -5.0, 1.0]]))
            sem.append(np.array([254]))
            inst.append(np.array([0]))
        world = np.concatenate(xyz)
        sensor = (_ego_pose(k) @ MOUNT).inverse().transform_points(world)
        pts = np.c_[sensor, np.zeros(len(sensor))].astype(np.float32)
        labels = PointLabels(semantic=np.concatenate(sem).astype(np.uint16),
                             instance=np.concatenate(inst).astype(np.uint16))
        frames.append(Frame(points=pts, timestamp_ns=k * DT_NS, pose=_ego_pose(k), extrinsic=MOUNT,
                            labels=labels, frame_id=f"syn/{k}"))
    return frames


def _in_ref(world: np.ndarray) -> np.ndarray:
    return _ego_pose(1).inverse().transform_points(world)


def test_majority_vote_ignore_and_ties():
    g = Geometry(point_range=(0.0, 0.0, 0.0, 4.0, 1.0, 1.0), voxel_size=(1.0, 1.0, 1.0))
    x = np.array([0.5, 0.5, 0.5, 1.5, 2.5, 2.5, 2.5, 3.5, 3.5, 9.0])
    xyz = np.c_[x, np.full(10, 0.5), np.full(10, 0.5)]
    cls = np.array([ROAD, ROAD, CAR, OCC_IGNORE, OCC_IGNORE, OCC_IGNORE, CAR, BUILDING, ROAD, CAR])
    sem = majority_semantics(xyz, cls, g)
    assert sem[:, 0, 0].tolist() == [ROAD, OCC_IGNORE, CAR, ROAD]  # voxel 3: tie -> smaller class
    preferred = np.zeros(10, bool)
    preferred[7] = True
    assert majority_semantics(xyz, cls, g, preferred)[3, 0, 0] == BUILDING  # tie -> preferred points
    assert majority_semantics(xyz[:0], cls[:0], g).sum() == 0


@pytest.mark.parametrize("policy", [MovingPolicy.REFERENCE, MovingPolicy.REGISTER])
def test_synthetic_moving_car_does_not_smear(policy):
    frames = _synthetic_frames()
    occ = aggregate_occupancy(frames, -2, GRID, moving_policy=policy)
    car_ref = _voxels(GRID, _in_ref(_car_world(1)))
    car_vox = set(map(tuple, np.argwhere(occ.semantics == CAR)))
    assert car_vox == car_ref
    smear = (_voxels(GRID, _in_ref(_car_world(0))) | _voxels(GRID, _in_ref(_car_world(2)))) - car_ref
    assert len(smear) > 20 and all(occ.semantics[v] != CAR for v in smear)
    assert occ.semantics[tuple(np.array(sorted(_voxels(GRID, _in_ref(np.array([[6.0, -4.0, 1.0]]))))).T)] == 0
    # the wall and road of all three scans are there, in the right place
    for k, f in enumerate(frames):
        world = (f.pose @ f.extrinsic).transform_points(f.xyz[:1000])
        got = [occ.semantics[v] for v in _voxels(GRID, _in_ref(world))]
        assert set(got) <= {BUILDING, ROAD, CAR}, k
    # velocity: 10 m/s along world x, in the reference ego axes, on the car's voxels only
    moving = np.linalg.norm(occ.velocity, axis=-1) > 0
    assert set(map(tuple, np.argwhere(moving))) == car_ref
    expected = _ego_pose(1).rotation.T @ [CAR_SPEED, 0.0, 0.0]
    np.testing.assert_allclose(occ.velocity[moving], np.broadcast_to(expected, (len(car_ref), 3)), atol=1e-3)

    pts = aggregate_points(frames, 1, moving_policy=policy)
    car_pts = pts.xyz[pts.occ_class == CAR]
    if policy is MovingPolicy.REGISTER:  # identical body samples: the centroid shift is exact
        assert len(car_pts) == 900 and pts.drops.moving_left_out == 3
        ref_car = _in_ref(_car_world(1))
        np.testing.assert_allclose(car_pts.reshape(3, 300, 3), np.broadcast_to(ref_car, (3, 300, 3)), atol=1e-3)
    else:
        assert len(car_pts) == 300 and pts.drops.moving_left_out == 603
    o, _ = pts.rays(RaySource.ALL)
    assert len(o) == 2 * 1000 + 1300 and np.allclose(o[:1000], _in_ref((_ego_pose(0) @ MOUNT).translation[None]))


def test_densifies_and_refuses_bad_input():
    frames = _synthetic_frames()
    single = aggregate_occupancy(frames[1:2], 0, GRID)
    multi = aggregate_occupancy(frames, 1, GRID)
    assert (multi.semantics > 0).sum() > 1.3 * (single.semantics > 0).sum()
    assert ((multi.semantics > 0) >= (single.semantics > 0)).all()
    assert multi.visible.sum() > single.visible.sum()
    no_labels = [frames[0], Frame(points=frames[1].points, timestamp_ns=DT_NS, source="scan1.bin")]
    with pytest.raises(DataFormatError, match="scan1.bin.*semantic labels"):
        aggregate_occupancy(no_labels, 0, GRID)
    unknown = Frame(points=frames[1].points, timestamp_ns=DT_NS, labels=frames[1].labels, pose_known=False)
    with pytest.raises(WindowError, match="pose unknown"):
        aggregate_occupancy([frames[0], unknown], 0, GRID)
    with pytest.raises(WindowError, match="increase"):
        aggregate_occupancy([frames[1], frames[0]], 0, GRID)
    with pytest.raises(WindowError, match="reference index 3"):
        aggregate_occupancy(frames, 3, GRID)
    with pytest.raises(ValueError, match="MovingPolicy"):
        aggregate_occupancy(frames, 1, GRID, moving_policy="smear")


# ---- real SemanticKITTI scans 0-2 of sequence 00 --------------------------------------------

@pytest.fixture(scope="module")
def kitti(semantickitti_root):
    reader = SemanticKittiReader(semantickitti_root / "sequences" / "00")
    frames = [reader[i] for i in range(3)]
    aligned = Window(tuple(frames)).align(1, ("x", "y", "z"))
    semantic = np.concatenate([f.labels.semantic for f in frames])
    return frames, aligned, semantic


def test_ssc_grid_shape():
    assert SSC.grid_shape == (256, 256, 32)


@pytest.mark.parametrize("geom", [SSC, OCC3D_GEOMETRY], ids=["ssc_0.2m", "occ3d_0.4m"])
def test_real_scans_agree_and_densify(kitti, geom):
    frames = kitti[0]
    occ = aggregate_occupancy(frames, 1, geom)
    single = aggregate_occupancy(frames[1:2], 0, geom)
    assert occ.semantics.shape == geom.grid_shape and occ.semantics.dtype == np.uint8
    assert set(np.unique(occ.semantics)) <= set(range(len(OCC_CLASSES))) | {OCC_IGNORE}
    ref = frames[1]
    idx, inside = occ.voxel_index(ref.xyz_in_ego())
    cls = occupancy_class(ref.labels.semantic)
    sel = inside & (cls != OCC_IGNORE)
    assert sel.sum() > 30_000
    got = occ.semantics[tuple(idx[sel].T)]
    assert (got > 0).all()
    agreement = (got == cls[sel]).mean()
    assert agreement > 0.95, agreement
    n_multi, n_single = (occ.semantics > 0).sum(), (single.semantics > 0).sum()
    assert n_multi > 1.2 * n_single, (n_multi, n_single)


@pytest.mark.parametrize("geom", [SSC, OCC3D_GEOMETRY], ids=["ssc_0.2m", "occ3d_0.4m"])
def test_real_moving_motorcyclist_does_not_smear(kitti, geom):
    frames, aligned, semantic = kitti
    moto = semantic == 255
    assert [int(moto[aligned.time == k].sum()) for k in range(3)] == [88, 73, 72]
    ref_vox = _voxels(geom, aligned.points[moto & (aligned.time == 1)])
    smear = _voxels(geom, aligned.points[moto & (aligned.time != 1)]) - ref_vox
    assert len(smear) > 20  # world accumulation would put the motorcyclist there
    occ = aggregate_occupancy(frames, 1, geom)
    assert not any(occ.semantics[v] == TWO_WHEELER for v in smear)
    assert set(map(tuple, np.argwhere(occ.semantics == TWO_WHEELER))) == ref_vox

    reg = aggregate_occupancy(frames, 1, geom, moving_policy=MovingPolicy.REGISTER)
    reg_vox = np.argwhere(reg.semantics == TWO_WHEELER)
    assert len(reg_vox) > len(ref_vox)  # the other scans' returns fill the motorcyclist in
    near = np.abs(reg_vox[:, None, :] - np.array(sorted(ref_vox))[None]).max(-1).min(1)
    assert (near <= 1).all(), np.bincount(near)


def test_real_velocity_of_the_motorcyclist(kitti):
    frames, _, _ = kitti
    fwd = aggregate_occupancy(frames, 1, SSC)  # scan 1 -> scan 2
    bwd = aggregate_occupancy(frames[:2], 1, SSC)  # no next scan: scan 0 -> scan 1
    for occ in (fwd, bwd):
        moving = np.linalg.norm(occ.velocity, axis=-1) > 0
        assert moving.sum() > 20 and (occ.semantics[moving] == TWO_WHEELER).all()
        v = occ.velocity[moving].mean(0)
        assert 5.0 < np.linalg.norm(v) < 20.0 and v[0] > 5 * abs(v[1]), v  # along the road, ~40 km/h
    vf = fwd.velocity[np.linalg.norm(fwd.velocity, axis=-1) > 0].mean(0)
    vb = bwd.velocity[np.linalg.norm(bwd.velocity, axis=-1) > 0].mean(0)
    assert np.linalg.norm(vf - vb) < 0.2 * np.linalg.norm(vf), (vf, vb)


def test_real_aggregation_is_fast(kitti):
    frames, _, _ = kitti
    aggregate_occupancy(frames, 1, SSC)  # compiled / warm
    best = np.inf
    for _ in range(2):
        t0 = time.perf_counter()
        aggregate_occupancy(frames, 1, SSC, rays=RaySource.ALL)
        best = min(best, time.perf_counter() - t0)
    assert best < 2.0, f"3 scans at 0.2 m took {best:.2f} s"


# ---- simulator: the aggregate against the simulator's exact occupancy -------------------------

@pytest.mark.parametrize("policy", [MovingPolicy.REFERENCE, MovingPolicy.REGISTER])
def test_simulated_sequence_matches_simulator_occupancy(policy):
    geom = Geometry(point_range=(-30.0, -30.0, -1.0, 30.0, 30.0, 5.4), voxel_size=(0.4, 0.4, 0.4))
    preset = HDL64E.with_overrides(name="hdl64e_coarse_exact", azimuth_resolution_deg=0.5, range_noise_sigma=0.0)
    seq = simulate(preset, num_frames=3, seed=7, occupancy=geom)
    gt = seq.occupancy[1]
    occ = aggregate_occupancy(seq.frames, 1, geom, moving_policy=policy, rays=RaySource.REFERENCE)
    single = aggregate_occupancy(seq.frames[1:2], 0, geom)
    occupied = occ.semantics > 0
    assert occupied.sum() > 1.2 * (single.semantics > 0).sum()
    precision = (gt.semantics[occupied] > 0).mean()
    assert precision > (0.999 if policy is MovingPolicy.REFERENCE else 0.99), precision
    agreement = (gt.semantics[occupied] == occ.semantics[occupied]).mean()
    assert agreement > 0.95, agreement
    assert (occ.visible == gt.visible).all()  # the same rays, the same traversal
    moving = np.linalg.norm(occ.velocity, axis=-1) > 0
    gt_moving = np.linalg.norm(gt.velocity, axis=-1) > 0
    assert moving.sum() > 100 and gt_moving[moving].mean() > 0.9
    both = moving & gt_moving
    got, want = occ.velocity[both], gt.velocity[both]  # centroid-shift estimate vs exact rigid motion
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    rel = np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)
    assert np.median(cos) > 0.95 and np.median(rel) < 0.25, (np.median(cos), np.median(rel))
