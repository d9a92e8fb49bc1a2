"""Scoring in local worker processes (2 CPU workers): the single-process outputs; dead workers retried, reported.

The workers are killed for real (SIGKILL to the worker's process) while they score. The driver killed
mid-run is in test_score_kill.py.
"""

from __future__ import annotations

import json
from collections import deque
from contextlib import suppress
from dataclasses import replace

import psutil
import pytest

from perception4d.cli import main
from perception4d.errors import ConfigError
from perception4d.inference import DEFAULT_FLOW
from perception4d.scoring import Execution, ScoreSettings, score
from perception4d.scoring.backends import ProcessBackend, WorkerPlan, plan_workers
from perception4d.scoring.settings import discover_sources, split_units
from perception4d.scoring.worker import WorkerSpec

from .helpers import FLOW_CONFIG, QUIET, assert_same_files, killer, report_metrics, score_with_a_killed_worker


def spawned_workers() -> list[int]:
    """This process's running children started by multiprocessing's spawn (the worker processes)."""
    out = []
    for p in psutil.Process().children():
        with suppress(psutil.NoSuchProcess):
            if "spawn_main" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
    return out


def test_worker_plans():
    assert plan_workers(Execution(), gpus=2, cpus=32, where="x") == WorkerPlan(2, 8, 1.0)
    assert plan_workers(Execution(), gpus=4, cpus=16, where="x") == WorkerPlan(4, 4, 1.0)
    assert plan_workers(Execution(), gpus=0, cpus=6, where="x") == WorkerPlan(6, 1, 0.0)
    assert plan_workers(Execution(cpus_per_worker=2), gpus=0, cpus=6, where="x") == WorkerPlan(3, 2, 0.0)
    assert plan_workers(Execution(workers=3, gpus_per_worker=0.5), gpus=2, cpus=16, where="x") == WorkerPlan(3, 8, 0.5)
    assert plan_workers(Execution(gpus_per_worker=0), gpus=2, cpus=4, where="x") == WorkerPlan(4, 1, 0.0)
    assert plan_workers(Execution(gpus_per_worker=0), gpus=2, cpus=4, where="x").device == "cpu"
    with pytest.raises(ConfigError, match="gpus_per_worker: each worker asks for 1 GPU but x has 0"):
        plan_workers(Execution(gpus_per_worker=1), gpus=0, cpus=4, where="x")
    with pytest.raises(ConfigError, match="gpus_per_worker must be >= 0"):
        Execution(gpus_per_worker=-1)
    with pytest.raises(ConfigError, match="backend must be one of"):
        Execution(backend="threads")


def test_the_cli_refuses_ray_with_another_backend(sim_root, tmp_path, capsys):
    assert main(["score", FLOW_CONFIG, str(DEFAULT_FLOW), "--data", str(sim_root / "av2"), "--out",
                 str(tmp_path / "o"), "--ray", "--backend", "processes"]) == 2
    assert "--backend processes does not go with --ray" in capsys.readouterr().err


@pytest.mark.slow
def test_a_worker_not_ready_in_time_is_an_error_and_is_stopped(sim_root, tmp_path):
    settings = ScoreSettings(FLOW_CONFIG, str(DEFAULT_FLOW), str(sim_root / "av2"), str(tmp_path))
    [source, _] = discover_sources(sim_root / "av2", None)
    backend = ProcessBackend(WorkerSpec("x", settings, ("flow",), "cpu"),
                             replace(QUIET, backend="processes", workers=1, worker_start_timeout_s=0.05))
    with pytest.raises(ConfigError, match="1 of 1 score workers did not start within 0.05 s"):
        backend.run(deque(split_units(source, 5, 0)), lambda u: frozenset(), lambda info, res: None)
    assert spawned_workers() == []  # killed and reaped


@pytest.mark.slow
def test_two_workers_give_the_single_process_outputs_and_a_killed_worker_is_retried(flow_run, sim_root, tmp_path):
    run, observe = score_with_a_killed_worker("processes", sim_root, tmp_path / "processes", flow_run[1])
    assert observe.killed[0] in {w.pid for w in run.stats.workers}
    assert run.report["run"]["backend"] == "processes"


@pytest.mark.slow
def test_a_worker_that_keeps_dying_is_reported_and_the_rerun_completes(flow_run, sim_root, tmp_path):
    _, reference = flow_run
    out = tmp_path / "processes"
    settings = ScoreSettings(FLOW_CONFIG, str(DEFAULT_FLOW), str(sim_root / "av2"), str(out))
    observe = killer(after_frames=6)  # in the second log (one unit per log, 5 frames each)
    run = score(settings, replace(QUIET, backend="processes", workers=1, segment_frames=0, chunk_frames=1,
                                  retries=0), observe)
    assert not run.complete and run.stats.crashes == 1 and len(run.stats.workers) == 1
    [failure] = run.report["failed_units"]
    assert "died: killed by SIGKILL" in failure["reason"] and failure["attempts"] == 1
    assert failure["unit"] == f"{run.sequences[1].source.key}[0:5]"
    assert "INCOMPLETE" in (out / "report.md").read_text()
    assert main(["score", FLOW_CONFIG, str(DEFAULT_FLOW), "--data", str(sim_root / "av2"), "--out", str(out),
                 "--backend", "processes", "--workers", "2", "--cpus-per-worker", "1", "--segment-frames", "0",
                 "--chunk-frames", "1", "--no-progress"]) == 0  # resumes from the manifest
    rerun = json.loads((out / "report.json").read_text())
    assert rerun["complete"] and rerun["run"]["backend"] == "processes"
    assert rerun["run"]["resumed_frames"] == 6 and rerun["run"]["frames_scored"] == 4
    assert len(rerun["run"]["workers"]) == 1  # one unit left: one worker
    assert spawned_workers() == []
    assert assert_same_files(out / "flow", reference / "flow") == 8
    assert report_metrics(out) == report_metrics(reference)
