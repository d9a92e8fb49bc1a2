"""Semantic-occupancy head: the shared backbone's 4D voxels -> a dense grid of classes and velocities.

Pooling. Each backbone voxel (every time slice) goes to the cell of a coarse
grid (the occupancy grid with ``coarse_factor`` times larger voxels) holding
its centre. A cell's input is the mean feature of its voxels, their mean time
index ``t / (T - 1)`` (recent evidence vs old) and an empty indicator (1 where
no voxel fell; the other channels are then 0). With ``fine_evidence`` the same
indicator and mean time are also pooled at the full occupancy resolution and
join the decoder there, so surfaces are not blurred to the coarse cell.

Decoder. A dense 3D U-Net on the coarse grid (Conv3d/BatchNorm3d/ReLU,
``channels[l]`` wide at level l, stride 2 per level, trilinear upsampling back
up with skip connections), a ConvTranspose3d of stride ``coarse_factor`` to
the occupancy resolution, and a 1x1x1 conv to ``num_classes`` logits and 3
velocity channels (m/s, ego axes). It predicts every voxel, also those no scan
saw (scene completion).

Loss, over the supervised voxels: ground truth occupied (any class but free
and ``OCC_IGNORE``), and ground truth free where ``visible`` (free space
behind surfaces is unknown; ``free_visible_only=False`` supervises all of it).

* Cross-entropy with class weights ``w_c = 1 / ln(1.02 + f_c)``, ``f_c`` the
  frequency of class c among the batch's supervised voxels (ENet's rule:
  weights from ~1.5 for the most frequent class to ~50 for the rarest; free
  space is the bulk of real Occ3D grids, solid interiors of simulated ones),
  free space further scaled by ``free_weight``; or fixed ``class_weights``.
* Lovasz-softmax (Berman et al., CVPR 2018): for each class present in the
  supervised voxels, the Lovasz extension of the Jaccard loss at the errors
  ``|1[y = c] - p_c|``; mean over those classes; weight ``lovasz_weight``.
* Velocity: L1 (summed over x, y, z) on ground-truth occupied voxels, weight
  1 where ``|v| > moving_threshold`` and ``static_velocity_weight`` elsewhere,
  normalised by the weight sum; weight ``velocity_weight``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from perception4d.core.geometry import Geometry
from perception4d.core.labels import OCC_CLASSES, OCC_FREE, OCC_IGNORE
from perception4d.errors import ConfigError
from perception4d.ops.scatter import scatter_mean
from perception4d.registry import MODELS
from perception4d.utils.device import device_constant

#: sensor position (ego frame, m) assumed when a sample's extrinsic does not give it (KITTI's mount height)
DEFAULT_SENSOR_ORIGIN = (0.0, 0.0, 1.73)
ENET_C = 1.02


@dataclass
class OccupancyOutput:
    """Raw head output for a batch on the occupancy grid."""

    logits: torch.Tensor  # (B, K, X, Y, Z)
    velocity: torch.Tensor  # (B, 3, X, Y, Z) m/s


@dataclass
class OccupancyPrediction:
    """Predicted occupancy of one sample's reference frame (its ego frame, (X, Y, Z) index order)."""

    semantics: np.ndarray  # (X, Y, Z) uint8 compact class (``OCC_CLASSES``), 0 = free
    velocity: np.ndarray  # (X, Y, Z, 3) float32 m/s, 0 where predicted free
    geometry: Geometry


def lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Increments of the Jaccard loss along errors sorted in decreasing order (foreground flags, float)."""
    total = fg_sorted.sum()
    intersection = total - fg_sorted.cumsum(0)
    union = total + (1.0 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_softmax(prob: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Lovasz-softmax loss of (N, K) class probabilities against (N,) labels, mean over present classes."""
    if labels.numel() == 0:
        return prob.sum() * 0.0
    present = torch.unique(labels).tolist()
    losses = []
    for c in present:
        fg = (labels == c).to(prob.dtype)
        errors = (fg - prob[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[order])))
    return torch.stack(losses).mean()


