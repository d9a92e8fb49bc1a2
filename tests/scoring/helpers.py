"""Simulated datasets and a small occupancy model for the scoring tests (CPU-sized)."""

from __future__ import annotations

import filecmp
import json
import os
import signal
from pathlib import Path

import numpy as np
import torch

from perception4d.core import Geometry
from perception4d.inference import DEFAULT_FLOW, DEFAULT_MOS
from perception4d.scoring import Execution
from perception4d.sim import HDL32E, simulate, write_av2, write_occupancy, write_semantickitti

REPO = Path(__file__).resolve().parents[2]
#: HDL-32E every 2 degrees of azimuth: ~5,400 points a sweep (20 Hz)
PRESET = HDL32E.with_overrides(azimuth_resolution_deg=2.0)
OCC_GRID = dict(point_range=(-12.8, -12.8, -1.0, 12.8, 12.8, 5.4), voxel_size=(0.8, 0.8, 0.8))
FLOW_CONFIG = str(DEFAULT_FLOW.with_suffix(".py"))
MOS_CONFIG = str(DEFAULT_MOS.with_suffix(".py"))
QUIET = Execution(progress=False, threads=1)
SMALL_OCC_CONFIG = f'''_base_ = ["{REPO / "configs" / "occ_sparseunet_5f_sim.py"}"]
geometry = dict(point_range=(-12.8, -12.8, -2.2, 12.8, 12.8, 4.2), voxel_size=(0.4, 0.4, 0.4), num_frames=3)
model = dict(data_preprocessor=dict(geometry=geometry), backbone=dict(channels=(16, 32, 32)),
             heads=dict(occupancy=dict(grid={OCC_GRID!r}, channels=(16, 32))))
'''


def write_sim_dataset(root: Path, seeds=(1, 2), frames: int = 5) -> Path:
    """``root/kitti/sequences/<seed:02d>``, ``root/av2/<log>``, ``root/occ_gt/<seed:02d>`` (small grid)."""
    grid = Geometry(**OCC_GRID)
    for seed in seeds:
        seq = simulate(PRESET, num_frames=frames, seed=seed, occupancy=grid)
        write_semantickitti(seq, root / "kitti", sequence=f"{seed:02d}")
        write_av2(seq, root / "av2")
        write_occupancy(seq, root / "occ_gt" / f"{seed:02d}")
    return root


def small_occupancy_model(folder: Path) -> tuple[str, str]:
    """A small occupancy config and its (seeded random-init) weights saved like a training run."""
    from mmengine.config import Config

    from perception4d.models import build_model

    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "occ_small.py"
    cfg.write_text(SMALL_OCC_CONFIG)
    torch.manual_seed(0)
    model = build_model(Config.fromfile(str(cfg)).model)
    torch.save({"state_dict": model.state_dict()}, folder / "occ_small.pth")
    return str(cfg), str(folder / "occ_small.pth")


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())


def assert_same_files(a: Path, b: Path, pattern: str = "*") -> int:
    """The same file names under ``a`` and ``b`` (``pattern``), byte for byte; returns how many."""
    names = sorted(str(p.relative_to(a)) for p in Path(a).rglob(pattern) if p.is_file())
    other = sorted(str(p.relative_to(b)) for p in Path(b).rglob(pattern) if p.is_file())
    assert names == other
    assert names, f"no {pattern} files under {a}"
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)
    return len(names)


def assert_same_npz(a: Path, b: Path) -> None:
    with np.load(a) as x, np.load(b) as y:
        assert sorted(x.files) == sorted(y.files)
        for k in x.files:
            np.testing.assert_array_equal(x[k], y[k])


def report_metrics(out: Path) -> dict:
    """The output-determined part of report.json (metrics, profiles, per-sequence counts and metrics)."""
    r = json.loads((Path(out) / "report.json").read_text())
    return {"metrics": r["metrics"], "profiles": r["profiles"],
            "sequences": [{k: s[k] for k in ("key", "frames", "counts", "metrics", "not_written")}
                          for s in r["sequences"]]}


def killer(after_frames: int, times: int = 1):
    """A ``score`` observer that SIGKILLs the worker that reported a chunk once ``after_frames`` frames are finished."""
    killed = []

    def observe(event):
        if event.kind == "chunk" and event.frames_done >= after_frames and len(killed) < times:
            os.kill(event.worker.pid, signal.SIGKILL)
            killed.append(event.worker.pid)

    observe.killed = killed
    return observe


def journal_lines(out: Path) -> int:
    """Lines in the run's manifest journals (one per finished frame)."""
    return sum(p.read_bytes().count(b"\n") for p in (Path(out) / "manifest" / "sequences").glob("*.jsonl"))


def score_with_a_killed_worker(backend: str, sim_root: Path, out: Path, reference: Path):
    """Flow scoring on 2 ``backend`` workers with one SIGKILLed mid-run: retried, outputs and metrics as
    ``reference`` (the in-process run). Returns the run and the killer."""
    from dataclasses import replace

    from perception4d.scoring import ScoreSettings, score

    observe = killer(after_frames=2)
    run = score(ScoreSettings(FLOW_CONFIG, str(DEFAULT_FLOW), str(sim_root / "av2"), str(out)),
                replace(QUIET, backend=backend, workers=2, segment_frames=3, chunk_frames=1, retries=1), observe)
    assert len(observe.killed) == 1 and run.stats.crashes == 1
    assert run.complete and not run.failures
    assert len({w.pid for w in run.stats.workers}) == 3  # two at the start, one replacing the killed one
    assert assert_same_files(out / "flow", reference / "flow") == 8
    assert report_metrics(out) == report_metrics(reference)
    return run, observe
