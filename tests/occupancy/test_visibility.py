from __future__ import annotations

import numpy as np
import pytest

from perception4d.core.geometry import Geometry
from perception4d.core.labels import occupancy_class
from perception4d.io import SemanticKittiReader
from perception4d.occupancy import RaySource, aggregate_occupancy, lidar_visibility
from perception4d.sim.occupancy import visibility as sim_visibility

GEOM = Geometry(point_range=(-2.0, -8.0, -1.0, 20.0, 8.0, 5.0), voxel_size=(0.5, 0.5, 0.5))
SSC = Geometry(point_range=(0.0, -25.6, -2.0, 51.2, 25.6, 4.4), voxel_size=(0.2, 0.2, 0.2))
BUILDING = 50


def _index(geom: Geometry, xyz: np.ndarray) -> tuple[np.ndarray, ...]:
    i = np.floor((np.asarray(xyz, float) - geom.lower) / np.asarray(geom.voxel_size)).astype(int)
    assert np.all((i >= 0) & (i < geom.grid_shape)), "test point outside the grid"
    return tuple(i.T)


def _wall_rays():
    """Returns on the wall x = 10.1 (|y| <= 4, 0.1 <= z <= 4) seen from the sensor at (0, 0, 1.5)."""
    y, z = np.meshgrid(np.linspace(-4.0, 4.0, 161), np.linspace(0.1, 4.0, 79), indexing="ij")
    ends = np.c_[np.full(y.size, 10.1), y.ravel(), z.ravel()]
    return np.array([0.0, 0.0, 1.5]), ends


def test_wall_hides_what_is_behind_it():
    origin, ends = _wall_rays()
    vis = lidar_visibility(GEOM, origin, ends)
    assert vis.dtype == bool and vis.shape == GEOM.grid_shape
    assert vis[_index(GEOM, origin[None])].all()
    assert vis[_index(GEOM, ends)].all()
    front = origin + 0.5 * (ends - origin)  # half way to the wall
    assert vis[_index(GEOM, front)].all()
    behind = np.stack(np.meshgrid(np.arange(10.75, 20.0, 0.5), np.arange(-7.75, 8.0, 0.5),
                                  np.arange(-0.75, 5.0, 0.5), indexing="ij"), -1).reshape(-1, 3)
    assert not vis[_index(GEOM, behind)].any()
    ix0 = int((10.1 - GEOM.point_range[0]) / 0.5)
    assert not vis[ix0 + 1:].any()


def test_matches_simulator_traversal_and_checks_input():
    rng = np.random.default_rng(1)
    origins = rng.uniform(-1.0, 1.0, (500, 3)) + [0.0, 0.0, 1.7]
    ends = rng.uniform(-30.0, 30.0, (500, 3))  # many end outside the grid
    ours = lidar_visibility(GEOM, origins, ends)
    assert (ours == sim_visibility(origins, ends, GEOM)).all() and ours.sum() > 500
    shared = lidar_visibility(GEOM, np.array([0.0, 0.0, 1.7]), ends)
    assert (shared == lidar_visibility(GEOM, np.tile([0.0, 0.0, 1.7], (500, 1)), ends)).all()
    bad = ends.copy()
    bad[:10, 1] = np.nan
    assert (lidar_visibility(GEOM, origins, bad) == lidar_visibility(GEOM, origins[10:], ends[10:])).all()
    with pytest.raises(ValueError, match="endpoints must be"):
        lidar_visibility(GEOM, origins, ends[:, :2])
    with pytest.raises(ValueError, match="500 endpoints"):
        lidar_visibility(GEOM, origins[:3], ends)
    empty = lidar_visibility(GEOM, np.zeros((0, 3)), np.zeros((0, 3)))
    assert not empty.any()


@pytest.fixture(scope="module")
def kitti_frames(semantickitti_root):
    reader = SemanticKittiReader(semantickitti_root / "sequences" / "00")
    return [reader[i] for i in range(3)]


@pytest.mark.parametrize("rays", [RaySource.REFERENCE, RaySource.ALL])
def test_real_scan_visibility(kitti_frames, rays):
    occ = aggregate_occupancy(kitti_frames, 1, SSC, rays=rays)
    ref = kitti_frames[1]
    sensor = ref.extrinsic.translation
    assert occ.visible[_index(SSC, sensor[None])].all()
    xyz = ref.xyz_in_ego()
    idx, inside = occ.voxel_index(xyz)
    hit = tuple(idx[inside].T)
    assert inside.sum() > 50_000
    assert occ.visible[hit].all(), "a reference return's voxel is unobserved"
    assert (occ.semantics[hit] > 0).all(), "a reference return's voxel is free"
    # the space 1 m behind building returns (along the ray) is mostly unobserved
    d = xyz - sensor
    rng = np.linalg.norm(d, axis=1)
    behind = xyz + d / rng[:, None]
    bidx, binside = occ.voxel_index(behind)
    sel = binside & (occupancy_class(ref.labels.semantic) == occupancy_class(np.array([BUILDING]))[0]) & (rng < 40)
    assert sel.sum() > 5000
    hidden = ~occ.visible[tuple(bidx[sel].T)]
    assert hidden.mean() > 0.85, hidden.mean()
    occupied_unseen = (occ.semantics > 0) & ~occ.visible
    if rays is RaySource.ALL:
        assert not occupied_unseen.any(), "with every scan's rays every static return voxel is observed"
    assert 0.05 < occ.visible.mean() < 0.6
