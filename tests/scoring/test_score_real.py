"""Scoring the real recordings in ../shared/data with the shipped flow checkpoint: the offline driver's files,
and on the labelled Argoverse 2 sweep the offline metrics."""

from __future__ import annotations

import json

from perception4d.inference import DEFAULT_FLOW
from perception4d.scoring import ScoreSettings, score

from .helpers import FLOW_CONFIG, QUIET, assert_same_files


def test_semantickitti_flow_files_equal_the_offline_driver(semantickitti_root, tmp_path):
    from perception4d.tasks.flow_infer import run_flow_inference

    out, offline = tmp_path / "score", tmp_path / "offline"
    run = score(ScoreSettings(FLOW_CONFIG, str(DEFAULT_FLOW), str(semantickitti_root), str(out)), QUIET)
    assert run.complete and run.report["frames"] == {"total": 3, "finished": 3}
    run_flow_inference(str(semantickitti_root), None, str(offline), str(DEFAULT_FLOW), None, pictures=0)
    assert assert_same_files(out / "flow", offline, "*.feather") == 2
    assert run.report["metrics"]["flow"] == {}  # SemanticKITTI has no flow labels
    assert "no ground truth for this task" in (out / "report.md").read_text()


def test_av2_flow_file_and_metrics_equal_the_offline_driver(av2_log_dir, tmp_path, capsys):
    from perception4d.tasks.flow_infer import run_flow_inference

    out, offline = tmp_path / "score", tmp_path / "offline"
    run = score(ScoreSettings(FLOW_CONFIG, str(DEFAULT_FLOW), str(av2_log_dir), str(out)), QUIET)
    assert run.complete
    capsys.readouterr()
    run_flow_inference(str(av2_log_dir), None, str(offline), str(DEFAULT_FLOW), None, pictures=0, metrics=True)
    printed = dict(line.strip().rsplit(": ", 1) for line in capsys.readouterr().out.splitlines()
                   if line.startswith("  "))
    assert assert_same_files(out / "flow", offline, "*.feather") == 1
    metrics = json.loads((out / "report.json").read_text())["metrics"]["flow"]
    assert printed  # the offline driver printed its metrics (4 decimals)
    for name, text in printed.items():
        value = metrics[f"av2/{name}"]
        assert (text == "nan") if value is None else (f"{value:.4f}" == text), (name, value, text)
