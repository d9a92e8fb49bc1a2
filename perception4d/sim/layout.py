"""Procedural street layout: ``generate_scene`` builds a ``Scene`` from a seed.

Along each side of the street: buildings behind the sidewalk (some with a
bush in front), street lamps, traffic signs and trees on the sidewalk, parked
cars in the parking strip and standing pedestrians; then moving cars,
cyclists and pedestrians, at least one of each motion model near the ego's
start. Every object's footprint (2-D oriented box and height interval above
its ground) is checked against the others and against the ego vehicle at
20 ms steps over the whole sequence, so nothing intersects the ego or
another object; a moving object that cannot be placed after a few draws is
left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from perception4d.sim.motion import EgoPath, Trajectory, motion_states, obb_overlap
from perception4d.sim.scene import EGO_CENTER_X, EGO_HALF_EXTENTS, KINDS, Scene, SceneObject, Shape, Street
from perception4d.sim.terrain import TerrainConfig, draw_terrain, terrain_config


@dataclass
class _Placer:
    """Accepts objects whose footprints stay clear of the ego and of everything accepted so far."""

    times: np.ndarray  # (K,)
    ego_boxes: np.ndarray  # (K, 7) rows (cx, cy, yaw, hx, hy, zlo, zhi)
    static: list = field(default_factory=list)  # (7,) rows
    moving: list = field(default_factory=list)  # (K, 7) arrays

    @staticmethod
    def _hit(a: np.ndarray, b: np.ndarray) -> bool:
        z_ok = (a[..., 5] < b[..., 6]) & (b[..., 5] < a[..., 6])
        return bool(np.any(z_ok & obb_overlap(a, b)))

    def fits(self, boxes: np.ndarray, margin: float) -> bool:
        """``boxes``: (7,) for a static object or (K, 7) for a moving one (one row per time)."""
        grown = boxes.copy()
        grown[..., 3:5] += margin
        if self._hit(grown, self.ego_boxes):
            return False
        if self.static and self._hit(grown[..., None, :], np.stack(self.static)):
            return False
        return not any(self._hit(grown, m) for m in self.moving)

    def add(self, boxes: np.ndarray) -> None:
        (self.moving if boxes.ndim == 2 else self.static).append(boxes)


def _footprint(obj: SceneObject, times: np.ndarray | None) -> np.ndarray:
    hx, hy, hz = obj.half_extents
    zlo, zhi = obj.center_z - hz, obj.center_z + hz
    if times is None:
        t = obj.trajectory
        return np.array([t.x0, t.y0, t.yaw0, hx, hy, zlo, zhi])
    x, y, yaw = motion_states(obj.trajectory.params()[None], times)
    k = len(times)
    return np.stack([x[0], y[0], yaw[0], np.full(k, hx), np.full(k, hy), np.full(k, zlo), np.full(k, zhi)], 1)


class _Builder:
    def __init__(self, rng: np.random.Generator, street: Street, ego: EgoPath, duration: float, x_range):
        self.rng, self.street, self.x_range = rng, street, x_range
        times = np.arange(0.0, duration + 1e-9, 0.02)
        ex, ey, eyaw = ego.state(times)
        c, (hx, hy, hz) = EGO_CENTER_X, EGO_HALF_EXTENTS
        ego_boxes = np.stack([ex + c * np.cos(eyaw), ey + c * np.sin(eyaw), eyaw, np.full_like(ex, hx),
                              np.full_like(ex, hy), np.zeros_like(ex), np.full_like(ex, 2 * hz)], 1)
        self.times = times
        self.placer = _Placer(times, ego_boxes)
        self.objects: list[SceneObject] = []
        self.next_instance = 1

    def make(self, kind, shape, half, cz, traj: Trajectory, refl) -> SceneObject:
        return SceneObject(kind, shape, tuple(float(h) for h in half), float(cz), traj,
                           self.next_instance if KINDS[kind].thing else 0, float(refl))

    def add(self, *objs: SceneObject, margin: float = 0.3) -> bool:
        """Add the objects together if each one fits (a tree's trunk and crown, a sign and its pole)."""
        boxes = [_footprint(o, self.times if o.trajectory.is_moving else None) for o in objs]
        if not all(self.placer.fits(b, margin) for b in boxes):
            return False
        for o, b in zip(objs, boxes):
            self.placer.add(b)
            self.objects.append(o)
            self.next_instance += int(o.info.thing)
        return True

    def along(self, gap_lo, gap_hi, size_lo, size_hi):
        """Consecutive (x_centre, length) slots along the street."""
        x = self.x_range[0] + self.rng.uniform(0, gap_hi)
        while True:
            length = self.rng.uniform(size_lo, size_hi)
            if x + length > self.x_range[1]:
                return
            yield x + length / 2, length
            x += length + self.rng.uniform(gap_lo, gap_hi)

    def static_layer(self):
        rng, mk, rw, sw = self.rng, self.make, self.street.road_half_width, self.street.sidewalk_width
        front = rw + sw
        for side in (-1.0, 1.0):
            for xc, length in self.along(1.0, 9.0, 8.0, 25.0):  # buildings
                depth, height = rng.uniform(8, 16), rng.uniform(5, 20)
                y = side * (front + rng.uniform(1.0, 4.0) + depth / 2)
                self.add(mk("building", Shape.BOX, (length / 2, depth / 2, height / 2), height / 2,
                            Trajectory(xc, y, 0.0), rng.uniform(0.25, 0.5)), margin=0.0)
                if rng.uniform() < 0.5:  # a bush near the building front
                    a, c = rng.uniform(0.5, 1.2), rng.uniform(0.4, 0.9)
                    at = Trajectory(xc + rng.uniform(-length, length) / 2, side * (front + 0.1 + a), 0.0)
                    self.add(mk("bush", Shape.SPHEROID, (a, a, c), 0.6 * c, at, rng.uniform(0.35, 0.55)))
            for xc, _ in self.along(18.0, 30.0, 0.3, 0.3):  # street lamps
                h = rng.uniform(5.0, 8.0)
                self.add(mk("pole", Shape.CYLINDER, (0.12, 0.12, h / 2), h / 2,
                            Trajectory(xc, side * (rw + 0.6), 0.0), rng.uniform(0.4, 0.6)))
            for xc, _ in self.along(25.0, 60.0, 0.1, 0.1):  # traffic signs: short pole + plate
                at = Trajectory(xc, side * (rw + 0.4), 0.0)
                self.add(mk("pole", Shape.CYLINDER, (0.04, 0.04, 1.4), 1.4, at, 0.5),
                         mk("sign", Shape.BOX, (0.03, 0.35, 0.35), 2.45, at, rng.uniform(0.8, 1.0)))
            for xc, _ in self.along(7.0, 16.0, 0.4, 0.4):  # trees: trunk + crown (crown bottom >= 2 m)
                trunk_h, r = rng.uniform(3.0, 4.0), rng.uniform(0.12, 0.25)
                a, c = rng.uniform(1.2, 2.0), rng.uniform(1.0, 2.0)
                at = Trajectory(xc, side * (rw + 1.3), 0.0)
                trunk = mk("trunk", Shape.CYLINDER, (r, r, trunk_h / 2), trunk_h / 2, at,
                           rng.uniform(0.25, 0.35))
                crown = mk("crown", Shape.SPHEROID, (a, a, c), trunk_h + 0.5 * c, at, rng.uniform(0.4, 0.55))
                self.add(trunk, crown)
            for xc, length in self.along(0.8, 10.0, 4.0, 4.9):  # parked cars in the parking strip
                yaw = (0.0 if rng.uniform() < 0.5 else np.pi) + rng.uniform(-0.03, 0.03)
                self.add(mk("car", Shape.BOX, (length / 2, 0.9, 0.75), 0.75,
                            Trajectory(xc, side * (rw - 1.0), yaw), rng.uniform(0.5, 0.8)), margin=0.2)
            for _ in range(rng.poisson((self.x_range[1] - self.x_range[0]) / 80.0)):  # standing people
                y = side * (rw + rng.uniform(1.8, sw - 0.4))
                self.add(mk("pedestrian", Shape.BOX, (0.25, 0.3, 0.88), 0.88,
                            Trajectory(rng.uniform(*self.x_range), y, rng.uniform(-np.pi, np.pi)),
                            rng.uniform(0.3, 0.4)))

    def mover(self, kind: str, motion: str, near_m: float | None = None, tries: int = 20) -> None:
        """Place one moving object of ``kind`` with the given motion model (or give up after ``tries``).

        ``near_m``: start within that distance (along x) of the ego's start.
        """
        rng, rw, sw = self.rng, self.street.road_half_width, self.street.sidewalk_width
        spec = _MOVERS[kind]
        for _ in range(tries):
            forward = rng.uniform() < 0.5
            if kind == "car":  # right-hand traffic: forward lanes at y < 0
                y = rng.choice([-4.875, -1.625]) if forward else rng.choice([1.625, 4.875])
            elif kind == "cyclist":
                y = -5.9 if forward else 5.9
            else:  # pedestrians walk on either sidewalk
                y = rng.choice([-1.0, 1.0]) * (rw + rng.uniform(1.5, sw - 0.5))
            half = (rng.uniform(*spec.half_length), *spec.half_width_height)
            heading = (0.0 if forward else np.pi) + rng.uniform(-0.02, 0.02)
            rate = rng.uniform(*spec.yaw_rate) * rng.choice([-1.0, 1.0]) if motion == "turning" else 0.0
            accel = rng.uniform(*spec.accel) if motion == "accelerating" else 0.0
            x_lo, x_hi = (-near_m, near_m) if near_m else (self.x_range[0] + 10.0, self.x_range[1] - 10.0)
            traj = Trajectory(rng.uniform(x_lo, x_hi), y, heading,
                              rng.uniform(*spec.speed), yaw_rate=rate, accel=accel)
            if self.add(self.make(kind, Shape.BOX, half, half[2], traj, rng.uniform(*spec.reflectivity))):
                return


@dataclass(frozen=True)
class _MoverSpec:
    half_length: tuple[float, float]
    half_width_height: tuple[float, float]
    speed: tuple[float, float]  # m/s; >= 1 so every mover passes AV2's 0.05 m / 0.1 s dynamic threshold
    yaw_rate: tuple[float, float]  # rad/s magnitude when turning
    accel: tuple[float, float]  # m/s^2 when accelerating
    reflectivity: tuple[float, float]


_MOVERS = {
    "car": _MoverSpec((2.0, 2.45), (0.9, 0.75), (6.0, 14.0), (0.04, 0.12), (0.5, 2.5), (0.5, 0.8)),
    "cyclist": _MoverSpec((0.9, 0.9), (0.3, 0.85), (3.0, 7.0), (0.05, 0.2), (0.3, 1.0), (0.4, 0.5)),
    "pedestrian": _MoverSpec((0.25, 0.25), (0.3, 0.88), (1.0, 1.8), (0.15, 0.5), (0.2, 0.6), (0.3, 0.4)),
}


def generate_scene(seed: int, duration_s: float, margin_m: float = 100.0,
                   terrain: str | dict | TerrainConfig | None = "flat") -> Scene:
    """A street scene covering the ego path over ``duration_s`` seconds plus ``margin_m`` each way.

    ``terrain``: ``"flat"``, ``"urban"``, a ``TerrainConfig`` or a dict of its
    fields. The terrain draws from its own stream, so the object layout of a
    seed is the same on every terrain.
    """
    config = terrain_config(terrain)
    rng = np.random.default_rng(seed)
    street = Street()
    weave = rng.uniform(0.2, 0.6) if rng.uniform() < 0.7 else 0.0
    ego = EgoPath(speed=rng.uniform(6.0, 10.0), lane_y=-1.625, weave_amplitude=weave,
                  weave_wavelength=rng.uniform(50.0, 90.0))
    x_range = (-margin_m, ego.speed * duration_s + margin_m)
    b = _Builder(rng, street, ego, duration_s, x_range)
    b.static_layer()
    length = x_range[1] - x_range[0]
    motions = ["turning", "accelerating", "constant_velocity"]
    for kind, per_m in (("car", 1 / 25.0), ("cyclist", 1 / 70.0), ("pedestrian", 1 / 20.0)):
        count = max(3, int(rng.poisson(length * per_m)))
        for k in range(count):
            if k < 3:  # one of each motion model near the ego's start
                b.mover(kind, motions[k], near_m=30.0)
            else:
                b.mover(kind, str(rng.choice(motions, p=[0.25, 0.25, 0.5])))
    return Scene(seed=seed, street=street, ego=ego, objects=tuple(b.objects), duration_s=float(duration_s),
                 x_range=x_range,
                 terrain=draw_terrain(config, street.road_half_width, street.sidewalk_width, seed))
