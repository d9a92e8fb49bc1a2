"""``make demo`` / ``p4d demo``: the package's main job on its embedded default data.

Simulates a short sequence with the built-in LiDAR simulator, builds the 4D
window, voxelizes it into a (b, x, y, z, t) sparse tensor, prints what came
out and writes BEV pictures.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

DEMO_GEOMETRY = dict(point_range=(-51.2, -51.2, -2.2, 51.2, 51.2, 4.2), voxel_size=(0.2, 0.2, 0.2))


def run_demo(out: str = "demo_out", seed: int = 2024, frames: int = 5, preset: str = "hdl64e") -> int:
    from perception4d.cli import render_window
    from perception4d.core import Geometry, Window
    from perception4d.core.voxelize import voxelize
    from perception4d.sim import simulate

    out_dir = Path(out)
    t0 = time.perf_counter()
    seq = simulate(preset=preset, num_frames=frames, seed=seed, occupancy=None)
    t_sim = time.perf_counter() - t0
    window = Window(tuple(seq.frames))
    geometry = Geometry(num_frames=len(window), **DEMO_GEOMETRY)
    aligned = window.align()
    t0 = time.perf_counter()
    sparse = voxelize(aligned.points, aligned.time, geometry)
    t_vox = time.perf_counter() - t0
    moving = np.concatenate([f.labels.moving for f in seq.frames])
    print(f"simulated {len(seq.frames)} sweeps of the {preset} sensor (seed {seed}) in {t_sim:.1f} s: "
          f"{aligned.points.shape[0]} points, {int(moving.sum())} on moving objects")
    print(f"voxelized into a 4D sparse tensor (b, x, y, z, t) of spatial shape {sparse.spatial_shape} "
          f"in {t_vox * 1e3:.1f} ms: {sparse.num_voxels} voxels, "
          f"{sparse.dropped.out_of_range} points outside the grid, {sparse.dropped.non_finite} non-finite")
    per_t = np.bincount(sparse.coords[:, 4].numpy(), minlength=len(window))
    print("voxels per sweep (oldest first): " + ", ".join(str(int(v)) for v in per_t))
    for p in render_window(window, out_dir, prefix="demo", extent=50.0):
        print(f"wrote {p}")
    return 0
