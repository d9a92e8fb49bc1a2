"""The MOS metric: per-scan counts, label mapping, edge cases, the mmengine wrapper and exact merging."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from perception4d.core.frame import PointLabels
from perception4d.core.labels import mos_label
from perception4d.metrics import (
    MosFrameStats,
    MosMetric,
    MosSample,
    mos_frame_stats,
    mos_from_semantic,
    mos_result,
)
from perception4d.metrics.mos import REFERENCE_EPS
from perception4d.registry import METRICS

STATIC_IDS = np.array([9, 10, 11, 13, 15, 16, 18, 20, 30, 31, 32, 40, 44, 48, 49, 50, 51, 52, 60, 70, 71, 72, 80,
                       81, 99])
MOVING_IDS = np.arange(251, 260)


def test_counts_of_a_hand_made_scan():
    #        moving gt: 252, 251 | static gt: 40, 10, 9 | ignored: 0, 1
    gt = np.array([252, 251, 252, 40, 10, 9, 0, 1, 40], dtype=np.uint32)
    pred = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0], dtype=bool)
    s = mos_frame_stats(pred, gt_semantic=gt)
    assert s == MosFrameStats(tp=2, fp=1, fn=1, tn=3, n_ignored=2)
    assert s.num_evaluated == 7
    r = mos_result([s])
    assert r.iou_moving == 2 / (4 + REFERENCE_EPS)
    assert r.iou_static == 3 / (5 + REFERENCE_EPS)
    assert r.precision == 2 / 3 and r.recall == 2 / 3 and r.false_moving_rate == 1 / 4
    assert r.accuracy == 5 / (7 + REFERENCE_EPS)
    assert r.per_scan[0].iou == 0.5


def test_semantic_ids_and_mos_labels_agree_and_instances_are_masked():
    rng = np.random.default_rng(3)
    ids = rng.choice(np.concatenate([STATIC_IDS, MOVING_IDS, [0, 1]]), 2000)
    words = (rng.integers(0, 1 << 16, 2000).astype(np.uint32) << 16) | ids.astype(np.uint32)
    pred = rng.random(2000) < 0.3
    a = mos_frame_stats(pred, gt_semantic=ids.astype(np.uint16))
    assert a == mos_frame_stats(pred, gt_semantic=words)
    assert a == mos_frame_stats(pred, gt_mos=mos_label(ids))
    assert a.n_ignored == int(np.isin(ids, (0, 1)).sum()) and a.tp > 0 and a.fp > 0
    np.testing.assert_array_equal(mos_from_semantic(words), mos_label(ids))


def test_unknown_ids_raise_unless_ignored():
    gt = np.array([2, 40, 252, 300], dtype=np.uint32)
    pred = np.array([True, True, True, True])
    with pytest.raises(ValueError, match=r"outside the SemanticKITTI.*\[2, 300\].*ignore_unknown_ids"):
        mos_frame_stats(pred, gt_semantic=gt, frame_id="00/000007")
    assert mos_frame_stats(pred, gt_semantic=gt, ignore_unknown_ids=True) == MosFrameStats(1, 1, 0, 0, 2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(pred_moving=np.zeros(3, bool), gt_semantic=np.zeros(4, np.uint32)), "4 points but pred_moving has 3"),
    (dict(pred_moving=np.zeros(3, bool)), "exactly one of gt_semantic and gt_mos"),
    (dict(pred_moving=np.zeros(3, bool), gt_semantic=np.zeros(3, np.uint32), gt_mos=np.zeros(3, np.uint8)),
     "exactly one of gt_semantic and gt_mos"),
    (dict(pred_moving=np.full(3, 0.7), gt_mos=np.ones(3, np.uint8)), "pred_moving must be boolean"),
    (dict(pred_moving=np.array([0, 2, 1]), gt_mos=np.ones(3, np.uint8)), "pred_moving must be boolean"),
    (dict(pred_moving=np.zeros(3, bool), gt_mos=np.array([0, 1, 3])), "gt_mos must hold 0"),
    (dict(pred_moving=np.zeros(3, bool), gt_semantic=np.array([40.0, 9.0, 10.0])), "integer class ids"),
    (dict(pred_moving=np.zeros(3, bool), gt_semantic=np.array([40, -1, 10])), "uint32 label words"),
    (dict(pred_moving=np.zeros((3, 1), bool), gt_mos=np.ones(3, np.uint8)), "one-dimensional"),
])
def test_bad_input_names_the_scan_and_field(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        mos_frame_stats(frame_id="08/000042", **kwargs)
    assert "08/000042" in str(e.value)


def test_edge_cases_follow_the_reference_epsilon_and_nan_elsewhere():
    empty = mos_result([])
    assert empty.num_scans == 0 and empty.iou_moving == 0.0 and empty.miou == 0.0 and empty.accuracy == 0.0
    assert math.isnan(empty.precision) and math.isnan(empty.recall) and math.isnan(empty.mean_scan_iou)

    # no moving point anywhere, nothing predicted moving: reference IoU is 0.0, per-scan IoU undefined
    static = mos_frame_stats(np.zeros(5, bool), gt_mos=np.array([1, 1, 1, 0, 1]))
    all_ignored = mos_frame_stats(np.ones(4, bool), gt_mos=np.zeros(4, np.uint8))
    assert all_ignored == MosFrameStats(n_ignored=4)
    r = mos_result([static, all_ignored])
    assert r.iou_moving == 0.0 and r.iou_static == 4 / (4 + REFERENCE_EPS)
    assert r.miou == r.iou_static / 2
    assert math.isnan(r.precision) and math.isnan(r.recall) and r.false_moving_rate == 0.0
    assert all(math.isnan(v) for v in r.scan_values("iou"))
    assert math.isnan(r.per_scan[1].false_moving_rate) and r.per_scan[0].false_moving_rate == 0.0
    with pytest.raises(ValueError, match="unknown per-scan score"):
        r.scan_values("f1")

    # all moving predicted on static points: IoU 0, precision 0, recall undefined
    fp_only = mos_result([mos_frame_stats(np.ones(3, bool), gt_mos=np.ones(3, np.uint8))])
    assert fp_only.iou_moving == 0.0 and fp_only.precision == 0.0 and math.isnan(fp_only.recall)
    assert fp_only.false_moving_rate == 1.0


def test_dataset_iou_accumulates_counts_not_scan_means():
    big = mos_frame_stats(np.r_[np.ones(90, bool), np.zeros(10, bool)], gt_mos=np.full(100, 2))  # IoU 0.9
    small = mos_frame_stats(np.array([True, False]), gt_mos=np.array([1, 2]))  # IoU 0
    r = mos_result([big, small])
    assert r.iou_moving == pytest.approx(90 / 102, rel=1e-14)
    assert r.mean_scan_iou == pytest.approx(0.45, rel=1e-14)
    np.testing.assert_array_equal(r.scan_values("iou"), [0.9, 0.0])
    np.testing.assert_array_equal(r.scan_values("recall"), [0.9, 0.0])


def test_sample_thresholds_probabilities_and_takes_tensors():
    gt = np.array([2, 2, 1, 1], dtype=np.uint8)
    prob = np.array([0.9, 0.5, 0.51, 0.1], dtype=np.float32)
    s = MosSample(pred_prob=torch.from_numpy(prob), gt_mos=torch.from_numpy(gt), frame_id="a")
    np.testing.assert_array_equal(s.moving(), [True, False, True, False])  # ties are static
    assert s.stats() == MosFrameStats(tp=1, fp=1, fn=1, tn=1)
    low = MosSample(pred_prob=prob, threshold=0.05, gt_mos=gt)
    assert low.stats() == MosFrameStats(tp=2, fp=2)
    labels = PointLabels(semantic=np.array([252, 254, 40, 0], np.uint16))
    assert MosSample.from_labels(labels, pred_moving=prob > 0.5).stats() == MosFrameStats(1, 1, 1, 0, 1)
    with pytest.raises(ValueError, match="labels carry no semantic"):
        MosSample.from_labels(PointLabels(), pred_moving=prob > 0.5, frame_id="x")
    with pytest.raises(ValueError, match="exactly one of pred_moving and pred_prob"):
        MosSample(pred_moving=prob > 0.5, pred_prob=prob, gt_mos=gt)
    with pytest.raises(ValueError, match="1 non-finite"):
        MosSample(pred_prob=np.array([0.1, np.nan, 0.2, 0.3]), gt_mos=gt)


# ---------------------------------------------------------------- mmengine metric
def _random_samples(seed: int, n_scans: int) -> list[MosSample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_scans):
        n = int(rng.integers(0, 400))
        ids = rng.choice(np.concatenate([STATIC_IDS, MOVING_IDS, [0, 1]]), n)
        if i % 4 == 1:
            ids = rng.choice(STATIC_IDS, n)  # no moving point
        gt_moving = (ids >= 251)
        pred = gt_moving ^ (rng.random(n) < 0.2)
        out.append(MosSample(pred_moving=pred, gt_semantic=ids.astype(np.uint32), frame_id=f"08/{i:06d}"))
    return out


@dataclass
class _ModelOutput:
    sample: MosSample

    def to_mos_sample(self) -> MosSample:
        return self.sample


def test_registered_and_built_from_config():
    m = METRICS.build(dict(type="MosMetric", ignore_unknown_ids=True))
    assert isinstance(m, MosMetric) and m.ignore_unknown_ids and m.prefix == "mos"


def test_two_workers_merge_to_one_pass():
    samples = _random_samples(5, 11)
    one = MosMetric()
    one.process(None, samples)
    a, b = MosMetric(), MosMetric()
    a.process(None, samples[:4])
    for s in samples[4:]:
        b.process(None, [_ModelOutput(s)])
    assert [r.frame_id for r in a.results + b.results] == [s.frame_id for s in samples]
    single = one.compute_metrics(one.results)
    merged = a.compute_metrics(a.results + b.results)
    assert single.keys() == merged.keys()
    for k in single:
        assert single[k] == merged[k] or (math.isnan(single[k]) and math.isnan(merged[k])), k
    ref = mos_result(mos_frame_stats(s.pred_moving, gt_semantic=s.gt_semantic) for s in samples)
    assert single["iou_moving"] == ref.iou_moving and single["recall"] == ref.recall
    assert 0 < single["iou_moving"] < 1 and 0 < single["false_moving_rate"] < 1
    assert single["mean_scan_iou"] == ref.mean_scan_iou


def test_evaluate_adds_the_prefix_and_clears_results():
    samples = _random_samples(9, 3)
    m = MosMetric()
    m.process(None, samples)
    out = m.evaluate(size=3)
    assert out["mos/iou_moving"] == mos_result(s.stats() for s in samples).iou_moving
    assert set(out) == {f"mos/{k}" for k in ("iou_moving", "iou_static", "miou", "accuracy", "precision",
                                              "recall", "false_moving_rate", "mean_scan_iou")}
    assert m.results == []


def test_metric_rejects_other_samples_and_passes_the_unknown_id_policy():
    with pytest.raises(TypeError, match="MosMetric.process expects MosSample"):
        MosMetric().process(None, [{"pred": 1}])
    s = MosSample(pred_moving=np.array([True, True]), gt_semantic=np.array([252, 7]), frame_id="00/000001")
    with pytest.raises(ValueError, match="00/000001.*ignore_unknown_ids"):
        MosMetric().process(None, [s])
    m = MosMetric(ignore_unknown_ids=True)
    m.process(None, [s])
    assert m.results[0].stats == MosFrameStats(tp=1, n_ignored=1)
