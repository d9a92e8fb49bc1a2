"""Planar rigid motion of scene objects and of the ego vehicle (closed form, exact at any time).

Every object moves in the horizontal plane (its height follows the ground
under it, see ``Scene.object_z``): its reference point (x, y) and heading
``yaw`` follow one of three models chosen by its parameters:

* static: speed = accel = yaw_rate = 0;
* constant velocity: speed > 0, accel = yaw_rate = 0;
* turning: constant speed and constant yaw rate (circular arc);
* accelerating: straight line, speed(t) = speed + accel * t.

Times are seconds since the first frame. The ego moves forward along world x
at a constant ``speed`` (m/s of x) and weaves laterally,
``y = lane_y + A sin(2 pi x / L)``, heading along the path tangent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perception4d.core.se3 import SE3
from perception4d.errors import ConfigError

_EPS_RATE = 1e-9


@dataclass(frozen=True)
class Trajectory:
    """Motion of one object's reference point; see the module docstring for the models."""

    x0: float
    y0: float
    yaw0: float
    speed: float = 0.0  # m/s along the heading at t = 0
    yaw_rate: float = 0.0  # rad/s
    accel: float = 0.0  # m/s^2 along the heading

    def __post_init__(self):
        if abs(self.yaw_rate) > _EPS_RATE and self.accel != 0.0:
            raise ConfigError("Trajectory: a turning object keeps a constant speed (accel must be 0)")
        if self.speed < 0 or self.accel < 0:
            raise ConfigError(f"Trajectory: speed and accel must be >= 0, got {self.speed}, {self.accel}")

    @property
    def kind(self) -> str:
        if self.speed == 0 and self.accel == 0:
            return "static"
        if abs(self.yaw_rate) > _EPS_RATE:
            return "turning"
        return "accelerating" if self.accel > 0 else "constant_velocity"

    @property
    def is_moving(self) -> bool:
        return self.kind != "static"

    def params(self) -> np.ndarray:
        """(6,) float64: x0, y0, yaw0, speed, yaw_rate, accel."""
        return np.array([self.x0, self.y0, self.yaw0, self.speed, self.yaw_rate, self.accel], np.float64)

    def state(self, t: float) -> tuple[float, float, float]:
        """(x, y, yaw) at time t."""
        x, y, yaw = motion_states(self.params()[None], np.asarray([t], np.float64))
        return float(x[0, 0]), float(y[0, 0]), float(yaw[0, 0])

    def velocity(self, t: float) -> tuple[float, float]:
        """World (vx, vy) in m/s at time t."""
        vx, vy = motion_velocities(self.params()[None], np.asarray([t], np.float64))
        return float(vx[0, 0]), float(vy[0, 0])


def motion_states(params: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y, yaw of objects (P, 6 params) at times t (K,), each (P, K)."""
    x0, y0, yaw0, v, w, a = (params[:, k:k + 1] for k in range(6))
    t = np.asarray(t, np.float64)[None, :]
    turning = np.abs(w) > _EPS_RATE
    w_safe = np.where(turning, w, 1.0)
    yaw = yaw0 + w * t
    s = v * t + 0.5 * a * t * t
    x_straight, y_straight = x0 + s * np.cos(yaw0), y0 + s * np.sin(yaw0)
    r = v / w_safe
    x_turn = x0 + r * (np.sin(yaw) - np.sin(yaw0))
    y_turn = y0 - r * (np.cos(yaw) - np.cos(yaw0))
    return np.where(turning, x_turn, x_straight), np.where(turning, y_turn, y_straight), yaw


def motion_velocities(params: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World vx, vy (m/s) of the objects' reference points at times t, each (P, K)."""
    yaw0, v, w, a = (params[:, k:k + 1] for k in range(2, 6))
    t = np.asarray(t, np.float64)[None, :]
    yaw = yaw0 + w * t
    speed = v + a * t
    return speed * np.cos(yaw), speed * np.sin(yaw)


@dataclass(frozen=True)
class EgoPath:
    """The ego vehicle's path: forward along world x, weaving around ``lane_y``."""

    speed: float  # m/s along world x
    lane_y: float
    weave_amplitude: float = 0.0  # m (0: straight)
    weave_wavelength: float = 60.0  # m

    def state(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x, y, yaw at times t (arrays of t's shape)."""
        t = np.asarray(t, np.float64)
        k = 2.0 * np.pi / self.weave_wavelength
        x = self.speed * t
        y = self.lane_y + self.weave_amplitude * np.sin(k * x)
        yaw = np.arctan(self.weave_amplitude * k * np.cos(k * x))
        return x, y, yaw

    def pose(self, t: float) -> SE3:
        """world_T_ego at time t on flat ground (ego origin at z = 0; ``Scene.ego_pose`` covers terrain)."""
        x, y, yaw = self.state(np.asarray(t))
        return SE3.from_yaw(float(yaw), (float(x), float(y), 0.0))


def obb_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether 2-D oriented boxes overlap; rows (cx, cy, yaw, half_x, half_y), broadcast (...)."""
    d = b[..., :2] - a[..., :2]
    ca, sa, cb, sb = np.cos(a[..., 2]), np.sin(a[..., 2]), np.cos(b[..., 2]), np.sin(b[..., 2])
    axes_a = ((ca, sa), (-sa, ca))
    axes_b = ((cb, sb), (-sb, cb))
    ok = np.ones(np.broadcast_shapes(a.shape[:-1], b.shape[:-1]), dtype=bool)
    for ux, uy in axes_a + axes_b:
        dist = np.abs(d[..., 0] * ux + d[..., 1] * uy)
        ra = a[..., 3] * np.abs(ca * ux + sa * uy) + a[..., 4] * np.abs(-sa * ux + ca * uy)
        rb = b[..., 3] * np.abs(cb * ux + sb * uy) + b[..., 4] * np.abs(-sb * ux + cb * uy)
        ok &= dist <= ra + rb
    return ok
