"""A 4D sparse U-Net of Spatio-Temporal Decomposition Blocks (spconv).

Coordinates are (b, x, y, z, t). Space and time are factored:
``conv3x3x3x1`` (space) and ``conv1x1x1x3`` (time) run in parallel on
``SubMConv4d`` and are fused, with the block input, by a (1,1,1,1)
convolution (a per-voxel linear layer: identical arithmetic, no rulebook).
Downsampling is ``SparseConv4d`` with stride (2, 2, 2, 1): time is never
strided. ``SparseInverseConv4d`` with the same ``indice_key`` goes back up,
so the output has exactly the input's voxels.

Indice keys come from the level index: ``subm{l}s`` / ``subm{l}t`` for the
submanifold convs at level l (shared by encoder and decoder blocks of that
level, so each rulebook is built once per forward) and ``down{l}`` for the
level-l -> l+1 downsampling and its inverse.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from perception4d.models.spconv_utils import import_spconv
from perception4d.registry import MODELS

spconv = import_spconv()


def conv3x3x3x1(cin: int, cout: int, key: str):
    return spconv.SubMConv4d(cin, cout, (3, 3, 3, 1), padding=(1, 1, 1, 0), bias=False, indice_key=key)


def conv1x1x1x3(cin: int, cout: int, key: str):
    return spconv.SubMConv4d(cin, cout, (1, 1, 1, 3), padding=(0, 0, 0, 1), bias=False, indice_key=key)


class STDBlock(nn.Module):
    """Spatio-Temporal Decomposition Block: space || time, fused with the input, residual."""

    def __init__(self, channels: int, level: int):
        super().__init__()
        self.space = conv3x3x3x1(channels, channels, f"subm{level}s")
        self.time = conv1x1x1x3(channels, channels, f"subm{level}t")
        self.bn_space = nn.BatchNorm1d(channels)
        self.bn_time = nn.BatchNorm1d(channels)
        self.fuse = nn.Linear(3 * channels, channels, bias=False)  # the (1,1,1,1) conv
        self.bn_fuse = nn.BatchNorm1d(channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        xs = self.space(x)
        # run the time conv on the space conv's output tensor (same sites, input features) so the
        # result carries both rulebooks forward and later blocks of this level reuse them
        xt = self.time(xs.replace_feature(x.features))
        s = self.act(self.bn_space(xs.features))
        t = self.act(self.bn_time(xt.features))
        f = self.bn_fuse(self.fuse(torch.cat([x.features, s, t], dim=1)))
        return xt.replace_feature(self.act(f + x.features))


class Down(nn.Module):
    def __init__(self, cin: int, cout: int, level: int):
        super().__init__()
        self.conv = spconv.SparseConv4d(cin, cout, (2, 2, 2, 1), stride=(2, 2, 2, 1), bias=False,
                                        indice_key=f"down{level}")
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x):
        x = self.conv(x)
        return x.replace_feature(torch.relu(self.bn(x.features)))


class Up(nn.Module):
    """Inverse of ``Down`` at the same level, then fusion with the skip connection."""

    def __init__(self, cin: int, cout: int, level: int):
        super().__init__()
        self.conv = spconv.SparseInverseConv4d(cin, cout, (2, 2, 2, 1), indice_key=f"down{level}", bias=False)
        self.bn = nn.BatchNorm1d(cout)
        self.fuse = nn.Linear(2 * cout, cout, bias=False)
        self.bn_fuse = nn.BatchNorm1d(cout)

    def forward(self, x, skip):
        x = self.conv(x)  # restores the skip's sites, in the skip's order, and carries every rulebook
        up = torch.relu(self.bn(x.features))
        return x.replace_feature(torch.relu(self.bn_fuse(self.fuse(torch.cat([up, skip.features], 1)))))


class UNetLevels:
    """Shape facts of a U-Net with widths ``self.channels`` per level (shared by its executors)."""

    channels: tuple[int, ...]

    @property
    def out_channels(self) -> int:
        return self.channels[0]

    @property
    def min_grid_cells(self) -> int:
        """Cells every spatial axis of the grid needs: one at the coarsest level (stride 2 per level)."""
        return 2 ** (len(self.channels) - 1)


@MODELS.register_module()
class SparseUNet4D(UNetLevels, nn.Module):
    """4D sparse U-Net; ``channels[l]`` is the width at level l (level 0 = input resolution)."""

    def __init__(self, in_channels: int = 16, channels: Sequence[int] = (16, 32, 64, 64),
                 blocks_per_level: int = 1):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise ValueError("SparseUNet4D needs at least two levels of channels")
        self.channels = channels
        self.stem = nn.Sequential(nn.Linear(in_channels, channels[0], bias=False), nn.BatchNorm1d(channels[0]),
                                  nn.ReLU(inplace=True))
        self.enc = nn.ModuleList(
            nn.Sequential(*[STDBlock(c, lvl) for _ in range(blocks_per_level)]) for lvl, c in enumerate(channels))
        self.down = nn.ModuleList(Down(channels[lvl], channels[lvl + 1], lvl) for lvl in range(len(channels) - 1))
        self.up = nn.ModuleList(Up(channels[lvl + 1], channels[lvl], lvl) for lvl in range(len(channels) - 1))
        self.dec = nn.ModuleList(STDBlock(channels[lvl], lvl) for lvl in range(len(channels) - 1))

    def forward(self, x):
        """x: a SparseConvTensor with ``in_channels`` features; returns one with ``out_channels`` on the same voxels."""
        x = x.replace_feature(self.stem(x.features))
        skips = []
        for lvl, enc in enumerate(self.enc):
            x = enc(x)
            if lvl < len(self.down):
                skips.append(x)
                x = self.down[lvl](x)
        for lvl in reversed(range(len(self.up))):
            x = self.dec[lvl](self.up[lvl](x, skips[lvl]))
        return x
