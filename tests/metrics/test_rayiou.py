"""RayIoU: the numba ray marcher against dense sampling, the depth rule, and a simulated scene."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from perception4d.core.geometry import Geometry
from perception4d.core.labels import OCC_IGNORE, occupancy_class
from perception4d.metrics import (OccupancySample, RaySet, cast_rays, occ3d_ray_directions, occupancy_frame_stats,
                                  occupancy_result, ray_frame_stats, uniform_ray_directions)
from perception4d.sim import OCC3D_GEOMETRY, simulate

GEOM = Geometry(point_range=(-20.0, -20.0, -1.0, 20.0, 20.0, 5.4), voxel_size=(0.4, 0.4, 0.4))  # (100, 100, 16)
ROAD, BUILDING, VEGETATION, CAR = 5, 9, 11, 1


def x_index(x: float) -> int:
    return int(math.floor((x - GEOM.point_range[0]) / GEOM.voxel_size[0] + 1e-9))


def scene(wall_x: float = 8.0, wall_depth: float = 0.8) -> np.ndarray:
    """Road (3 layers), a building slab over x in [wall_x, wall_x + wall_depth) and a car."""
    sem = np.zeros(GEOM.grid_shape, np.uint8)
    sem[:, :, :3] = ROAD
    sem[x_index(wall_x):x_index(wall_x + wall_depth - 1e-6) + 1, :, 3:14] = BUILDING
    sem[40:50, 60:65, 3:7] = CAR
    return sem


def result(pred, gt, rays, **kw):
    s = OccupancySample(pred, gt, GEOM, rays=rays, **kw)
    return occupancy_result([occupancy_frame_stats(s)])


HORIZONTAL = RaySet.from_origins(np.c_[np.full(9, 0.1), np.linspace(-15.9, 15.9, 9), np.full(9, 2.1)],
                                 [[1.0, 0.0, 0.0]])  # along +x, hitting the building only
ALL_AROUND = RaySet.from_origins((0.0, 0.0, 1.84), uniform_ray_directions(2.0, (-30.0, 10.0), 2.0))


def test_equal_prediction_scores_one_everywhere():
    gt = scene()
    r = result(gt, gt, ALL_AROUND)
    assert r.rayiou == 1.0 and r.rayiou_per_threshold == (1.0, 1.0, 1.0)
    assert {k for k, v in r.ray_class_iou.items() if not math.isnan(v[0])} == {"road", "building", "car"}
    assert r.total.ray.num_rays > 0.7 * r.total.ray.num_cast


@pytest.mark.parametrize("shift_voxels, passes", [
    (1.5, (True, True, True)),     # wall 0.6 m further: the first voxel leaves 0.4 m later
    (3.5, (False, True, True)),    # 1.2 m
    (6.5, (False, False, True)),   # 2.4 m
    (11.5, (False, False, False)),  # 4.4 m
])
def test_depth_rule_of_a_shifted_wall(shift_voxels, passes):
    gt = scene(8.0)
    pred = scene(8.0 + 0.4 * shift_voxels)
    hits_gt, hits_pred = cast_rays(gt, GEOM, HORIZONTAL), cast_rays(pred, GEOM, HORIZONTAL)
    np.testing.assert_allclose(hits_gt.depth, 8.4 - 0.1)  # exit of the first building voxel
    expected_gap = 0.4 * (x_index(8.0 + 0.4 * shift_voxels) - x_index(8.0))
    np.testing.assert_allclose(hits_pred.depth - hits_gt.depth, expected_gap, atol=1e-9)
    r = result(pred, gt, HORIZONTAL)
    assert r.rayiou_per_threshold == tuple(float(p) for p in passes)
    stats = r.total.ray
    assert stats.num_rays == len(HORIZONTAL)
    for j, ok in enumerate(passes):  # a hit at the wrong depth is one FP and one FN
        assert (stats.tp[j, BUILDING], stats.fp[j, BUILDING], stats.fn[j, BUILDING]) == \
            ((9, 0, 0) if ok else (0, 9, 9))


def test_wrong_class_and_empty_prediction_score_zero():
    gt = scene()
    wrong = gt.copy()
    wrong[wrong == BUILDING] = VEGETATION
    r = result(wrong, gt, HORIZONTAL)
    assert r.rayiou == 0.0
    assert r.ray_class_iou["building"] == (0.0,) * 3 and r.ray_class_iou["vegetation"] == (0.0,) * 3
    r = result(np.zeros_like(gt), gt, ALL_AROUND)
    assert r.rayiou == 0.0 and r.rayiou_per_threshold == (0.0, 0.0, 0.0)
    assert r.total.ray.fp.sum() == 0 and r.total.ray.fn[0].sum() == r.total.ray.num_rays


def test_ignored_ground_truth_rays_are_not_scored():
    gt = scene()
    gt[gt == BUILDING] = OCC_IGNORE
    stats = ray_frame_stats(np.zeros_like(gt), gt, GEOM, HORIZONTAL)
    assert (stats.num_rays, stats.num_ignored, stats.num_cast) == (0, 9, 9)
    with pytest.raises(ValueError, match="predicted class 255"):
        ray_frame_stats(gt, scene(), GEOM, HORIZONTAL)


def brute_force(sem: np.ndarray, geom: Geometry, rays: RaySet, t_max: float, step: float = 0.01):
    """First sample (every ``step`` metres) inside a nonzero voxel: (t, class); (inf, 0) without one."""
    ts = np.arange(0.0, t_max, step)
    lower, vs, shape = np.asarray(geom.point_range[:3]), np.asarray(geom.voxel_size), np.asarray(geom.grid_shape)
    t_hit, label = np.full(len(rays), np.inf), np.zeros(len(rays), np.uint8)
    for r in range(len(rays)):
        idx = np.floor((rays.origins[r] + ts[:, None] * rays.directions[r] - lower) / vs).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < shape), axis=1)
        cls = np.zeros(len(ts), np.uint8)
        cls[inside] = sem[tuple(idx[inside].T)]
        k = np.flatnonzero(cls)
        if k.size:
            t_hit[r], label[r] = ts[k[0]], cls[k[0]]
    return t_hit, label


@pytest.mark.parametrize("voxel_size", [(0.4, 0.4, 0.4), (0.2, 0.3, 0.5)])
def test_marcher_matches_dense_sampling(voxel_size):
    rng = np.random.default_rng(7)
    geom = Geometry(point_range=(-6.0, -6.0, -1.0, 6.0, 6.0, 3.0), voxel_size=voxel_size)
    sem = np.where(rng.random(geom.grid_shape) < 0.05, rng.integers(1, 14, geom.grid_shape), 0).astype(np.uint8)
    sem[:, :, 0] = ROAD
    n = 400
    origins = rng.uniform((-5.0, -5.0, -0.5), (5.0, 5.0, 2.8), (n, 3))
    origins[: n // 4] = rng.uniform((-12.0, -12.0, -3.0), (12.0, 12.0, 4.0), (n // 4, 3))  # some outside the grid
    rays = RaySet(origins, rng.normal(size=(n, 3)))
    hits = cast_rays(sem, geom, rays)
    t_ref, label_ref = brute_force(sem, geom, rays, t_max=30.0)
    close = np.abs(np.where(hits.hit, hits.entry, 0.0) - np.where(hits.hit, t_ref, 0.0)) <= 0.01 + 1e-9
    agree = (hits.label == label_ref) & close
    assert agree.mean() > 0.99, f"{int((~agree).sum())} of {n} rays disagree"
    assert hits.hit.mean() > 0.4 and hits.hit[: n // 4].sum() >= 10  # entering from outside is exercised
    diag = float(np.linalg.norm(voxel_size))
    gap = hits.depth[hits.hit] - hits.entry[hits.hit]
    assert (gap >= 0).all() and (gap <= diag + 1e-9).all()


def test_simulated_scene_with_lidar_directions():
    seq = simulate(preset="hdl32e", num_frames=1, seed=3, occupancy=GEOM)
    frame, occ = seq.frames[0], seq.occupancy[0]
    origin = frame.extrinsic.translation
    xyz = frame.xyz_in_ego().astype(np.float64)
    rays = RaySet.toward_points(origin, xyz)
    assert len(rays) == len(xyz)
    r = result(occ.semantics, occ.semantics, rays, visible=occ.visible)
    assert r.rayiou == 1.0 and r.miou == 1.0 and r.geometry_iou == 1.0
    # a ray meets the voxel holding its own return, so its first hit cannot lie beyond the return
    hits = cast_rays(occ.semantics, GEOM, rays)
    idx, inside = occ.voxel_index(xyz)
    own = np.zeros(len(xyz), np.uint8)
    own[inside] = occ.semantics[tuple(idx[inside].T)]
    rng_m = np.linalg.norm(xyz - origin, axis=1)
    assert (own[inside] != 0).mean() > 0.99
    assert (hits.hit[own != 0]).all() and (hits.entry[own != 0] <= rng_m[own != 0] + 1e-6).all()
    # most first hits carry the class of the return (voxel dilation and grazing rays explain the rest)
    assert (hits.label[inside] == occupancy_class(frame.labels.semantic)[inside]).mean() > 0.8
    # a prediction without cars loses the car rays and the rays that now pass the cars
    no_cars = occ.semantics.copy()
    no_cars[no_cars == CAR] = 0
    r = result(no_cars, occ.semantics, rays, visible=occ.visible)
    assert r.ray_class_iou["car"] == (0.0, 0.0, 0.0) and r.class_iou["car"] == 0.0
    assert 0.2 < r.rayiou < 1.0 and r.geometry_iou < 1.0


def test_ray_sets_and_directions():
    d = occ3d_ray_directions()
    assert d.shape == (39 * 360, 3)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
    pitch = np.arcsin(d[:, 2])
    assert pitch.min() == pytest.approx(-math.pi / 4) and 0.21 <= pitch.max() < 0.23
    u = uniform_ray_directions(1.0, (-30.0, 10.0), 0.5)
    assert u.shape == (360 * 81, 3)
    rays = RaySet.from_origins([[0, 0, 1], [1, 0, 1]], u[:5])
    assert len(rays) == 10 and np.allclose(rays.origins[5:], [1, 0, 1])
    rays = RaySet.toward_points((0, 0, 1), np.array([[3.0, 0, 1], [0, 0, 1], [0, 0, 0]]))
    np.testing.assert_allclose(rays.directions, [[1, 0, 0], [0, 0, -1]])  # the point at the origin is dropped
    with pytest.raises(ValueError, match="zero length"):
        RaySet(np.zeros((1, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="elevation"):
        uniform_ray_directions(1.0, (10.0, -30.0))


def test_rayiou_speed_on_an_occ3d_grid():
    """RayIoU (ground truth and prediction cast, counts) on a 200 x 200 x 16 grid with ~30k rays."""
    rng = np.random.default_rng(0)
    gt = np.zeros(OCC3D_GEOMETRY.grid_shape, np.uint8)
    gt[:, :, :3] = ROAD
    gt[rng.random(gt.shape) < 0.002] = BUILDING
    pred = np.where(rng.random(gt.shape) < 0.95, gt, 0).astype(np.uint8)
    rays = RaySet.from_origins((0.0, 0.0, 1.84), uniform_ray_directions(1.0, (-30.0, 10.0), 0.5))
    assert len(rays) == 29160
    ray_frame_stats(pred, gt, OCC3D_GEOMETRY, rays)  # compile / load the cached kernel
    t0 = time.perf_counter()
    stats = ray_frame_stats(pred, gt, OCC3D_GEOMETRY, rays)
    elapsed = time.perf_counter() - t0
    print(f"\nRayIoU, 200x200x16 grid, {len(rays)} rays: {elapsed * 1e3:.1f} ms")
    assert stats.num_rays > 20000
    assert elapsed < 1.0
