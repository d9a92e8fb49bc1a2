"""A temporal window of T frames and its ego-motion compensation.

``Window.frames`` are ordered oldest first. ``align()`` expresses every
frame's points in the ego frame of the reference frame (by default the last,
i.e. the newest) and tags each point with its time index ``t`` in
``0 .. T-1`` (position in the window; the reference frame keeps its index).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perception4d.core.frame import Frame
from perception4d.core.se3 import SE3
from perception4d.errors import WindowError


@dataclass
class AlignedWindow:
    """All points of a window in the reference ego frame.

    points:  (M, C) float32, columns ``columns`` (x, y, z first) in ref-ego coordinates
    time:    (M,) int32 time index of each point (0 = oldest frame of the window)
    offsets: (T + 1,) int64; frame k's points are ``points[offsets[k]:offsets[k+1]]``
    ref_T_frame: per-frame SE3 from that frame's ego frame into the reference ego frame
    """

    points: np.ndarray
    time: np.ndarray
    offsets: np.ndarray
    columns: tuple[str, ...]
    ref_index: int
    ref_T_frame: tuple[SE3, ...]
    timestamps_ns: tuple[int, ...]

    @property
    def num_frames(self) -> int:
        return len(self.offsets) - 1

    def frame_points(self, k: int) -> np.ndarray:
        return self.points[self.offsets[k]:self.offsets[k + 1]]


@dataclass
class Window:
    frames: tuple[Frame, ...]

    def __post_init__(self):
        self.frames = tuple(self.frames)
        if not self.frames:
            raise WindowError("a window needs at least one frame")
        ts = [f.timestamp_ns for f in self.frames]
        for a, b, fa, fb in zip(ts[:-1], ts[1:], self.frames[:-1], self.frames[1:]):
            if b <= a:
                raise WindowError(
                    f"window timestamps must increase: {fa.frame_id or 'frame'} at {a} ns is followed by "
                    f"{fb.frame_id or 'frame'} at {b} ns")

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, k: int) -> Frame:
        return self.frames[k]

    def _ref(self, ref_index: int) -> int:
        n = len(self.frames)
        if not -n <= ref_index < n:
            raise WindowError(f"reference index {ref_index} outside a window of {n} frames")
        return ref_index % n

    def ref_T_frame(self, k: int, ref_index: int = -1) -> SE3:
        """Transform from frame k's ego frame into the reference frame's ego frame."""
        ref = self.frames[self._ref(ref_index)]
        return ref.pose.inverse() @ self.frames[k].pose

    def align(self, ref_index: int = -1, columns: tuple[str, ...] = ("x", "y", "z", "intensity")) -> AlignedWindow:
        """Ego-motion compensate every frame into the reference frame's ego coordinates."""
        ref = self._ref(ref_index)
        chunks, times, transforms = [], [], []
        offsets = np.zeros(len(self.frames) + 1, dtype=np.int64)
        for k, f in enumerate(self.frames):
            r_T_s = self.ref_T_frame(k, ref) @ f.extrinsic  # sensor -> ref ego
            feats = f.select_columns(columns)
            feats[:, :3] = r_T_s.transform_points(f.xyz)
            chunks.append(feats)
            times.append(np.full(f.num_points, k, dtype=np.int32))
            transforms.append(self.ref_T_frame(k, ref))
            offsets[k + 1] = offsets[k] + f.num_points
        return AlignedWindow(
            points=np.concatenate(chunks, 0) if chunks else np.zeros((0, len(columns)), np.float32),
            time=np.concatenate(times, 0),
            offsets=offsets,
            columns=tuple(columns),
            ref_index=ref,
            ref_T_frame=tuple(transforms),
            timestamps_ns=tuple(f.timestamp_ns for f in self.frames),
        )


def ego_motion_flow(xyz_ego_t: np.ndarray, pose_t: SE3, pose_t1: SE3) -> np.ndarray:
    """Flow of static points from sweep t to t+1, AV2 convention (ego motion included).

    Static point p (in ego(t)) is seen at ego(t+1)_T_ego(t) @ p in the next sweep,
    so its flow is that minus p.
    """
    t1_T_t = pose_t1.inverse() @ pose_t
    return (t1_T_t.transform_points(xyz_ego_t.astype(np.float64)) - xyz_ego_t).astype(np.float32)
