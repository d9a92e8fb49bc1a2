"""Scoring on a real local Ray cluster (2 CPU workers): the single-process outputs; dead workers retried, reported.

The workers are killed for real (SIGKILL to the actor's process) while they score.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from perception4d.inference import DEFAULT_FLOW
from perception4d.scoring import ScoreSettings, score

from .helpers import FLOW_CONFIG, QUIET, assert_same_files, killer, report_metrics, score_with_a_killed_worker

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_two_workers_give_the_single_process_outputs_and_a_killed_worker_is_retried(ray_cluster, flow_run,
                                                                                    sim_root, tmp_path):
    score_with_a_killed_worker("ray", sim_root, tmp_path / "ray", flow_run[1])


def test_a_worker_that_keeps_dying_is_reported_and_the_rerun_completes(ray_cluster, flow_run, sim_root, tmp_path):
    _, reference = flow_run
    out = tmp_path / "ray"
    settings = ScoreSettings(FLOW_CONFIG, str(DEFAULT_FLOW), str(sim_root / "av2"), str(out))
    observe = killer(after_frames=6)  # in the second log (one unit per log, 5 frames each)
    run = score(settings, replace(QUIET, backend="ray", workers=1, segment_frames=0, chunk_frames=1, retries=0),
                observe)
    assert not run.complete and run.stats.crashes == 1 and len(run.stats.workers) == 1
    [failure] = run.report["failed_units"]
    assert "died" in failure["reason"] and failure["attempts"] == 1
    assert failure["unit"] == f"{run.sequences[1].source.key}[0:5]"
    assert "INCOMPLETE" in (out / "report.md").read_text()
    rerun = score(settings, QUIET)  # in this process: resumes from the manifest
    assert rerun.complete and rerun.stats.resumed_frames == 6 and rerun.stats.frames_scored == 4
    assert assert_same_files(out / "flow", reference / "flow") == 8
    assert report_metrics(out) == report_metrics(reference)
