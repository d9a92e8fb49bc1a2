"""Metric definitions: per-point errors, KITTI, and the Argoverse 2 2024 Bucket Normalized EPE."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from perception4d.core import ego_motion_flow
from perception4d.metrics import (
    BucketClass,
    FlowSample,
    av2_2023_frame_stats,
    av2_2024_frame_stats,
    av2_2024_result,
    av2_eval_mask,
    end_point_error,
    kitti_frame_stats,
    kitti_result,
    space_time_angle,
)
from perception4d.metrics.flow import AV2_CATEGORIES, inliers
from perception4d.metrics.flow_bucketed import BUCKET_EDGES, CATEGORY_TO_BUCKET_CLASS, speed_bucket


# ------------------------------------------------------------------ per point
def test_per_point_errors_on_hand_examples():
    pred = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    gt = np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.1, 0.0, 0.0]])
    np.testing.assert_allclose(end_point_error(pred, gt), [5.0, 0.1, 0.0])
    # (0, 0, 0, 0.1) vs (0.1, 0, 0, 0.1) is 45 degrees; equal vectors give 0
    np.testing.assert_allclose(space_time_angle(pred, gt)[1:], [np.pi / 4, 0.0], rtol=1e-15, atol=0)
    epe = np.array([0.06, 0.06, 0.0, 0.2])
    gt_norm = np.array([2.0, 0.5, 0.0, 1.0])
    np.testing.assert_array_equal(inliers(epe, gt_norm, 0.05, 1e-10), [True, False, True, False])
    np.testing.assert_array_equal(inliers(epe, gt_norm, 0.1, 1e-10), [True, True, True, False])


def test_av2_tables_match_the_installed_av2():
    from av2.evaluation.scene_flow import constants as c
    from av2.evaluation.scene_flow.make_annotation_files import CLOSE_DISTANCE_THRESHOLD

    from perception4d.metrics import flow

    assert {name: i for i, name in enumerate(AV2_CATEGORIES)} == c.CATEGORY_TO_INDEX
    groups = {k.value: sorted(v) for k, v in c.FOREGROUND_BACKGROUND_BREAKDOWN.items()}
    assert groups == {"Background": [0], "Foreground": list(range(1, 31))}
    assert flow.AV2_DYNAMIC_THRESHOLD == c.SCENE_FLOW_DYNAMIC_THRESHOLD
    assert flow.SWEEP_INTERVAL_S == c.SWEEP_PAIR_TIME_DELTA
    assert flow.AV2_CLOSE_BOX_M == CLOSE_DISTANCE_THRESHOLD


def test_flow_sample_rejects_bad_input():
    n = 4
    z = np.zeros((n, 3), np.float32)
    with pytest.raises(ValueError, match="gt_flow must be"):
        FlowSample(z, np.zeros((n, 2)), np.ones(n, bool))
    with pytest.raises(ValueError, match="category"):
        FlowSample(z, z, np.ones(n, bool), category=np.array([0, 1, 31, 2]))
    with pytest.raises(ValueError, match="frame7.*needs FlowSample.xyz"):
        av2_2023_frame_stats(FlowSample(z, z, np.ones(n, bool), category=np.zeros(n, int), frame_id="frame7"))
    bad = z.copy()
    bad[2, 0] = np.nan
    sample = FlowSample(bad, z, np.array([1, 1, 0, 1], bool))
    kitti_frame_stats(sample)  # the NaN row is not a valid flow: ignored
    sample.flow_valid[2] = True
    with pytest.raises(ValueError, match="pred_flow has 1 non-finite"):
        kitti_frame_stats(sample)


def test_flow_sample_accepts_tensors():
    torch = pytest.importorskip("torch")
    s = FlowSample(torch.zeros(3, 3), torch.ones(3, 3), torch.tensor([1, 0, 1]))
    assert isinstance(s.pred_flow, np.ndarray) and s.flow_valid.dtype == bool
    assert kitti_result([kitti_frame_stats(s)]).epe3d == pytest.approx(np.sqrt(3))


# ------------------------------------------------------------------ KITTI
def hplflownet_evaluate_3d(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, float, float]:
    """The KITTI convention of FlowNet3D / HPLFlowNet, written out per frame."""
    err = np.linalg.norm(gt - pred, axis=-1)
    rel = err / (np.linalg.norm(gt, axis=-1) + 1e-4)
    return (err.mean(), np.mean((err < 0.05) | (rel < 0.05)), np.mean((err < 0.1) | (rel < 0.1)),
            np.mean((err > 0.3) | (rel > 0.1)))


def test_kitti_metrics_average_per_frame():
    rng = np.random.default_rng(0)
    frames, expected = [], []
    for n, noise in [(50, 0.02), (400, 0.2), (7, 0.0)]:
        gt = rng.normal(0, 1, (n, 3))
        pred = gt + rng.normal(0, noise, (n, 3))
        frames.append(FlowSample(pred, gt, np.ones(n, bool)))
        expected.append(hplflownet_evaluate_3d(pred, gt))
    frames.append(FlowSample(np.zeros((3, 3)), np.zeros((3, 3)), np.zeros(3, bool)))  # no valid point
    r = kitti_result(kitti_frame_stats(f) for f in frames)
    np.testing.assert_allclose([r.epe3d, r.acc3d_strict, r.acc3d_relax, r.outliers],
                               np.mean(expected, axis=0), rtol=1e-12)
    assert (r.num_frames, r.num_empty_frames) == (3, 1)
    assert r.acc3d_strict < r.acc3d_relax and 0 < r.outliers < 1


def test_kitti_hand_example():
    gt = np.array([[1.0, 0, 0], [0.0, 0, 0], [2.0, 0, 0]])
    pred = np.array([[1.04, 0, 0], [0.2, 0, 0], [2.5, 0, 0]])
    r = kitti_result([kitti_frame_stats(FlowSample(pred, gt, np.ones(3, bool)))])
    assert r.epe3d == pytest.approx((0.04 + 0.2 + 0.5) / 3)
    assert r.acc3d_strict == pytest.approx(1 / 3) and r.acc3d_relax == pytest.approx(1 / 3)
    assert r.outliers == pytest.approx(2 / 3)


# ------------------------------------------------------------------ AV2 2024 bucketed
PUBLISHED_CLASSES = {  # "I Can't Believe It's Not Scene Flow!", BucketedSceneFlowEval av2_metacategories
    "BACKGROUND": ["NONE"],
    "CAR": ["REGULAR_VEHICLE"],
    "PEDESTRIAN": ["PEDESTRIAN", "STROLLER", "WHEELCHAIR", "OFFICIAL_SIGNALER"],
    "WHEELED_VRU": ["BICYCLE", "BICYCLIST", "MOTORCYCLE", "MOTORCYCLIST", "WHEELED_DEVICE", "WHEELED_RIDER"],
    "OTHER_VEHICLES": ["BOX_TRUCK", "LARGE_VEHICLE", "RAILED_VEHICLE", "TRUCK", "TRUCK_CAB",
                       "VEHICULAR_TRAILER", "ARTICULATED_BUS", "BUS", "SCHOOL_BUS"],
}


def test_bucket_definition():
    assert len(BUCKET_EDGES) == 52 and BUCKET_EDGES[-1] == np.inf
    np.testing.assert_allclose(BUCKET_EDGES[:-1], np.arange(51) * 0.04, atol=1e-12)  # 0.4 m/s at 10 Hz
    np.testing.assert_array_equal(speed_bucket(np.array([0.0, 0.0399, BUCKET_EDGES[1], 1.9999, 2.0, 80.0])),
                                  [0, 0, 1, 49, 50, 50])
    for k, cls in enumerate(BucketClass):
        members = [AV2_CATEGORIES[i] for i in np.flatnonzero(CATEGORY_TO_BUCKET_CLASS == k)]
        assert sorted(members) == sorted(PUBLISHED_CLASSES[cls.value])
    unscored = {AV2_CATEGORIES[i] for i in np.flatnonzero(CATEGORY_TO_BUCKET_CLASS < 0)}
    assert unscored == {"ANIMAL", "DOG", "BOLLARD", "CONSTRUCTION_BARREL", "CONSTRUCTION_CONE",
                        "MOBILE_PEDESTRIAN_CROSSING_SIGN", "SIGN", "STOP_SIGN", "MESSAGE_BOARD_TRAILER",
                        "TRAFFIC_LIGHT_TRAILER"}


def test_bucketed_hand_example():
    car, ped, sign = (AV2_CATEGORIES.index(c) for c in ("REGULAR_VEHICLE", "PEDESTRIAN", "SIGN"))
    # rows: background static (EPE 0.1); car at 0.5 m/sweep (EPE 0.25) and 1.0 m/sweep (EPE 0.1);
    # car static (EPE 0.02); a sign (not scored); a car at x = 35 m (outside the strict 35 m limit)
    motion = np.array([[0, 0, 0], [0.5, 0, 0], [1.0, 0, 0], [0, 0, 0], [0.7, 0, 0], [0.5, 0, 0]])
    err = np.array([[0.1, 0, 0], [0, 0.25, 0], [0, 0, 0.1], [0.02, 0, 0], [0.3, 0, 0], [0.9, 0, 0]])
    ego = np.tile([[-1.0, 0.0, 0.0]], (6, 1))
    xyz = np.array([[5, 5, 0], [10, 0, 0], [-20, 3, 0], [0, 30, 0], [1, 1, 0], [35, 0, 0]], np.float32)
    s = FlowSample(ego + motion + err, ego + motion, np.ones(6, bool),
                   category=np.array([0, car, car, car, sign, car]), ground=np.zeros(6, bool), xyz=xyz,
                   ego_flow=ego, dynamic=np.zeros(6, bool))
    r = av2_2024_result([av2_2024_frame_stats(s)])
    assert r.classes[BucketClass.BACKGROUND].static_epe == pytest.approx(0.1)
    assert np.isnan(r.classes[BucketClass.BACKGROUND].dynamic_error)
    assert r.classes[BucketClass.CAR].static_epe == pytest.approx(0.02)
    assert r.classes[BucketClass.CAR].dynamic_error == pytest.approx((0.25 / 0.5 + 0.1 / 1.0) / 2)
    assert np.isnan(r.classes[BucketClass.PEDESTRIAN].static_epe)
    assert r.mean_static_epe == pytest.approx((0.1 + 0.02) / 2)
    assert r.mean_dynamic_error == pytest.approx(0.3)
    assert r.count.sum() == 4


def reference_bucketed(frames: list[FlowSample], close: float = 35.0):
    """The published evaluation written out: per-frame (category, bucket) averages, count-weighted merges."""
    per_key = defaultdict(list)
    for s in frames:
        keep = s.flow_valid & av2_eval_mask(s.xyz, s.ground)
        keep &= np.linalg.norm(s.xyz[:, :2], ord=np.inf, axis=1) < close
        gt, pred, ego = (a[keep].astype(np.float64) for a in (s.gt_flow, s.pred_flow, s.ego_flow))
        cat = s.category[keep]
        speed, epe = np.linalg.norm(gt - ego, axis=1), np.linalg.norm(gt - pred, axis=1)
        for b, (lo, hi) in enumerate(zip(BUCKET_EDGES, BUCKET_EDGES[1:])):
            for c in np.unique(cat):
                m = (cat == c) & (speed >= lo) & (speed < hi)
                if m.any():
                    per_key[AV2_CATEGORIES[c], b].append((epe[m].mean(), m.sum(), speed[m].mean()))
    rows = {}
    for name, members in PUBLISHED_CLASSES.items():
        epe_row, speed_row = np.full(51, np.nan), np.full(51, np.nan)
        for b in range(51):
            acc = [v for m in members for v in per_key.get((m, b), [])]
            if acc:
                e, n, v = map(np.array, zip(*acc))
                epe_row[b], speed_row[b] = np.average(e, weights=n), np.average(v, weights=n)
        norm = epe_row.copy()
        norm[1:] /= speed_row[1:]
        dyn = norm[1:][~np.isnan(norm[1:])]
        rows[name] = (norm[0], dyn.mean() if dyn.size else np.nan)
    static = np.array([r[0] for r in rows.values()])
    dynamic = np.array([r[1] for r in rows.values()])
    return rows, np.nanmean(static), np.nanmean(dynamic)


def test_bucketed_matches_written_out_definition(make_flow_sample):
    rng = np.random.default_rng(5)
    frames = [make_flow_sample(rng, n=1500) for _ in range(3)] + [make_flow_sample(rng, all_static=True)]
    ours = av2_2024_result(av2_2024_frame_stats(s) for s in frames)
    rows, mean_static, mean_dynamic = reference_bucketed(frames)
    for cls, err in ours.classes.items():
        np.testing.assert_allclose([err.static_epe, err.dynamic_error], rows[cls.value], rtol=1e-9,
                                   equal_nan=True)
    np.testing.assert_allclose([ours.mean_static_epe, ours.mean_dynamic_error], [mean_static, mean_dynamic],
                               rtol=1e-9)
    assert np.isfinite(ours.classes[BucketClass.CAR].dynamic_error)


def test_bucketed_matches_the_reference_package_when_installed(make_flow_sample, tmp_path):
    bucketed_epe = pytest.importorskip("bucketed_scene_flow_eval.eval.bucketed_epe")
    from bucketed_scene_flow_eval.datasets.argoverse2.argoverse_scene_flow import CATEGORY_MAP
    from bucketed_scene_flow_eval.datasets.argoverse2.av2_metacategories import BUCKETED_METACATAGORIES
    from bucketed_scene_flow_eval.datastructures import PointCloud

    rng = np.random.default_rng(6)
    frames = [make_flow_sample(rng, n=1500) for _ in range(3)]
    ev = bucketed_epe.BucketedEPEEvaluator(class_id_to_name=CATEGORY_MAP, output_path=tmp_path,
                                           meta_class_lookup=BUCKETED_METACATAGORIES)
    for s in frames:
        keep = s.flow_valid & av2_eval_mask(s.xyz, s.ground)  # submission mask and valid flows
        gt, pred, ego = (a[keep].astype(np.float64) for a in (s.gt_flow, s.pred_flow, s.ego_flow))
        class_ids = s.category[keep].astype(np.int64) - 1  # the package counts from -1 (BACKGROUND)
        ev.eval_frame_results.append(ev._build_eval_frame_results(
            PointCloud(s.xyz[keep].astype(np.float64)), class_ids, gt - ego, pred - ego))
    per_class = ev.compute_results(save_results=False)
    matrix = ev._build_stat_table(ev._category_to_average_stats(ev._category_to_per_frame_stats()), 35)
    ours = av2_2024_result(av2_2024_frame_stats(s) for s in frames)
    for cls, err in ours.classes.items():
        np.testing.assert_allclose([err.static_epe, err.dynamic_error], per_class[cls.value], rtol=1e-9,
                                   equal_nan=True)
    mean = matrix.get_mean_average_values()
    np.testing.assert_allclose([ours.mean_static_epe, ours.mean_dynamic_error],
                               [mean.static_epe, mean.dynamic_error], rtol=1e-9)


def test_bucketed_real_pair_ego_motion_prediction(av2_log_dir):
    """Predicting only the ego motion: the error equals the speed, so every dynamic bucket scores 1."""
    from perception4d.io.av2 import Av2LogReader

    reader = Av2LogReader(av2_log_dir)
    f0, f1 = reader[0], reader[1]
    ego = ego_motion_flow(f0.xyz, f0.pose, f1.pose).astype(np.float64)
    s = FlowSample.from_labels(ego, f0.labels, f0.xyz_in_ego(), ego_flow=ego, frame_id=f0.frame_id)
    r = av2_2024_result([av2_2024_frame_stats(s)])
    dynamic = r.mean_epe[:, 1:] / r.mean_speed[:, 1:]
    assert np.isfinite(dynamic).sum() >= 5
    np.testing.assert_allclose(dynamic[np.isfinite(dynamic)], 1.0, rtol=1e-6)
    assert r.mean_dynamic_error == pytest.approx(1.0, rel=1e-6)
    assert r.classes[BucketClass.BACKGROUND].static_epe < 0.01
    assert r.count[list(BucketClass).index(BucketClass.CAR)].sum() > 1000
