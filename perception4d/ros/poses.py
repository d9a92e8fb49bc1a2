"""Where a cloud was taken: the ego pose (tf or odometry) and the sensor extrinsic at the cloud's stamp.

A ``Frame`` needs ``pose = world_T_ego`` and ``extrinsic = ego_T_sensor``.
``PoseResolver`` gets them from a transform source with tf2's semantics,
``lookup(target, source, stamp) -> target_T_source``:

* ``pose_source="tf"``: the pose is ``fixed_frame <- base_frame`` at the
  stamp (e.g. ``odom <- base_link`` from a localisation node);
* ``pose_source="odometry"``: the newest ``nav_msgs/msg/Odometry`` messages,
  interpolated at the stamp; their ``child_frame_id`` must be ``base_frame``;
* the extrinsic is ``base_frame <- cloud header frame`` (usually a static
  transform); identity when the cloud is already in ``base_frame``.

The live node resolves through tf2_ros's buffer (``lookup_transform`` with a
timeout); the replay and the tests through ``TfBuffer`` below, a small buffer
with the same behaviour: static transforms hold at every time, dynamic ones
are interpolated (linear translation, slerp rotation) between the two samples
around the stamp, a stamp newer than the newest sample is "not yet" (retry:
the transform may still arrive) and one older than the cache is "never".
A sample at exactly the stamp is used as is, so a pose written at the cloud's
stamp comes back bit for bit.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from perception4d.core.se3 import SE3
from perception4d.errors import Perception4DError
from perception4d.ros.messages import pose_se3, stamp_ns, transform_se3

POSE_SOURCES = ("tf", "odometry")


class TransformUnavailable(Perception4DError, LookupError):
    """No transform at that time; ``retry``: it may still arrive (the stamp is newer than the newest data)."""

    def __init__(self, message: str, retry: bool = False):
        self.retry = retry
        super().__init__(message)


@dataclass
class _Track:
    """Timed samples of one transform (parent_T_child), kept sorted, ``cache_ns`` deep."""

    parent: str
    stamps: list[int] = field(default_factory=list)
    poses: list[SE3] = field(default_factory=list)

    def add(self, stamp: int, pose: SE3, cache_ns: int) -> None:
        i = bisect.bisect_left(self.stamps, stamp)
        if i < len(self.stamps) and self.stamps[i] == stamp:
            self.poses[i] = pose
        else:
            self.stamps.insert(i, stamp)
            self.poses.insert(i, pose)
        cut = bisect.bisect_left(self.stamps, self.stamps[-1] - cache_ns)
        if cut:
            del self.stamps[:cut], self.poses[:cut]

    def at(self, stamp: int, what: str) -> SE3:
        s = self.stamps
        if not s:
            raise TransformUnavailable(f"{what}: no sample yet", retry=True)
        if stamp > s[-1]:
            raise TransformUnavailable(f"{what}: stamp {stamp} is {(stamp - s[-1]) * 1e-9:.3f} s after the newest "
                                       f"sample", retry=True)
        i = bisect.bisect_left(s, stamp)
        if s[i] == stamp:
            return self.poses[i]
        if i == 0:
            raise TransformUnavailable(f"{what}: stamp {stamp} is {(s[0] - stamp) * 1e-9:.3f} s before the oldest "
                                       f"sample kept")
        return interpolate(self.poses[i - 1], self.poses[i], (stamp - s[i - 1]) / (s[i] - s[i - 1]))


def interpolate(a: SE3, b: SE3, w: float) -> SE3:
    """Between ``a`` (w = 0) and ``b`` (w = 1): linear translation, slerp rotation."""
    qa, qb = np.array(a.quaternion()), np.array(b.quaternion())
    dot = float(qa @ qb)
    if dot < 0:
        qb, dot = -qb, -dot
    if dot > 0.9995:
        q = qa + w * (qb - qa)
    else:
        theta = np.arccos(min(dot, 1.0))
        q = (np.sin((1 - w) * theta) * qa + np.sin(w * theta) * qb) / np.sin(theta)
    return SE3.from_quaternion(*q, (1 - w) * a.translation + w * b.translation)


class TfBuffer:
    """``/tf`` and ``/tf_static`` without ROS (see the module docstring); thread-safe."""

    def __init__(self, cache_s: float = 10.0):
        self.cache_ns = int(cache_s * 1e9)
        self._static: dict[str, tuple[str, SE3]] = {}  # child -> (parent, parent_T_child)
        self._dynamic: dict[str, _Track] = {}
        self._cond = threading.Condition()
        self.rejected = 0  # transforms with a degenerate or non-finite value

    def add_message(self, msg, static: bool) -> int:
        """Add every transform of a ``tf2_msgs/msg/TFMessage``; how many were rejected."""
        bad = 0
        with self._cond:
            for ts in msg.transforms:
                try:
                    pose = transform_se3(ts.transform)
                except ValueError:
                    bad += 1
                    continue
                parent, child = ts.header.frame_id.lstrip("/"), ts.child_frame_id.lstrip("/")
                if static:
                    self._static[child] = (parent, pose)
                    self._dynamic.pop(child, None)
                else:
                    track = self._dynamic.get(child)
                    if track is None or track.parent != parent:
                        track = self._dynamic[child] = _Track(parent)
                    track.add(stamp_ns(ts.header), pose, self.cache_ns)
            self.rejected += bad
            self._cond.notify_all()
        return bad

    def lookup(self, target: str, source: str, stamp: int, timeout_s: float = 0.0) -> SE3:
        """``target_T_source`` at ``stamp``; waits up to ``timeout_s`` for a transform that may still arrive."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                try:
                    return self._lookup(target.lstrip("/"), source.lstrip("/"), stamp)
                except TransformUnavailable as e:
                    left = deadline - time.monotonic()
                    if not e.retry or left <= 0:
                        raise
                    self._cond.wait(left)

    def _parent(self, frame: str) -> str | None:
        if frame in self._static:
            return self._static[frame][0]
        track = self._dynamic.get(frame)
        return None if track is None else track.parent

    def _edge(self, child: str, stamp: int) -> SE3:
        if child in self._static:
            return self._static[child][1]
        parent = self._dynamic[child].parent
        return self._dynamic[child].at(stamp, f"transform {parent} <- {child}")

    def _chain(self, frame: str) -> list[str]:
        chain = [frame]
        while (p := self._parent(chain[-1])) is not None and p not in chain:
            chain.append(p)
        return chain

    def _lookup(self, target: str, source: str, stamp: int) -> SE3:
        if target == source:
            return SE3.identity()
        up_s, up_t = self._chain(source), self._chain(target)
        common = next((f for f in up_s if f in up_t), None)
        if common is None:  # a frame not seen yet, or no edge joining them yet: may still arrive
            known = sorted({c for c in self._static} | set(self._dynamic) | {p for p, _ in self._static.values()}
                           | {t.parent for t in self._dynamic.values()})
            raise TransformUnavailable(f"no transform {target} <- {source} (frames known: {known})", retry=True)
        common_T_source = self._to_ancestor(up_s, common, stamp)
        if common == target:
            return common_T_source
        common_T_target = self._to_ancestor(up_t, common, stamp)
        return common_T_target.inverse() @ common_T_source

    def _to_ancestor(self, chain: list[str], ancestor: str, stamp: int) -> SE3:
        out = None
        for child in chain[:chain.index(ancestor)]:
            edge = self._edge(child, stamp)  # parent_T_child
            out = edge if out is None else edge @ out
        return SE3.identity() if out is None else out


