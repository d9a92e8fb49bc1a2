"""Simulate a LiDAR sequence with per-point ground truth and occupancy.

Each sweep is instantaneous: all rays of frame i are cast at t_i = i / rate
against the scene frozen at t_i (no rolling-shutter distortion, no per-point
time offsets). Points are returned in the sensor frame (x forward, y left,
z up); the sensor sits at (0, 0, mount_height) in the ego frame, so
``extrinsic`` (ego_T_sensor) is that translation, and ``pose`` is world_T_ego
with the ego origin on the ground (on terrain: tilted with it, see
``Scene.ego_pose``). Range noise is added along the ray after the range gate;
the flow of a noisy point is the rigid motion of the surface it was measured
on applied to the point itself (objects on terrain also rise and sink with
the ground under them). With ``LidarPreset.dropout_prob`` > 0 each return is
lost with that probability (drawn from its own stream, so the other random
draws do not change).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perception4d.core.frame import Frame, PointLabels
from perception4d.core.geometry import Geometry
from perception4d.core.labels import is_moving, occupancy_class
from perception4d.core.se3 import SE3
from perception4d.errors import ConfigError
from perception4d.sim.layout import generate_scene
from perception4d.sim.motion import motion_velocities
from perception4d.sim.occupancy import GROUND_OWNER, OCC3D_GEOMETRY, OccupancyGT, rasterize_owner, visibility
from perception4d.sim.presets import LidarPreset, get_preset
from perception4d.sim.raycast import raycast
from perception4d.sim.scene import Scene
from perception4d.sim.terrain import TerrainConfig

COLUMNS = ("x", "y", "z", "intensity", "ring")
_GROUND_REFLECTIVITY = np.zeros(256)
_GROUND_REFLECTIVITY[[40, 48, 72]] = (0.15, 0.3, 0.4)  # road, sidewalk, terrain


@dataclass
class SimSequence:
    """Simulated frames (with labels), optional occupancy ground truth, and how they were made."""

    frames: list[Frame]
    occupancy: list[OccupancyGT] | None
    preset: LidarPreset
    seed: int
    scene: Scene
    start_time_ns: int = 0

    def __len__(self) -> int:
        return len(self.frames)

    def time_s(self, index: int) -> float:
        """Scene time of frame ``index`` (seconds since frame 0); ``index`` may be ``len(self)``."""
        return index * self.preset.frame_period_s

    def ego_pose(self, index: int) -> SE3:
        """world_T_ego at frame ``index``; ``index == len(self)`` gives the extrapolated next pose."""
        return self.scene.ego_pose(self.time_s(index))


def _rigid_move(xyz_ego: np.ndarray, who: np.ndarray, scene: Scene, t0: float, t1: float) -> np.ndarray:
    """Points (ego(t0) frame) on primitive ``who`` (-1 ground) carried to t1, in ego(t1) coordinates."""
    e0, e1 = scene.ego_pose(t0), scene.ego_pose(t1)
    world = e0.transform_points(xyz_ego.astype(np.float64))
    x0, y0, yaw0 = scene.states(t0)
    x1, y1, yaw1 = scene.states(t1)
    obj = who >= 0
    j = who[obj]
    dxw, dyw = world[obj, 0] - x0[j], world[obj, 1] - y0[j]
    c0, s0 = np.cos(yaw0[j]), np.sin(yaw0[j])
    lx, ly = c0 * dxw + s0 * dyw, -s0 * dxw + c0 * dyw  # object-local
    c1, s1 = np.cos(yaw1[j]), np.sin(yaw1[j])
    world[obj, 0] = x1[j] + c1 * lx - s1 * ly
    world[obj, 1] = y1[j] + s1 * lx + c1 * ly
    if not scene.terrain.is_flat:
        world[obj, 2] += (scene.object_z(t1) - scene.object_z(t0))[j]
    return e1.inverse().transform_points(world)


def _voxel_velocity(owner: np.ndarray, prims: np.ndarray, scene: Scene, t: float, geometry: Geometry,
                    ego_yaw: float) -> np.ndarray:
    """(X, Y, Z, 3) float32 velocity (m/s, ego axes) of the moving primitive owning each voxel.

    ``prims`` are in the level frame (``Scene.level_T_ego``), which is the ego frame on flat ground.
    """
    vel = np.zeros(owner.shape + (3,), dtype=np.float32)
    moving = np.flatnonzero(scene.column("moving"))
    if not len(moving):
        return vel
    vx, vy = motion_velocities(scene.params[moving], np.asarray([t]))
    rate = scene.params[moving, 4]
    lookup = np.full(len(scene.objects), -1, np.int64)
    lookup[moving] = np.arange(len(moving))
    sel = owner >= 0
    sel[sel] = lookup[owner[sel]] >= 0
    idx = np.argwhere(sel)
    if not len(idx):
        return vel
    k = lookup[owner[sel]]
    centers = geometry.voxel_centers(idx).astype(np.float64)
    level = None if scene.terrain.is_flat else scene.level_T_ego(t)
    if level is not None:
        centers = level.transform_points(centers)
    rx, ry = centers[:, 0] - prims[moving[k], 1], centers[:, 1] - prims[moving[k], 2]  # offset, level axes
    c, s = np.cos(ego_yaw), np.sin(ego_yaw)
    wx, wy = vx[k, 0], vy[k, 0]
    ex, ey = c * wx + s * wy, -s * wx + c * wy  # reference-point velocity in level axes
    if level is None:
        vel[sel, 0] = ex - rate[k] * ry
        vel[sel, 1] = ey + rate[k] * rx
        return vel
    v_level = np.stack([ex - rate[k] * ry, ey + rate[k] * rx, scene.object_vz(t)[moving[k]]], axis=1)
    vel[sel] = v_level @ level.rotation  # ego axes: rotation^T v
    return vel


def _occupancy(scene: Scene, prims: np.ndarray, t: float, geometry: Geometry, origins: np.ndarray,
               ends: np.ndarray) -> OccupancyGT:
    pose = scene.ego_pose(t)
    owner = rasterize_owner(prims, scene.column("priority"), geometry, scene.terrain, pose, scene.level_T_ego(t))
    sem = np.zeros(owner.shape, dtype=np.uint8)
    obj = owner >= 0
    sem[obj] = occupancy_class(scene.column("semantic"))[owner[obj]]
    ground = owner == GROUND_OWNER
    if ground.any():
        gi = np.argwhere(ground)
        centers = geometry.voxel_centers(gi).astype(np.float64)
        if scene.terrain.is_flat:
            centers[:, 2] = 0.0
        y_world = pose.transform_points(centers)[:, 1]
        sem[ground] = occupancy_class(scene.street.ground_semantic(y_world))
    velocity = _voxel_velocity(owner, prims, scene, t, geometry, pose.yaw)
    return OccupancyGT(semantics=sem, visible=visibility(origins, ends, geometry), velocity=velocity,
                       geometry=geometry)


def simulate_frame(scene: Scene, preset: LidarPreset, index: int, noise: np.ndarray,
                   occupancy: Geometry | None, start_time_ns: int = 0,
                   keep: np.ndarray | None = None) -> tuple[Frame, OccupancyGT | None]:
    """Frame ``index`` of the scene seen by ``preset``; ``noise`` is one standard normal per ray.

    ``keep``: optional (R,) bool, False for rays whose return is dropped.
    """
    dt = preset.frame_period_s
    t, t_next = index * dt, (index + 1) * dt
    pose = scene.ego_pose(t)
    mount = np.array([0.0, 0.0, preset.mount_height])
    origins_s, dirs, laser = preset.rays()
    origins = origins_s + mount
    prims = scene.primitives_in_level(t)
    if scene.terrain.is_flat:
        rng_t, who, cosi = raycast(origins, dirs, prims, preset.min_range, preset.max_range)
    else:  # cast in the level frame, where primitives are upright; ranges are the same in every frame
        level = scene.level_T_ego(t)
        rng_t, who, cosi = raycast(level.transform_points(origins), dirs @ level.rotation.T, prims,
                                   preset.min_range, preset.max_range, terrain=scene.terrain,
                                   frame=(pose.translation[0], pose.translation[1], pose.yaw))
    returned = np.isfinite(rng_t)
    if keep is not None:
        returned &= keep
    hit = np.flatnonzero(returned)
    who = who[hit]
    r = rng_t[hit] + preset.range_noise_sigma * noise[hit]
    xyz_ego = origins[hit] + r[:, None] * dirs[hit]

    y_world = pose.transform_points(xyz_ego)[:, 1]
    on_obj = who >= 0
    semantic = np.empty(len(hit), dtype=np.uint16)
    semantic[~on_obj] = scene.street.ground_semantic(y_world[~on_obj])
    semantic[on_obj] = scene.column("semantic")[who[on_obj]]
    instance = np.zeros(len(hit), dtype=np.uint16)
    instance[on_obj] = scene.column("instance")[who[on_obj]]
    category = np.zeros(len(hit), dtype=np.uint8)
    category[on_obj] = scene.column("flow_category")[who[on_obj]]
    refl = np.empty(len(hit))
    refl[on_obj] = scene.column("reflectivity")[who[on_obj]]
    refl[~on_obj] = _GROUND_REFLECTIVITY[semantic[~on_obj]]
    intensity = np.clip(refl * (0.3 + 0.7 * cosi[hit]), 0.0, 1.0)

    flow = (_rigid_move(xyz_ego, who, scene, t, t_next) - xyz_ego).astype(np.float32)
    points = np.empty((len(hit), len(COLUMNS)), dtype=np.float32)
    points[:, :3] = xyz_ego - mount
    points[:, 3] = intensity
    points[:, 4] = laser[hit]
    labels = PointLabels(semantic=semantic, instance=instance, moving=is_moving(semantic), flow=flow,
                         flow_valid=np.ones(len(hit), dtype=bool), ground=~on_obj, flow_category=category)
    frame = Frame(points=points, timestamp_ns=start_time_ns + index * preset.frame_period_ns, pose=pose,
                  extrinsic=SE3(np.eye(3), mount), columns=COLUMNS, labels=labels,
                  frame_id=f"sim-{preset.name}-{scene.seed}/{index:06d}",
                  source=f"simulated {preset.name} seed {scene.seed} frame {index}")
    occ = None
    if occupancy is not None:
        occ = _occupancy(scene, prims, t, occupancy, origins[hit], xyz_ego)
    return frame, occ


def simulate(preset: str | LidarPreset = "hdl64e", num_frames: int = 10, seed: int = 0,
             occupancy: Geometry | None = OCC3D_GEOMETRY, start_time_ns: int = 0,
             scene_margin_m: float = 100.0, terrain: str | dict | TerrainConfig | None = "flat") -> SimSequence:
    """Simulate ``num_frames`` sweeps of a street scene generated from ``seed``.

    Labels per point (``Frame.labels``): SemanticKITTI ``semantic`` ids (moving
    objects get 252..259), ``instance`` (0 for stuff), ``moving``, ``ground``,
    AV2 ``flow_category`` and ``flow``: the displacement of the point to t+1 in
    the AV2 convention, i.e. its position at t+1 in ego(t+1) minus its
    position at t in ego(t), for EGO-frame coordinates (``frame.xyz_in_ego()``).
    The last frame's flow uses the trajectories one step beyond the sequence,
    so every point has a flow (``flow_valid`` all True). Pass
    ``occupancy=None`` to skip the occupancy ground truth. ``terrain``:
    ``"flat"`` (the plane z = 0), ``"urban"`` (``perception4d.sim.terrain``),
    a ``TerrainConfig`` or a dict of its fields.
    """
    preset = get_preset(preset)
    if int(num_frames) < 1:
        raise ConfigError(f"simulate: num_frames must be >= 1, got {num_frames}")
    num_frames = int(num_frames)
    scene = generate_scene(seed, duration_s=num_frames * preset.frame_period_s, margin_m=scene_margin_m,
                           terrain=terrain)
    num_rays = preset.num_azimuths * preset.num_beams
    noise_rng = np.random.default_rng([seed, 1])
    drop_rng = np.random.default_rng([seed, 3]) if preset.dropout_prob > 0 else None
    frames, occ = [], []
    for i in range(num_frames):
        noise = noise_rng.standard_normal(num_rays)
        keep = None if drop_rng is None else drop_rng.uniform(size=num_rays) >= preset.dropout_prob
        frame, o = simulate_frame(scene, preset, i, noise, occupancy, start_time_ns, keep)
        frames.append(frame)
        occ.append(o)
    return SimSequence(frames=frames, occupancy=occ if occupancy is not None else None, preset=preset,
                       seed=seed, scene=scene, start_time_ns=start_time_ns)
