"""Window augmentation keeps every label exact."""

import copy

import numpy as np

from perception4d.core import Geometry, Window
from perception4d.datasets.augment import WindowAugment
from perception4d.datasets.sample import build_window_sample

from ..models.helpers import toy_sequence

GEO = Geometry((-12.8, -12.8, -2.2, 12.8, 12.8, 4.2), (0.2, 0.2, 0.2), 5)


def test_flow_labels_follow_the_points_and_ego_flow_stays_consistent():
    seq = toy_sequence(n_frames=4)
    s = build_window_sample(Window(tuple(seq)), GEO, "toy", tasks=("flow", "mos"))
    a = WindowAugment()(copy.deepcopy(s), np.random.default_rng(3))
    # one map x -> sRx + d for every coordinate: recover it from the source points, then check the rest
    src0 = np.c_[s.source_xyz, np.ones(len(s.source_xyz))]
    fit, *_ = np.linalg.lstsq(src0, a.source_xyz, rcond=None)
    lin = fit[:3].T
    sl = s.source_slice
    np.testing.assert_allclose(a.aligned.points[:, :3], s.aligned.points[:, :3] @ lin.T + fit[3], atol=1e-3)
    np.testing.assert_allclose(a.targets.flow, s.targets.flow @ lin.T, atol=1e-4)  # vectors: no shift
    np.testing.assert_allclose(a.ego_flow, s.ego_flow @ lin.T, atol=1e-3)
    scale = np.cbrt(np.linalg.det(lin))
    assert 0.95 <= scale <= 1.05 and np.allclose(lin @ lin.T, scale**2 * np.eye(3), atol=1e-4)
    assert abs(lin[2, 2] - scale) < 1e-4  # rotation about z only
    assert sl.stop > sl.start
    np.testing.assert_array_equal(a.mos_labels, s.mos_labels)
    assert 0 <= a.aligned.points[:, 3].min() and a.aligned.points[:, 3].max() <= 1


def test_identity_settings_change_nothing():
    seq = toy_sequence(n_frames=3)
    s = build_window_sample(Window(tuple(seq)), GEO, "toy")
    a = WindowAugment(rotate=False, scale=(1, 1), z_shift=0.0, intensity_gain=(1, 1))(copy.deepcopy(s),
                                                                                      np.random.default_rng(0))
    np.testing.assert_allclose(a.aligned.points, s.aligned.points, atol=1e-6)
    np.testing.assert_allclose(a.targets.flow, s.targets.flow, atol=1e-6)


def test_short_windows_are_drawn_when_asked():
    from perception4d.datasets.window_dataset import FrameListReader, WindowDataset

    geo = dict(point_range=(-12.8, -12.8, -2.2, 12.8, 12.8, 4.2), voxel_size=(0.2, 0.2, 0.2), num_frames=5)
    reader = FrameListReader(toy_sequence(n_frames=6), "toy")
    ds = WindowDataset([reader], geo, tasks=("mos",), short_window_prob=1.0)
    np.random.seed(0)
    lengths = {ds[len(ds) - 1]["inputs"].aligned.num_frames for _ in range(30)}
    assert len(lengths) > 2 and min(lengths) >= 1 and max(lengths) <= 5
    assert {WindowDataset([reader], geo, tasks=("mos",))[len(ds) - 1]["inputs"].aligned.num_frames} == {5}
