"""Parity of the Argoverse 2 (2023) metrics with av2's official evaluation code (av2 0.3.6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from av2.evaluation.scene_flow import eval as av2_eval
from av2.evaluation.scene_flow.constants import FOREGROUND_BACKGROUND_BREAKDOWN, SceneFlowMetricType
from scipy.spatial.transform import Rotation

from perception4d.io.av2_submission import write_av2_annotation, write_av2_submission
from perception4d.metrics import (
    Av2Class,
    Distance,
    FlowSample,
    Motion,
    av2_2023_frame_stats,
    av2_2023_result,
    av2_dynamic_mask,
)

TOL = 1e-6
SEG = {"TP": 0, "FP": 1, "TN": 2, "FN": 3}
FLOW = {SceneFlowMetricType.EPE: 0, SceneFlowMetricType.ACCURACY_STRICT: 1,
        SceneFlowMetricType.ACCURACY_RELAX: 2, SceneFlowMetricType.ANGLE_ERROR: 3}


def official_mask(s: FlowSample) -> np.ndarray:
    """The submission mask of av2's ``compute_eval_point_mask``: 50 m box, not ground."""
    return (np.abs(s.xyz[:, 0]) <= 50) & (np.abs(s.xyz[:, 1]) <= 50) & ~s.ground


def official_close(xyz: np.ndarray) -> np.ndarray:
    """``is_close`` as av2's ``make_annotation_files`` computes it."""
    return np.logical_and.reduce(np.abs(xyz[:, :2]) <= 35.0, axis=1)


def rounded(s: FlowSample) -> FlowSample:
    """The sample as the files store it (float16 flows)."""
    return FlowSample(s.pred_flow.astype(np.float16), s.gt_flow.astype(np.float16), s.flow_valid, s.category,
                      s.dynamic, s.ground, s.xyz, s.ego_flow, s.pred_dynamic, s.frame_id)


def write_official_files(s: FlowSample, anno: Path, pred: Path, log_id: str, ts: int) -> None:
    m = official_mask(s)
    write_av2_annotation(anno, log_id, ts, s.gt_flow[m], s.category[m], s.dynamic[m], s.flow_valid[m],
                         official_close(s.xyz[m]))
    write_av2_submission(pred, log_id, ts, s.pred_flow[m], s.pred_dynamic[m])


def assert_same_dict(ours: dict[str, float], theirs: dict[str, float]) -> None:
    assert set(ours) == set(theirs)
    keys = sorted(theirs)
    np.testing.assert_allclose([ours[k] for k in keys], [float(theirs[k]) for k in keys], rtol=0, atol=TOL,
                               equal_nan=True, err_msg=str(keys))


@pytest.mark.parametrize("seed,kind", [(0, "mixed"), (1, "mixed"), (2, "mixed"), (3, "all_static"),
                                       (4, "no_foreground"), (5, "tiny")])
def test_frame_stats_match_compute_metrics(make_flow_sample, seed, kind):
    rng = np.random.default_rng(seed)
    s = make_flow_sample(rng, n=7 if kind == "tiny" else 800, all_static=kind == "all_static",
                         no_foreground=kind == "no_foreground")
    m = official_mask(s)
    ref = av2_eval.compute_metrics(s.pred_flow[m], s.pred_dynamic[m], s.gt_flow[m], s.category[m],
                                   s.dynamic[m], official_close(s.xyz[m]), s.flow_valid[m],
                                   FOREGROUND_BACKGROUND_BREAKDOWN)
    stats = av2_2023_frame_stats(s)
    assert len(ref["Class"]) == 8
    for j in range(8):
        cls, motion, dist = Av2Class(ref["Class"][j]), Motion(ref["Motion"][j]), Distance(ref["Distance"][j])
        idx = (list(Av2Class).index(cls), list(Motion).index(motion), list(Distance).index(dist))
        assert stats.count[idx] == ref["Count"][j]
        means = stats.mean(cls, motion, dist)
        for metric, k in FLOW.items():
            np.testing.assert_allclose(means[k], ref[metric][j], rtol=0, atol=TOL, equal_nan=True)
        for name, k in SEG.items():
            assert stats.confusion[idx + (k,)] == ref[name][j]
    if kind == "all_static":
        assert stats.count[:, 0].sum() == 0
    if kind == "no_foreground":
        assert stats.count[1].sum() == 0


def test_evaluate_end_to_end_matches(make_flow_sample, tmp_path, capsys):
    rng = np.random.default_rng(11)
    samples = [make_flow_sample(rng, n=900), make_flow_sample(rng, n=500),
               make_flow_sample(rng, all_static=True), make_flow_sample(rng, no_foreground=True),
               make_flow_sample(rng, n=3)]
    for i, s in enumerate(samples):
        write_official_files(s, tmp_path / "anno", tmp_path / "pred", f"log{i % 2}", 1000 + i)
    theirs = av2_eval.evaluate(str(tmp_path / "anno"), str(tmp_path / "pred"))
    ours = av2_2023_result(av2_2023_frame_stats(rounded(s)) for s in samples).to_av2_dict()
    assert len(theirs) == 38
    assert_same_dict(ours, theirs)