def voxel_cells(sparse, geometry: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, 3) int64 cell of ``geometry``'s grid holding each voxel centre of ``sparse``, and (V,) bool: inside it.

    Rows of a batch index beyond ``sparse.batch_size`` (the padding rows of a capacity-sized tensor,
    ``voxelize_static``) are outside."""
    dev = sparse.coords.device
    shape = device_constant(geometry.grid_shape, dev)
    lower = device_constant(geometry.point_range[:3], dev, torch.float32)
    size = device_constant(geometry.voxel_size, dev, torch.float32)
    idx = torch.floor((sparse.voxel_centers() - lower) / size).long()
    return idx, ((idx >= 0) & (idx < shape)).all(dim=1) & (sparse.coords[:, 0] < sparse.batch_size)


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm3d(cout),
                         nn.ReLU(inplace=True))


class OccupancyLossSettings:
    """Loss settings and target checks shared by the occupancy heads (dense here, generative sparse in
    ``occupancy_sparse``); the head sets ``self.grid``."""

    def _init_loss(self, num_classes: int, class_weights: Sequence[float] | None, free_weight: float,
                   lovasz_weight: float, velocity_weight: float, static_velocity_weight: float,
                   moving_threshold: float, free_visible_only: bool) -> None:
        name = type(self).__name__
        self.num_classes = int(num_classes)
        if not 2 <= self.num_classes <= OCC_IGNORE:
            raise ConfigError(f"{name}.num_classes must be in 2..{OCC_IGNORE}, got {num_classes}")
        if class_weights is not None and len(class_weights) != self.num_classes:
            raise ConfigError(f"{name}.class_weights needs {self.num_classes} values, got {len(class_weights)}")
        self.register_buffer("fixed_weights", None if class_weights is None else
                             torch.tensor(class_weights, dtype=torch.float32), persistent=False)
        self.free_weight = float(free_weight)
        self.lovasz_weight = float(lovasz_weight)
        self.velocity_weight = float(velocity_weight)
        self.static_velocity_weight = float(static_velocity_weight)
        self.moving_threshold = float(moving_threshold)
        self.free_visible_only = bool(free_visible_only)

    def class_weights(self, labels: torch.Tensor) -> torch.Tensor:
        """(K,) cross-entropy weights: ``class_weights`` if given, else ENet's rule on ``labels``."""
        if self.fixed_weights is not None:
            return self.fixed_weights.to(labels.device)
        freq = torch.bincount(labels, minlength=self.num_classes).float() / max(labels.numel(), 1)
        w = 1.0 / torch.log(ENET_C + freq)
        w[OCC_FREE] = w[OCC_FREE] * self.free_weight
        return w

    def _check_targets(self, targets) -> None:
        if targets is None:
            raise ValueError("the occupancy loss needs samples with occupancy ground truth (tasks including "
                             "'occupancy', with_targets=True)")
        g = targets.geometry
        if g.point_range != self.grid.point_range or g.voxel_size != self.grid.voxel_size:
            raise ValueError(f"occupancy ground truth on {g.point_range} at {g.voxel_size} m, the head predicts "
                             f"{self.grid.point_range} at {self.grid.voxel_size} m")


