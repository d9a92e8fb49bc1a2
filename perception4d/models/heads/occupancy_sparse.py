"""Generative sparse semantic-occupancy head: coarse sparse voxels -> pruned upsampling -> classes and velocities.

The alternative to ``OccupancyHead``'s dense coarse decoder, with its contract
(``forward / loss / predict``, ``OccupancyPrediction``), whose decoder holds only
the voxels it believes occupied: its cost follows the occupied volume, not the grid.

Levels: ``coarse_factor`` = 2^L; level 0 has voxels ``coarse_factor`` times the
occupancy voxel, level L is the occupancy grid, each level halves the voxel.

Pooling. Every backbone voxel (all time slices: the history shows space the
current scan misses and where movers were; pooling collapses time, so the cost
does not grow with the window) goes to the level-l cell holding its centre. A
cell's evidence: mean backbone feature, mean time ``t / (T - 1)``, density
(backbone voxels / the cell's capacity in voxels and time slices) and an observed
flag. At finer levels the evidence of each generated voxel (zero, observed = 0,
where nothing was seen) is projected and added to its features, so surfaces are
not blurred to the coarse cell (the dense head's fine evidence).

Decoder. Level 0 seeds: ``coarse_seeds="observed"``, the cells with evidence;
``"all"``, every coarse cell (10 000 for Occ3D at 1.6 m). A linear stem,
``coarse_blocks`` residual blocks of 3x3x3 submanifold convs, then
``completion_steps`` generative 3x3x3 sparse convs (stride 1), each adding every
neighbour of an active cell. Children only appear inside their parents, so the
completion reach is ``completion_steps`` coarse cells around observed ones with
``"observed"`` and the whole grid with ``"all"``: surface ground truth (real
scans) is reached from the observed cells, the simulator's solid ground truth
(building and ground interiors) needs ``"all"`` (docs/design.md). Each level
predicts an occupied logit per voxel and prunes: a voxel survives when its
probability exceeds ``prune_threshold``, in training also when the ground truth
has it occupied (teacher forcing: the next level learns on the right voxels while
the pruning logits are still poor); at most ``max_voxels[l]`` per sample survive
(highest scores, ground-truth voxels first), and at most ``max_voxels[l + 1] // 8``
so the next level keeps its own budget. A 2x2x2 stride-2 generative transposed
conv gives each survivor its 8 children (unique, and inside the grid as the level
grids nest), one residual block refines them. At level L a linear layer gives
``num_classes`` logits and 3 velocity channels. Voxels never generated are free.

Loss. Pruning logits: BCE per level against the ground truth reduced to that level
(occupied if any of its occupancy voxels is; free if none is occupied or ignored
and, with ``free_visible_only``, one is visible free; else unsupervised) over the
voxels generated there, mean per level, summed, weight ``prune_weight``. Level L:
the dense head's class-weighted (ENet rule, from the surviving supervised voxels)
cross-entropy + Lovasz-softmax + velocity L1 on the surviving voxels the dense
head would supervise. Occupied voxels never generated get no gradient at level L;
the pruning BCE of their ancestors is what recovers them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from perception4d.core.geometry import Geometry
from perception4d.core.labels import OCC_CLASSES, OCC_FREE, OCC_IGNORE
from perception4d.errors import ConfigError
from perception4d.models.heads.occupancy import OccupancyLossSettings, OccupancyPrediction, lovasz_softmax, voxel_cells
from perception4d.models.spconv_utils import import_spconv
from perception4d.ops.scatter import scatter_mean
from perception4d.registry import MODELS

spconv = import_spconv()

#: score added to ground-truth occupied voxels in training so the budget keeps them first
_TEACHER_BONUS = 1e4


@dataclass
class SparseOccupancyLevel:
    """The voxels generated at one pruning level and what the head decided about them."""

    coords: torch.Tensor  # (N, 4) int32 (b, x, y, z) on this level's grid
    logits: torch.Tensor  # (N,) occupied logit
    kept: torch.Tensor  # (N,) bool: survived pruning (has children at the next level)
    stride: int  # this level's voxel, in occupancy voxels


@dataclass
class SparseOccupancyOutput:
    """Raw sparse head output: the pruning levels and the surviving occupancy-grid voxels."""

    levels: list[SparseOccupancyLevel]
    coords: torch.Tensor  # (N, 4) int32 (b, x, y, z) on the occupancy grid
    logits: torch.Tensor  # (N, K)
    velocity: torch.Tensor  # (N, 3) m/s
    batch_size: int


@dataclass
class _Evidence:
    flat: torch.Tensor  # (M,) int64 sorted flat cell index b * XYZ + (x * Y + y) * Z + z
    values: torch.Tensor  # (M, C + 3) mean feature, mean time, density, observed


def _unflatten(flat: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    nx, ny, nz = shape
    b, x, y, z = flat // (nz * ny * nx), (flat // (nz * ny)) % nx, (flat // nz) % ny, flat % nz
    return torch.stack([b, x, y, z], dim=1).to(torch.int32)


def _flatten(coords: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    nx, ny, nz = shape
    c = coords.long()
    return ((c[:, 0] * nx + c[:, 1]) * ny + c[:, 2]) * nz + c[:, 3]


def cap_per_sample(batch_index: torch.Tensor, score: torch.Tensor, keep: torch.Tensor, cap: int,
                   batch_size: int) -> torch.Tensor:
    """``keep`` reduced to at most ``cap`` rows per sample, the highest ``score`` first (ties by row)."""
    idx = torch.nonzero(keep).squeeze(1)
    if idx.numel() == 0:
        return keep
    order = torch.argsort(score[idx], descending=True, stable=True)
    order = order[torch.argsort(batch_index[idx][order], stable=True)]
    b = batch_index[idx][order].long()
    counts = torch.bincount(b, minlength=batch_size)
    rank = torch.arange(b.numel(), device=b.device) - (torch.cumsum(counts, 0) - counts)[b]
    out = torch.zeros_like(keep)
    out[idx[order[rank < cap]]] = True
    return out


class _Block(nn.Module):
    """Residual pair of 3x3x3 submanifold convs sharing one rulebook (``key``)."""

    def __init__(self, channels: int, key: str):
        super().__init__()
        self.conv1 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=key)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=key)
        self.bn2 = nn.BatchNorm1d(channels)

    def forward(self, x):
        y = self.conv1(x)
        y = y.replace_feature(torch.relu(self.bn1(y.features)))
        y = self.conv2(y)
        return y.replace_feature(torch.relu(self.bn2(y.features) + x.features))


class _Generative(nn.Module):
    """A generative sparse conv (new output sites) with batch norm and ReLU."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv
        self.bn = nn.BatchNorm1d(conv.out_channels)

    def forward(self, x):
        x = self.conv(x)
        return x.replace_feature(torch.relu(self.bn(x.features)))


