"""Small model sets and short simulated streams for the runtime tests (CPU-sized)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from perception4d.runtime.models import ModelSpec
from perception4d.sim import HDL32E, simulate

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
CHECKPOINTS = REPO / "perception4d" / "checkpoints"
#: HDL-32E every 4 degrees of azimuth: ~2,700 points a sweep
TINY = HDL32E.with_overrides(azimuth_resolution_deg=4.0)

SMALL_FLOW = dict(point_range=(-12.8, -12.8, -2.2, 12.8, 12.8, 4.2), voxel_size=(0.2, 0.2, 0.2), num_frames=5)
SMALL_OCC = dict(point_range=(-12.8, -12.8, -2.2, 12.8, 12.8, 4.2), voxel_size=(0.4, 0.4, 0.4), num_frames=3)
OCC_GRID = dict(point_range=(-12.8, -12.8, -1.0, 12.8, 12.8, 5.4), voxel_size=(0.8, 0.8, 0.8))


def small_flow_spec(name: str = "flow", device: str = "cpu", channels=None) -> ModelSpec:
    """The flow+MOS network on a small grid (random init); its real widths unless ``channels`` is given."""
    options = {"geometry": SMALL_FLOW, "model.data_preprocessor.geometry": SMALL_FLOW}
    if channels is not None:
        options["model.backbone.channels"] = tuple(channels)
    return ModelSpec(name, config=str(CONFIGS / "flowmos_sparseunet_5f_sim.py"), device=device, cfg_options=options)


def small_occ_spec(name: str = "occupancy", device: str = "cpu", channels=(16, 32, 32)) -> ModelSpec:
    """The occupancy network, narrower, on a small grid of 3 sweeps (random init)."""
    return ModelSpec(name, config=str(CONFIGS / "occ_sparseunet_5f_sim.py"), device=device, init_seed=1,
                     cfg_options={"geometry": SMALL_OCC, "model.data_preprocessor.geometry": SMALL_OCC,
                                  "model.backbone.channels": tuple(channels),
                                  "model.heads.occupancy.grid": OCC_GRID,
                                  "model.heads.occupancy.channels": (16, 32)})


def tiny_frames(n: int, seed: int = 3, azimuth_deg: float = 4.0):
    """``n`` simulated HDL-32E sweeps (20 Hz) every ``azimuth_deg`` of azimuth (4 deg: ~2,700 points)."""
    return simulate(TINY.with_overrides(azimuth_resolution_deg=azimuth_deg), num_frames=n, seed=seed,
                    occupancy=None).frames


def assert_results_equal(a, b) -> None:
    """Two runtime Results (or FrameResults' per-model results) carry identical outputs."""
    assert (a.frame_id, a.status) == (b.frame_id, b.status)
    for task in ("flow", "mos", "occupancy"):
        x, y = getattr(a, task), getattr(b, task)
        assert (x is None) == (y is None), task
        if x is None:
            continue
        assert x.frame_id == y.frame_id
        if task == "flow":
            np.testing.assert_array_equal(x.prediction.flow, y.prediction.flow)
            np.testing.assert_array_equal(x.prediction.is_dynamic, y.prediction.is_dynamic)
        elif task == "mos":
            np.testing.assert_array_equal(x.prob, y.prob)
        else:
            np.testing.assert_array_equal(x.prediction.semantics, y.prediction.semantics)
            np.testing.assert_array_equal(x.prediction.velocity, y.prediction.velocity)
