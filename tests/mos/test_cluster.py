from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from perception4d.core.labels import GROUND_IDS
from perception4d.mos.cluster import cluster_points, estimate_ground
from perception4d.sim import HDL64E, simulate

from .helpers import box_surface

SIM_PRESET = HDL64E.with_overrides(azimuth_resolution_deg=0.5)


@pytest.fixture(scope="module")
def sim_frames():
    return [simulate(SIM_PRESET, num_frames=1, seed=seed, occupancy=None).frames[0] for seed in (0, 1)]


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label arrays split the points the same way (ids may differ)."""
    pairs = np.unique(np.stack([a, b], 1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def _reference_components(xyz: np.ndarray, radius: float) -> np.ndarray:
    pairs = cKDTree(xyz).query_pairs(radius, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(xyz), len(xyz)))
    return connected_components(graph, directed=False)[1]


def test_two_objects_two_metres_apart_are_two_clusters():
    rng = np.random.default_rng(0)
    a = box_surface(rng, (0.0, 0.0, 1.0), (1.0, 1.0, 1.0), 400)
    b = box_surface(rng, (3.0, 0.0, 1.0), (1.0, 1.0, 1.0), 400)  # 2 m gap between the faces
    labels = cluster_points(np.concatenate([a, b]), radius=0.5)
    assert len(np.unique(labels[:400])) == 1 and len(np.unique(labels[400:])) == 1
    assert labels[0] != labels[400]


def test_chain_of_close_points_is_one_cluster_and_a_sparse_chain_is_not():
    t = np.arange(60)[:, None] * np.array([[0.3 / np.sqrt(2), 0.3 / np.sqrt(2), 0.0]])
    assert (cluster_points(t, radius=0.5) == 0).all()  # 17.7 m long, one cluster
    sparse = np.arange(10)[:, None] * np.array([[0.6, 0.0, 0.0]])
    np.testing.assert_array_equal(cluster_points(sparse, radius=0.5), np.arange(10))
    # the radius is inclusive
    assert (cluster_points(np.array([[0.0, 0, 0], [0.5, 0, 0], [1.0, 0, 0]]), radius=0.5) == 0).all()


@pytest.mark.parametrize("seed,n,span,radius", [(0, 3000, 20.0, 0.5), (1, 2000, 5.0, 0.3), (2, 500, 50.0, 2.0)])
def test_matches_kdtree_connected_components(seed, n, span, radius):
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-span, span, (n, 3)) * np.array([1.0, 1.0, 0.2])
    xyz[: n // 10] = np.round(xyz[: n // 10] / radius) * radius  # points on the grid: exact-radius pairs
    labels = cluster_points(xyz, radius)
    assert _same_partition(labels, _reference_components(xyz, radius))
    assert labels.dtype == np.int64 and labels.min() == 0 and len(np.unique(labels)) == labels.max() + 1


def test_labels_do_not_depend_on_point_order():
    rng = np.random.default_rng(3)
    xyz = rng.uniform(-10, 10, (2000, 3))
    perm = rng.permutation(len(xyz))
    np.testing.assert_array_equal(cluster_points(xyz)[perm], cluster_points(xyz[perm]))


def test_empty_single_and_bad_input():
    assert cluster_points(np.zeros((0, 3))).shape == (0,)
    np.testing.assert_array_equal(cluster_points(np.ones((1, 3))), [0])
    assert estimate_ground(np.zeros((0, 3))).shape == (0,)
    with pytest.raises(ValueError, match=r"xyz must be \(N, 3\)"):
        cluster_points(np.zeros((5, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        cluster_points(np.array([[0.0, 0.0, np.nan]]))
    with pytest.raises(ValueError, match="radius"):
        cluster_points(np.zeros((2, 3)), radius=0.0)
    with pytest.raises(ValueError, match="cells"):
        estimate_ground(np.array([[0.0, 0, 0], [1e5, 1e5, 0]]), cell=0.5)


def test_ground_estimate_on_simulated_scans(sim_frames):
    for frame in sim_frames:
        est, truth = estimate_ground(frame.xyz), frame.labels.ground
        tp = (est & truth).sum()
        # the lowest 0.2 m of every object standing on the ground counts as ground
        assert tp / est.sum() > 0.85 and tp / truth.sum() > 0.99


def test_ground_estimate_on_semantickitti_scan(semantickitti_root):
    seq = semantickitti_root / "sequences" / "00"
    xyz = np.fromfile(seq / "velodyne" / "000000.bin", np.float32).reshape(-1, 4)[:, :3]
    semantic = np.fromfile(seq / "labels" / "000000.label", np.uint32) & 0xFFFF
    truth = np.isin(semantic, GROUND_IDS)  # road, parking, sidewalk, other-ground, lane-marking, terrain
    est = estimate_ground(xyz)
    tp = (est & truth).sum()
    precision, recall = tp / est.sum(), tp / truth.sum()
    assert precision > 0.92 and recall > 0.93, (precision, recall)  # measured 0.935 / 0.949


def test_clusters_of_simulated_scan_match_instances(sim_frames):
    """Purity: share of non-ground points whose cluster's majority instance is their own (0 = stuff)."""
    for frame in sim_frames:
        keep = ~frame.labels.ground
        labels = cluster_points(frame.xyz[keep])
        instance = frame.labels.instance[keep].astype(np.int64)
        pairs, counts = np.unique(np.stack([labels, instance], 1), axis=0, return_counts=True)
        majority = np.zeros(labels.max() + 1, dtype=np.int64)
        np.maximum.at(majority, pairs[:, 0], counts)
        assert majority.sum() / len(labels) > 0.9
        # every object instance mostly lands in one cluster
        things = instance > 0
        pairs, counts = np.unique(np.stack([instance[things], labels[things]], 1), axis=0, return_counts=True)
        largest = np.zeros(instance.max() + 1, dtype=np.int64)
        np.maximum.at(largest, pairs[:, 0], counts)
        assert largest.sum() / things.sum() > 0.9
