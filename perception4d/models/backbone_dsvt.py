"""A 4D voxel transformer backbone (DSVT-class): dynamic sparse window attention over (b, x, y, z, t) voxels.

Same contract as ``SparseUNet4D``: a spconv ``SparseConvTensor`` with
``in_channels`` features in, the same voxels in the same order with
``out_channels`` features out, so every head works on either backbone.

Layout: a U-Net of transformer stages. Level l works at ``channels[l]`` on the
voxels of stride ``pool_stride ** l`` in (x, y, z) (time is never pooled, as in
the sparse-conv U-Net); ``depths[l]`` blocks on the way down, one on the way
up (levels above the coarsest), attention pooling between levels and the
matching unpooling, which restores exactly the finer level's voxels, fused with
its skip features.

A block is two set-attention layers on one window partition (x-major sets,
then y-major sets: DSVT's rotated sets). Blocks of a level cycle through
``window_shapes`` (hybrid window sizes) and alternate unshifted / shifted by
half a window, so information crosses set and window borders. Windows are
counted in cells of their level, so the same shapes cover twice the metric
extent per level. Sets hold at most ``set_size`` voxels (32: torch's
memory-efficient attention kernel wants mask rows a multiple of 8 elements,
else it pads a copy of the mask on every call).

Time: ``time_mode="window"`` puts time inside the window (a window spans every
time index of its x-y tile, all sweeps attend jointly); ``time_mode="axis"``
makes time its own window axis of ``time_window`` frames, shifted by half in the
shifted blocks (local temporal windows, more spatial reach per set of S).
Which one works better per task is an experiment the configs leave open.

The data-dependent part (windows, sets, pooling regions) is computed by
``plan()`` from the coordinates alone (``perception4d.models.dsvt.partition``);
``forward_planned()`` is the learnable graph over features and index tensors,
which is what the ONNX export runs (``perception4d.models.export``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from perception4d.errors import ConfigError
from perception4d.models.dsvt.layers import AttentionPool, SetBlock, Unpool
from perception4d.models.dsvt.partition import BackbonePlan, WindowSpec, plan_level
from perception4d.registry import MODELS

TIME_MODES = ("window", "axis")


@MODELS.register_module()
class VoxelTransformer4D(nn.Module):
    """4D voxel transformer U-Net; ``channels[l]`` is the width at level l (level 0 = input voxels)."""

    def __init__(self, in_channels: int = 16, channels: Sequence[int] = (16, 32, 64, 64),
                 depths: Sequence[int] = (1, 1, 2, 2), head_dim: int = 16, set_size: int = 32,
                 window_shapes: Sequence[Sequence[int]] = ((8, 8), (12, 12)), time_mode: str = "window",
                 time_window: int = 2, pool_stride: Sequence[int] = (2, 2, 2), ffn_ratio: float = 4.0):
        super().__init__()
        self.channels = tuple(int(c) for c in channels)
        depths = tuple(int(d) for d in depths)
        if len(self.channels) < 1 or len(depths) != len(self.channels) or min(depths) < 1:
            raise ConfigError(f"VoxelTransformer4D: depths {depths} needs one positive entry per level of "
                              f"channels {self.channels}")
        if time_mode not in TIME_MODES:
            raise ConfigError(f"VoxelTransformer4D.time_mode must be one of {TIME_MODES}, got {time_mode!r}")
        shapes = [tuple(int(v) for v in s) for s in window_shapes]
        if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
            raise ConfigError(f"VoxelTransformer4D.window_shapes needs (wx, wy) pairs of positive cells, got "
                              f"{window_shapes}")
        if set_size < 1 or time_window < 1 or len(pool_stride) != 3 or min(pool_stride) < 1:
            raise ConfigError("VoxelTransformer4D: set_size and time_window must be >= 1 and pool_stride three "
                              f"positive strides (got {set_size}, {time_window}, {pool_stride})")
        bad = [c for c in self.channels if c % head_dim]
        if bad:
            raise ConfigError(f"VoxelTransformer4D: channels {bad} are not multiples of head_dim {head_dim}")
        self.set_size = int(set_size)
        self.time_mode = time_mode
        self.pool_stride = tuple(int(s) for s in pool_stride)
        wt = int(time_window) if time_mode == "axis" else 0

        def window(k: int) -> WindowSpec:
            wx, wy = shapes[k % len(shapes)]
            shifted = k % 2 == 1
            return WindowSpec((wx, wy, wt), (wx // 2, wy // 2, wt // 2) if shifted else (0, 0, 0))

        def block(c: int, k: int) -> SetBlock:
            return SetBlock(c, head_dim, window(k), ffn_ratio)

        levels = len(self.channels)
        region = self.pool_stride[0] * self.pool_stride[1] * self.pool_stride[2]
        self.stem = nn.Sequential(nn.Linear(in_channels, self.channels[0]), nn.LayerNorm(self.channels[0]))
        self.enc = nn.ModuleList(nn.ModuleList(block(c, k) for k in range(d)) for c, d in zip(self.channels, depths))
        self.pool = nn.ModuleList(AttentionPool(self.channels[lvl], self.channels[lvl + 1], head_dim, region)
                                  for lvl in range(levels - 1))
        self.unpool = nn.ModuleList(Unpool(self.channels[lvl + 1], self.channels[lvl], region)
                                    for lvl in range(levels - 1))
        self.dec = nn.ModuleList(block(self.channels[lvl], depths[lvl]) for lvl in range(levels - 1))
        self.out_norm = nn.LayerNorm(self.channels[0])

    @property
    def out_channels(self) -> int:
        return self.channels[0]

    @property
    def min_grid_cells(self) -> int:
        """Pooling rounds the grid up and windows clip at its border: any grid of one cell or more works."""
        return 1

    # -- data-dependent plan -------------------------------------------------------------------------
    def plan_keys(self, level: int) -> list[tuple[WindowSpec, str]]:
        """The (window, axis) partitions level ``level`` needs, in first-use order."""
        blocks = list(self.enc[level]) + ([self.dec[level]] if level < len(self.dec) else [])
        keys: list[tuple[WindowSpec, str]] = []
        for b in blocks:
            keys += [k for k in b.plan_keys() if k not in keys]
        return keys

    @torch.no_grad()
    def plan(self, coords: torch.Tensor, spatial_shape: Sequence[int]) -> BackbonePlan:
        """Windows, sets and pooling regions of every level, from int32 (b, x, y, z, t) coordinates.

        One device synchronisation per level (``plan_level``: the level's set and region counts).
        """
        levels, pools = [], []
        shape = tuple(int(s) for s in spatial_shape)
        last = len(self.channels) - 1
        for lvl in range(last + 1):
            level, pool = plan_level(coords, shape, self.plan_keys(lvl), self.set_size,
                                     self.pool_stride if lvl < last else None)
            levels.append(level)
            if pool is not None:
                pools.append(pool)
                coords, shape = pool.coords, pool.spatial_shape
        return BackbonePlan(levels=levels, pools=pools)

    # -- learnable graph --------------------------------------------------------------------------------
    def forward_planned(self, features: torch.Tensor, plan: BackbonePlan) -> torch.Tensor:
        """(N, in_channels) voxel features and their plan -> (N, out_channels), same rows."""
        x = self.stem(features)
        skips = []
        for lvl, blocks in enumerate(self.enc):
            for blk in blocks:
                x = blk(x, plan.levels[lvl])
            if lvl < len(self.pool):
                skips.append(x)
                x = self.pool[lvl](x, plan.pools[lvl])
        for lvl in reversed(range(len(self.unpool))):
            x = self.unpool[lvl](x, skips[lvl], plan.pools[lvl])
            x = self.dec[lvl](x, plan.levels[lvl])
        return self.out_norm(x)

    def forward(self, x):
        """x: a SparseConvTensor with ``in_channels`` features; returns one with ``out_channels`` on the same voxels."""
        plan = self.plan(x.indices, x.spatial_shape)
        return x.replace_feature(self.forward_planned(x.features, plan))
