"""The voxel transformer configs: the sparse U-Net config of the same task with only the backbone replaced.

A side-by-side training of ``<task>_sparseunet_*`` and ``<task>_dsvt_*`` then compares backbones and
nothing else (data, geometry, encoder settings such as ``extra_features``, heads, losses, schedule, hooks).
Each transformer config also trains end to end through ``tools/train.py`` at a tiny size.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"

#: transformer config -> its sparse U-Net twin
PAIRS = {"flow_dsvt_5f_sim.py": "flow_sparseunet_5f_sim.py",
         "mos_dsvt_11f_sim.py": "mos_sparseunet_11f_sim.py",
         "occ_dsvt_5f_sim.py": "occ_sparseunet_5f_sim.py"}


def _without_backbone(path: Path) -> tuple[dict, dict]:
    """(resolved config dict without ``model.backbone``, the backbone dict)."""
    cfg = Config.fromfile(str(path)).to_dict()
    return cfg, cfg["model"].pop("backbone")


def _differences(a, b, where="") -> list[str]:
    """Dotted keys where two resolved config values differ (for a readable failure)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in (_differences(a[k], b[k], f"{where}.{k}".lstrip(".")) if k in a and k in b
                          else [f"{where}.{k}".lstrip(".") + (" only in the transformer config" if k in a
                                                              else " only in the sparse U-Net config")])]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def test_every_transformer_config_has_a_sparse_unet_twin():
    assert sorted(p.name for p in CONFIGS.glob("*dsvt*.py")) == sorted(PAIRS)


@pytest.mark.parametrize("dsvt", sorted(PAIRS))
def test_the_configs_differ_only_in_the_backbone(dsvt):
    cfg, backbone = _without_backbone(CONFIGS / dsvt)
    ref, ref_backbone = _without_backbone(CONFIGS / PAIRS[dsvt])
    assert backbone["type"] == "VoxelTransformer4D" and ref_backbone["type"] == "SparseUNet4D"
    assert tuple(backbone["channels"]) == tuple(ref_backbone["channels"])
    assert _differences(cfg, ref) == []
    assert cfg == ref


def test_the_comparison_sees_an_encoder_difference():
    cfg, _ = _without_backbone(CONFIGS / "flow_dsvt_5f_sim.py")
    ref, _ = _without_backbone(CONFIGS / "flow_sparseunet_5f_sim.py")
    ref["model"]["encoder"]["extra_features"] = 1 - ref["model"]["encoder"]["extra_features"]
    assert _differences(cfg, ref) == [f"model.encoder.extra_features: {cfg['model']['encoder']['extra_features']!r} "
                                      f"!= {ref['model']['encoder']['extra_features']!r}"]


# -- tiny end-to-end trainings ---------------------------------------------------------------------------------
TINY_BACKBONES = {"SparseUNet4D": ["model.backbone.channels=[8,16,16]"],
                  "VoxelTransformer4D": ["model.backbone.channels=[8,16,16]", "model.backbone.depths=[1,1,1]",
                                         "model.backbone.head_dim=8"]}
TINY_GRIDS = {"flow": ("[-12.8,-12.8,-2.2,12.8,12.8,4.2]", "[0.2,0.2,0.2]"),
              "mos": ("[-12.8,-12.8,-2.4,12.8,12.8,4.0]", "[0.2,0.2,0.2]"),
              "occ": ("[-12.8,-12.8,-2.2,12.8,12.8,4.2]", "[0.4,0.4,0.4]")}
TINY_OCC_GRID = ("[-12.8,-12.8,-1.0,12.8,12.8,5.4]", "[0.8,0.8,0.8]")


def tiny_options(config: str, iters: int = 2) -> list[str]:
    """``--cfg-options`` that shrink a flow / MOS / occupancy config (either backbone) to a CPU run of ``iters``.

    The same overrides for both backbones of a task: a 25.6 m grid, widths 8-16-16, one simulated 32-beam
    sequence of 3 frames at 1 degree azimuth, batch 1, no LR schedule; validation once, after the last iteration.
    """
    cfg = Config.fromfile(str(CONFIGS / config))
    task = config.split("_")[0]
    point_range, voxel_size = TINY_GRIDS[task]
    opts = [f"model.data_preprocessor.geometry.point_range={point_range}",
            f"model.data_preprocessor.geometry.voxel_size={voxel_size}", "model.encoder.out_channels=8",
            *TINY_BACKBONES[cfg.model.backbone.type],
            f"train_cfg.max_iters={iters}", f"train_cfg.val_interval={iters + 1000}", "param_scheduler=None",
            f"default_hooks.checkpoint.interval={iters}", "default_hooks.logger.interval=1",
            "log_processor.window_size=1"]
    if task == "occ":
        grid_range, grid_size = TINY_OCC_GRID
        opts += [f"model.heads.occupancy.grid.point_range={grid_range}",
                 f"model.heads.occupancy.grid.voxel_size={grid_size}", "model.heads.occupancy.channels=[16,32]"]
    for split, seed in (("train_dataloader", 7), ("val_dataloader", 8), ("test_dataloader", 8)):
        opts += [f"{split}.dataset.geometry.point_range={point_range}",
                 f"{split}.dataset.geometry.voxel_size={voxel_size}", f"{split}.dataset.seeds=[{seed}]",
                 f"{split}.dataset.frames_per_sequence=3", f"{split}.dataset.preset=hdl32e",
                 f"{split}.dataset.preset_overrides.azimuth_resolution_deg=1.0", f"{split}.batch_size=1"]
        if task == "occ":
            opts += [f"{split}.dataset.occupancy_grid.point_range={grid_range}",
                     f"{split}.dataset.occupancy_grid.voxel_size={grid_size}"]
    return opts


def train_tiny(config: str, work: Path, iters: int = 2) -> tuple[list[dict], dict]:
    """Run ``tools/train.py`` on ``tiny_options``: (per-iteration log records (loss, time, ...), validation record).

    One thread for torch and numba: the simulator's numba kernels reset the OpenMP thread count torch shares with
    them, and on a shared 2-core box two threads of each made single iterations of these tiny runs 10-50x slower.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), str(CONFIGS / config), "--work-dir",
                          str(work), "--cfg-options", *tiny_options(config, iters)],
                         cwd=work.parent, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (work / f"iter_{iters}.pth").is_file()
    scalars = [p for p in work.rglob("scalars.json")]
    assert len(scalars) == 1
    records = [json.loads(line) for line in scalars[0].read_text().splitlines() if line.strip()]
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "loss" not in r]
    assert len(val) == 1, records
    return train, val[0]


@pytest.mark.slow
@pytest.mark.parametrize("dsvt", sorted(PAIRS))
def test_each_transformer_config_trains_two_iterations_through_the_train_tool(dsvt, tmp_path):
    records, val = train_tiny(dsvt, tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in records)
    metric = {"flow": "av2/EPE 3-Way Average", "mos": "mos/iou_moving", "occ": "occ/miou"}[dsvt.split("_")[0]]
    assert metric in val, sorted(val)
