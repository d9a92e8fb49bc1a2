"""The 4D sparse tensor container: the one place the coordinate order is written down.

Coordinates are int32 ``(b, x, y, z, t)``: batch first (as spconv requires),
then the three quantized spatial indices, then the time index (never
quantized away). ``spatial_shape`` is ``(X, Y, Z, T)`` in the same order, so
``to_spconv()`` hands both to spconv's 4D convolutions unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from perception4d.core.geometry import Geometry
from perception4d.utils.device import device_constant

COORD_ORDER = ("b", "x", "y", "z", "t")


@dataclass
class DropStats:
    """Points that did not become voxels, counted by reason."""

    out_of_range: int = 0
    non_finite: int = 0

    @property
    def total(self) -> int:
        return self.out_of_range + self.non_finite


@dataclass
class SparseTensor4D:
    coords: torch.Tensor  # (V, 5) int32, (b, x, y, z, t), unique rows
    features: torch.Tensor  # (V, C)
    spatial_shape: tuple[int, int, int, int]  # (X, Y, Z, T)
    batch_size: int
    geometry: Geometry
    point_to_voxel: torch.Tensor  # (P,) int64 voxel row of each input point, -1 if dropped
    counts: torch.Tensor  # (V,) int32 points per voxel
    dropped: DropStats = field(default_factory=DropStats)

    def __post_init__(self):
        self.spatial_shape = tuple(int(s) for s in self.spatial_shape)
        self.validate(deep=False)

    # properties ------------------------------------------------------------
    @property
    def num_voxels(self) -> int:
        return int(self.coords.shape[0])

    @property
    def num_points(self) -> int:
        return int(self.point_to_voxel.shape[0])

    @property
    def device(self) -> torch.device:
        return self.coords.device

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        return self.geometry.voxel_size

    @property
    def point_range(self) -> tuple[float, ...]:
        return self.geometry.point_range

    # checks ------------------------------------------------------------
    def validate(self, deep: bool = True) -> None:
        """Shape and dtype checks always; with ``deep`` also value ranges and uniqueness (syncs the device)."""
        c = self.coords
        if c.dtype != torch.int32 or c.ndim != 2 or c.shape[1] != 5:
            raise ValueError(f"SparseTensor4D.coords must be int32 (V, 5) in order {COORD_ORDER}, got "
                             f"{c.dtype} {tuple(c.shape)}")
        if self.features.shape[0] != c.shape[0]:
            raise ValueError(f"SparseTensor4D.features has {self.features.shape[0]} rows for {c.shape[0]} voxels")
        if self.counts.shape[0] != c.shape[0]:
            raise ValueError(f"SparseTensor4D.counts has {self.counts.shape[0]} rows for {c.shape[0]} voxels")
        if len(self.spatial_shape) != 4:
            raise ValueError(f"SparseTensor4D.spatial_shape must be (X, Y, Z, T), got {self.spatial_shape}")
        if self.point_to_voxel.dtype != torch.int64 or self.point_to_voxel.ndim != 1:
            raise ValueError("SparseTensor4D.point_to_voxel must be int64 (P,)")
        if not deep or c.shape[0] == 0:
            return
        hi = torch.tensor([self.batch_size, *self.spatial_shape], device=c.device, dtype=torch.int32)
        if bool((c < 0).any()) or bool((c >= hi).any()):
            raise ValueError(f"SparseTensor4D.coords outside [0, {hi.tolist()})")
        if torch.unique(c, dim=0).shape[0] != c.shape[0]:
            raise ValueError("SparseTensor4D.coords has duplicate rows")
        p2v = self.point_to_voxel
        if p2v.numel() and (int(p2v.max()) >= c.shape[0] or int(p2v.min()) < -1):
            raise ValueError("SparseTensor4D.point_to_voxel indexes outside the voxel rows")

    # conversion ------------------------------------------------------------
    def replace_features(self, features: torch.Tensor) -> "SparseTensor4D":
        return replace(self, features=features)

    def to(self, device: torch.device | str) -> "SparseTensor4D":
        return replace(self, coords=self.coords.to(device), features=self.features.to(device),
                       point_to_voxel=self.point_to_voxel.to(device), counts=self.counts.to(device))

    def to_spconv(self, features: torch.Tensor | None = None):
        """A ``spconv.pytorch.SparseConvTensor`` over the same voxels (indices (b, x, y, z, t))."""
        from perception4d.models.spconv_utils import import_spconv

        spconv = import_spconv()
        feats = self.features if features is None else features
        if feats.shape[0] != self.num_voxels:
            raise ValueError(f"to_spconv: {feats.shape[0]} feature rows for {self.num_voxels} voxels")
        return spconv.SparseConvTensor(feats, self.coords, list(self.spatial_shape), self.batch_size)

    def voxel_centers(self) -> torch.Tensor:
        """(V, 3) metric centres of the voxels, float32, on the tensor's device."""
        vs = device_constant(self.geometry.voxel_size, self.device, torch.float32)
        lo = device_constant(self.geometry.point_range[:3], self.device, torch.float32)
        return (self.coords[:, 1:4].float() + 0.5) * vs + lo