class OdometryBuffer:
    """``nav_msgs/msg/Odometry`` poses (``header.frame_id <- child_frame_id``) kept ``cache_s`` deep."""

    def __init__(self, cache_s: float = 10.0):
        self.cache_ns = int(cache_s * 1e9)
        self._track: _Track | None = None
        self.child = ""
        self._cond = threading.Condition()
        self.rejected = 0

    def add_message(self, msg) -> bool:
        try:
            pose = pose_se3(msg.pose.pose)
        except ValueError:
            self.rejected += 1
            return False
        with self._cond:
            parent = msg.header.frame_id.lstrip("/")
            if self._track is None or self._track.parent != parent:
                self._track = _Track(parent)
            self.child = msg.child_frame_id.lstrip("/")
            self._track.add(stamp_ns(msg.header), pose, self.cache_ns)
            self._cond.notify_all()
        return True

    def pose_at(self, stamp: int, timeout_s: float = 0.0) -> tuple[SE3, str]:
        """(world_T_child, child frame) at ``stamp``; waits up to ``timeout_s`` for odometry that may still come."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                try:
                    if self._track is None:
                        raise TransformUnavailable("no odometry received yet", retry=True)
                    return self._track.at(stamp, f"odometry {self._track.parent} <- {self.child}"), self.child
                except TransformUnavailable as e:
                    left = deadline - time.monotonic()
                    if not e.retry or left <= 0:
                        raise
                    self._cond.wait(left)


@dataclass(frozen=True)
class PoseFrames:
    """The frames of the pose lookup (node parameters ``pose_source``, ``fixed_frame``, ``base_frame``)."""

    pose_source: str = "tf"
    fixed_frame: str = "odom"
    base_frame: str = "base_link"


class PoseResolver:
    """Pose and extrinsic of a cloud; ``transforms`` has ``lookup(target, source, stamp, timeout_s)``
    (``TfBuffer`` or the live node's tf2 adapter); ``odometry`` is needed for ``pose_source="odometry"``."""

    def __init__(self, frames: PoseFrames, transforms, odometry: OdometryBuffer | None = None):
        if frames.pose_source not in POSE_SOURCES:
            raise ValueError(f"pose_source must be one of {POSE_SOURCES}, got {frames.pose_source!r}")
        if frames.pose_source == "odometry" and odometry is None:
            raise ValueError("pose_source 'odometry' needs an OdometryBuffer")
        self.frames = frames
        self.transforms = transforms
        self.odometry = odometry

    def resolve(self, sensor_frame: str, stamp: int, timeout_s: float = 0.0) -> tuple[SE3, SE3]:
        """(world_T_ego, ego_T_sensor) at ``stamp``; raises ``TransformUnavailable``."""
        fr = self.frames
        base = fr.base_frame
        if fr.pose_source == "odometry":
            pose, child = self.odometry.pose_at(stamp, timeout_s)
            if child != base:
                raise TransformUnavailable(f"odometry child_frame_id is {child!r}, base_frame is {base!r}")
        else:
            pose = self.transforms.lookup(fr.fixed_frame, base, stamp, timeout_s)
        sensor = sensor_frame.lstrip("/") or base
        extrinsic = SE3.identity() if sensor == base else self.transforms.lookup(base, sensor, stamp, timeout_s)
        return pose, extrinsic
