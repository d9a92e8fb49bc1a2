"""Street scene model: a straight street along world x (``perception4d.sim.layout`` builds one from a seed).

Layout across the street (world y, metres from the centre line): road
``|y| < road_half_width`` (four 3.25 m lanes and a 2 m parking strip each
side), sidewalks up to ``road_half_width + sidewalk_width``, terrain beyond.
The ground (solid below) is the plane z = 0 by default, or urban terrain
(``perception4d.sim.terrain``: relief, cambered road, curbs, roughness).
Objects are single upright primitives resting on or above the ground:
buildings, parked and moving cars, cyclists and pedestrians are yawed boxes,
poles and tree trunks vertical cylinders, tree crowns and bushes vertical
spheroids, traffic signs thin boxes.

On terrain, an object's heights (``SceneObject.center_z``) count from its
base: the lowest ground point under its footprint (a grid of at most 1 m
spacing over a box, at least its corners, edge midpoints and centre; the
centre and eight rim points of a round one), so no part floats by more than
the surface dips between samples (under 1 cm); parts that do not touch the ground
(crowns, sign plates) take the ground under their centre. Moving objects
re-evaluate their base at every time. The ego stands on the terrain on its
four wheel contacts (``Terrain.vehicle_pose``), so its pose carries the
terrain's pitch and roll; primitives stay upright in the world.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property

import numpy as np

from perception4d.core.se3 import SE3
from perception4d.sim.motion import EgoPath, Trajectory, motion_states
from perception4d.sim.terrain import Terrain


class Shape(IntEnum):
    BOX = 0
    CYLINDER = 1
    SPHEROID = 2


@dataclass(frozen=True)
class KindInfo:
    semantic: int  # SemanticKITTI id while static
    moving_semantic: int  # SemanticKITTI id while moving (same as semantic for kinds that never move)
    flow_category: int  # Argoverse 2 scene-flow category index (0 = background)
    thing: bool  # gets a unique instance id
    priority: int  # which class wins a voxel shared by two objects (higher wins; ground is 0)


# AV2 category indices (av2.evaluation.scene_flow.constants.CATEGORY_TO_INDEX).
# The ego body kept clear of every object: a box ahead of the ego origin (rear axle, on the ground).
EGO_HALF_EXTENTS = (2.4, 1.0, 1.0)
EGO_CENTER_X = 1.3
EGO_WHEELBASE, EGO_TRACK = 2.7, 1.6  # wheel contacts: rear axle at the ego origin
_ELEVATED_M = 0.05  # a part whose bottom is this far above its base does not touch the ground
_SAMPLE_M = 1.0  # largest spacing of the footprint samples that find an object's base

AV2_BICYCLIST, AV2_PEDESTRIAN, AV2_REGULAR_VEHICLE, AV2_SIGN = 4, 17, 19, 21

KINDS: dict[str, KindInfo] = {
    "building": KindInfo(50, 50, 0, False, 1),
    "crown": KindInfo(70, 70, 0, False, 2),
    "bush": KindInfo(70, 70, 0, False, 2),
    "trunk": KindInfo(71, 71, 0, False, 3),
    "pole": KindInfo(80, 80, 0, False, 3),
    "sign": KindInfo(81, 81, AV2_SIGN, False, 3),
    "car": KindInfo(10, 252, AV2_REGULAR_VEHICLE, True, 4),
    "cyclist": KindInfo(31, 253, AV2_BICYCLIST, True, 4),
    "pedestrian": KindInfo(30, 254, AV2_PEDESTRIAN, True, 4),
}


@dataclass(frozen=True)
class SceneObject:
    """One primitive. ``half_extents``: box (half length, half width, half height); cylinder
    (radius, radius, half height); spheroid (horizontal radius, same, vertical semi-axis)."""

    kind: str
    shape: Shape
    half_extents: tuple[float, float, float]
    center_z: float
    trajectory: Trajectory
    instance: int
    reflectivity: float

    @property
    def info(self) -> KindInfo:
        return KINDS[self.kind]

    @property
    def semantic(self) -> int:
        return self.info.moving_semantic if self.trajectory.is_moving else self.info.semantic


@dataclass(frozen=True)
class Street:
    road_half_width: float = 8.5
    sidewalk_width: float = 3.5

    def ground_semantic(self, y_world: np.ndarray) -> np.ndarray:
        """SemanticKITTI id of the ground at world y: road 40, sidewalk 48, terrain 72."""
        a = np.abs(np.asarray(y_world))
        out = np.full(a.shape, 72, dtype=np.uint16)
        out[a < self.road_half_width + self.sidewalk_width] = 48
        out[a < self.road_half_width] = 40
        return out


@dataclass(frozen=True)
class Scene:
    seed: int
    street: Street
    ego: EgoPath
    objects: tuple[SceneObject, ...]
    duration_s: float
    x_range: tuple[float, float]
    terrain: Terrain = Terrain()

    @cached_property
    def params(self) -> np.ndarray:
        """(P, 6) trajectory parameters of every object (see ``Trajectory.params``)."""
        return np.stack([o.trajectory.params() for o in self.objects]) if self.objects else np.zeros((0, 6))

    @cached_property
    def shapes(self) -> np.ndarray:
        return np.array([int(o.shape) for o in self.objects], dtype=np.int64)

    @cached_property
    def half_extents(self) -> np.ndarray:
        return np.array([o.half_extents for o in self.objects], dtype=np.float64).reshape(-1, 3)

    @cached_property
    def center_z(self) -> np.ndarray:
        return np.array([o.center_z for o in self.objects], dtype=np.float64)

    def column(self, name: str) -> np.ndarray:
        """Per-object array of semantic, instance, flow_category, priority, reflectivity or moving."""
        getters = {
            "semantic": (lambda o: o.semantic, np.uint16),
            "instance": (lambda o: o.instance, np.uint16),
            "flow_category": (lambda o: o.info.flow_category, np.uint8),
            "priority": (lambda o: o.info.priority, np.int64),
            "reflectivity": (lambda o: o.reflectivity, np.float64),
            "moving": (lambda o: o.trajectory.is_moving, bool),
        }
        fn, dtype = getters[name]
        return np.array([fn(o) for o in self.objects], dtype=dtype)

    def states(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World x, y, yaw (P,) of every object at time t."""
        x, y, yaw = motion_states(self.params, np.asarray([t]))
        return x[:, 0], y[:, 0], yaw[:, 0]

    @cached_property
    def _footprints(self) -> list[np.ndarray]:
        """Per object, (K, 2) object-local (x, y) points whose lowest ground height is its base."""
        out = []
        for o in self.objects:
            hx, hy, hz = o.half_extents
            if o.center_z - hz > _ELEVATED_M:
                out.append(np.zeros((1, 2)))
            elif o.shape == Shape.BOX:
                u = np.linspace(-hx, hx, max(3, int(np.ceil(2 * hx / _SAMPLE_M)) + 1))
                v = np.linspace(-hy, hy, max(3, int(np.ceil(2 * hy / _SAMPLE_M)) + 1))
                out.append(np.stack(np.meshgrid(u, v, indexing="ij"), -1).reshape(-1, 2))
            else:
                a = np.arange(8) * np.pi / 4
                out.append(np.r_[[[0.0, 0.0]], hx * np.c_[np.cos(a), np.sin(a)]])
        return out

    def _samples(self, idx: np.ndarray) -> np.ndarray:
        """(len(idx), K, 2) footprints of objects ``idx``, padded by repeating a point (the minimum stays)."""
        parts = [self._footprints[j] for j in idx]
        k = max((len(p) for p in parts), default=1)
        return np.stack([np.r_[p, np.repeat(p[:1], k - len(p), 0)] for p in parts]) if parts else np.zeros((0, k, 2))

    def _base_z(self, off: np.ndarray, x: np.ndarray, y: np.ndarray, yaw: np.ndarray) -> np.ndarray:
        c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
        wx = x[:, None] + c * off[..., 0] - s * off[..., 1]
        wy = y[:, None] + s * off[..., 0] + c * off[..., 1]
        return self.terrain.height(wx, wy).min(axis=1)

    @cached_property
    def _static_z(self) -> np.ndarray:
        x, y, yaw = self.states(0.0)
        idx = np.arange(len(self.objects))
        return self.center_z + self._base_z(self._samples(idx), x, y, yaw) if len(idx) else self.center_z

    @cached_property
    def _moving(self) -> tuple[np.ndarray, np.ndarray]:
        idx = np.flatnonzero(self.column("moving"))
        return idx, self._samples(idx)

    def object_z(self, t: float) -> np.ndarray:
        """World z (P,) of every primitive's centre at time t (``center_z`` on flat ground)."""
        if self.terrain.is_flat:
            return self.center_z
        z = self._static_z.copy()
        idx, samples = self._moving
        if len(idx):
            x, y, yaw = self.states(t)
            z[idx] = self.center_z[idx] + self._base_z(samples, x[idx], y[idx], yaw[idx])
        return z

    def object_vz(self, t: float, dt: float = 1e-3) -> np.ndarray:
        """Vertical velocity (P,) m/s of every primitive (central difference over ``dt``; 0 when static)."""
        if self.terrain.is_flat:
            return np.zeros(len(self.objects))
        return (self.object_z(t + dt) - self.object_z(t - dt)) / (2.0 * dt)

    def ego_pose(self, t: float) -> SE3:
        """world_T_ego at time t: ``EgoPath.pose`` on flat ground, else standing on the terrain."""
        if self.terrain.is_flat:
            return self.ego.pose(t)
        x, y, yaw = (float(v) for v in self.ego.state(np.asarray(t)))
        return self.terrain.vehicle_pose(x, y, yaw, EGO_WHEELBASE, EGO_TRACK)

    def level_T_ego(self, t: float) -> SE3:
        """The ego frame in the level frame of time t (identity on flat ground).

        The level frame has the ego's (x, y) and heading but the world's z
        (origin at world z = 0, z up): primitives stay upright in it, so the
        ray caster and the occupancy rasterizer work there.
        """
        if self.terrain.is_flat:
            return SE3.identity()
        pose = self.ego_pose(t)
        return SE3.from_yaw(-pose.yaw, (0.0, 0.0, 0.0)) @ SE3(pose.rotation, (0.0, 0.0, pose.translation[2]))

    def primitives_in_level(self, t: float) -> np.ndarray:
        """(P, 9) float64 rows (shape, cx, cy, cz, hx, hy, hz, cos yaw, sin yaw) in the level frame of t.

        On flat ground the level frame is the ego frame.
        """
        x, y, yaw = self.states(t)
        ex, ey, eyaw = (float(v) for v in self.ego.state(np.asarray(t)))
        c, s = np.cos(eyaw), np.sin(eyaw)
        dx, dy = x - ex, y - ey
        out = np.empty((len(self.objects), 9), dtype=np.float64)
        out[:, 0] = self.shapes
        out[:, 1] = c * dx + s * dy
        out[:, 2] = -s * dx + c * dy
        out[:, 3] = self.object_z(t)
        out[:, 4:7] = self.half_extents
        out[:, 7] = np.cos(yaw - eyaw)
        out[:, 8] = np.sin(yaw - eyaw)
        return out

    def summary(self) -> dict[str, int]:
        """Object counts by kind and motion model, e.g. {'car/turning': 2, 'building/static': 18}."""
        out: dict[str, int] = {}
        for o in self.objects:
            key = f"{o.kind}/{o.trajectory.kind}"
            out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items()))
