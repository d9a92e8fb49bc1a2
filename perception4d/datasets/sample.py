"""What a dataset hands the network: one window, ego-aligned, with the source sweep's targets.

``WindowSample`` is built on the host (numpy) by ``build_window_sample`` for
training, evaluation and inference alike; the data preprocessor
(perception4d.models.preprocessor) batches samples and voxelizes them on the
target device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from perception4d.core.geometry import Geometry
from perception4d.core.window import AlignedWindow, Window
from perception4d.errors import ConfigError, WindowError

if TYPE_CHECKING:
    from perception4d.sim.occupancy import OccupancyGT

INPUT_COLUMNS = ("x", "y", "z", "intensity")
#: largest accepted time between consecutive sweeps of a window; 10 / 20 Hz sensors have 0.1 / 0.05 s,
#: so a larger step means a missing sweep (a single dropped sweep of a 10 Hz sensor, 0.2 s, still passes)
DEFAULT_MAX_GAP_S = 0.25


@dataclass
class FlowTargets:
    """Ground truth of the source sweep's points (AV2 convention: ego motion included)."""

    flow: np.ndarray  # (N, 3) float32
    valid: np.ndarray  # (N,) bool
    dynamic: np.ndarray  # (N,) bool
    ground: np.ndarray  # (N,) bool
    category: np.ndarray  # (N,) uint8, AV2 scene-flow category (0 = background)


@dataclass
class SampleMeta:
    sequence_id: str
    frame_id: str
    timestamp_ns: int  # the source sweep
    next_timestamp_ns: int  # the window's reference (the sweep after the source for flow; the source for MOS)

    @property
    def dt(self) -> float:
        return max((self.next_timestamp_ns - self.timestamp_ns) * 1e-9, 1e-3)


@dataclass
class WindowSample:
    aligned: AlignedWindow  # all frames in the reference (newest) ego frame; time shifted so the newest is T-1
    source_index: int  # window position of the sweep whose points get per-point outputs
    source_xyz: np.ndarray  # (N, 3) float32 source points in the source's own ego frame
    meta: SampleMeta
    targets: FlowTargets | None = None
    mos_labels: np.ndarray | None = None  # (M,) uint8 over all window points: 0 ignore, 1 static, 2 moving
    frame_ids: tuple[str, ...] = ()  # the window's frames, oldest first
    occupancy: OccupancyGT | None = None  # ground truth of the reference (newest) frame, its ego frame
    sensor_origin: np.ndarray | None = None  # (3,) reference sensor in its ego frame; None: extrinsic unknown

    @property
    def source_slice(self) -> slice:
        o = self.aligned.offsets
        return slice(int(o[self.source_index]), int(o[self.source_index + 1]))

    @property
    def ego_flow(self) -> np.ndarray:
        """Flow of the source points if the scene were static: aligned minus own-frame position."""
        return (self.aligned.points[self.source_slice, :3] - self.source_xyz).astype(np.float32)


