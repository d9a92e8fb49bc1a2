"""Training augmentation of whole windows: one random similarity transform and an intensity gain per sample.

Simulated scenes are idealised (flat ground at exactly z = 0, one reflectivity
per material), so a network can key on absolute height or intensity instead of
motion. A random rotation about the ego z axis, a small scale, a height shift
and an intensity gain, applied to every point of the window alike, remove those
shortcuts while keeping every label exact: flow vectors rotate and scale with
the points, a height shift does not change them, MOS labels do not change.
The window's ``ref_T_frame`` poses are not updated (a scaled map is no SE3):
augmented samples are for training only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perception4d.datasets.sample import WindowSample


@dataclass(frozen=True)
class WindowAugment:
    rotate: bool = True  # uniform yaw in [-pi, pi)
    scale: tuple[float, float] = (0.95, 1.05)
    z_shift: float = 0.3  # metres, uniform in [-z_shift, z_shift]
    intensity_gain: tuple[float, float] = (0.6, 1.4)

    def __call__(self, sample: WindowSample, rng: np.random.Generator) -> WindowSample:
        yaw = rng.uniform(-np.pi, np.pi) if self.rotate else 0.0
        s = rng.uniform(*self.scale)
        dz = rng.uniform(-self.z_shift, self.z_shift)
        c, si = np.cos(yaw), np.sin(yaw)
        m = (s * np.array([[c, -si, 0.0], [si, c, 0.0], [0.0, 0.0, 1.0]])).astype(np.float32)
        shift = np.array([0.0, 0.0, dz], np.float32)
        pts = sample.aligned.points.copy()
        pts[:, :3] = pts[:, :3] @ m.T + shift
        cols = sample.aligned.columns
        if "intensity" in cols:
            j = cols.index("intensity")
            pts[:, j] = np.clip(pts[:, j] * rng.uniform(*self.intensity_gain), 0.0, 1.0)
        sample.aligned.points = pts
        sample.source_xyz = (sample.source_xyz @ m.T + shift).astype(np.float32)
        if sample.targets is not None:
            sample.targets.flow = (sample.targets.flow @ m.T).astype(np.float32)
        return sample
