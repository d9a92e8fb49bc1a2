"""The 4D network: point encoder -> sparse 4D backbone -> task heads, as an mmengine model.

``Perception4DNet`` is task-agnostic: it owns the encoder, one backbone and a
set of heads sharing it (every head has ``forward / loss / predict``). Modes:
``loss`` -> dict of losses, ``predict`` -> one result object per sample,
``tensor`` -> raw head outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from mmengine.model import BaseModel
from torch import nn

from perception4d.models.backbone_spconv import SparseUNet4D  # noqa: F401  (registers the backbone)
from perception4d.models.backbone_dsvt import VoxelTransformer4D  # noqa: F401  (registers the backbone)
from perception4d.models.encoder import PointEncoder
from perception4d.models.heads.flow import FlowHead  # noqa: F401  (registers the head)
from perception4d.models.heads.mos import MosHead  # noqa: F401  (registers the head)
from perception4d.models.heads.occupancy import OccupancyHead  # noqa: F401  (registers the head)
from perception4d.models.heads.occupancy_sparse import SparseOccupancyHead  # noqa: F401  (registers the head)
from perception4d.models.preprocessor import BatchedWindows
from perception4d.models.spconv_utils import guard_spconv_dtypes, set_spconv_algo
from perception4d.errors import ConfigError
from perception4d.registry import MODELS
from perception4d.utils.timing import NullTimer


#: head names and the SampleResult field each one fills
TASK_HEADS = ("flow", "mos", "occupancy")


@dataclass
class SampleResult:
    """Everything the network predicts for one sample, by task (None where the task is not run)."""

    meta: object
    sample: object  # the WindowSample that was predicted
    flow: object | None = None  # FlowPrediction
    mos: object | None = None  # MosPrediction
    occupancy: object | None = None  # OccupancyPrediction

    def to_flow_sample(self):
        """The flow prediction with its sample's ground truth, as the flow metrics take it."""
        from perception4d.metrics.flow import FlowSample

        s = self.sample
        t = s.targets
        if t is None or self.flow is None:
            raise ValueError(f"{self.meta.frame_id}: no flow prediction or no flow ground truth to evaluate")
        return FlowSample(pred_flow=self.flow.flow, gt_flow=t.flow, flow_valid=t.valid, category=t.category,
                          dynamic=t.dynamic, ground=t.ground, xyz=s.source_xyz, ego_flow=self.flow.ego_flow,
                          pred_dynamic=self.flow.is_dynamic, frame_id=self.meta.frame_id)

    def to_mos_sample(self):
        """The online MOS prediction of the newest scan with its labels, as the MOS metric takes it."""
        from perception4d.metrics.mos import MosSample

        s = self.sample
        if self.mos is None or s.mos_labels is None:
            raise ValueError(f"{self.meta.frame_id}: no MOS prediction or no MOS labels to evaluate")
        k = len(s.aligned.offsets) - 2
        sl = slice(int(s.aligned.offsets[k]), int(s.aligned.offsets[k + 1]))
        return MosSample(pred_prob=self.mos.current, gt_mos=s.mos_labels[sl], frame_id=s.frame_ids[k])

    def to_occupancy_sample(self):
        """The occupancy prediction of the reference frame with its ground truth, as the occupancy metrics take it.

        RayIoU rays start at the reference sensor (``sample.sensor_origin``), else at ``DEFAULT_SENSOR_ORIGIN``.
        """
        from perception4d.metrics.occupancy import OccupancySample
        from perception4d.models.heads.occupancy import DEFAULT_SENSOR_ORIGIN

        s, p = self.sample, self.occupancy
        frame_id = s.frame_ids[-1] if s.frame_ids else self.meta.frame_id
        if p is None or s.occupancy is None:
            raise ValueError(f"{frame_id}: no occupancy prediction or no occupancy ground truth to evaluate")
        g = s.occupancy.geometry
        if g.point_range != p.geometry.point_range or g.voxel_size != p.geometry.voxel_size:
            raise ValueError(f"{frame_id}: predicted grid {p.geometry} differs from the ground-truth grid {g}")
        origin = s.sensor_origin if s.sensor_origin is not None else np.asarray(DEFAULT_SENSOR_ORIGIN)
        return OccupancySample.from_gt(p.semantics, s.occupancy, pred_velocity=p.velocity, sensor_origin=origin,
                                       frame_id=frame_id)


@MODELS.register_module()
class Perception4DNet(BaseModel):
    def __init__(self, encoder: dict, backbone: dict, heads: dict[str, dict], data_preprocessor: dict,
                 init_cfg=None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.encoder = PointEncoder(**encoder)
        backbone = dict(backbone)
        backbone.setdefault("in_channels", self.encoder.out_channels)
        self.backbone = MODELS.build(backbone)
        heads_built = {}
        unknown = sorted(set(heads) - set(TASK_HEADS))
        if unknown:
            raise ValueError(f"heads {unknown} are not tasks of this network; use names from {TASK_HEADS}")
        for name, cfg in heads.items():
            cfg = dict(cfg)
            cfg.setdefault("in_channels", self.backbone.out_channels)
            cfg.setdefault("point_channels", self.encoder.point_channels)
            heads_built[name] = MODELS.build(cfg)
        self.heads = nn.ModuleDict(heads_built)
        guard_spconv_dtypes(self)
        grid = self.data_preprocessor.batcher.geometry.grid_shape
        need = getattr(self.backbone, "min_grid_cells", 1)
        if min(grid) < need:
            raise ConfigError(f"geometry grid {grid} is too small for a backbone of {len(self.backbone.channels)} "
                              f"levels: every axis needs at least {need} cells (widen point_range or use fewer "
                              f"levels)")
        self._algo_device: torch.device | None = None
        self.timer = NullTimer()  # set a StageTimer to time encoder / backbone / head

    def _features(self, batch: BatchedWindows):
        device = batch.points.device
        if self._algo_device != device:
            set_spconv_algo(self, device)
            self._algo_device = device
        with self.timer.stage("encoder"):
            voxel_feats, point_feats = self.encoder(batch.points, batch.time, batch.sparse)
        if batch.sparse.num_voxels == 0:  # nothing in the grid: spconv cannot run on zero sites
            return voxel_feats.new_zeros(0, self.backbone.out_channels), point_feats
        with self.timer.stage("backbone"):
            x = self.backbone(batch.sparse.to_spconv(voxel_feats))
        return x.features, point_feats

    def forward(self, inputs: BatchedWindows, data_samples=None, mode: str = "tensor"):
        voxel_feats, point_feats = self._features(inputs)
        with self.timer.stage("head"):
            preds = {name: head(voxel_feats, point_feats, inputs) for name, head in self.heads.items()}
        if mode == "tensor":
            return preds
        if mode == "loss":
            losses = {}
            for name, head in self.heads.items():
                losses.update(head.loss(preds[name], inputs))
            return losses
        if mode == "predict":
            per_task = {name: head.predict(preds[name], inputs) for name, head in self.heads.items()}
            return [SampleResult(meta=s.meta, sample=s, **{name: outs[i] for name, outs in per_task.items()})
                    for i, s in enumerate(inputs.samples)]
        raise ValueError(f"unknown mode {mode!r}: use 'loss', 'predict' or 'tensor'")
