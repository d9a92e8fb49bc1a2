"""Rigid transforms read from files: near-rotations are re-orthonormalized, anything else is an error."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from perception4d.core.se3 import SE3
from perception4d.errors import DataFormatError

#: text and float32 storage drift rotations from SO(3) by ~1e-6; more than this is a broken matrix
ROTATION_TOLERANCE = 1e-3


def rigid_from_matrix(m, path: Path, what: str) -> SE3:
    """SE3 of a stored 3x4 or 4x4 matrix; DataFormatError naming ``path`` and ``what`` when it is not rigid."""
    try:
        a = np.asarray(m, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataFormatError(path, f"{what} is not a numeric matrix ({e})") from None
    if a.shape not in ((3, 4), (4, 4)) or not np.all(np.isfinite(a)):
        raise DataFormatError(path, f"{what} is not a rigid transform: shape {a.shape} or non-finite entries")
    r = a[:3, :3]
    drift = float(np.abs(r @ r.T - np.eye(3)).max())
    if drift > ROTATION_TOLERANCE or np.linalg.det(r) <= 0:
        raise DataFormatError(path, f"{what} is not a rigid transform (|R R^T - I| = {drift:.3g}, "
                                    f"det R = {np.linalg.det(r):.3g})")
    return SE3.from_matrix(a, orthonormalize=True)
