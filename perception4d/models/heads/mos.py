"""Moving-object segmentation head: a moving/static logit for every point of the window.

Every point of every scan in the window gets a logit (not only the newest
scan), so that each scan is predicted in every window it falls into and the
receding-horizon Bayes filter (perception4d.mos.fusion) can fuse them. Points
outside the grid get the prior logit 0 (probability 0.5: no evidence).

Loss: binary cross-entropy over labelled points (MOS label 0 = unlabelled is
ignored), the moving class weighted by ``moving_weight`` because moving points
are a few percent of a scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from perception4d.ops.gather_conv import take_rows
from perception4d.registry import MODELS

MOS_IGNORE, MOS_STATIC, MOS_MOVING = 0, 1, 2


@dataclass
class MosPrediction:
    """Moving probabilities of one window's points, frame by frame."""

    prob: np.ndarray  # (M,) float32 over all points of the window, in window order
    offsets: np.ndarray  # (T + 1,) frame k's points are prob[offsets[k]:offsets[k + 1]]
    in_grid: np.ndarray  # (M,) bool

    def frame(self, k: int) -> np.ndarray:
        return self.prob[self.offsets[k]:self.offsets[k + 1]]

    @property
    def current(self) -> np.ndarray:
        """Probabilities of the newest scan (the online output)."""
        return self.frame(len(self.offsets) - 2)


@MODELS.register_module()
class MosHead(nn.Module):
    task = "mos"

    def __init__(self, in_channels: int, point_channels: int, hidden_channels: int = 32,
                 moving_weight: float = 4.0):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_channels + point_channels, hidden_channels), nn.ReLU(inplace=True),
            nn.Linear(hidden_channels, 1))
        self.moving_weight = float(moving_weight)

    def forward(self, voxel_features: torch.Tensor, point_features: torch.Tensor, batch) -> torch.Tensor:
        """(P,) logits of every point of the batch; 0 for points without a voxel."""
        p2v = batch.sparse.point_to_voxel
        if voxel_features.shape[0] == 0:
            return torch.zeros(p2v.shape[0], device=p2v.device)
        inside = p2v >= 0
        feats = torch.cat([take_rows(voxel_features, p2v), point_features], dim=1)
        logits = self.mlp(feats.to(self.mlp[0].weight.dtype)).float()[:, 0]
        return torch.where(inside, logits, torch.zeros_like(logits))

    def loss(self, logits: torch.Tensor, batch) -> dict[str, torch.Tensor]:
        labels = batch.mos_labels
        if labels is None:
            raise ValueError("the MOS loss needs samples with MOS labels (tasks including 'mos', with_targets=True)")
        keep = (labels != MOS_IGNORE) & (batch.sparse.point_to_voxel >= 0)
        target = (labels[keep] == MOS_MOVING).float()
        weight = torch.where(target > 0, torch.full_like(target, self.moving_weight), torch.ones_like(target))
        if target.numel() == 0:
            return {"loss_mos": logits.sum() * 0.0}
        loss = nn.functional.binary_cross_entropy_with_logits(logits[keep], target, weight=weight)
        with torch.no_grad():
            pred = logits[keep] > 0
            tp = (pred & (target > 0)).sum()
            denom = (pred | (target > 0)).sum().clamp(min=1)
        return {"loss_mos": loss, "iou_moving": tp.float() / denom.float()}

    def predict(self, logits: torch.Tensor, batch) -> list[MosPrediction]:
        prob = torch.sigmoid(logits.detach().float()).cpu().numpy()
        inside = (batch.sparse.point_to_voxel >= 0).cpu().numpy()
        out, start = [], 0
        for s in batch.samples:
            n = int(s.aligned.offsets[-1])
            out.append(MosPrediction(prob=prob[start:start + n], offsets=s.aligned.offsets.copy(),
                                     in_grid=inside[start:start + n]))
            start += n
        return out