@MODELS.register_module()
class OccupancyHead(OccupancyLossSettings, nn.Module):
    """Dense semantic occupancy and velocity on ``grid`` from the backbone voxels (see the module docstring)."""

    task = "occupancy"

    def __init__(self, in_channels: int, grid: dict, point_channels: int = 0, num_classes: int = len(OCC_CLASSES),
                 coarse_factor: int = 2, channels: Sequence[int] = (32, 64, 64), fine_evidence: bool = True,
                 class_weights: Sequence[float] | None = None, free_weight: float = 1.0,
                 lovasz_weight: float = 1.0, velocity_weight: float = 0.5, static_velocity_weight: float = 0.1,
                 moving_threshold: float = 0.2, free_visible_only: bool = True):
        super().__init__()
        try:
            self.grid = Geometry.from_config({**dict(grid), "num_frames": 1})
        except (KeyError, TypeError) as e:
            raise ConfigError(f"OccupancyHead.grid needs point_range and voxel_size, got {grid!r} ({e})") from None
        self.coarse_factor = int(coarse_factor)
        f = self.coarse_factor
        if f < 1 or any(n % f for n in self.grid.grid_shape):
            raise ConfigError(f"OccupancyHead: coarse_factor {coarse_factor} must be >= 1 and divide the "
                              f"occupancy grid {self.grid.grid_shape}")
        self.coarse = Geometry(self.grid.point_range, tuple(v * f for v in self.grid.voxel_size))
        self.channels = tuple(int(c) for c in channels)
        if not self.channels or min(self.channels) < 1:
            raise ConfigError(f"OccupancyHead.channels needs at least one positive width, got {channels}")
        self._init_loss(num_classes, class_weights, free_weight, lovasz_weight, velocity_weight,
                        static_velocity_weight, moving_threshold, free_visible_only)
        self.fine_evidence = bool(fine_evidence)

        c = self.channels
        self.stem = nn.Sequential(_block(in_channels + 2, c[0]), _block(c[0], c[0]))
        self.down = nn.ModuleList(nn.Sequential(_block(c[lvl - 1], c[lvl], stride=2), _block(c[lvl], c[lvl]))
                                  for lvl in range(1, len(c)))
        self.up = nn.ModuleList(nn.Sequential(_block(c[lvl] + c[lvl - 1], c[lvl - 1]), _block(c[lvl - 1], c[lvl - 1]))
                                for lvl in range(1, len(c)))
        self.to_full = nn.Sequential(nn.ConvTranspose3d(c[0], c[0], f, stride=f, bias=False), nn.BatchNorm3d(c[0]),
                                     nn.ReLU(inplace=True))
        self.refine = _block(c[0] + (2 if self.fine_evidence else 0), c[0])
        self.out = nn.Conv3d(c[0], self.num_classes + 3, 1)

    # pooling -----------------------------------------------------------------
    def _pool(self, values: torch.Tensor, batch, geometry: Geometry) -> torch.Tensor:
        """(B, C + 2, X, Y, Z): scatter-mean of per-voxel ``values`` (V, C), mean time, empty indicator."""
        sparse = batch.sparse
        idx, inside = voxel_cells(sparse, geometry)
        nx, ny, nz = geometry.grid_shape
        flat = ((sparse.coords[:, 0].long() * nx + idx[:, 0]) * ny + idx[:, 1]) * nz + idx[:, 2]
        flat = torch.where(inside, flat, torch.full_like(flat, -1))
        t = sparse.coords[:, 4:5].float() / max(sparse.spatial_shape[3] - 1, 1)
        vals = torch.cat([values.float(), t, torch.ones_like(t)], dim=1)
        pooled = scatter_mean(vals, flat, sparse.batch_size * nx * ny * nz, check=False)
        pooled = torch.cat([pooled[:, :-1], 1.0 - pooled[:, -1:]], dim=1)  # mean of ones -> empty indicator
        return pooled.view(sparse.batch_size, nx, ny, nz, -1).permute(0, 4, 1, 2, 3).contiguous()

    def forward(self, voxel_features: torch.Tensor, point_features: torch.Tensor, batch) -> OccupancyOutput:
        dtype = self.stem[0][0].weight.dtype
        x = self.stem(self._pool(voxel_features, batch, self.coarse).to(dtype))
        skips = []
        for down in self.down:
            skips.append(x)
            x = down(x)
        for up in reversed(self.up):
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
            x = up(torch.cat([x, skip], dim=1))
        x = self.to_full(x)
        if self.fine_evidence:
            empty_feats = voxel_features.new_zeros(voxel_features.shape[0], 0)
            x = torch.cat([x, self._pool(empty_feats, batch, self.grid).to(x.dtype)], dim=1)
        y = self.out(self.refine(x)).float()
        return OccupancyOutput(logits=y[:, :self.num_classes], velocity=y[:, self.num_classes:])

    # loss ----------------------------------------------------------------------
    def supervised(self, targets) -> torch.Tensor:
        """(B, X, Y, Z) bool: voxels the classification loss sees."""
        sem = targets.semantics
        keep = sem != OCC_IGNORE
        if self.free_visible_only:
            keep &= (sem != OCC_FREE) | targets.visible
        return keep

    def loss(self, out: OccupancyOutput, batch) -> dict[str, torch.Tensor]:
        t = batch.occupancy
        self._check_targets(t)
        sem = t.semantics
        keep = self.supervised(t)
        logits = out.logits.permute(0, 2, 3, 4, 1)[keep]
        labels = sem[keep]
        if labels.numel() and int(labels.max()) >= self.num_classes:
            raise ValueError(f"occupancy ground truth holds class {int(labels.max())}, the head has "
                             f"{self.num_classes} classes (0..{self.num_classes - 1}, {OCC_IGNORE} ignore)")
        if labels.numel():
            ce = F.cross_entropy(logits, labels, weight=self.class_weights(labels))
        else:
            ce = out.logits.sum() * 0.0
        lovasz = lovasz_softmax(logits.softmax(dim=1), labels)

        occupied = (sem != OCC_FREE) & (sem != OCC_IGNORE)
        v_gt = t.velocity[occupied]
        v_pred = out.velocity.permute(0, 2, 3, 4, 1)[occupied]
        moving = torch.linalg.vector_norm(v_gt, dim=1) > self.moving_threshold
        w = torch.where(moving, torch.ones_like(v_gt[:, 0]), torch.full_like(v_gt[:, 0], self.static_velocity_weight))
        vel = ((v_pred - v_gt).abs().sum(dim=1) * w).sum() / w.sum().clamp(min=1e-6)
        with torch.no_grad():
            pred_occ = logits.argmax(dim=1) != OCC_FREE
            gt_occ = labels != OCC_FREE
            iou = (pred_occ & gt_occ).sum().float() / (pred_occ | gt_occ).sum().clamp(min=1).float()
        return {"loss_occ_ce": ce, "loss_occ_lovasz": self.lovasz_weight * lovasz,
                "loss_occ_velocity": self.velocity_weight * vel, "iou_occupied": iou}

    # predict -------------------------------------------------------------------
    def predict(self, out: OccupancyOutput, batch) -> list[OccupancyPrediction]:
        sem = out.logits.detach().argmax(dim=1)
        vel = out.velocity.detach().float().permute(0, 2, 3, 4, 1) * (sem != OCC_FREE)[..., None]
        sem_np = sem.to(torch.uint8).cpu().numpy()
        vel_np = vel.cpu().numpy().astype(np.float32)
        return [OccupancyPrediction(semantics=sem_np[i], velocity=vel_np[i], geometry=self.grid)
                for i in range(sem_np.shape[0])]
