"""Spinning-LiDAR sensor presets for the simulator.

A preset fixes the beam layout (elevation angles), the azimuth step, the
usable range, the mounting height above the ground, the rotation rate (one
sweep per revolution, so the frame rate) and the range noise. A second stacked
unit (Argoverse 2's two VLP-32C) shares the azimuth step and rate and sits
``second_unit_dz`` metres above (positive) or below (negative) the first one.

Range noise is Gaussian along the ray with the datasheet accuracy (2 cm
HDL-64E / HDL-32E, 3 cm VLP-32C). Real sensors also miss returns (dark or
specular surfaces, interference); ``dropout_prob`` drops each return
independently with that probability. It is 0 in the presets so their output
stays as it was; a few per cent (``with_overrides(dropout_prob=0.03)``)
resembles real scans.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from perception4d.errors import ConfigError

# Velodyne VLP-32C elevation table (deg), sorted: dense around the horizon.
_VLP32C_ELEVATIONS = (
    -25.0, -15.639, -11.31, -8.843, -7.254, -6.148, -5.333, -4.667, -4.0, -3.667, -3.333,
    -3.0, -2.667, -2.333, -2.0, -1.667, -1.333, -1.0, -0.667, -0.333, 0.0, 0.333, 0.667,
    1.0, 1.333, 1.667, 2.333, 3.333, 4.667, 7.0, 10.333, 15.0,
)


@dataclass(frozen=True)
class LidarPreset:
    """One spinning LiDAR (optionally two stacked units), angles in degrees, lengths in metres."""

    name: str
    elevation_deg: tuple[float, ...]
    azimuth_resolution_deg: float
    min_range: float
    max_range: float
    mount_height: float  # sensor origin above the ground (ego z = 0)
    rotation_rate_hz: float
    range_noise_sigma: float
    second_elevation_deg: tuple[float, ...] | None = None
    second_unit_dz: float = 0.0  # second unit origin minus first unit origin, along z
    dropout_prob: float = 0.0  # probability that a return is lost

    def __post_init__(self):
        object.__setattr__(self, "elevation_deg", tuple(float(e) for e in self.elevation_deg))
        if self.second_elevation_deg is not None:
            second = tuple(float(e) for e in self.second_elevation_deg)
            object.__setattr__(self, "second_elevation_deg", second)
        where = f"LidarPreset {self.name!r}"
        if not self.elevation_deg or not all(-90 < e < 90 for e in self.elevation_deg):
            raise ConfigError(f"{where}: elevation_deg needs at least one angle in (-90, 90)")
        if not 0 < self.azimuth_resolution_deg <= 90:
            raise ConfigError(f"{where}: azimuth_resolution_deg must be in (0, 90], "
                              f"got {self.azimuth_resolution_deg}")
        if not 0 <= self.min_range < self.max_range:
            raise ConfigError(f"{where}: need 0 <= min_range < max_range, "
                              f"got {self.min_range}, {self.max_range}")
        if self.rotation_rate_hz <= 0 or self.range_noise_sigma < 0:
            raise ConfigError(f"{where}: rotation_rate_hz must be > 0 and range_noise_sigma >= 0")
        if not 0.0 <= self.dropout_prob < 1.0:
            raise ConfigError(f"{where}: dropout_prob must be in [0, 1), got {self.dropout_prob}")
        if self.mount_height <= 0 or self.mount_height + min(0.0, self.second_unit_dz) <= 0:
            raise ConfigError(f"{where}: every unit must sit above the ground (mount_height > 0)")

    @property
    def num_beams(self) -> int:
        """Beams of all units together."""
        return len(self.elevation_deg) + len(self.second_elevation_deg or ())

    @property
    def num_azimuths(self) -> int:
        return int(round(360.0 / self.azimuth_resolution_deg))

    @property
    def frame_period_s(self) -> float:
        return 1.0 / self.rotation_rate_hz

    @property
    def frame_period_ns(self) -> int:
        return int(round(1e9 / self.rotation_rate_hz))

    def with_overrides(self, **changes) -> "LidarPreset":
        """A copy with some fields changed (e.g. a coarser ``azimuth_resolution_deg`` for tests)."""
        return replace(self, **changes)

    def rays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ray origins, unit directions (sensor frame) and laser numbers; cached, read-only.

        See ``_rays`` for the ordering and numbering.
        """
        return _rays(self)


@lru_cache(maxsize=8)
def _rays(preset: LidarPreset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray origins and unit directions in the sensor frame, and each ray's laser number.

    Returns ``origins`` (R, 3) float64, ``directions`` (R, 3) float64 and
    ``laser`` (R,) int32; rays are ordered unit, azimuth, beam. The first
    unit's origin is the sensor origin; its lasers are numbered
    0..B1-1 from the lowest beam up, the second unit's B1..B1+B2-1.
    """
    az = np.deg2rad(np.arange(preset.num_azimuths) * (360.0 / preset.num_azimuths))
    units = [(np.asarray(preset.elevation_deg), 0.0)]
    if preset.second_elevation_deg is not None:
        units.append((np.asarray(preset.second_elevation_deg), preset.second_unit_dz))
    origins, dirs, lasers, first = [], [], [], 0
    for elev_deg, dz in units:
        order = np.argsort(elev_deg, kind="stable")
        el = np.deg2rad(elev_deg[order])
        laser_ids = first + np.arange(len(el))
        a, e = np.meshgrid(az, el, indexing="ij")
        d = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], axis=-1).reshape(-1, 3)
        dirs.append(d)
        origins.append(np.broadcast_to(np.array([0.0, 0.0, dz]), d.shape))
        lasers.append(np.broadcast_to(laser_ids, a.shape).reshape(-1))
        first += len(el)
    out = (np.ascontiguousarray(np.concatenate(origins)), np.ascontiguousarray(np.concatenate(dirs)),
           np.concatenate(lasers).astype(np.int32))
    for a in out:
        a.setflags(write=False)
    return out


HDL64E = LidarPreset(
    name="hdl64e",  # KITTI / SemanticKITTI
    elevation_deg=tuple(np.concatenate([np.linspace(2.0, -8.33, 32), np.linspace(-8.83, -24.9, 32)])),
    azimuth_resolution_deg=0.1728,
    min_range=2.5,
    max_range=120.0,
    mount_height=1.73,
    rotation_rate_hz=10.0,
    range_noise_sigma=0.02,
)

HDL32E = LidarPreset(
    name="hdl32e",  # nuScenes
    elevation_deg=tuple(np.linspace(10.67, -30.67, 32)),
    azimuth_resolution_deg=0.3312,
    min_range=1.0,
    max_range=70.0,
    mount_height=1.84,
    rotation_rate_hz=20.0,
    range_noise_sigma=0.02,
)

VLP32C_X2 = LidarPreset(
    name="vlp32c_x2",  # Argoverse 2: two stacked VLP-32C
    elevation_deg=_VLP32C_ELEVATIONS,
    azimuth_resolution_deg=0.2,
    min_range=1.0,
    max_range=200.0,
    mount_height=1.85,
    rotation_rate_hz=10.0,
    range_noise_sigma=0.03,
    second_elevation_deg=_VLP32C_ELEVATIONS,
    second_unit_dz=-0.3,
)

PRESETS: dict[str, LidarPreset] = {p.name: p for p in (HDL64E, HDL32E, VLP32C_X2)}


def get_preset(preset: str | LidarPreset) -> LidarPreset:
    """The preset of that name, or the preset itself."""
    if isinstance(preset, LidarPreset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ConfigError(f"unknown LiDAR preset {preset!r}; known presets are {sorted(PRESETS)}") from None
