"""Semantic-occupancy voxel metrics (geometry IoU, mIoU, flow error) and the mmengine OccupancyMetric."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from perception4d.core.geometry import Geometry
from perception4d.core.labels import OCC_CLASSES, OCC_IGNORE
from perception4d.metrics import (OccupancyFrameStats, OccupancyMetric, OccupancySample, RaySet,
                                  occupancy_frame_stats, occupancy_result)
from perception4d.registry import METRICS

NAMES = ("free", "a", "b", "c")
GEOM = Geometry(point_range=(0.0, 0.0, 0.0, 4.0, 2.0, 1.0), voxel_size=(1.0, 1.0, 1.0))  # grid (4, 2, 1)


def grid(values) -> np.ndarray:
    """(4, 2, 1) uint8 grid from 8 values in x-major order."""
    return np.asarray(values, np.uint8).reshape(4, 2, 1)


# voxel:     0  1  2  3  4  5  6  7
GT = grid([0, 1, 1, 2, 0, 0, 2, 2])
PRED = grid([0, 1, 2, 2, 1, 0, 2, 0])


def voxel_result(pred, gt, visible=None, **kw):
    s = OccupancySample(pred, gt, GEOM, visible=visible, **kw)
    return occupancy_result([occupancy_frame_stats(s, num_classes=len(NAMES), ray_thresholds=None)], NAMES)


def test_iou_and_miou_with_an_absent_class():
    r = voxel_result(PRED, GT)
    np.testing.assert_array_equal(r.total.confusion, [[2, 1, 0, 0], [0, 1, 1, 0], [1, 0, 2, 0], [0, 0, 0, 0]])
    assert r.geometry_iou == pytest.approx(4 / 6)  # TP voxels 1, 2, 3, 6; FP 4; FN 7
    assert r.class_iou["a"] == pytest.approx(1 / 3)
    assert r.class_iou["b"] == pytest.approx(2 / 4)
    assert math.isnan(r.class_iou["c"])  # absent from ground truth and prediction: left out of the mean
    assert r.miou == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert math.isnan(r.rayiou) and math.isnan(r.flow_error)


def test_class_only_predicted_counts_as_zero():
    pred = PRED.copy()
    pred[0, 0, 0] = 3  # a false positive of class c, absent from ground truth
    r = voxel_result(pred, GT)
    assert r.class_iou["c"] == 0.0
    assert r.miou == pytest.approx((1 / 3 + 1 / 2 + 0) / 3)


def test_visibility_restricts_every_voxel_metric():
    visible = np.ones(GT.shape, bool)
    visible.reshape(-1)[[4, 7]] = False
    r = voxel_result(PRED, GT, visible=visible)
    assert r.geometry_iou == 1.0
    assert r.class_iou["a"] == pytest.approx(1 / 2)  # TP 1, FN voxel 2
    assert r.class_iou["b"] == pytest.approx(2 / 3)  # TP 3, 6; FP voxel 2
    assert r.miou == pytest.approx(7 / 12)
    assert r.total.num_ignored == 2 and r.total.confusion.sum() == 6


def test_ignore_voxels_are_left_out():
    gt = GT.copy()
    gt.reshape(-1)[2] = OCC_IGNORE
    r = voxel_result(PRED, gt)
    assert r.geometry_iou == pytest.approx(3 / 5)
    assert r.class_iou["a"] == pytest.approx(1 / 2)  # FP voxel 4
    assert r.class_iou["b"] == pytest.approx(2 / 3)  # FN voxel 7
    assert r.total.num_ignored == 1


def test_flow_error_over_true_positive_dynamic_voxels():
    gt_v = np.zeros(GT.shape + (3,), np.float32)
    pred_v = np.zeros_like(gt_v)
    flat_g, flat_p = gt_v.reshape(-1, 3), pred_v.reshape(-1, 3)
    flat_g[1] = (1.0, 0.0, 0.0)   # dynamic, predicted occupied: error |(0, 0, 0) - (1, 0, 0)| = 1
    flat_g[3] = (0.0, 2.0, 0.0)   # dynamic, predicted occupied: error |(0, 2, 2) - (0, 2, 0)| = 2
    flat_p[3] = (0.0, 2.0, 2.0)
    flat_g[6] = (0.1, 0.0, 0.0)   # below the 0.2 m/s threshold: static
    flat_g[7] = (5.0, 0.0, 0.0)   # dynamic but predicted free: no true positive
    flat_g[4] = (9.0, 0.0, 0.0)   # free in ground truth: never dynamic
    r = voxel_result(PRED, GT, pred_velocity=pred_v, gt_velocity=gt_v)
    assert r.flow_error == pytest.approx(1.5)
    assert (r.total.flow_count, r.total.flow_gt_dynamic) == (2, 3)
    visible = np.ones(GT.shape, bool)
    visible.reshape(-1)[3] = False
    r = voxel_result(PRED, GT, visible=visible, pred_velocity=pred_v, gt_velocity=gt_v)
    assert r.flow_error == pytest.approx(1.0)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="pred_semantics.*outside the classes"):
        voxel_result(grid([OCC_IGNORE] + [0] * 7), GT)
    with pytest.raises(ValueError, match="gt_semantics.*outside the classes"):
        voxel_result(PRED, grid([7] + [0] * 7))
    with pytest.raises(ValueError, match="shape"):
        OccupancySample(np.zeros((4, 2, 2), np.uint8), GT, GEOM)
    with pytest.raises(ValueError, match="visible"):
        OccupancySample(PRED, GT, GEOM, visible=np.ones(GT.shape, np.uint8))
    nan_v = np.zeros(GT.shape + (3,), np.float32)
    nan_v.reshape(-1, 3)[1] = (np.nan, 0.0, 0.0)
    gt_v = np.zeros_like(nan_v)
    gt_v.reshape(-1, 3)[1] = (1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="pred_velocity has 1 non-finite"):
        voxel_result(PRED, GT, pred_velocity=nan_v, gt_velocity=gt_v)


# ---------------------------------------------------------------- mmengine metric
SCENE = Geometry(point_range=(-8.0, -8.0, -1.0, 8.0, 8.0, 2.2), voxel_size=(0.4, 0.4, 0.4))  # (40, 40, 8)


def random_frame(rng: np.random.Generator, i: int) -> OccupancySample:
    shape = SCENE.grid_shape
    gt = np.zeros(shape, np.uint8)
    gt[:, :, :3] = rng.integers(5, 9, (shape[0], shape[1], 1))
    blobs = rng.random(shape) < 0.03
    gt[blobs] = rng.integers(1, 14, int(blobs.sum()))
    gt[rng.random(shape) < 0.01] = OCC_IGNORE
    pred = np.where(rng.random(shape) < 0.8, gt, rng.integers(0, 14, shape)).astype(np.uint8)
    pred[pred == OCC_IGNORE] = 0
    gt_v = (rng.normal(0, 1, shape + (3,)) * (rng.random(shape) < 0.3)[..., None]).astype(np.float32)
    pred_v = (gt_v + rng.normal(0, 0.3, gt_v.shape)).astype(np.float32)
    return OccupancySample(pred, gt, SCENE, visible=rng.random(shape) < 0.9, pred_velocity=pred_v,
                           gt_velocity=gt_v, frame_id=f"frame-{i}")


@dataclass
class _Prediction:
    """A model output that converts itself."""

    sample: OccupancySample

    def to_occupancy_sample(self) -> OccupancySample:
        return self.sample


def test_metric_merges_exactly_across_workers():
    rng = np.random.default_rng(0)
    frames = [random_frame(rng, i) for i in range(5)]
    kw = dict(sensor_origin=(0.0, 0.0, 1.2), azimuth_step_deg=4.0, elevation_step_deg=4.0)
    one = METRICS.build(dict(type="OccupancyMetric", **kw))
    one.process({}, frames[:2])
    one.process({}, [_Prediction(f) for f in frames[2:]])
    a, b = OccupancyMetric(**kw), OccupancyMetric(**kw)
    a.process({}, frames[:3])
    b.process({}, frames[3:])
    single = one.compute_metrics(list(one.results))
    merged = a.compute_metrics(a.results + b.results)
    assert single.keys() == merged.keys()
    for k in single:
        np.testing.assert_equal(merged[k], single[k], err_msg=k)
    assert {"geometry_iou", "miou", "rayiou", "rayiou@1", "rayiou@2", "rayiou@4", "flow_error",
            "iou/car", "iou/other-object"} <= set(single)
    assert 0.2 < single["miou"] < 0.95 and 0.1 < single["rayiou"] < 0.95 and single["flow_error"] > 0
    assert single["rayiou@1"] <= single["rayiou@2"] <= single["rayiou@4"]
    total = one.reduce(one.results).total
    assert total.num_frames == 5 and total.ray.num_rays > 0
    evaluated = one.evaluate(len(frames))  # mmengine's reduction, with the prefix
    assert evaluated["occ/miou"] == single["miou"]


def test_metric_reports_class_names_and_validates():
    m = OccupancyMetric(rayiou=False)
    f = random_frame(np.random.default_rng(1), 0)
    m.process({}, [f])
    out = m.compute_metrics(m.results)
    assert [k[4:] for k in out if k.startswith("iou/")] == list(OCC_CLASSES[1:])
    assert "rayiou" not in out
    with pytest.raises(TypeError, match="OccupancySample"):
        m.process({}, [{"pred": 1}])
    with pytest.raises(ValueError, match="RayIoU needs"):
        OccupancyMetric().process({}, [f])  # no sensor origin anywhere
    explicit = RaySet.from_origins((0.0, 0.0, 1.0), [[1.0, 0.0, -0.2]])
    m = OccupancyMetric()
    m.process({}, [OccupancySample(f.pred_semantics, f.gt_semantics, SCENE, rays=explicit)])
    assert m.results[0].stats.ray.num_cast == 1


def test_frame_stats_add_refuses_other_class_counts():
    with pytest.raises(ValueError, match="cannot add"):
        OccupancyFrameStats.zeros(4) + OccupancyFrameStats.zeros(5)
