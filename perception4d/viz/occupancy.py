"""Pictures of semantic occupancy grids: a bird's-eye view of the top occupied class and height slices.

Grids are (X, Y, Z) class indices of ``OCC_CLASSES`` in the ego frame. Pictures
use the BEV convention of ``perception4d.viz.bev``: x (forward) up, -y (the
ego's right) to the right.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from perception4d.core.geometry import Geometry
from perception4d.core.labels import OCC_CLASSES, OCC_FREE, OCC_IGNORE

#: RGB (0..1) per compact occupancy class, index = class id; free is white
OCC_COLOURS = np.array([
    (1.00, 1.00, 1.00),  # free
    (0.25, 0.55, 0.95),  # car
    (0.30, 0.30, 0.70),  # other-vehicle
    (0.95, 0.50, 0.25),  # two-wheeler
    (0.95, 0.25, 0.30),  # person
    (0.55, 0.55, 0.60),  # road
    (0.70, 0.55, 0.45),  # sidewalk
    (0.55, 0.45, 0.40),  # other-ground
    (0.55, 0.80, 0.30),  # terrain
    (0.95, 0.80, 0.35),  # building
    (0.85, 0.70, 0.50),  # structure
    (0.20, 0.65, 0.20),  # vegetation
    (0.95, 0.95, 0.30),  # pole
    (0.60, 0.60, 0.60),  # other-object
], dtype=np.float32)
_IGNORE_COLOUR = (0.0, 0.0, 0.0)


def occupancy_rgb(classes: np.ndarray) -> np.ndarray:
    """(..., 3) float RGB of class indices; ignore (255) black, unknown indices grey."""
    c = np.asarray(classes).astype(np.int64)
    lut = np.full((256, 3), 0.6, dtype=np.float32)
    lut[:len(OCC_COLOURS)] = OCC_COLOURS
    lut[OCC_IGNORE] = _IGNORE_COLOUR
    return lut[np.clip(c, 0, 255)]


def top_class(semantics: np.ndarray) -> np.ndarray:
    """(X, Y) class of the highest occupied (not free) voxel of each column; free where the column is empty."""
    sem = np.asarray(semantics)
    occupied = sem != OCC_FREE
    nz = sem.shape[2]
    # index of the highest occupied voxel: last True along z
    top = nz - 1 - np.argmax(occupied[:, :, ::-1], axis=2)
    out = np.take_along_axis(sem, top[:, :, None], axis=2)[:, :, 0]
    return np.where(occupied.any(axis=2), out, OCC_FREE).astype(sem.dtype)


def _to_picture(grid_xy: np.ndarray) -> np.ndarray:
    """(X, Y, ...) array -> image rows (x forward, up) and columns (-y, right)."""
    return grid_xy[::-1, ::-1]


def _extent(geometry: Geometry) -> list[float]:
    x0, y0, _, x1, y1, _ = geometry.point_range
    return [-y1, -y0, x0, x1]  # left, right (= -y), bottom, top (= x)


def _legend(ax, classes: Sequence[int]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=OCC_COLOURS[c], label=OCC_CLASSES[c]) for c in classes if 0 < c < len(OCC_CLASSES)]
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=6, framealpha=0.8)


def occupancy_bev_figure(semantics: np.ndarray, geometry: Geometry, title: str = "",
                         mask: np.ndarray | None = None):
    """BEV of the top occupied class per column; with ``mask`` ((X, Y, Z) observed voxels) unobserved,
    empty columns are drawn light grey instead of white."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    top = top_class(semantics)
    rgb = occupancy_rgb(top)
    if mask is not None:
        unseen = ~np.asarray(mask, bool).any(axis=2) & (top == OCC_FREE)
        rgb[unseen] = (0.85, 0.85, 0.85)
    fig, ax = plt.subplots(figsize=(7, 7), dpi=110)
    ax.imshow(_to_picture(rgb), extent=_extent(geometry), interpolation="nearest")
    ax.plot([0], [0], marker="^", color="k", markersize=6)
    ax.set_xlabel("-y (m)")
    ax.set_ylabel("x (m)")
    _legend(ax, sorted(int(c) for c in np.unique(top)))
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def height_slices_figure(semantics: np.ndarray, geometry: Geometry, heights_m: Sequence[float] = (0.2, 1.0, 2.0),
                         title: str = ""):
    """One panel per height (m, ego frame): the classes of the voxel layer holding that height."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    sem = np.asarray(semantics)
    z0, vz, nz = geometry.point_range[2], geometry.voxel_size[2], sem.shape[2]
    layers = sorted({min(max(int(np.floor((h - z0) / vz)), 0), nz - 1) for h in heights_m})
    fig, axes = plt.subplots(1, len(layers), figsize=(4.2 * len(layers), 4.6), dpi=100, squeeze=False)
    present: set[int] = set()
    for ax, k in zip(axes[0], layers):
        ax.imshow(_to_picture(occupancy_rgb(sem[:, :, k])), extent=_extent(geometry), interpolation="nearest")
        ax.plot([0], [0], marker="^", color="k", markersize=4)
        ax.set_title(f"z {z0 + k * vz:.1f} .. {z0 + (k + 1) * vz:.1f} m", fontsize=9)
        ax.set_xlabel("-y (m)")
        present.update(int(c) for c in np.unique(sem[:, :, k]))
    axes[0][0].set_ylabel("x (m)")
    _legend(axes[0][-1], sorted(present))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_occupancy_pictures(semantics: np.ndarray, geometry: Geometry, out_stem: str | Path, title: str = "",
                            mask: np.ndarray | None = None) -> list[Path]:
    """``<stem>_bev.png`` and ``<stem>_slices.png``; returns their paths."""
    from perception4d.viz.bev import save_figure

    stem = Path(out_stem)
    return [save_figure(occupancy_bev_figure(semantics, geometry, title, mask), f"{stem}_bev.png"),
            save_figure(height_slices_figure(semantics, geometry, title=title), f"{stem}_slices.png")]
