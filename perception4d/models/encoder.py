"""Point encoder: per-point geometric features -> Linear/BN/ReLU -> scatter-mean into voxels."""

from __future__ import annotations

import torch
from torch import nn

from perception4d.core.sparse import SparseTensor4D
from perception4d.ops.gather_conv import take_rows
from perception4d.ops.scatter import scatter_mean

#: number of derived per-point inputs (before the extra input columns)
NUM_DERIVED = 10


class PointEncoder(nn.Module):
    """Encodes each point relative to its voxel and pools the result into the voxel.

    Per point: offset to the voxel centre (3), offset to the voxel's point mean
    (3), height z, x and y scaled by 1/50 m, the time index scaled to [0, 1]
    (position in the window), then ``extra_features`` input columns after
    x, y, z (intensity, normalised to [0, 1] by the readers).
    """

    def __init__(self, out_channels: int = 16, hidden_channels: int = 32, extra_features: int = 1):
        super().__init__()
        self.extra_features = extra_features  # columns after x, y, z (intensity, ...)
        n_in = NUM_DERIVED + extra_features
        self.mlp = nn.Sequential(
            nn.Linear(n_in, hidden_channels, bias=False), nn.BatchNorm1d(hidden_channels), nn.ReLU(inplace=True),
            nn.Linear(hidden_channels, out_channels, bias=False), nn.BatchNorm1d(out_channels),
            nn.ReLU(inplace=True))
        self.out_channels = out_channels
        self.point_channels = out_channels

    def point_inputs(self, points: torch.Tensor, time: torch.Tensor, sparse: SparseTensor4D) -> torch.Tensor:
        """(P, n_in) raw inputs of the points that have a voxel (rows of dropped points are zeros)."""
        p2v = sparse.point_to_voxel
        keep = p2v >= 0
        v = p2v.clamp(min=0)
        xyz = points[:, :3]
        per_voxel = take_rows(torch.cat([sparse.voxel_centers(), sparse.features[:, :3]], 1), v)  # one gather
        centre, mean = per_voxel[:, :3], per_voxel[:, 3:]
        t_scale = 1.0 / max(sparse.spatial_shape[3] - 1, 1)
        feats = torch.cat([
            xyz - centre, xyz - mean, xyz[:, 2:3], xyz[:, :2] * (1.0 / 50.0),
            time.to(xyz.dtype)[:, None] * t_scale, points[:, 3:3 + self.extra_features]], dim=1)
        return torch.where(keep[:, None], feats, torch.zeros_like(feats))

    def forward(self, points: torch.Tensor, time: torch.Tensor, sparse: SparseTensor4D):
        """Returns (voxel features (V, C), point features (P, C))."""
        if sparse.num_voxels == 0:
            dtype = self.mlp[0].weight.dtype
            return points.new_zeros(0, self.out_channels, dtype=dtype), points.new_zeros(
                points.shape[0], self.out_channels, dtype=dtype)
        raw = self.point_inputs(points, time, sparse)
        dtype = self.mlp[0].weight.dtype
        # every point through the MLP, dropped points zeroed after it: no data-dependent selection (which
        # would wait for the device); in training BatchNorm must see the kept points only
        if self.training:
            keep_idx = (sparse.point_to_voxel >= 0).nonzero(as_tuple=True)[0]
            point_feats = raw.new_zeros(raw.shape[0], self.out_channels, dtype=dtype)
            if keep_idx.numel() > 0:
                point_feats = point_feats.index_put((keep_idx,), self.mlp(raw[keep_idx].to(dtype)).to(dtype))
        else:
            out = self.mlp(raw.to(dtype))
            point_feats = torch.where((sparse.point_to_voxel >= 0)[:, None], out, torch.zeros_like(out)).to(dtype)
        # the voxelizer's map: in range by construction (no check, which would wait for the device)
        voxel_feats = scatter_mean(point_feats, sparse.point_to_voxel, sparse.num_voxels, check=False)
        return voxel_feats, point_feats
