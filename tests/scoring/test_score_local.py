"""In-process scoring: the offline drivers' files and metrics, segments, corrupt inputs, resumption, the CLI.

Models: the shipped flow and MOS checkpoints and a small occupancy network, on
simulated HDL-32E sequences every 2 degrees of azimuth (~5,400 points a sweep).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import pytest

from perception4d.cli import main
from perception4d.errors import ConfigError
from perception4d.inference import DEFAULT_FLOW, DEFAULT_MOS
from perception4d.scoring import ScoreSettings, score
from perception4d.scoring.manifest import Journal

from .helpers import FLOW_CONFIG, MOS_CONFIG, QUIET, assert_same_files, assert_same_npz, report_metrics


def assert_metrics_equal(reported: dict, expected: dict) -> None:
    """Exactly equal numbers (report.json writes NaN as null)."""
    assert set(reported) == set(expected)
    for k, v in expected.items():
        if math.isnan(v):
            assert reported[k] is None, k
        else:
            assert reported[k] == v, (k, reported[k], v)


def offline_flow_metrics(data) -> dict:
    """What `p4d infer --task flow --metrics` computes, frame by frame, reduced by Av2FlowMetric."""
    from perception4d.datasets.windows import iter_windows
    from perception4d.inference import load_model, predict_samples, submission_flow
    from perception4d.io import open_dataset
    from perception4d.metrics.flow_metric import Av2FlowMetric

    loaded = load_model(DEFAULT_FLOW)
    metric = Av2FlowMetric()
    for reader in open_dataset(data):
        for sample in iter_windows(reader, loaded.geometry, with_targets=True):
            r = predict_samples(loaded, [sample])[0]
            sub = submission_flow(r.flow)
            r.flow = replace(r.flow, flow=sub.flow, is_dynamic=sub.is_dynamic)
            metric.process(None, [r])
    return metric.evaluate(len(metric.results))


def test_flow_files_and_metrics_equal_the_offline_driver(flow_run, sim_root, tmp_path):
    from perception4d.tasks.flow_infer import run_flow_inference

    run, out = flow_run
    assert run.complete and not run.failures
    offline = tmp_path / "offline"
    run_flow_inference(str(sim_root / "av2"), None, str(offline), str(DEFAULT_FLOW), None, pictures=0)
    assert assert_same_files(out / "flow", offline, "*.feather") == 8  # 2 logs x 4 sweeps with a next sweep
    report = json.loads((out / "report.json").read_text())
    assert_metrics_equal(report["metrics"]["flow"], offline_flow_metrics(sim_root / "av2"))
    for s in report["sequences"]:
        assert s["counts"]["flow"] == {"written": 4, "skipped": 1, "failed": 0}
        assert [n["reason"] for n in s["not_written"]] == ["last sweep of the sequence: flow needs the next sweep"]
        assert s["metrics"]["flow"]["av2/EPE 3-Way Average"] > 0
    dist = report["profiles"]["flow"]["distance"]
    assert dist["quantity"] == "mean error" and sum(dist["count"]) > 0
    assert sum(report["profiles"]["flow"]["speed"]["count"]) == sum(dist["count"])
    assert sorted(p.name for p in (out / "plots").glob("*.png")) == [
        "error_vs_distance.png", "error_vs_speed.png", "per_sequence.png"]
    md = (out / "report.md").read_text()
    assert "## Summary" in md and "av2/EPE 3-Way Average" in md and "plots/error_vs_speed.png" in md


def test_a_missing_sweep_cuts_windows_as_the_offline_driver_does(sim_root, tmp_path):
    from perception4d.tasks.flow_infer import run_flow_inference

    data = tmp_path / "av2"
    shutil.copytree(sim_root / "av2", data)
    for log in data.iterdir():  # sweeps every 50 ms; without the one at 100 ms, 1 -> 3 spans a missing sweep
        (log / "sensors" / "lidar" / "100000000.feather").unlink()
    out, offline = tmp_path / "score", tmp_path / "offline"
    run = score(ScoreSettings(FLOW_CONFIG, str(DEFAULT_FLOW), str(data), str(out), max_gap_s=0.075),
                replace(QUIET, segment_frames=2))
    run_flow_inference(str(data), None, str(offline), str(DEFAULT_FLOW), None, pictures=0, max_gap_s=0.075)
    assert assert_same_files(out / "flow", offline, "*.feather") == 4  # 0 -> 1 and 3 -> 4 in each log
    for s in run.report["sequences"]:
        assert s["counts"]["flow"] == {"written": 2, "skipped": 2, "failed": 0}
        assert "a sweep is missing" in s["not_written"][0]["reason"]


def test_mos_fused_files_and_metrics_equal_the_offline_driver(sim_root, tmp_path):
    from perception4d.metrics.mos import mos_result
    from perception4d.tasks.mos_infer import run_mos_inference

    out, offline = tmp_path / "score", tmp_path / "offline"
    run = score(ScoreSettings(MOS_CONFIG, str(DEFAULT_MOS), str(sim_root / "kitti"), str(out)),
                replace(QUIET, segment_frames=3))  # segments of 3 and 2 scans, each with its context
    assert run.complete
    ref = run_mos_inference(str(sim_root / "kitti"), None, str(offline), pictures=0, metrics=True)
    assert assert_same_files(out / "mos", offline, "*.label") == 10
    r = mos_result(ref.stats["fused"])
    m = run.report["metrics"]["mos"]
    assert (m["mos/iou_moving"], m["mos/precision"], m["mos/recall"]) == (r.iou_moving, r.precision, r.recall)
    assert run.report["profiles"]["mos"]["speed"] is None and run.report["profiles"]["mos"]["distance"]


def test_occupancy_files_and_metrics_equal_the_offline_driver(sim_root, occ_model, tmp_path):
    from perception4d.metrics.occupancy import occupancy_result
    from perception4d.tasks.occupancy_infer import run_occupancy_inference

    config, checkpoint = occ_model
    out, offline = tmp_path / "score", tmp_path / "offline"
    run = score(ScoreSettings(config, checkpoint, str(sim_root / "kitti"), str(out),
                              occupancy_gt=str(sim_root / "occ_gt")), replace(QUIET, segment_frames=3))
    assert run.complete
    ref = run_occupancy_inference(str(sim_root / "kitti"), None, str(offline), checkpoint, config, pictures=0,
                                  gt=str(sim_root / "occ_gt"))
    for seq in ("01", "02"):
        a, b = out / "occupancy" / seq, offline / seq
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        assert (a / "occupancy.json").read_text() == (b / "occupancy.json").read_text()
        for f in b.glob("*.npz"):
            assert_same_npz(a / f.name, f)
    r = occupancy_result(ref.stats)
    m = run.report["metrics"]["occupancy"]
    assert (m["occ/geometry_iou"], m["occ/miou"], m["occ/rayiou"]) == (r.geometry_iou, r.miou, r.rayiou)
    assert run.report["profiles"]["occupancy"]["speed"] is not None


def test_corrupt_files_are_reported_and_the_rest_is_scored(sim_root, tmp_path):
    data = tmp_path / "kitti"
    shutil.copytree(sim_root / "kitti", data)
    bad_scan = data / "sequences" / "02" / "velodyne" / "000002.bin"
    bad_scan.write_bytes(bad_scan.read_bytes()[:-3])  # not whole point records
    shutil.copytree(data / "sequences" / "01", data / "sequences" / "03")
    (data / "sequences" / "03" / "poses.txt").write_text("not a pose\n")
    run = score(ScoreSettings(FLOW_CONFIG, str(DEFAULT_FLOW), str(data), str(tmp_path / "out")), QUIET)
    assert run.complete  # every frame of the openable sequences is finished, the failed ones included
    rep = run.report
    assert [(f["key"], "poses.txt" in f["reason"]) for f in rep["failed_sequences"]] == [("03", True)]
    seqs = {s["key"]: s for s in rep["sequences"]}
    assert seqs["01"]["counts"]["flow"] == {"written": 4, "skipped": 1, "failed": 0}
    assert seqs["02"]["counts"]["flow"] == {"written": 3, "skipped": 1, "failed": 1}
    [failed] = [n for n in seqs["02"]["not_written"] if n["status"] == "failed"]
    assert failed["index"] == 2 and str(bad_scan) in failed["reason"] and "multiple of" in failed["reason"]
    # the sweep before the corrupt one gets its flow against the sweep after it (0.1 s later, within max_gap_s)
    written = sorted(p.name for p in (tmp_path / "out" / "flow" / "02").glob("*.feather"))
    assert len(written) == 3 and "100000000.feather" not in written
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Failures" in md and "000002.bin" in md and "sequence 03" in md


def test_rerun_after_an_interruption_repairs_the_manifest_and_gives_the_same_outputs(flow_run, sim_root, tmp_path):
    _, first = flow_run
    out = tmp_path / "resumed"
    shutil.copytree(first, out)
    journals = sorted((out / "manifest" / "sequences").glob("*.jsonl"))
    lines = journals[0].read_bytes().splitlines(keepends=True)
    journals[0].write_bytes(b"".join(lines[:2]) + lines[2][:40])  # a line torn by the kill
    journals[1].unlink()  # a sequence whose lines never made it (its outputs did)
    (out / "flow" / journals[0].stem / ".123.x7y.tmp").write_bytes(b"partial")
    assert main(["score", FLOW_CONFIG, str(DEFAULT_FLOW), "--data", str(sim_root / "av2"), "--out", str(out),
                 "--segment-frames", "2", "--chunk-frames", "3", "--no-progress"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["run"]["resumed_frames"] == 2 and rep["run"]["frames_scored"] == 8
    assert rep["run"]["removed_temporaries"] == 1
    assert report_metrics(out) == report_metrics(first)
    assert assert_same_files(out / "flow", first / "flow") == 8
    for j in journals:
        indices = [json.loads(line)["index"] for line in j.read_text().splitlines()]
        assert sorted(indices) == list(range(5))  # every frame once
        assert len(Journal(j, j.stem).load()) == 5


def test_a_rerun_with_other_settings_is_refused(flow_run, sim_root, tmp_path, capsys):
    _, out = flow_run
    with pytest.raises(ConfigError, match="max_gap_s"):
        score(ScoreSettings(FLOW_CONFIG, str(DEFAULT_FLOW), str(sim_root / "av2"), str(out), max_gap_s=0.5), QUIET)
    assert main(["score", MOS_CONFIG, str(DEFAULT_MOS), "--data", str(sim_root / "av2"), "--out", str(out),
                 "--no-progress"]) == 2
    assert "different" in capsys.readouterr().err
    assert main(["score", FLOW_CONFIG, str(DEFAULT_FLOW), "--data", str(sim_root / "av2"), "--out",
                 str(tmp_path / "o"), "--tasks", "mos"]) == 2
    assert "has no ['mos'] head" in capsys.readouterr().err
