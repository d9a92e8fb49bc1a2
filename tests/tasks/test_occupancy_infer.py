"""``p4d infer --task occupancy``: Occ3D-style .npz per scan, pictures, metrics against a ground-truth folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config

from perception4d.cli import main
from perception4d.core.labels import OCC_CLASSES
from perception4d.models import build_model
from perception4d.sim.occupancy import load_occupancy, load_occupancy_geometry
from perception4d.viz.occupancy import OCC_COLOURS, top_class

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "occ_sparseunet_5f_sim.py"


@pytest.fixture(scope="module")
def occ_checkpoint(tmp_path_factory) -> Path:
    """The occupancy config's network with its initial weights, saved like a run: weights + config beside."""
    d = tmp_path_factory.mktemp("occ_ckpt")
    torch.manual_seed(0)
    model = build_model(Config.fromfile(str(CONFIG)).model)
    torch.save({"state_dict": model.state_dict()}, d / "occ.pth")
    shutil.copy(CONFIG, d / "occ.py")
    shutil.copytree(REPO / "configs" / "_base_", d / "_base_")
    return d / "occ.pth"


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sim")
    assert main(["simulate", "--out", str(root), "--frames", "3", "--seed", "5", "--preset", "hdl32e",
                 "--no-occupancy"][:-1]) == 0
    return root


def test_infer_occupancy_writes_one_npz_per_scan_with_pictures_and_metrics(occ_checkpoint, sim_root, tmp_path, capsys):
    out = tmp_path / "pred"
    seq_dir = sim_root / "semantickitti" / "sequences" / "00"
    rc = main(["infer", "--task", "occupancy", "--data", str(seq_dir), "--format", "semantickitti", "--out", str(out),
               "--checkpoint", str(occ_checkpoint), "--gt", str(sim_root / "occupancy"), "--pictures", "1"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "wrote occupancy of 3 scans" in text and "3 predicted from a shortened window" in text
    assert "3 scans scored: IoU" in text and "RayIoU@1m" in text

    files = sorted((out / "00").glob("*.npz"))
    assert [f.stem for f in files] == ["000000", "000001", "000002"]
    grid = load_occupancy_geometry(out / "00" / "occupancy.json")
    assert grid.grid_shape == (200, 200, 16)
    with np.load(files[-1]) as z:
        assert set(z.files) == {"semantics", "mask_lidar", "flow"}
        assert z["semantics"].dtype == np.uint8 and z["flow"].dtype == np.float32
        assert z["flow"].shape == (200, 200, 16, 3)
        mask = z["mask_lidar"].astype(bool)
    # the mask is the current scan's ray-cast visibility: substantial but not the whole grid
    assert 0.01 < mask.mean() < 0.9
    pred = load_occupancy(files[-1], grid)  # predictions load back like ground truth
    assert pred.semantics.max() < len(OCC_CLASSES)
    assert np.all(pred.velocity[pred.semantics == 0] == 0)
    pictures = sorted(p.name for p in (out / "pictures").glob("*.png"))
    assert pictures == ["00_000000_occupancy_bev.png", "00_000000_occupancy_slices.png"]


def test_ground_truth_on_another_grid_is_one_clear_error(occ_checkpoint, tmp_path, capsys):
    gt = tmp_path / "gt"
    assert main(["simulate", "--out", str(gt), "--frames", "2", "--preset", "hdl32e", "--no-occupancy"]) == 0
    occ = gt / "occupancy"
    occ.mkdir()
    ssc = '{"point_range": [0, -25.6, -2, 51.2, 25.6, 4.4], "voxel_size": [0.2, 0.2, 0.2]}'
    (occ / "occupancy.json").write_text(ssc)
    rc = main(["infer", "--task", "occupancy", "--data", str(gt / "semantickitti"), "--out", str(tmp_path / "o"),
               "--checkpoint", str(occ_checkpoint), "--gt", str(occ), "--pictures", "0"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "occupancy.json" in err and "the model predicts" in err


def test_top_class_is_the_highest_occupied_voxel():
    sem = np.zeros((2, 2, 4), np.uint8)
    sem[0, 0, [0, 2]] = [5, 1]  # road below a car
    sem[1, 1, 0] = 8
    top = top_class(sem)
    assert top.tolist() == [[1, 0], [0, 8]]
    assert len(OCC_COLOURS) == len(OCC_CLASSES)
