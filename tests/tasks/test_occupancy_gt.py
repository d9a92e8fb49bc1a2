"""p4d occupancy-gt on the real SemanticKITTI scans: one .npz per scan, loadable, consistent with the scans."""

import json

import numpy as np

from perception4d.cli import main
from perception4d.core.labels import OCC_FREE, OCC_IGNORE, SEMANTICKITTI_TO_OCC
from perception4d.io import open_dataset
from perception4d.sim.occupancy import load_occupancy, load_occupancy_geometry
from perception4d.tasks.occupancy_gt import OCC3D_GRID


def test_occupancy_gt_of_real_scans(semantickitti_root, tmp_path, capsys):
    assert main(["occupancy-gt", "--data", str(semantickitti_root), "--out", str(tmp_path), "--context", "1"]) == 0
    seq = tmp_path / "00"
    files = sorted(seq.glob("*.npz"))
    assert [f.name for f in files] == ["000000.npz", "000001.npz", "000002.npz"]
    meta = json.loads((seq / "occupancy.json").read_text())
    assert meta["frames"][1]["context"] == [0, 2] and meta["grid_shape"] == [200, 200, 16]
    geometry = load_occupancy_geometry(seq / "occupancy.json")
    assert geometry.grid_shape == OCC3D_GRID.grid_shape
    occ = load_occupancy(files[1], geometry)
    frame = open_dataset(semantickitti_root)[0][1]
    idx, inside = occ.voxel_index(frame.xyz_in_ego())
    labelled = inside & (SEMANTICKITTI_TO_OCC[frame.labels.semantic] != OCC_IGNORE)
    cls = occ.semantics[tuple(idx[labelled].T)]
    assert (cls != OCC_FREE).all()  # every labelled point of the scan is in an occupied voxel
    agree = np.mean(cls == SEMANTICKITTI_TO_OCC[frame.labels.semantic][labelled])
    assert agree > 0.95
    assert occ.visible[tuple(idx[inside].T)].all()  # every hit voxel is observed
    assert "3 scans" in capsys.readouterr().out


def test_bad_options_are_one_line_errors(semantickitti_root, tmp_path, capsys):
    assert main(["occupancy-gt", "--data", str(semantickitti_root), "--out", str(tmp_path), "--grid", "x"]) == 2
    assert "--grid must be one of" in capsys.readouterr().err
