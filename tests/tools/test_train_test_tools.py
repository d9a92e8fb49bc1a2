"""tools/train.py and tools/test.py end to end on a tiny simulator run: train, resume, evaluate."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

TINY = [
    "geometry.point_range=[-12.8,-12.8,-2.2,12.8,12.8,4.2]",
    "model.data_preprocessor.geometry.point_range=[-12.8,-12.8,-2.2,12.8,12.8,4.2]",
    "model.backbone.channels=[8,16,16]",
    "model.encoder.out_channels=8",
]


def _data(train_seed, val_seed):
    geo = "[-12.8,-12.8,-2.2,12.8,12.8,4.2]"
    opts = []
    for split, seed, frames in (("train_dataloader", train_seed, 4), ("val_dataloader", val_seed, 3),
                                ("test_dataloader", val_seed, 3)):
        opts += [f"{split}.dataset.geometry.point_range={geo}", f"{split}.dataset.seeds=[{seed}]",
                 f"{split}.dataset.frames_per_sequence={frames}", f"{split}.dataset.preset=hdl64e",
                 f"{split}.batch_size=2",
                 f"{split}.dataset.preset_overrides.azimuth_resolution_deg=1.0"]
    return opts


def _run(args, cwd):
    out = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_train_resume_and_test(tmp_path):
    work = tmp_path / "run"
    cfg = str(REPO / "configs" / "flow_sparseunet_5f_sim.py")
    opts = TINY + _data(7, 8) + ["train_cfg.max_iters=6", "train_cfg.val_interval=6",
                                   "default_hooks.checkpoint.interval=3", "default_hooks.logger.interval=1",
                                   "param_scheduler=None"]
    _run([str(REPO / "tools" / "train.py"), cfg, "--work-dir", str(work), "--cfg-options", *opts], tmp_path)
    assert (work / "iter_6.pth").is_file() and (work / "last_checkpoint").is_file()
    run_dirs = [p for p in work.iterdir() if p.is_dir()]
    assert any((d / "config.py").is_file() and (d / "run_info.json").is_file() for d in run_dirs)
    info = json.loads(next(d / "run_info.json" for d in run_dirs if (d / "run_info.json").is_file()).read_text())
    assert info["perception4d"] and info["torch"]
    # a TensorBoard event file with the scalars
    assert list(work.rglob("events.out.tfevents.*"))
    # resume after "interruption": continue from iter_6 to iter_9
    opts_resume = [o if not o.startswith("train_cfg.max_iters") else "train_cfg.max_iters=9" for o in opts]
    out = _run([str(REPO / "tools" / "train.py"), cfg, "--work-dir", str(work), "--resume", "--cfg-options",
                *opts_resume], tmp_path)
    assert "resumed" in (out.stdout + out.stderr).lower()
    assert (work / "iter_9.pth").is_file()
    # evaluate the checkpoint: AV2 metrics come back
    _run([str(REPO / "tools" / "test.py"), cfg, str(work / "iter_9.pth"), "--work-dir", str(work),
          "--out-json", str(tmp_path / "metrics.json"), "--cfg-options", *opts], tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["av2/EPE 3-Way Average"] >= 0 and "av2/Bucketed/Mean Static EPE" in metrics


@pytest.mark.slow
def test_mos_config_trains_and_evaluates_with_the_mos_metric(tmp_path):
    geo = "[-12.8,-12.8,-2.4,12.8,12.8,4.0]"
    vs = "[0.2,0.2,0.2]"
    opts = [f"model.data_preprocessor.geometry.point_range={geo}", f"model.data_preprocessor.geometry.voxel_size={vs}",
            "model.backbone.channels=[8,16,16]", "model.encoder.out_channels=8",
            "train_cfg.max_iters=3", "train_cfg.val_interval=3", "param_scheduler=None",
            "default_hooks.checkpoint.interval=3"]
    for split, seed, frames in (("train_dataloader", 7, 4), ("val_dataloader", 8, 3), ("test_dataloader", 8, 3)):
        opts += [f"{split}.dataset.geometry.point_range={geo}", f"{split}.dataset.geometry.voxel_size={vs}",
                 f"{split}.dataset.seeds=[{seed}]", f"{split}.dataset.frames_per_sequence={frames}",
                 f"{split}.dataset.preset=hdl32e", f"{split}.batch_size=2"]
    cfg = str(REPO / "configs" / "mos_sparseunet_11f_sim.py")
    work = tmp_path / "run"
    _run([str(REPO / "tools" / "train.py"), cfg, "--work-dir", str(work), "--cfg-options", *opts], tmp_path)
    _run([str(REPO / "tools" / "test.py"), cfg, str(work / "iter_3.pth"), "--work-dir", str(work),
          "--out-json", str(tmp_path / "metrics.json"), "--cfg-options", *opts], tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= metrics["mos/iou_moving"] <= 1.0 and "mos/false_moving_rate" in metrics
