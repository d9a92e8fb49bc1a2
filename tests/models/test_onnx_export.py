"""ONNX export of the voxel transformer backbone: onnxruntime output equals PyTorch, at sizes the export never saw."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config

from perception4d.errors import ConfigError
from perception4d.models import build_model
from perception4d.models.backbone_dsvt import VoxelTransformer4D
from perception4d.models.export import OnnxBackbone, export_backbone_onnx, plan_inputs
from perception4d.models.spconv_utils import import_spconv

spconv = import_spconv()
REPO = Path(__file__).resolve().parents[2]
SHAPE = (48, 40, 8, 5)


def _coords(n, seed):
    rng = np.random.default_rng(seed)
    c = np.unique(np.c_[rng.integers(0, 2, n), *(rng.integers(0, s, n) for s in SHAPE)], axis=0)
    return torch.from_numpy(c[rng.permutation(len(c))].astype(np.int32))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    net = VoxelTransformer4D(in_channels=8, channels=(16, 32), depths=(1, 1), window_shapes=((6, 6), (8, 8)),
                             set_size=12, time_mode="axis", time_window=2).eval()
    coords = _coords(1500, seed=0)
    path = tmp_path_factory.mktemp("onnx") / "backbone.onnx"
    export = export_backbone_onnx(net, torch.randn(len(coords), 8), coords, SHAPE, path)
    return net, export


@pytest.mark.parametrize("n, seed", [(1500, 0), (2600, 1), (400, 2)])
def test_onnxruntime_matches_pytorch_at_any_voxel_count(exported, n, seed):
    net, export = exported
    coords = _coords(n, seed)
    feats = torch.randn(len(coords), 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = net(spconv.SparseConvTensor(feats, coords, list(SHAPE), 2)).features.numpy()
    out = OnnxBackbone(export.path, net)(feats, coords, SHAPE)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-4)


def test_the_graph_reads_the_plan_and_the_manifest_says_so(exported):
    import onnx

    net, export = exported
    model = onnx.load(str(export.path))
    names = [i.name for i in model.graph.input]
    plan = net.plan(_coords(300, 3), SHAPE)
    assert names == ["features"] + [n for n, _, _ in plan_inputs(plan)] == export.input_names
    assert all(i.type.tensor_type.shape.dim[0].HasField("dim_param") for i in model.graph.input)  # dynamic rows
    ops = {node.op_type for node in model.graph.node}
    assert "Softmax" in ops or "Attention" in ops
    manifest = json.loads(export.manifest.read_text())
    assert [i["name"] for i in manifest["inputs"]] == names
    assert manifest["plan"]["set_size"] == 12 and manifest["plan"]["time_mode"] == "axis"


def test_sparse_conv_backbones_are_refused(tmp_path):
    cfg = Config.fromfile(str(REPO / "configs" / "flow_sparseunet_5f_sim.py"))
    model = build_model(cfg.model)
    coords = _coords(200, 4)
    with pytest.raises(ConfigError, match="VoxelTransformer4D"):
        export_backbone_onnx(model.backbone, torch.randn(len(coords), 16), coords, SHAPE, tmp_path / "x.onnx")


@pytest.mark.slow
def test_export_tool_end_to_end(tmp_path):
    config = tmp_path / "flow_dsvt_small.py"  # the shipped config with two levels: tracing time halves
    config.write_text(f"_base_ = [{str(REPO / 'configs' / 'flow_dsvt_5f_sim.py')!r}]\n"
                      "model = dict(backbone=dict(channels=(16, 32), depths=(1, 1)))\n")
    out = tmp_path / "flow_dsvt.onnx"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "export_onnx.py"), str(config), "--out", str(out),
                           "--example-voxels", "20000", "--check-voxels", "8000"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file() and out.with_suffix(".onnx.json").is_file()
    assert "max |onnxruntime - pytorch|" in proc.stdout
