"""ONNX export of the voxel transformer backbone, and running the exported graph in onnxruntime.

What is inside the graph and what is outside (the split DSVT uses for its
TensorRT deployment):

* Outside, computed by ``VoxelTransformer4D.plan()`` from the voxel coordinates
  only (sorting, ``unique``, counting: data-dependent shapes that ONNX handles
  poorly): for every level, the set partitions of each (window, axis) pair
  (``index`` (n_sets, S) int64, ``valid`` (n_sets, S) bool, ``inverse`` (N,)
  int64), the position inputs of each window (N, 4) float32, and for every
  pooling step the region tables (``members`` (P, K) int64, ``valid`` (P, K)
  bool, ``parent`` (N,) int64, ``slot`` (N,) int64).
* Inside: everything learnable, ``forward_planned`` (stem, position MLPs,
  set attention, attention pooling, unpooling, norms), as gathers, matmuls and
  softmax. Input ``features`` (N, C_in) float32, output ``voxel_features``
  (N, C_out), rows in the input order. Every first dimension is dynamic (voxel
  counts, set counts per partition, region counts per level).

The exporter is torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``,
onnxscript), with ``Dim.AUTO`` on every first dimension: torch.export finds
which sizes must agree (e.g. the rows of a level's ``inverse`` and its
features) and leaves the others free. A JSON file beside the model lists the
inputs in order with their meaning and the backbone's partition settings, which
is what a runtime needs to rebuild the plan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from perception4d.errors import ConfigError
from perception4d.models.backbone_dsvt import VoxelTransformer4D
from perception4d.models.dsvt.partition import BackbonePlan, LevelPlan, PoolMap, SetPartition, WindowSpec

OUTPUT_NAME = "voxel_features"


def _window_name(w: WindowSpec) -> str:
    return "w{}x{}x{}_s{}x{}x{}".format(*w.shape, *w.shift)


def plan_inputs(plan: BackbonePlan) -> list[tuple[str, torch.Tensor, str]]:
    """(name, tensor, meaning) of every plan tensor the graph reads, in the graph's input order."""
    out = []
    for lvl, level in enumerate(plan.levels):
        for (w, axis), p in level.partitions.items():
            stem = f"l{lvl}_{_window_name(w)}_{axis}"
            out += [(f"{stem}_index", p.index, "(n_sets, S) int64 voxel row of each set slot"),
                    (f"{stem}_valid", p.valid, "(n_sets, S) bool: slot holds a voxel (else padding)"),
                    (f"{stem}_inverse", p.inverse, "(N,) int64 flat slot set * S + k of each voxel")]
        for w, pos in level.positions.items():
            out.append((f"l{lvl}_{_window_name(w)}_pos", pos, "(N, 4) float32 window x, y offsets, grid z, t"))
    for lvl, pool in enumerate(plan.pools):
        out += [(f"pool{lvl}_members", pool.members, "(P, K) int64 fine rows of each region by slot"),
                (f"pool{lvl}_valid", pool.valid, "(P, K) bool: slot holds a voxel"),
                (f"pool{lvl}_parent", pool.parent, "(N,) int64 region row of each fine voxel"),
                (f"pool{lvl}_slot", pool.slot, "(N,) int64 offset slot of each fine voxel in its region")]
    return out


def plan_from_tensors(template: BackbonePlan, tensors: list[torch.Tensor]) -> BackbonePlan:
    """A plan with ``template``'s structure over ``tensors`` (in ``plan_inputs`` order); no coordinates."""
    it = iter(tensors)
    levels = []
    for level in template.levels:
        parts = {key: SetPartition(next(it), next(it), next(it)) for key in level.partitions}
        positions = {w: next(it) for w in level.positions}
        levels.append(LevelPlan(coords=level.coords, spatial_shape=level.spatial_shape, partitions=parts,
                                positions=positions))
    pools = [PoolMap(members=next(it), valid=next(it), parent=next(it), slot=next(it), coords=pool.coords,
                     spatial_shape=pool.spatial_shape) for pool in template.pools]
    return BackbonePlan(levels=levels, pools=pools)


class PlannedBackbone(nn.Module):
    """The export adapter: ``forward(features, plan_tensors)`` -> ``backbone.forward_planned``."""

    def __init__(self, backbone: VoxelTransformer4D, template: BackbonePlan):
        super().__init__()
        self.backbone = backbone
        self.template = template

    def forward(self, features: torch.Tensor, plan_tensors: list[torch.Tensor]) -> torch.Tensor:
        return self.backbone.forward_planned(features, plan_from_tensors(self.template, plan_tensors))


