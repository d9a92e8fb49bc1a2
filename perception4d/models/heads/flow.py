"""Scene-flow head: per-point residual flow from the voxel and point features of sweep t.

The final flow is the ego-motion flow plus the predicted residual; points
outside the grid (no voxel) get the ego-motion flow, so every input point has
an output row. The grid is never densified: voxel features are gathered through
the point->voxel map.

Loss: endpoint error averaged per speed bucket, then over the non-empty buckets
(the DeFlow/Flow4D recipe). Speed is the GT motion relative to the static scene,
|gt - ego flow| / dt; bucket edges default to 0.4 and 1.0 m/s. Without it the ~95 %
static points dominate the mean and the net learns to predict ego motion only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from perception4d.ops.gather_conv import take_rows
from perception4d.registry import MODELS

#: AV2 dynamic threshold: 0.05 m per 0.1 s
DYNAMIC_SPEED = 0.5


@dataclass
class FlowPrediction:
    """Per-point flow of one source sweep (AV2 convention, ego motion included)."""

    flow: np.ndarray  # (N, 3) float32
    is_dynamic: np.ndarray  # (N,) bool: |flow - ego flow| / dt >= 0.5 m/s
    ego_flow: np.ndarray  # (N, 3) float32
    in_grid: np.ndarray  # (N,) bool: the point had a voxel (False: flow = ego flow)


@MODELS.register_module()
class FlowHead(nn.Module):
    task = "flow"

    def __init__(self, in_channels: int, point_channels: int, hidden_channels: int = 32,
                 speed_edges: tuple[float, ...] = (0.4, 1.0)):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_channels + point_channels, hidden_channels), nn.ReLU(inplace=True),
            nn.Linear(hidden_channels, hidden_channels), nn.ReLU(inplace=True),
            nn.Linear(hidden_channels, 3))
        self.register_buffer("speed_edges", torch.tensor(speed_edges, dtype=torch.float32), persistent=False)

    def forward(self, voxel_features: torch.Tensor, point_features: torch.Tensor, batch) -> torch.Tensor:
        """(Ns, 3) flow of the source points: ego flow + residual inside the grid, ego flow outside."""
        rows = batch.source_rows
        if voxel_features.shape[0] == 0:
            return batch.ego_flow.clone()
        p2v = take_rows(batch.sparse.point_to_voxel, rows)
        inside = p2v >= 0
        feats = torch.cat([take_rows(voxel_features, p2v), take_rows(point_features, rows)], dim=1)
        residual = self.mlp(feats.to(self.mlp[0].weight.dtype)).float()
        return batch.ego_flow + torch.where(inside[:, None], residual, torch.zeros_like(residual))

    def loss(self, flow: torch.Tensor, batch) -> dict[str, torch.Tensor]:
        t = batch.targets
        if t is None:
            raise ValueError("the flow loss needs samples with flow labels (build them with with_targets=True)")
        valid = t.valid & batch.source_in_grid
        epe = torch.linalg.vector_norm(flow - t.flow, dim=1)
        speed = torch.linalg.vector_norm(t.flow - batch.ego_flow, dim=1) / batch.dt
        bucket = torch.bucketize(speed, self.speed_edges)
        n_buckets = len(self.speed_edges) + 1
        sums = torch.zeros(n_buckets, device=flow.device).index_add_(0, bucket[valid], epe[valid])
        counts = torch.zeros(n_buckets, device=flow.device).index_add_(0, bucket[valid], torch.ones_like(epe[valid]))
        present = counts > 0
        means = sums[present] / counts[present]
        loss = means.mean() if means.numel() else flow.sum() * 0.0
        with torch.no_grad():
            dyn = valid & (speed >= DYNAMIC_SPEED)
            stat = valid & ~dyn
            epe_dyn = epe[dyn].mean() if bool(dyn.any()) else torch.zeros((), device=flow.device)
            epe_stat = epe[stat].mean() if bool(stat.any()) else torch.zeros((), device=flow.device)
        return {"loss_flow": loss, "epe_dynamic": epe_dyn, "epe_static": epe_stat}

    def predict(self, flow: torch.Tensor, batch) -> list[FlowPrediction]:
        flow = flow.detach().float()
        speed = torch.linalg.vector_norm(flow - batch.ego_flow, dim=1) / batch.dt
        dyn = (speed >= DYNAMIC_SPEED).cpu().numpy()
        flow_np = flow.cpu().numpy()
        ego_np = batch.ego_flow.cpu().numpy()
        inside = batch.source_in_grid.cpu().numpy()
        out, start = [], 0
        for n in batch.source_counts:
            sl = slice(start, start + n)
            out.append(FlowPrediction(flow=flow_np[sl], is_dynamic=dyn[sl], ego_flow=ego_np[sl], in_grid=inside[sl]))
            start += n
        return out
