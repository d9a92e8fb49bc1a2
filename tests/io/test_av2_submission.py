"""The Argoverse 2 scene-flow submission and annotation writers against av2's own writers and evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.feather as feather
import pytest
from av2.evaluation.scene_flow import eval as av2_eval
from av2.evaluation.scene_flow.make_annotation_files import write_annotation
from av2.evaluation.scene_flow.utils import write_output_file

from perception4d.io import av2_submission
from perception4d.io.av2_submission import write_av2_annotation, write_av2_submission

LOG = "7fab2350-7eaf-3b7e-a39d-6937a4c1bede"


def _prediction(rng, n):
    return rng.normal(0, 1, (n, 3)).astype(np.float32), rng.random(n) < 0.3


def test_submission_file_matches_av2_writer(tmp_path):
    flow, dyn = _prediction(np.random.default_rng(0), 1000)
    path = write_av2_submission(tmp_path / "ours", LOG, 315966265259836000, flow, dyn)
    assert path == tmp_path / "ours" / LOG / "315966265259836000.feather"
    write_output_file(flow, dyn, (LOG, 315966265259836000), tmp_path / "av2")
    ours = pd.read_feather(path)
    theirs = pd.read_feather(tmp_path / "av2" / LOG / "315966265259836000.feather")
    assert list(ours.columns) == ["flow_tx_m", "flow_ty_m", "flow_tz_m", "is_dynamic"]
    assert list(ours.dtypes) == [np.float16] * 3 + [np.bool_]
    pd.testing.assert_frame_equal(ours, theirs)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left


def test_annotation_file_matches_av2_writer(tmp_path):
    rng = np.random.default_rng(1)
    n = 500
    flow = rng.normal(0, 1, (n, 3))
    cat, close = rng.integers(0, 31, n), rng.random(n) < 0.5
    dyn, valid = rng.random(n) < 0.2, rng.random(n) < 0.9
    path = write_av2_annotation(tmp_path / "ours", LOG, 7, flow, cat, dyn, valid, close)
    (tmp_path / "av2").mkdir()
    write_annotation(cat, close, dyn, valid, flow, (LOG, 7), tmp_path / "av2")
    theirs = pd.read_feather(tmp_path / "av2" / LOG / "7.feather")
    pd.testing.assert_frame_equal(pd.read_feather(path), theirs)


def test_av2_evaluate_reads_our_files(tmp_path, capsys):
    rng = np.random.default_rng(2)
    for i, n in enumerate([800, 300]):
        gt = rng.normal(0, 0.5, (n, 3))
        cat, close, dyn = rng.integers(0, 31, n), rng.random(n) < 0.5, rng.random(n) < 0.3
        write_av2_annotation(tmp_path / "anno", LOG, 100 + i, gt, cat, dyn, rng.random(n) < 0.95, close)
        pred = gt + rng.normal(0, 0.05, (n, 3))
        pred_dyn = rng.random(n) < 0.3
        write_av2_submission(tmp_path / "ours", LOG, 100 + i, pred, pred_dyn)
        write_output_file(pred, pred_dyn, (LOG, 100 + i), tmp_path / "av2")
    ours = av2_eval.evaluate(str(tmp_path / "anno"), str(tmp_path / "ours"))
    theirs = av2_eval.evaluate(str(tmp_path / "anno"), str(tmp_path / "av2"))
    assert len(ours) == 38 and 0 < ours["Accuracy Relax/Foreground/Static"] < 1
    assert ours.keys() == theirs.keys()
    np.testing.assert_array_equal([ours[k] for k in sorted(ours)], [theirs[k] for k in sorted(ours)])


def test_overwrite_is_atomic_and_failures_leave_nothing(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    path = write_av2_submission(tmp_path, LOG, 5, *_prediction(rng, 10))
    flow, dyn = _prediction(rng, 20)
    write_av2_submission(tmp_path, LOG, 5, flow, dyn)
    stored = pd.read_feather(path)["flow_tx_m"].to_numpy()
    np.testing.assert_array_equal(stored, flow[:, 0].astype(np.float16))

    def broken(table, dest, **kw):
        Path(dest).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(av2_submission.feather, "write_feather", broken)
    with pytest.raises(OSError, match="disk full"):
        write_av2_submission(tmp_path, LOG, 6, flow, dyn)
    assert sorted(p.name for p in path.parent.iterdir()) == ["5.feather"]
    monkeypatch.setattr(av2_submission.feather, "write_feather", feather.write_feather)


@pytest.mark.parametrize("log_id,ts,flow,dyn,match", [
    ("a/b", 1, np.zeros((2, 3)), np.zeros(2, bool), "log_id"),
    ("", 1, np.zeros((2, 3)), np.zeros(2, bool), "log_id"),
    (LOG, -1, np.zeros((2, 3)), np.zeros(2, bool), "timestamp_ns"),
    (LOG, 1, np.zeros((2, 2)), np.zeros(2, bool), r"flow must be \(N, 3\)"),
    (LOG, 1, np.array([[0, np.nan, 0], [0, 0, 0]]), np.zeros(2, bool), "1 non-finite"),
    (LOG, 1, np.array([[0, 1e6, 0], [0, 0, 0]]), np.zeros(2, bool), "float16"),
    (LOG, 1, np.zeros((2, 3)), np.zeros(3, bool), r"is_dynamic must be \(2,\)"),
    (LOG, 1, np.zeros((2, 3)), np.array([0.5, 0.0]), "boolean"),
])
def test_bad_input_is_rejected(tmp_path, log_id, ts, flow, dyn, match):
    with pytest.raises(ValueError, match=match):
        write_av2_submission(tmp_path, log_id, ts, flow, dyn)
    assert not any(tmp_path.rglob("*.feather"))