@MODELS.register_module()
class SparseOccupancyHead(OccupancyLossSettings, nn.Module):
    """Sparse generative semantic occupancy and velocity on ``grid`` (see the module docstring)."""

    task = "occupancy"

    def __init__(self, in_channels: int, grid: dict, point_channels: int = 0, num_classes: int = len(OCC_CLASSES),
                 coarse_factor: int = 4, channels: Sequence[int] = (64, 32, 32), coarse_blocks: int = 2,
                 coarse_seeds: str = "observed", completion_steps: int = 1, prune_threshold: float = 0.5,
                 max_voxels: Sequence[int] = (20_000, 80_000, 400_000), prune_weight: float = 1.0,
                 class_weights: Sequence[float] | None = None, free_weight: float = 1.0,
                 lovasz_weight: float = 1.0, velocity_weight: float = 0.5, static_velocity_weight: float = 0.1,
                 moving_threshold: float = 0.2, free_visible_only: bool = True):
        super().__init__()
        name = type(self).__name__
        try:
            self.grid = Geometry.from_config({**dict(grid), "num_frames": 1})
        except (KeyError, TypeError) as e:
            raise ConfigError(f"{name}.grid needs point_range and voxel_size, got {grid!r} ({e})") from None
        f = int(coarse_factor)
        if f < 2 or f & (f - 1) or any(n % f for n in self.grid.grid_shape):
            raise ConfigError(f"{name}: coarse_factor {coarse_factor} must be a power of 2 >= 2 dividing the "
                              f"occupancy grid {self.grid.grid_shape}")
        self.num_up = int(math.log2(f))
        self.strides = tuple(f >> lvl for lvl in range(self.num_up + 1))  # level l voxel in occupancy voxels
        self.level_grids = tuple(Geometry(self.grid.point_range, tuple(v * s for v in self.grid.voxel_size))
                                 for s in self.strides)
        self.channels = tuple(int(c) for c in channels)
        self.max_voxels = tuple(int(n) for n in max_voxels)
        for field, values in (("channels", self.channels), ("max_voxels", self.max_voxels)):
            if len(values) != self.num_up + 1 or min(values) < 1:
                raise ConfigError(f"{name}.{field} needs {self.num_up + 1} positive values (coarse to full "
                                  f"resolution, coarse_factor {f}), got {values}")
        if any(n < 8 for n in self.max_voxels[1:]):
            raise ConfigError(f"{name}.max_voxels: every finer level needs room for the 8 children of one voxel")
        if not 0.0 < prune_threshold < 1.0:
            raise ConfigError(f"{name}.prune_threshold is a probability in (0, 1), got {prune_threshold}")
        if int(completion_steps) < 0 or int(coarse_blocks) < 0:
            raise ConfigError(f"{name}: completion_steps and coarse_blocks must be >= 0")
        if coarse_seeds not in ("observed", "all"):
            raise ConfigError(f"{name}.coarse_seeds is 'observed' or 'all', got {coarse_seeds!r}")
        self.coarse_seeds = coarse_seeds
        self._init_loss(num_classes, class_weights, free_weight, lovasz_weight, velocity_weight,
                        static_velocity_weight, moving_threshold, free_visible_only)
        self.prune_logit = math.log(prune_threshold / (1.0 - prune_threshold))
        self.prune_weight = float(prune_weight)

        c = self.channels
        cin = in_channels + 3
        self.stem = nn.Sequential(nn.Linear(cin, c[0], bias=False), nn.BatchNorm1d(c[0]), nn.ReLU(inplace=True))
        key0 = "occ0a" if int(completion_steps) else "occ0"  # completion changes the sites: a new rulebook
        self.coarse = nn.Sequential(*[_Block(c[0], key0) for _ in range(int(coarse_blocks))])
        self.complete = nn.Sequential(*[_Generative(spconv.SparseConv3d(c[0], c[0], 3, padding=1, bias=False))
                                        for _ in range(int(completion_steps))])
        self.refine = nn.ModuleList(_Block(c[lvl], f"occ{lvl}") for lvl in range(self.num_up + 1))
        self.prune = nn.ModuleList(nn.Linear(c[lvl], 1) for lvl in range(self.num_up))
        self.up = nn.ModuleList(_Generative(spconv.SparseConvTranspose3d(c[lvl - 1], c[lvl], 2, stride=2, bias=False))
                                for lvl in range(1, self.num_up + 1))
        self.evidence = nn.ModuleList(nn.Linear(cin, c[lvl], bias=False) for lvl in range(1, self.num_up + 1))
        self.out = nn.Linear(c[-1], self.num_classes + 3)

    # pooling -----------------------------------------------------------------
    def _pool(self, values: torch.Tensor, batch, level: int) -> _Evidence:
        """The backbone voxels' evidence in the occupied cells of level ``level`` (sorted by flat index)."""
        sparse = batch.sparse
        geo = self.level_grids[level]
        idx, inside = voxel_cells(sparse, geo)
        flat = _flatten(torch.cat([sparse.coords[:, :1].long(), idx], dim=1)[inside], geo.grid_shape)
        cells, inverse = torch.unique(flat, return_inverse=True)
        frames = sparse.spatial_shape[3]
        t = sparse.coords[inside, 4:5].float() / max(frames - 1, 1)
        mean = scatter_mean(torch.cat([values[inside].float(), t], dim=1), inverse, cells.numel(), check=False)
        capacity = frames * float(np.prod(np.asarray(geo.voxel_size) / np.asarray(sparse.voxel_size)))
        density = (torch.bincount(inverse, minlength=cells.numel()).float() / max(capacity, 1.0)).clamp(max=1.0)
        return _Evidence(cells, torch.cat([mean, density[:, None], torch.ones_like(density)[:, None]], dim=1))

    def _lookup(self, ev: _Evidence, coords: torch.Tensor, level: int) -> torch.Tensor:
        """(N, C + 3) evidence of the voxels ``coords`` of level ``level``; zeros where the scan saw nothing."""
        out = ev.values.new_zeros(coords.shape[0], ev.values.shape[1])
        if ev.flat.numel() == 0 or coords.shape[0] == 0:
            return out
        flat = _flatten(coords, self.level_grids[level].grid_shape)
        pos = torch.searchsorted(ev.flat, flat).clamp(max=ev.flat.numel() - 1)
        hit = ev.flat[pos] == flat
        return torch.where(hit[:, None], ev.values[pos], out)

    # ground truth per level ----------------------------------------------------
    def level_targets(self, targets, coords: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(occupied, supervised) bools of level-``level`` voxels ``coords`` from the occupancy ground truth."""
        sem = targets.semantics
        s = self.strides[level]
        occupied = ((sem != OCC_FREE) & (sem != OCC_IGNORE))[:, None].float()
        ignored = (sem == OCC_IGNORE)[:, None].float()
        free = sem == OCC_FREE
        if self.free_visible_only:
            free = free & targets.visible
        occ_l, ign_l, free_l = (F.max_pool3d(m, s, s)[:, 0] > 0 if s > 1 else m[:, 0] > 0
                                for m in (occupied, ignored, free[:, None].float()))
        c = coords.long()
        at = (c[:, 0], c[:, 1], c[:, 2], c[:, 3])
        occ = occ_l[at]
        return occ, occ | (free_l[at] & ~ign_l[at])

    # forward -------------------------------------------------------------------
    def _keep(self, x, logits: torch.Tensor, level: int, batch) -> torch.Tensor:
        score = logits.detach().float()
        keep = score > self.prune_logit
        if self.training and batch.occupancy is not None:
            self._check_targets(batch.occupancy)
            gt, _ = self.level_targets(batch.occupancy, x.indices, level)
            keep |= gt
            score = torch.where(gt, score + _TEACHER_BONUS, score)
        cap = min(self.max_voxels[level], self.max_voxels[level + 1] // 8)
        return cap_per_sample(x.indices[:, 0], score, keep, cap, x.batch_size)

    def _output(self, levels, coords, features, batch_size) -> SparseOccupancyOutput:
        y = self.out(features).float()
        return SparseOccupancyOutput(levels=levels, coords=coords, logits=y[:, :self.num_classes],
                                     velocity=y[:, self.num_classes:], batch_size=batch_size)

    def forward(self, voxel_features: torch.Tensor, point_features: torch.Tensor, batch) -> SparseOccupancyOutput:
        dtype = self.stem[0].weight.dtype
        bs = batch.sparse.batch_size
        evidence = [self._pool(voxel_features, batch, lvl) for lvl in range(self.num_up + 1)]
        levels: list[SparseOccupancyLevel] = []
        if evidence[0].flat.numel() == 0:  # nothing in the grid: every voxel free (spconv cannot run on no sites)
            empty = voxel_features.new_zeros(0, self.channels[-1], dtype=dtype)
            return self._output(levels, torch.zeros(0, 4, dtype=torch.int32, device=voxel_features.device), empty, bs)
        shape0 = self.level_grids[0].grid_shape
        if self.coarse_seeds == "all":
            seeds = _unflatten(torch.arange(bs * int(np.prod(shape0)), device=voxel_features.device), shape0)
            values = self._lookup(evidence[0], seeds, 0)
        else:
            seeds, values = _unflatten(evidence[0].flat, shape0), evidence[0].values
        x = spconv.SparseConvTensor(self.stem(values.to(dtype)), seeds, list(shape0), bs)
        x = self.refine[0](self.complete(self.coarse(x)))
        for lvl in range(self.num_up):
            logits = self.prune[lvl](x.features).float()[:, 0]
            keep = self._keep(x, logits, lvl, batch)
            levels.append(SparseOccupancyLevel(coords=x.indices, logits=logits, kept=keep, stride=self.strides[lvl]))
            if not bool(keep.any()):  # everything pruned: the rest is free
                return self._output(levels, x.indices[:0], x.features.new_zeros(0, self.channels[-1]), bs)
            # a fresh tensor: no rulebook of the unpruned sites may be reused
            x = spconv.SparseConvTensor(x.features[keep], x.indices[keep], x.spatial_shape, bs)
            x = self.up[lvl](x)
            ev = self._lookup(evidence[lvl + 1], x.indices, lvl + 1).to(x.features.dtype)
            x = self.refine[lvl + 1](x.replace_feature(x.features + self.evidence[lvl](ev)))
        return self._output(levels, x.indices, x.features, bs)

    # loss ----------------------------------------------------------------------
    def dense_semantics(self, out: SparseOccupancyOutput) -> torch.Tensor:
        """(B, X, Y, Z) int64 predicted classes on the output's device: the survivors' argmax, free elsewhere."""
        sem = torch.full((out.batch_size, *self.grid.grid_shape), OCC_FREE, dtype=torch.long,
                         device=out.logits.device)
        c = out.coords.long()
        sem[c[:, 0], c[:, 1], c[:, 2], c[:, 3]] = out.logits.detach().argmax(dim=1)
        return sem

    def loss(self, out: SparseOccupancyOutput, batch) -> dict[str, torch.Tensor]:
        t = batch.occupancy
        self._check_targets(t)
        zero = out.logits.sum() * 0.0
        prune = zero
        for lvl, level in enumerate(out.levels):
            occ, sup = self.level_targets(t, level.coords, lvl)
            if bool(sup.any()):
                prune = prune + F.binary_cross_entropy_with_logits(level.logits[sup], occ[sup].float())

        c = out.coords.long()
        at = (c[:, 0], c[:, 1], c[:, 2], c[:, 3])
        sem = t.semantics[at]
        keep = sem != OCC_IGNORE
        if self.free_visible_only:
            keep &= (sem != OCC_FREE) | t.visible[at]
        logits, labels = out.logits[keep], sem[keep]
        if labels.numel() and int(labels.max()) >= self.num_classes:
            raise ValueError(f"occupancy ground truth holds class {int(labels.max())}, the head has "
                             f"{self.num_classes} classes (0..{self.num_classes - 1}, {OCC_IGNORE} ignore)")
        ce = F.cross_entropy(logits, labels, weight=self.class_weights(labels)) if labels.numel() else zero
        lovasz = lovasz_softmax(logits.softmax(dim=1), labels) if labels.numel() else zero

        occupied = (sem != OCC_FREE) & keep
        v_gt = t.velocity[at][occupied]
        v_pred = out.velocity[occupied]
        moving = torch.linalg.vector_norm(v_gt, dim=1) > self.moving_threshold
        w = torch.where(moving, torch.ones_like(v_gt[:, 0]), torch.full_like(v_gt[:, 0], self.static_velocity_weight))
        vel = ((v_pred - v_gt).abs().sum(dim=1) * w).sum() / w.sum().clamp(min=1e-6)
        with torch.no_grad():  # geometry IoU over the whole supervised grid (never generated = free)
            full = t.semantics
            sup = full != OCC_IGNORE
            if self.free_visible_only:
                sup &= (full != OCC_FREE) | t.visible
            pred_occ = (self.dense_semantics(out) != OCC_FREE) & sup
            gt_occ = (full != OCC_FREE) & sup
            iou = (pred_occ & gt_occ).sum().float() / (pred_occ | gt_occ).sum().clamp(min=1).float()
            voxels = torch.tensor(float(out.coords.shape[0]) / max(out.batch_size, 1), device=iou.device)
        return {"loss_occ_prune": self.prune_weight * prune, "loss_occ_ce": ce,
                "loss_occ_lovasz": self.lovasz_weight * lovasz, "loss_occ_velocity": self.velocity_weight * vel,
                "iou_occupied": iou, "occ_voxels": voxels}

    # predict -------------------------------------------------------------------
    def predict(self, out: SparseOccupancyOutput, batch) -> list[OccupancyPrediction]:
        """Dense ``OccupancyPrediction`` per sample, scattered on the host from the surviving voxels."""
        sem = out.logits.detach().argmax(dim=1).to(torch.uint8).cpu().numpy()
        vel = out.velocity.detach().float().cpu().numpy()
        coords = out.coords.cpu().numpy()
        occupied = sem != OCC_FREE
        preds = []
        for i in range(out.batch_size):
            rows = occupied & (coords[:, 0] == i)
            at = tuple(coords[rows, 1:].T)
            semantics = np.zeros(self.grid.grid_shape, dtype=np.uint8)
            velocity = np.zeros((*self.grid.grid_shape, 3), dtype=np.float32)
            semantics[at] = sem[rows]
            velocity[at] = vel[rows]
            preds.append(OccupancyPrediction(semantics=semantics, velocity=velocity, geometry=self.grid))
        return preds
