"""Rigid transforms in 3D (SE3), numpy float64.

Convention: ``a_T_b`` maps points expressed in frame ``b`` into frame ``a``;
``(a_T_b @ b_T_c) == a_T_c``. A Frame's ``pose`` is ``world_T_ego``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SE3:
    rotation: np.ndarray  # (3, 3) float64, orthonormal, det +1
    translation: np.ndarray  # (3,) float64

    def __post_init__(self):
        r = np.asarray(self.rotation, dtype=np.float64)
        t = np.asarray(self.translation, dtype=np.float64).reshape(-1)
        if r.shape != (3, 3) or t.shape != (3,):
            raise ValueError(f"SE3 needs a 3x3 rotation and a 3-vector, got {r.shape} and {t.shape}")
        if not (np.all(np.isfinite(r)) and np.all(np.isfinite(t))):
            raise ValueError("SE3 has non-finite entries")
        if np.abs(r @ r.T - np.eye(3)).max() > 1e-4 or np.linalg.det(r) < 0:
            raise ValueError("SE3 rotation is not a proper rotation matrix (R R^T != I or det < 0)")
        object.__setattr__(self, "rotation", r)
        object.__setattr__(self, "translation", t)

    # construction -------------------------------------------------------
    @classmethod
    def identity(cls) -> "SE3":
        return cls(np.eye(3), np.zeros(3))

    @classmethod
    def from_matrix(cls, m: np.ndarray, orthonormalize: bool = False) -> "SE3":
        m = np.asarray(m, dtype=np.float64)
        if m.shape == (3, 4):
            m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
        if m.shape != (4, 4):
            raise ValueError(f"SE3.from_matrix needs 3x4 or 4x4, got {m.shape}")
        r = m[:3, :3]
        if orthonormalize:  # poses stored in text with ~1e-6 precision drift from SO(3)
            u, _, vt = np.linalg.svd(r)
            r = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
        return cls(r, m[:3, 3])

    @classmethod
    def from_quaternion(cls, qw: float, qx: float, qy: float, qz: float, translation) -> "SE3":
        from pyquaternion import Quaternion

        q = Quaternion(w=qw, x=qx, y=qy, z=qz).normalised
        return cls(q.rotation_matrix, np.asarray(translation, dtype=np.float64))

    @classmethod
    def from_yaw(cls, yaw: float, translation) -> "SE3":
        c, s = np.cos(yaw), np.sin(yaw)
        return cls(np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]), translation)

    # algebra ------------------------------------------------------------
    def as_matrix(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = self.rotation
        m[:3, 3] = self.translation
        return m

    @classmethod
    def _of_valid(cls, rotation: np.ndarray, translation: np.ndarray) -> "SE3":
        """An SE3 of float64 arrays derived from valid transforms (inverse, product): not checked again (the
        checks cost more than the product; a streaming step composes a few dozen transforms)."""
        out = object.__new__(cls)
        object.__setattr__(out, "rotation", rotation)
        object.__setattr__(out, "translation", translation)
        return out

    def inverse(self) -> "SE3":
        rt = self.rotation.T
        return SE3._of_valid(rt, -rt @ self.translation)

    def __matmul__(self, other: "SE3") -> "SE3":
        if not isinstance(other, SE3):
            raise TypeError(f"SE3 @ {type(other).__name__}: compose with an SE3 (points: transform_points)")
        return SE3._of_valid(self.rotation @ other.rotation, self.rotation @ other.translation + self.translation)

    def transform_points(self, xyz: np.ndarray) -> np.ndarray:
        """Apply to (N, 3) points; float32 input stays float32 (computed in float64)."""
        xyz = np.asarray(xyz)
        out = xyz.astype(np.float64) @ self.rotation.T + self.translation
        return out.astype(xyz.dtype if xyz.dtype in (np.float32, np.float64) else np.float64)

    @property
    def yaw(self) -> float:
        return float(np.arctan2(self.rotation[1, 0], self.rotation[0, 0]))

    def quaternion(self) -> tuple[float, float, float, float]:
        """(qw, qx, qy, qz)."""
        from pyquaternion import Quaternion

        u, _, vt = np.linalg.svd(self.rotation)  # the nearest rotation: the constructor allows 1e-4 drift
        q = Quaternion(matrix=u @ vt, atol=1e-9)
        return (q.w, q.x, q.y, q.z)

    def allclose(self, other: "SE3", atol: float = 1e-6) -> bool:
        return bool(np.allclose(self.as_matrix(), other.as_matrix(), atol=atol))
