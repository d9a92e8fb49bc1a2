"""Scoring on CUDA (skipped without a GPU): the CPU run's files up to rounding; Ray and process GPU workers (2 GPUs)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from pyarrow import feather

from perception4d.inference import DEFAULT_FLOW
from perception4d.scoring import ScoreSettings, score

from .helpers import FLOW_CONFIG, QUIET

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def assert_close_flow_files(a, b) -> None:
    """Same feather names; flow within float16 rounding of fused fp16 inference; dynamic flags agree (99 %)."""
    names = sorted(p.relative_to(a) for p in a.rglob("*.feather"))
    assert names and names == sorted(p.relative_to(b) for p in b.rglob("*.feather"))
    for name in names:
        x, y = feather.read_table(a / name).to_pandas(), feather.read_table(b / name).to_pandas()
        assert len(x) == len(y)
        for c in ("flow_tx_m", "flow_ty_m", "flow_tz_m"):
            np.testing.assert_allclose(x[c].to_numpy(np.float32), y[c].to_numpy(np.float32), atol=0.03)
        assert (x["is_dynamic"].to_numpy() == y["is_dynamic"].to_numpy()).mean() > 0.99


def test_cuda_run_matches_the_cpu_run(flow_run, sim_root, tmp_path):
    _, reference = flow_run
    out = tmp_path / "cuda"
    run = score(ScoreSettings(FLOW_CONFIG, str(DEFAULT_FLOW), str(sim_root / "av2"), str(out)),
                replace(QUIET, device="cuda"))
    assert run.complete and run.stats.workers[0].device.startswith("cuda")
    assert "fp16 autocast" in run.stats.workers[0].model and "fused for inference" in run.stats.workers[0].model
    assert_close_flow_files(out / "flow", reference / "flow")
    cpu = flow_run[0].report["metrics"]["flow"]["av2/EPE 3-Way Average"]
    assert run.report["metrics"]["flow"]["av2/EPE 3-Way Average"] == pytest.approx(cpu, abs=0.01)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_ray_gpu_workers_match_one(sim_root, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        settings = ScoreSettings(FLOW_CONFIG, str(DEFAULT_FLOW), str(sim_root / "av2"), str(tmp_path / "one"))
        one = score(settings, replace(QUIET, backend="ray", workers=1, segment_frames=3))
        two = score(replace(settings, out=str(tmp_path / "two")),
                    replace(QUIET, backend="ray", workers=2, segment_frames=3))
    finally:
        ray.shutdown()
    assert one.complete and two.complete
    assert len({w.device for w in two.stats.workers}) == 2  # one GPU each
    assert_close_flow_files(tmp_path / "two" / "flow", tmp_path / "one" / "flow")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_process_gpu_workers_match_one(sim_root, tmp_path):
    settings = ScoreSettings(FLOW_CONFIG, str(DEFAULT_FLOW), str(sim_root / "av2"), str(tmp_path / "one"))
    one = score(settings, replace(QUIET, backend="processes", workers=1, segment_frames=3))
    two = score(replace(settings, out=str(tmp_path / "two")),
                replace(QUIET, backend="processes", workers=2, segment_frames=3))
    assert one.complete and two.complete
    devices = {w.device for w in two.stats.workers}
    assert len(devices) == 2 and all(d.startswith("cuda (GPU ") for d in devices), devices  # one GPU each
    assert_close_flow_files(tmp_path / "two" / "flow", tmp_path / "one" / "flow")
    assert two.report["metrics"]["flow"]["av2/EPE 3-Way Average"] == pytest.approx(
        one.report["metrics"]["flow"]["av2/EPE 3-Way Average"], abs=0.01)