def test_evaluate_nan_when_a_subset_is_empty_everywhere(make_flow_sample, tmp_path, capsys):
    rng = np.random.default_rng(12)
    s = make_flow_sample(rng, n=300, all_static=True)
    s.pred_dynamic[:] = False
    write_official_files(s, tmp_path / "anno", tmp_path / "pred", "log", 1)
    with np.errstate(invalid="ignore"):
        theirs = av2_eval.evaluate(str(tmp_path / "anno"), str(tmp_path / "pred"))
    ours = av2_2023_result([av2_2023_frame_stats(rounded(s))])
    assert np.isnan(ours.epe_foreground_dynamic) and np.isnan(ours.epe_3way) and np.isnan(ours.dynamic_iou)
    assert_same_dict(ours.to_av2_dict(), theirs)


# ------------------------------------------------------------------ the real AV2 pair
def _pose(poses: pd.DataFrame, ts: int) -> np.ndarray:
    row = poses[poses.timestamp_ns == ts].iloc[0]
    t = np.eye(4)
    t[:3, :3] = Rotation.from_quat([row.qx, row.qy, row.qz, row.qw]).as_matrix()
    t[:3, 3] = [row.tx_m, row.ty_m, row.tz_m]
    return t


@pytest.fixture(scope="module")
def av2_pair(av2_log_dir):
    """Sweep 0 of the sample log with its flow labels and the ego-motion flow, read with pandas."""
    lidar = sorted((av2_log_dir / "sensors" / "lidar").glob("*.feather"))
    ts0, ts1 = int(lidar[0].stem), int(lidar[1].stem)
    sweep = pd.read_feather(lidar[0])
    labels = pd.read_feather(av2_log_dir / "flow_labels.feather")
    poses = pd.read_feather(av2_log_dir / "city_SE3_egovehicle.feather")
    ego1_T_ego0 = np.linalg.inv(_pose(poses, ts1)) @ _pose(poses, ts0)
    xyz = sweep[["x", "y", "z"]].to_numpy().astype(np.float32)
    p = xyz.astype(np.float64)
    ego_flow = p @ ego1_T_ego0[:3, :3].T + ego1_T_ego0[:3, 3] - p
    gt = labels[["flow_tx_m", "flow_ty_m", "flow_tz_m"]].to_numpy().astype(np.float32)
    return dict(ts=ts0, xyz=xyz, ego_flow=ego_flow, gt=gt, category=labels["classes"].to_numpy(),
                dynamic=labels["dynamic"].to_numpy(), ground=labels["is_ground_0"].to_numpy(),
                valid=np.isfinite(gt).all(axis=1), ego1_T_ego0=ego1_T_ego0)


def test_real_pair_labels_follow_the_av2_conventions(av2_pair, av2_log_dir):
    d = av2_pair
    assert d["valid"].all() and len(d["xyz"]) == 99229
    ego_motion = np.load(av2_log_dir / "ego_motion.npz")["ego_motion"][0]
    np.testing.assert_allclose(d["ego1_T_ego0"], ego_motion, atol=1e-3)
    ours = av2_dynamic_mask(d["gt"], d["ego_flow"])
    assert d["dynamic"].sum() == 2037
    np.testing.assert_array_equal(ours, d["dynamic"])


def test_real_pair_reader_agrees(av2_pair, av2_log_dir):
    reader_mod = pytest.importorskip("perception4d.io.av2")
    frame = reader_mod.Av2LogReader(av2_log_dir)[0]
    np.testing.assert_array_equal(frame.xyz, av2_pair["xyz"])
    np.testing.assert_array_equal(frame.labels.flow, av2_pair["gt"])
    np.testing.assert_array_equal(frame.labels.flow_category, av2_pair["category"])
    np.testing.assert_array_equal(frame.labels.ground, av2_pair["ground"])


@pytest.mark.parametrize("prediction", ["ego_motion", "gt_plus_noise"])
def test_real_pair_matches_evaluate(av2_pair, tmp_path, prediction, capsys):
    d = av2_pair
    if prediction == "ego_motion":
        pred = d["ego_flow"].astype(np.float32)
        pred_dynamic = np.zeros(len(pred), bool)
    else:
        rng = np.random.default_rng(3)
        scale = rng.choice([0.1, 1.0, 5.0], (len(d["gt"]), 1))
        pred = (d["gt"] + rng.normal(0, 0.04, d["gt"].shape) * scale).astype(np.float32)
        pred_dynamic = av2_dynamic_mask(pred, d["ego_flow"])
    s = FlowSample(pred, d["gt"], d["valid"], d["category"], d["dynamic"], d["ground"], d["xyz"],
                   d["ego_flow"], pred_dynamic, frame_id="7fab2350/0")
    log_id = "7fab2350-7eaf-3b7e-a39d-6937a4c1bede"
    write_official_files(s, tmp_path / "anno", tmp_path / "pred", log_id, d["ts"])
    theirs = av2_eval.evaluate(str(tmp_path / "anno"), str(tmp_path / "pred"))
    result = av2_2023_result([av2_2023_frame_stats(rounded(s))])
    assert_same_dict(result.to_av2_dict(), theirs)
    assert result.errors(Av2Class.FOREGROUND, Motion.DYNAMIC).count > 1000
    if prediction == "ego_motion":
        assert result.epe_background_static < 0.01 < result.epe_foreground_dynamic
