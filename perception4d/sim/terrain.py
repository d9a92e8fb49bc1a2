"""Ground surface of the simulated street: the plane z = 0 (``flat``, the default) or ``urban`` terrain.

Urban terrain is a closed-form height field over world (x, y) (street along x,
centre line y = 0), the sum of four parts:

* relief: three sinusoids of 20-100 m wavelength heading within 45 deg of the
  street, peak sum 0.2-0.5 m; amplitudes are scaled down where their summed
  slope bound would exceed ``max_grade`` (5 %), so short wavelengths get less;
* cross profile, a function of |y| only: a crowned road falling off the centre
  line at the cross slope (1-3 %, rounded over ``crown_radius``), a curb raising
  the sidewalk by 0.10-0.18 m over a 2 cm wide near-vertical face starting at
  ``road_half_width`` (the face is sidewalk, as in ``Street.ground_semantic``),
  the sidewalk rising away from the road at 1-2 %, then a verge sloping at
  -3..5 % for 10 m and level beyond;
* roughness: four sinusoids of 1.5-4 m wavelength in any direction, peak sum
  0.5-1.2 cm.

Closed form (rather than a sampled grid) keeps every ground truth exact: the
ray caster finds the surface to 1e-6 m, objects and the ego stand on the same
function, and the occupancy grid tests voxels against it. The ray march needs
bounds, which the closed form gives directly: global height bounds, slope
(Lipschitz) bounds per part and a curvature bound (``Terrain.scalars``).
Parameters are drawn from ``np.random.default_rng([seed, 2])``, apart from the
object layout's stream, so a seed gives the same street on either terrain.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property

import numpy as np

from perception4d.core.se3 import SE3
from perception4d.errors import ConfigError
from perception4d.sim.heightfield import (C0, CURV, GPROF, GRAMP, GREL, GROUGH, HC, HHI, HLO, NREL, NUM_SCALARS,
                                          RSUM, RW, SC, SSW, ST, SW, VW, WC, surface_many)

TERRAIN_KINDS = ("flat", "urban")
_NUM_RELIEF, _NUM_ROUGH = 3, 4
_CURB_WIDTH = 0.02  # m: horizontal run of the curb face (82 deg for a 0.15 m curb)
_VERGE_WIDTH = 10.0  # m
_CROWN_RADIUS = 0.5  # m


@dataclass(frozen=True)
class TerrainConfig:
    """How urban terrain parameters are drawn (ranges are uniform draws per seed)."""

    kind: str = "flat"  # "flat" (the plane z = 0) or "urban"
    relief_m: tuple[float, float] = (0.2, 0.5)  # peak sum of the relief sinusoids
    relief_wavelength_m: tuple[float, float] = (20.0, 100.0)
    max_grade: float = 0.05  # bound on the relief's slope
    cross_slope: tuple[float, float] = (0.01, 0.03)  # road camber
    curb_height_m: tuple[float, float] = (0.10, 0.18)
    sidewalk_slope: tuple[float, float] = (0.01, 0.02)
    verge_slope: tuple[float, float] = (-0.03, 0.05)
    roughness_m: tuple[float, float] = (0.005, 0.012)  # peak sum of the roughness sinusoids
    roughness_wavelength_m: tuple[float, float] = (1.5, 4.0)

    def __post_init__(self):
        if self.kind not in TERRAIN_KINDS:
            raise ConfigError(f"terrain.kind must be one of {TERRAIN_KINDS}, got {self.kind!r}")
        for f in fields(self):
            if f.name in ("kind", "max_grade"):
                continue
            lo, hi = (float(v) for v in getattr(self, f.name))
            if hi < lo:
                raise ConfigError(f"terrain.{f.name} must be a (low, high) range, got {getattr(self, f.name)}")
            object.__setattr__(self, f.name, (lo, hi))
        checks = {"relief_m": 0.0, "curb_height_m": 0.0, "roughness_m": 0.0, "relief_wavelength_m": 1.0,
                  "roughness_wavelength_m": 0.1}
        for name, least in checks.items():
            if getattr(self, name)[0] < least:
                raise ConfigError(f"terrain.{name} must be >= {least}, got {getattr(self, name)}")
        if not 0.0 < self.max_grade <= 0.2:
            raise ConfigError(f"terrain.max_grade must be in (0, 0.2], got {self.max_grade}")
        if max(abs(v) for r in (self.cross_slope, self.sidewalk_slope, self.verge_slope) for v in r) > 0.2:
            raise ConfigError("terrain slopes (cross_slope, sidewalk_slope, verge_slope) must lie within +-0.2")


def terrain_config(spec: "str | dict | TerrainConfig | None") -> TerrainConfig:
    """A ``TerrainConfig`` from its kind name, a dict of its fields (configs) or itself (None: flat)."""
    if spec is None:
        return TerrainConfig()
    if isinstance(spec, TerrainConfig):
        return spec
    if isinstance(spec, str):
        return TerrainConfig(kind=spec)
    if isinstance(spec, dict):
        known = {f.name for f in fields(TerrainConfig)}
        unknown = set(spec) - known
        if unknown:
            raise ConfigError(f"terrain: unknown fields {sorted(unknown)}; known fields are {sorted(known)}")
        return TerrainConfig(**spec)
    raise ConfigError(f"terrain must be a kind name {TERRAIN_KINDS}, a dict or a TerrainConfig, got {spec!r}")


@dataclass(frozen=True)
class Terrain:
    """One drawn ground surface (see the module docstring); ``kind == "flat"`` is the plane z = 0."""

    kind: str = "flat"
    relief: tuple[tuple[float, float, float, float], ...] = ()  # (kx, ky rad/m, amplitude m, phase rad)
    roughness: tuple[tuple[float, float, float, float], ...] = ()
    road_half_width: float = 8.5
    sidewalk_width: float = 3.5
    cross_slope: float = 0.0
    curb_height: float = 0.0
    sidewalk_slope: float = 0.0
    verge_slope: float = 0.0

    @property
    def is_flat(self) -> bool:
        return self.kind == "flat"

    @cached_property
    def waves(self) -> np.ndarray:
        """(K, 4) float64 rows (kx, ky, amplitude, phase): relief first, then roughness."""
        return np.array(self.relief + self.roughness, np.float64).reshape(-1, 4)

    @cached_property
    def scalars(self) -> np.ndarray:
        """(NUM_SCALARS,) float64 parameters and bounds for the kernels (index names at module level)."""
        s = np.zeros(NUM_SCALARS)
        rw, c0 = self.road_half_width, _CROWN_RADIUS
        s[[RW, WC, HC, SC, C0, SW, SSW, ST, VW]] = (rw, _CURB_WIDTH, self.curb_height, self.cross_slope, c0,
                                                    self.sidewalk_width, self.sidewalk_slope, self.verge_slope,
                                                    _VERGE_WIDTH)
        w = self.waves
        k = np.hypot(w[:, 0], w[:, 1])
        rel, rough = slice(0, len(self.relief)), slice(len(self.relief), None)
        s[NREL] = len(self.relief)
        s[RSUM] = np.abs(w[rough, 2]).sum()
        s[GREL] = (np.abs(w[rel, 2]) * k[rel]).sum()
        s[GROUGH] = (np.abs(w[rough, 2]) * k[rough]).sum()
        s[GPROF] = max(abs(self.cross_slope), abs(self.sidewalk_slope), abs(self.verge_slope))
        s[GRAMP] = abs(self.curb_height) / _CURB_WIDTH + abs(self.sidewalk_slope)
        edge = -self.cross_slope * (np.hypot(rw, c0) - c0)  # the profile is monotone between these knots
        curb_top = edge + self.curb_height + self.sidewalk_slope * _CURB_WIDTH
        outer = edge + self.curb_height + self.sidewalk_slope * self.sidewalk_width
        verge_end = outer + self.verge_slope * _VERGE_WIDTH
        amp = np.abs(w[:, 2]).sum()
        s[HLO] = min(0.0, edge, curb_top, outer, verge_end) - amp
        s[HHI] = max(0.0, edge, curb_top, outer, verge_end) + amp
        s[CURV] = (np.abs(w[:, 2]) * k * k).sum() + abs(self.cross_slope) / c0
        return s

    def height(self, x, y) -> np.ndarray:
        """Ground height (m) at world (x, y) (arrays of one shape)."""
        x, y = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
        if self.is_flat:
            return np.zeros(x.shape)
        h, _, _ = surface_many(self.scalars, self.waves, x.ravel(), y.ravel())
        return h.reshape(x.shape)

    def gradient(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """(dh/dx, dh/dy) at world (x, y)."""
        x, y = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
        if self.is_flat:
            return np.zeros(x.shape), np.zeros(x.shape)
        _, gx, gy = surface_many(self.scalars, self.waves, x.ravel(), y.ravel())
        return gx.reshape(x.shape), gy.reshape(x.shape)

    def vehicle_pose(self, x: float, y: float, yaw: float, wheelbase: float, track: float) -> SE3:
        """world_T_vehicle of a vehicle whose rear axle centre is at (x, y), heading ``yaw``, on the ground.

        The origin is the rear axle centre at the mean height of the two rear
        wheel contacts; the forward axis rises by the front/rear height
        difference over the wheelbase and the left axis by the left/right one
        over the track, so the body takes the terrain's pitch and roll while its
        heading (projected on the ground plane) stays exactly ``yaw``.
        """
        c, s = np.cos(yaw), np.sin(yaw)
        half = 0.5 * track
        u = np.array([0.0, 0.0, wheelbase, wheelbase])  # rear left, rear right, front left, front right
        v = np.array([half, -half, half, -half])
        h = self.height(x + c * u - s * v, y + s * u + c * v)
        fwd = np.array([c, s, 0.5 * (h[2] + h[3] - h[0] - h[1]) / wheelbase])
        left = np.array([-s, c, 0.5 * (h[0] + h[2] - h[1] - h[3]) / track])
        up = np.cross(fwd, left)
        up /= np.linalg.norm(up)
        fwd /= np.linalg.norm(fwd)
        rot = np.stack([fwd, np.cross(up, fwd), up], axis=1)
        return SE3(rot, (float(x), float(y), 0.5 * float(h[0] + h[1])))


def draw_terrain(config: TerrainConfig, road_half_width: float, sidewalk_width: float, seed: int) -> Terrain:
    """The terrain of scene ``seed`` (see the module docstring)."""
    if config.kind == "flat":
        return Terrain(road_half_width=road_half_width, sidewalk_width=sidewalk_width)
    rng = np.random.default_rng([seed, 2])

    def waves(n, amp_range, wl_range, heading_lo, heading_hi, max_slope):
        wl = np.exp(rng.uniform(*np.log(wl_range), n))
        heading = rng.uniform(heading_lo, heading_hi, n)
        amp = rng.uniform(*amp_range) * rng.dirichlet(np.ones(n))
        phase = rng.uniform(0.0, 2 * np.pi, n)
        k = 2 * np.pi / wl
        slope = float((amp * k).sum())
        if max_slope is not None and slope > max_slope:
            amp = amp * (max_slope / slope)
        return tuple((float(kk * np.cos(a)), float(kk * np.sin(a)), float(m), float(p))
                     for kk, a, m, p in zip(k, heading, amp, phase))

    relief = waves(_NUM_RELIEF, config.relief_m, config.relief_wavelength_m, -np.pi / 4, np.pi / 4,
                   config.max_grade)
    roughness = waves(_NUM_ROUGH, config.roughness_m, config.roughness_wavelength_m, 0.0, 2 * np.pi, None)
    return Terrain(kind=config.kind, relief=relief, roughness=roughness, road_half_width=road_half_width,
                   sidewalk_width=sidewalk_width, cross_slope=float(rng.uniform(*config.cross_slope)),
                   curb_height=float(rng.uniform(*config.curb_height_m)),
                   sidewalk_slope=float(rng.uniform(*config.sidewalk_slope)),
                   verge_slope=float(rng.uniform(*config.verge_slope)))
