"""Parity with semantic-kitti-api's evaluate_mos.py (numpy backend, semantic-kitti-mos.yaml).

``ReferenceMosEval`` re-implements the script independently of the package:
raw ids -> lookup table (zero-filled, 100 entries past the largest listed
id) -> a 3x3 confusion matrix (rows prediction, columns ground truth) summed
over every scan; the ignored class 0 has its column zeroed; IoU =
tp / (tp + fp + fn + 1e-15). ``evaluate_tree`` reads a dataset / predictions
directory tree the way the script does.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from perception4d.io.semantickitti_predictions import read_mos_predictions, write_mos_predictions
from perception4d.metrics import MosMetric, MosSample, mos_frame_stats, mos_result

# learning_map of config/semantic-kitti-mos.yaml, written out: 0 unlabeled (ignored), 1 static, 2 moving
UNLABELED_IDS = (0, 1)
STATIC_IDS = (9, 10, 11, 13, 15, 16, 18, 20, 30, 31, 32, 40, 44, 48, 49, 50, 51, 52, 60, 70, 71, 72, 80, 81, 99)
MOVING_IDS = tuple(range(251, 260))
VOCABULARY = np.array(UNLABELED_IDS + STATIC_IDS + MOVING_IDS)
IGNORED_CLASSES = (0,)
EPS = 1e-15


class ReferenceMosEval:
    def __init__(self):
        table = {**{i: 0 for i in UNLABELED_IDS}, **{i: 1 for i in STATIC_IDS}, **{i: 2 for i in MOVING_IDS}}
        self.lut = np.zeros(max(table) + 100, dtype=np.int32)
        self.lut[list(table)] = list(table.values())
        self.conf = np.zeros((3, 3), dtype=np.int64)

    def add_scan(self, pred_words: np.ndarray, gt_words: np.ndarray) -> None:
        pred = self.lut[pred_words.astype(np.int32) & 0xFFFF]
        gt = self.lut[gt_words.astype(np.int32) & 0xFFFF]
        assert pred.shape == gt.shape
        np.add.at(self.conf, (pred, gt), 1)

    def _stats(self):
        c = self.conf.copy()
        c[:, list(IGNORED_CLASSES)] = 0
        tp = np.diag(c)
        return tp, c.sum(axis=1) - tp, c.sum(axis=0) - tp

    def iou(self) -> tuple[float, np.ndarray]:
        tp, fp, fn = self._stats()
        union = tp + fp + fn + EPS
        per_class = tp / union
        kept = [k for k in range(3) if k not in IGNORED_CLASSES]
        return float((tp[kept] / union[kept]).mean()), per_class

    def accuracy(self) -> float:
        tp, fp, _ = self._stats()
        kept = [k for k in range(3) if k not in IGNORED_CLASSES]
        return float(tp.sum() / (tp[kept].sum() + fp[kept].sum() + EPS))

    def moving_union(self) -> int:
        tp, fp, fn = self._stats()
        return int(tp[2] + fp[2] + fn[2])


def evaluate_tree(dataset: Path, predictions: Path, sequences: list[int]) -> ReferenceMosEval:
    """Walk sequences/<seq>/labels and sequences/<seq>/predictions, sort, pair in order, accumulate."""
    def label_files(root: Path, folder: str) -> list[str]:
        out = []
        for seq in sequences:
            base = os.path.join(str(root), "sequences", "{0:02d}".format(int(seq)), folder)
            found = [os.path.join(dp, f) for dp, _, fn in os.walk(base) for f in fn if ".label" in f]
            out.extend(sorted(found))
        return out

    ev = ReferenceMosEval()
    for gt_file, pred_file in zip(label_files(dataset, "labels"), label_files(predictions, "predictions")):
        ev.add_scan(np.fromfile(pred_file, dtype=np.int32), np.fromfile(gt_file, dtype=np.int32))
    return ev


def _words(rng: np.random.Generator, ids: np.ndarray) -> np.ndarray:
    return (rng.integers(0, 1 << 16, ids.size).astype(np.uint32) << 16) | ids.astype(np.uint32)


def _random_split(seed: int, n_scans: int = 40, unknown: bool = False):
    """(gt words, predicted moving, predicted ids) per scan, edge cases included."""
    rng = np.random.default_rng(seed)
    scans = []
    for i in range(n_scans):
        n = int(rng.integers(0, 3000)) if i % 7 else 0
        p_ignore, p_moving = rng.uniform(0, 0.3), rng.choice([0.0, 0.01, 0.2, 0.6])
        u = rng.random(n)
        ids = np.where(u < p_ignore, rng.choice(UNLABELED_IDS, n),
                       np.where(u < p_ignore + p_moving, rng.choice(MOVING_IDS, n), rng.choice(STATIC_IDS, n)))
        if i % 5 == 2:
            ids = rng.choice(UNLABELED_IDS, n)  # an all-ignored scan
        if unknown:
            odd = rng.random(n) < 0.05
            ids[odd] = rng.choice([2, 5, 12, 100, 250, 260, 300, 358], int(odd.sum()))
        gt_moving = np.isin(ids, MOVING_IDS)
        flip = rng.random(n) < rng.choice([0.0, 0.05, 0.5])
        pred = gt_moving ^ flip
        if i % 6 == 3:
            pred[:] = False  # nothing predicted moving
        # an equally moving prediction in arbitrary vocabulary ids (moving iff 251..259)
        pred_ids = np.where(pred, rng.choice(MOVING_IDS, n), rng.choice(UNLABELED_IDS + STATIC_IDS, n))
        scans.append((_words(rng, ids), pred, _words(rng, pred_ids)))
    return scans


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_random_splits_match_the_reference(seed):
    scans = _random_split(seed)
    assert any(np.isin(g & 0xFFFF, MOVING_IDS).sum() == 0 and g.size for g, _, _ in scans)
    binary, arbitrary = ReferenceMosEval(), ReferenceMosEval()
    stats = []
    for gt, pred, pred_ids in scans:
        binary.add_scan(np.where(pred, 251, 9), gt)
        arbitrary.add_scan(pred_ids, gt)
        stats.append(mos_frame_stats(pred, gt_semantic=gt))
    r = mos_result(stats)
    miou, per_class = binary.iou()
    assert r.iou_moving == pytest.approx(per_class[2], abs=1e-9)
    assert r.iou_static == pytest.approx(per_class[1], abs=1e-9)
    assert r.miou == pytest.approx(miou, abs=1e-9)
    assert r.accuracy == pytest.approx(binary.accuracy(), abs=1e-9)
    assert r.iou_moving == pytest.approx(arbitrary.iou()[1][2], abs=1e-9)
    assert 0.0 < r.iou_moving < 1.0

    # per scan: the reference run on one scan, NaN here exactly where its union is empty
    for (gt, pred, _), score in zip(scans, r.per_scan):
        one = ReferenceMosEval()
        one.add_scan(np.where(pred, 251, 9), gt)
        if one.moving_union() == 0:
            assert math.isnan(score.iou) and one.iou()[1][2] == 0.0
        else:
            assert score.iou == pytest.approx(one.iou()[1][2], abs=1e-9)
    assert any(math.isnan(s.iou) for s in r.per_scan)


@pytest.mark.parametrize("seed", [10, 11])
def test_unknown_ids_ignored_like_the_reference(seed):
    scans = _random_split(seed, n_scans=15, unknown=True)
    ref = ReferenceMosEval()
    m = MosMetric(ignore_unknown_ids=True)
    for i, (gt, pred, _) in enumerate(scans):
        ref.add_scan(np.where(pred, 251, 9), gt)
        m.process(None, [MosSample(pred_moving=pred, gt_semantic=gt, frame_id=str(i))])
    out = m.compute_metrics(m.results)
    miou, per_class = ref.iou()
    assert out["iou_moving"] == pytest.approx(per_class[2], abs=1e-9)
    assert out["miou"] == pytest.approx(miou, abs=1e-9)


def test_no_moving_anywhere_gives_the_reference_zero():
    rng = np.random.default_rng(7)
    ref = ReferenceMosEval()
    stats = []
    for n in (0, 50, 200):
        gt = _words(rng, rng.choice(np.array(UNLABELED_IDS + STATIC_IDS), n))
        ref.add_scan(np.full(n, 9), gt)
        stats.append(mos_frame_stats(np.zeros(n, bool), gt_semantic=gt))
    r = mos_result(stats)
    assert r.iou_moving == ref.iou()[1][2] == 0.0
    assert r.miou == pytest.approx(ref.iou()[0], abs=1e-9) and r.accuracy == pytest.approx(ref.accuracy(), abs=1e-9)


def _real_gt(shared_data: Path) -> list[tuple[str, np.ndarray]]:
    labels = sorted((shared_data / "semantickitti" / "sequences" / "00" / "labels").glob("*.label"))
    assert len(labels) == 3
    out = [(f"00/{p.stem}", np.fromfile(p, dtype=np.uint32)) for p in labels]
    out.append(("spvnas", np.fromfile(shared_data / "semantickitti_spvnas_sample" / "sample_data" / "000000.label",
                                      dtype=np.uint32)))
    return out


def _flipped(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    moving = np.isin(gt & 0xFFFF, MOVING_IDS)
    return moving ^ np.where(moving, rng.random(gt.size) < 0.4, rng.random(gt.size) < 0.002)


def test_real_semantickitti_labels_match_the_reference(shared_data):
    rng = np.random.default_rng(42)
    ref = ReferenceMosEval()
    m = MosMetric()
    for frame_id, gt in _real_gt(shared_data):
        pred = _flipped(rng, gt)
        ref.add_scan(np.where(pred, 251, 9), gt)
        m.process(None, [MosSample(pred_moving=pred, gt_semantic=gt, frame_id=frame_id)])
    r = MosMetric.reduce(m.results)
    miou, per_class = ref.iou()
    assert r.total.tp + r.total.fn == 88 + 73 + 72 + 990 + 138  # moving points listed in PROVENANCE.md
    assert r.iou_moving == pytest.approx(per_class[2], abs=1e-9)
    assert r.miou == pytest.approx(miou, abs=1e-9)
    assert r.accuracy == pytest.approx(ref.accuracy(), abs=1e-9)
    assert 0.1 < r.iou_moving < 0.9


def test_written_prediction_files_score_the_same_as_the_metric(shared_data, tmp_path):
    """Predictions written per scan, scored from the directory tree as evaluate_mos.py reads it."""
    rng = np.random.default_rng(8)
    dataset = shared_data / "semantickitti"
    m = MosMetric()
    for frame_id, gt in _real_gt(shared_data)[:3]:
        scan = frame_id.split("/")[1]
        pred = _flipped(rng, gt)
        path = write_mos_predictions(tmp_path, 0, int(scan), pred)
        assert path == tmp_path / "sequences" / "00" / "predictions" / f"{scan}.label"
        back = read_mos_predictions(path, expected_count=gt.size)
        m.process(None, [MosSample(pred_moving=back, gt_semantic=gt, frame_id=frame_id)])
    ev = evaluate_tree(dataset, tmp_path, sequences=[0])
    iou_moving = ev.iou()[1][2]
    out = m.compute_metrics(m.results)
    assert out["iou_moving"] == pytest.approx(iou_moving, abs=1e-9)
    assert 0.1 < iou_moving < 0.9
    assert int(ev.conf.sum()) == sum(gt.size for _, gt in _real_gt(shared_data)[:3])