@dataclass
class BackboneExport:
    path: Path
    input_names: list[str]
    output_name: str
    manifest: Path


def _require_transformer(backbone: nn.Module) -> VoxelTransformer4D:
    if not isinstance(backbone, VoxelTransformer4D):
        raise ConfigError(f"ONNX export needs a VoxelTransformer4D backbone, this model has "
                          f"{type(backbone).__name__} (sparse-conv backbones have no ONNX path)")
    return backbone


def export_backbone_onnx(backbone: nn.Module, features: torch.Tensor, coords: torch.Tensor,
                         spatial_shape, path: str | Path, opset: int = 18) -> BackboneExport:
    """Export ``backbone.forward_planned`` traced on one example (features, int32 coords) to ``path``.

    The example only fixes the graph's structure (which partitions exist), not its sizes: every
    first dimension is dynamic. Runs on the example's device; the backbone is put in eval mode.
    """
    net = _require_transformer(backbone).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plan = net.plan(coords, spatial_shape)
    named = plan_inputs(plan)
    tensors = [t for _, t, _ in named]
    names = ["features"] + [n for n, _, _ in named]
    auto = torch.export.Dim.AUTO
    dynamic = ({0: auto}, [{0: auto} for _ in tensors])
    with torch.no_grad():
        torch.onnx.export(PlannedBackbone(net, plan).eval(), (features, tensors), str(path), dynamo=True,
                          dynamic_shapes=dynamic, input_names=names, output_names=[OUTPUT_NAME],
                          opset_version=opset, external_data=False, verbose=False)
    _check_dynamic(path)
    manifest = path.with_suffix(path.suffix + ".json")
    manifest.write_text(json.dumps({
        "output": {"name": OUTPUT_NAME, "meaning": f"(N, {net.out_channels}) voxel features, input row order"},
        "inputs": [{"name": "features", "meaning": f"(N, {net.stem[0].in_features}) float32 voxel features"}]
        + [{"name": n, "meaning": m} for n, _, m in named],
        "plan": {"set_size": net.set_size, "pool_stride": list(net.pool_stride), "time_mode": net.time_mode,
                 "levels": [[{"window": list(w.shape), "shift": list(w.shift), "axis": a}
                             for w, a in net.plan_keys(lvl)] for lvl in range(len(net.channels))],
                 "coords": "int32 (b, x, y, z, t) of the level-0 voxels; spatial_shape (X, Y, Z, T)"},
    }, indent=1))
    return BackboneExport(path=path, input_names=names, output_name=OUTPUT_NAME, manifest=manifest)


def _check_dynamic(path: Path) -> None:
    """Refuse a graph whose first dimensions were fixed to the example's sizes (an example too small)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    fixed = [i.name for i in model.graph.input
             if i.type.tensor_type.shape.dim and i.type.tensor_type.shape.dim[0].HasField("dim_value")]
    if fixed:
        raise ConfigError(f"{path}: the export fixed the first dimension of {fixed[:4]} to the example's size "
                          f"(a partition of one set or a level of one voxel); export from a larger example window")


class OnnxBackbone:
    """Runs an exported backbone in onnxruntime, with the plan computed outside by the torch backbone."""

    def __init__(self, path: str | Path, backbone: nn.Module, providers: list[str] | None = None):
        import onnxruntime as ort

        self.backbone = _require_transformer(backbone)
        self.session = ort.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def feeds(self, features: torch.Tensor, coords: torch.Tensor, spatial_shape) -> dict[str, np.ndarray]:
        plan = self.backbone.plan(coords, spatial_shape)
        values = {"features": features.detach().float().cpu().numpy()}
        values.update({n: t.cpu().numpy() for n, t, _ in plan_inputs(plan)})
        missing = [n for n in self.input_names if n not in values]
        if missing:
            raise ConfigError(f"the ONNX model expects inputs {missing[:4]} that this backbone's plan does not "
                              f"produce: export it again from the same config")
        return {n: values[n] for n in self.input_names}

    def __call__(self, features: torch.Tensor, coords: torch.Tensor, spatial_shape) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], self.feeds(features, coords, spatial_shape))[0]