def check_max_gap(max_gap_s: float) -> float:
    """``max_gap_s`` as a float, or ConfigError when it is not a positive number."""
    try:
        value = float(max_gap_s)
    except (TypeError, ValueError):
        raise ConfigError(f"max_gap_s must be a positive number of seconds, got {max_gap_s!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise ConfigError(f"max_gap_s must be a positive number of seconds, got {max_gap_s!r}")
    return value


def check_window_gaps(window: Window, max_gap_s: float = DEFAULT_MAX_GAP_S, sequence_id: str = "") -> None:
    """WindowError naming both frames when consecutive sweeps are more than ``max_gap_s`` apart.

    (Timestamps that do not increase are already refused by ``Window``.)
    """
    max_gap_s = check_max_gap(max_gap_s)
    for a, b in zip(window.frames[:-1], window.frames[1:]):
        gap = (b.timestamp_ns - a.timestamp_ns) * 1e-9
        if gap > max_gap_s:
            raise WindowError(
                f"missing sweep in the window of {sequence_id or 'sequence'}: {a.frame_id or 'frame'} at "
                f"{a.timestamp_ns} ns is followed by {b.frame_id or 'frame'} at {b.timestamp_ns} ns, "
                f"{gap:.3f} s later (max_gap_s = {max_gap_s:g} s)")


def time_shift(geometry: Geometry, n: int) -> int:
    """Added to the time index of a window of ``n`` sweeps (right-aligned: the reference sits at ``num_frames - 1``)."""
    return geometry.num_frames - n


def source_sweep(n: int, flow: bool) -> int:
    """Index of a window's source sweep: the one before the reference for scene flow (sweep t, the reference
    being t+1), else the reference itself (MOS: the current scan)."""
    return n - 2 if (flow and n >= 2) else n - 1


def build_window_sample(window: Window, geometry: Geometry, sequence_id: str = "",
                        with_targets: bool = True, columns: tuple[str, ...] = INPUT_COLUMNS,
                        max_gap_s: float | None = DEFAULT_MAX_GAP_S,
                        tasks: tuple[str, ...] = ("flow",),
                        occupancy: OccupancyGT | None = None) -> WindowSample:
    """A sample of a window whose newest frame is the reference.

    With ``flow`` among ``tasks`` the source (the sweep with per-point flow) is
    the one before the reference (sweep t; the reference is t+1) and the window
    needs two sweeps; otherwise the source is the newest scan itself (MOS: the
    current scan). With ``mos`` and ``with_targets`` every point of the window
    carries its MOS label. With ``occupancy`` and ``with_targets`` the sample
    carries ``occupancy``, the ground truth of the reference frame (required
    then: frames do not hold it). Shorter windows (start of a log) are
    accepted; time indices are shifted so the reference always sits at ``num_frames - 1``.
    Consecutive sweeps more than ``max_gap_s`` apart raise ``WindowError``
    (None: no check). Sweeps with zero points are valid: an empty source gives
    empty per-point outputs; points with a non-finite value are kept here and
    dropped (counted) by the voxelizer.
    """
    n = len(window)
    flow = "flow" in tasks
    if flow and n < 2:
        raise WindowError(f"scene flow needs at least two sweeps, the window of {sequence_id or 'sequence'} "
                          f"ending at {window.frames[-1].frame_id} has {n}")
    if n > geometry.num_frames:
        raise WindowError(f"window has {n} sweeps but the geometry declares num_frames={geometry.num_frames}")
    if max_gap_s is not None:
        check_window_gaps(window, max_gap_s, sequence_id)
    aligned = window.align(ref_index=-1, columns=columns)
    aligned.time = aligned.time + np.int32(time_shift(geometry, n))
    source_index = source_sweep(n, flow)
    src = window.frames[source_index]
    targets = flow_targets(src) if (with_targets and flow) else None
    mos = None
    if with_targets and "mos" in tasks:
        mos = np.concatenate([mos_targets(f) for f in window.frames])
    ref = window.frames[-1]
    if with_targets and "occupancy" in tasks:
        if occupancy is None:
            raise WindowError(f"occupancy targets requested for {sequence_id or 'sequence'} frame {ref.frame_id} "
                              f"but no occupancy ground truth was given for it")
    else:
        occupancy = None
    return WindowSample(aligned=aligned, source_index=source_index, source_xyz=src.xyz_in_ego().astype(np.float32),
                        meta=SampleMeta(sequence_id=sequence_id, frame_id=src.frame_id,
                                        timestamp_ns=src.timestamp_ns,
                                        next_timestamp_ns=window.frames[-1].timestamp_ns),
                        targets=targets, mos_labels=mos, frame_ids=tuple(f.frame_id for f in window.frames),
                        occupancy=occupancy, sensor_origin=sensor_origin(ref))


def sensor_origin(frame) -> np.ndarray | None:
    """(3,) float64 position of the frame's sensor in its ego frame; None when the extrinsic is a placeholder.

    Frames already in the ego frame (identity extrinsic, e.g. Argoverse 2) or without a known pose do not
    say where the sensor is.
    """
    e = frame.extrinsic
    if not frame.pose_known or (np.allclose(e.rotation, np.eye(3)) and not np.any(e.translation)):
        return None
    return np.asarray(e.translation, np.float64).copy()


def mos_targets(frame) -> np.ndarray:
    """(N,) uint8 MOS labels of a frame (0 ignore, 1 static, 2 moving; LiDAR-MOS convention).

    From SemanticKITTI ids when the frame has them, else from the moving flag; all 0 without labels.
    """
    from perception4d.core.labels import mos_label

    lb = frame.labels
    if lb is not None and lb.semantic is not None:
        return mos_label(lb.semantic).astype(np.uint8)
    if lb is not None and lb.moving is not None:
        return np.where(lb.moving, 2, 1).astype(np.uint8)
    return np.zeros(frame.num_points, np.uint8)


def flow_targets(frame) -> FlowTargets | None:
    """The frame's flow labels as targets, or None when it has no flow labels."""
    lb = frame.labels
    if lb is None or lb.flow is None:
        return None
    n = frame.num_points
    valid = np.isfinite(lb.flow).all(axis=1)
    if lb.flow_valid is not None:
        valid &= lb.flow_valid.astype(bool)
    return FlowTargets(
        flow=np.nan_to_num(lb.flow.astype(np.float32)),
        valid=valid,
        dynamic=np.zeros(n, bool) if lb.moving is None else lb.moving.astype(bool),
        ground=np.zeros(n, bool) if lb.ground is None else lb.ground.astype(bool),
        category=np.zeros(n, np.uint8) if lb.flow_category is None else lb.flow_category.astype(np.uint8))
