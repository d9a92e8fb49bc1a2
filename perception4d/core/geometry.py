"""Voxel-grid geometry, declared once and derived everywhere else.

A config states ``point_range``, ``voxel_size`` and ``num_frames``; the grid
shape is derived and the declaration is checked at construction: a range not
divisible by the voxel size is rejected with the suggested fix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perception4d.errors import ConfigError

_TOL = 1e-6


@dataclass(frozen=True)
class Geometry:
    point_range: tuple[float, float, float, float, float, float]  # xmin, ymin, zmin, xmax, ymax, zmax (m)
    voxel_size: tuple[float, float, float]  # vx, vy, vz (m)
    num_frames: int = 1

    def __post_init__(self):
        pr = tuple(float(v) for v in self.point_range)
        vs = tuple(float(v) for v in self.voxel_size)
        if len(pr) != 6:
            raise ConfigError(f"geometry.point_range needs 6 numbers (xmin, ymin, zmin, xmax, ymax, zmax), got {pr}")
        if len(vs) != 3:
            raise ConfigError(f"geometry.voxel_size needs 3 numbers (vx, vy, vz), got {vs}")
        if not all(np.isfinite(pr)) or not all(np.isfinite(vs)):
            raise ConfigError("geometry.point_range / voxel_size must be finite")
        if any(v <= 0 for v in vs):
            raise ConfigError(f"geometry.voxel_size must be positive, got {vs}")
        if int(self.num_frames) < 1:
            raise ConfigError(f"geometry.num_frames must be >= 1, got {self.num_frames}")
        for axis, name in enumerate("xyz"):
            lo, hi, v = pr[axis], pr[axis + 3], vs[axis]
            if hi <= lo:
                raise ConfigError(f"geometry.point_range: {name}max ({hi}) must exceed {name}min ({lo})")
            cells = (hi - lo) / v
            if abs(cells - round(cells)) > _TOL * max(1.0, cells):
                n_lo, n_hi = max(1, int(np.floor(cells))), int(np.ceil(cells))
                raise ConfigError(
                    f"geometry.point_range along {name} spans {hi - lo:g} m, which is not a multiple of "
                    f"voxel_size {v:g} m ({cells:.4f} cells). Use {name}max = {lo + n_lo * v:g} "
                    f"({n_lo} cells) or {name}max = {lo + n_hi * v:g} ({n_hi} cells), "
                    f"or voxel_size {name} = {(hi - lo) / n_lo:g}.")
        object.__setattr__(self, "point_range", pr)
        object.__setattr__(self, "voxel_size", vs)
        object.__setattr__(self, "num_frames", int(self.num_frames))

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """(X, Y, Z) number of voxels along each axis."""
        pr, vs = self.point_range, self.voxel_size
        return tuple(int(round((pr[i + 3] - pr[i]) / vs[i])) for i in range(3))

    @property
    def spatial_shape(self) -> tuple[int, int, int, int]:
        """(X, Y, Z, T): the 4D sparse tensor's spatial shape."""
        return (*self.grid_shape, self.num_frames)

    @property
    def lower(self) -> np.ndarray:
        return np.asarray(self.point_range[:3], dtype=np.float32)

    @property
    def upper(self) -> np.ndarray:
        return np.asarray(self.point_range[3:], dtype=np.float32)

    def voxel_centers(self, xyz_index: np.ndarray) -> np.ndarray:
        """Centres (M, 3) of integer voxel indices (M, 3) ordered x, y, z."""
        return (np.asarray(xyz_index, np.float32) + 0.5) * np.asarray(self.voxel_size, np.float32) + self.lower

    def with_frames(self, num_frames: int) -> "Geometry":
        return Geometry(self.point_range, self.voxel_size, num_frames)

    @classmethod
    def from_config(cls, cfg) -> "Geometry":
        """From a mapping with point_range, voxel_size, num_frames (e.g. ``cfg.geometry``)."""
        return cls(point_range=tuple(cfg["point_range"]), voxel_size=tuple(cfg["voxel_size"]),
                   num_frames=int(cfg.get("num_frames", 1)))
