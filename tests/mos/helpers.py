"""Synthetic geometry shared by the MOS tests."""

import numpy as np


def box_surface(rng, center, size, n):
    """``n`` points uniform over the surface of an axis-aligned box."""
    sx, sy, sz = size
    face_area = np.array([sy * sz, sx * sz, sx * sy])
    face = rng.choice(3, n, p=face_area / face_area.sum())
    pts = rng.uniform(-0.5, 0.5, (n, 3)) * size
    pts[np.arange(n), face] = np.sign(rng.uniform(-1, 1, n)) * 0.5 * np.asarray(size)[face]
    return pts + center
