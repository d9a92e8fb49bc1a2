"""Export a config's voxel transformer backbone to ONNX and check it in onnxruntime.

    python tools/export_onnx.py CONFIG [CHECKPOINT] --out F.onnx [--preset hdl64e] [--example-voxels 30000]

The example input is one simulated window of the config's geometry, through the
config's point encoder (so the features have their real distribution); the
export keeps every first dimension dynamic, so the example's size only matters
for tracing time. The graph takes the voxel features and the precomputed plan
(sets, positions, pooling tables; see perception4d/models/export.py and the
``F.onnx.json`` manifest written beside the model). The check runs onnxruntime
on a different subset of the window's voxels and compares with PyTorch.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch


def _window_voxels(model, geometry, preset: str, seed: int, task: str):
    """(int32 coords, encoder features, spatial shape) of one simulated window."""
    from perception4d.core import Window
    from perception4d.datasets.sample import build_window_sample
    from perception4d.sim import simulate

    seq = simulate(preset=preset, num_frames=geometry.num_frames, seed=seed, occupancy=None)
    sample = build_window_sample(Window(tuple(seq.frames)), geometry, "export", with_targets=False, tasks=(task,))
    with torch.no_grad():
        batch = model.data_preprocessor({"inputs": [sample]})["inputs"]
        feats, _ = model.encoder(batch.points, batch.time, batch.sparse)
    return batch.sparse.coords, feats, batch.sparse.spatial_shape


def _subset(coords, feats, n: int, seed: int):
    if n <= 0 or n >= len(coords):
        return coords, feats
    keep = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(len(coords), n, replace=False)))
    return coords[keep], feats[keep]


def _sparse_tensor(coords, feats, shape):
    from perception4d.models.spconv_utils import import_spconv

    return import_spconv().SparseConvTensor(feats, coords, list(shape), int(coords[:, 0].max()) + 1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("checkpoint", nargs="?", help="weights (default: random init, e.g. to test a deployment path)")
    p.add_argument("--out", required=True, help="the .onnx file to write (a .onnx.json manifest goes beside it)")
    p.add_argument("--preset", default="hdl64e", help="simulated sensor of the example window")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--example-voxels", type=int, default=30000, help="voxels of the traced example (0: all)")
    p.add_argument("--check-voxels", type=int, default=0, help="voxels of the onnxruntime check (0: all)")
    p.add_argument("--no-check", action="store_true", help="export only")
    p.add_argument("--opset", type=int, default=18)
    a = p.parse_args(argv)

    from mmengine.config import Config

    from perception4d.core import Geometry
    from perception4d.errors import ConfigError
    from perception4d.models import build_model
    from perception4d.models.export import OnnxBackbone, export_backbone_onnx

    cfg = Config.fromfile(a.config)
    model = build_model(cfg.model)
    if a.checkpoint:
        from perception4d.engine.checkpoint import load_state_dict

        model.load_state_dict(load_state_dict(a.checkpoint))
    model.eval()
    geometry = Geometry.from_config(cfg.geometry)
    task = next(iter(cfg.model.heads))
    try:
        coords, feats, shape = _window_voxels(model, geometry, a.preset, a.seed, task)
        ex_coords, ex_feats = _subset(coords, feats, a.example_voxels, a.seed)
        t0 = time.perf_counter()
        export = export_backbone_onnx(model.backbone, ex_feats, ex_coords, shape, a.out, opset=a.opset)
    except ConfigError as e:
        sys.exit(f"export_onnx: {e}")
    print(f"wrote {export.path} ({export.path.stat().st_size / 2**20:.1f} MiB, {len(export.input_names)} inputs, "
          f"traced on {len(ex_coords)} voxels in {time.perf_counter() - t0:.1f} s) and {export.manifest}")
    if a.no_check:
        return
    ck_coords, ck_feats = _subset(coords, feats, a.check_voxels, a.seed + 1)
    with torch.no_grad():
        t0 = time.perf_counter()
        ref = model.backbone(_sparse_tensor(ck_coords, ck_feats, shape)).features.numpy()
        t_torch = time.perf_counter() - t0
    runner = OnnxBackbone(export.path, model.backbone)
    t0 = time.perf_counter()
    out = runner(ck_feats, ck_coords, shape)
    t_ort = time.perf_counter() - t0
    diff = float(np.abs(out - ref).max())
    rel = diff / max(float(np.abs(ref).max()), 1e-12)
    ok = np.allclose(out, ref, rtol=1e-3, atol=1e-4)
    print(f"check on {len(ck_coords)} voxels: max |onnxruntime - pytorch| = {diff:.2e} (relative {rel:.1e}), "
          f"{'within' if ok else 'OUTSIDE'} rtol 1e-3; onnxruntime {t_ort * 1e3:.0f} ms (plan included), "
          f"pytorch {t_torch * 1e3:.0f} ms, CPU")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
