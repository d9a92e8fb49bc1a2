"""What the streaming runtime does with each incoming sweep before any device work: the bad-frame policy.

The offline tools see a whole recording and refuse a sequence whose timestamps
do not increase; a live stream cannot be refused, so every frame gets a verdict:

* **accept**: the sweep joins the window.
* **reset**: the sweep starts a new window (the ring buffer is emptied first).
  Two cases: the gap to the newest sweep exceeds ``max_gap_s`` (a missing
  sweep: windows never span a gap, exactly as ``plan_windows`` cuts them), or
  the timestamp went back by more than ``max_gap_s`` (a restarted stream: a
  replayed log, a clock reset).
* **drop**: the sweep is discarded and counted; its result carries no output
  (never the previous frame's output under a new id). Three cases: the same
  timestamp as the newest sweep (a duplicate message), a timestamp at most
  ``max_gap_s`` earlier (a late, out-of-order sweep: windows never go back in
  time), and a sweep without one point that is finite in every input column
  (no points at all, or only NaN / inf rows: the sensor saw nothing usable).
  A dropped sweep is a missing sweep to the windows that follow: they continue
  when the next sweep is within ``max_gap_s``, as offline windows do.

Points with a non-finite value in a sweep that has finite ones are kept: every
input row keeps its output row, the voxelizer drops those points (counted), and
they get the outputs of points outside the grid (flow zero and not dynamic,
moving probability 0.5), as in the offline tools.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from perception4d.core.frame import Frame
from perception4d.datasets.sample import DEFAULT_MAX_GAP_S, INPUT_COLUMNS, check_max_gap

log = logging.getLogger("perception4d.runtime")


class Verdict(str, Enum):
    ACCEPT = "accept"
    RESET = "reset"
    DROP = "drop"


@dataclass(frozen=True)
class Admission:
    """The gate's verdict on one frame, and the per-point checks made on the host."""

    verdict: Verdict
    reason: str = ""  # why the frame was dropped or the window restarted ("" for a plain accept)
    non_finite: int = 0  # rows with a non-finite value in an input column (kept; the voxelizer drops them)
    gap_s: float | None = None  # seconds since the newest accepted sweep (None for the first sweep)

    @property
    def accepted(self) -> bool:
        return self.verdict != Verdict.DROP

    @property
    def reset(self) -> bool:
        return self.verdict == Verdict.RESET


@dataclass
class StreamCounters:
    """How many frames took each path since the gate was created."""

    frames: int = 0
    accepted: int = 0
    dropped_duplicate: int = 0
    dropped_late: int = 0
    dropped_empty: int = 0
    resets_gap: int = 0
    resets_rewind: int = 0
    non_finite_points: int = 0  # in accepted frames
    failed: int = 0  # accepted frames whose model step failed (out of memory); counted by the predictor

    @property
    def dropped(self) -> int:
        return self.dropped_duplicate + self.dropped_late + self.dropped_empty


@dataclass(frozen=True)
class FramePolicy:
    """Thresholds of the gate; ``max_gap_s`` has the meaning it has for the offline windows."""

    max_gap_s: float = DEFAULT_MAX_GAP_S
    columns: tuple[str, ...] = field(default=INPUT_COLUMNS)  # a row is usable when finite in all of them

    def __post_init__(self):
        object.__setattr__(self, "max_gap_s", check_max_gap(self.max_gap_s))
        object.__setattr__(self, "columns", tuple(self.columns))


def usable_rows(frame: Frame, columns: tuple[str, ...]) -> np.ndarray:
    """(N,) bool: rows finite in every input column that the frame has (absent columns are filled with 0)."""
    present = [frame.columns.index(c) for c in columns if c in frame.columns]
    return np.isfinite(frame.points[:, present]).all(axis=1)


def count_non_finite(frame: Frame, columns: tuple[str, ...]) -> int:
    """Rows of ``frame`` with a non-finite value in an input column it has (``N - usable_rows(...).sum()``).

    One reduction per column: the sum of a column is finite when every value in it is (a NaN or an infinity
    makes it NaN or infinite); only a non-finite sum (such a value, or a float32 overflow of finite values)
    falls back to the row-by-row test.
    """
    if frame.num_points == 0:
        return 0
    pts = frame.points
    present = [frame.columns.index(c) for c in columns if c in frame.columns]
    with np.errstate(over="ignore", invalid="ignore"):
        total = sum(float(np.add.reduce(pts[:, j])) for j in present)
    if np.isfinite(total):
        return 0
    return frame.num_points - int(np.count_nonzero(usable_rows(frame, columns)))


class StreamGate:
    """Applies ``FramePolicy`` to a stream of frames; host-only, one per stream."""

    def __init__(self, policy: FramePolicy | None = None):
        self.policy = policy or FramePolicy()
        self.counters = StreamCounters()
        self._last_ns: int | None = None
        self._last_id = ""

    def clear(self) -> None:
        """Forget the newest timestamp (the next frame is accepted as the first of a stream)."""
        self._last_ns = None
        self._last_id = ""

    def admit(self, frame: Frame) -> Admission:
        c = self.counters
        c.frames += 1
        name = frame.frame_id or f"frame at {frame.timestamp_ns} ns"
        non_finite = count_non_finite(frame, self.policy.columns)
        usable = frame.num_points - non_finite
        if usable == 0:
            c.dropped_empty += 1
            what = "no points" if frame.num_points == 0 else f"none of its {frame.num_points} points is finite"
            return self._drop(f"{name}: {what}; dropped (treated as a missing sweep)")
        gap_s = None if self._last_ns is None else (frame.timestamp_ns - self._last_ns) * 1e-9
        verdict, reason = Verdict.ACCEPT, ""
        max_gap = self.policy.max_gap_s
        if gap_s is not None and gap_s == 0:
            c.dropped_duplicate += 1
            return self._drop(f"{name}: same timestamp {frame.timestamp_ns} ns as {self._last_id}; dropped as a "
                              f"duplicate", gap_s)
        if gap_s is not None and gap_s < 0:
            if -gap_s <= max_gap:
                c.dropped_late += 1
                return self._drop(f"{name}: timestamp {frame.timestamp_ns} ns is {-gap_s:.3f} s before "
                                  f"{self._last_id}; dropped as late (windows never go back in time)", gap_s)
            c.resets_rewind += 1
            verdict, reason = Verdict.RESET, (f"{name}: timestamp went back {-gap_s:.3f} s (more than max_gap_s "
                                              f"{max_gap:g} s) after {self._last_id}; the stream restarted, "
                                              f"new window")
        elif gap_s is not None and gap_s > max_gap:
            c.resets_gap += 1
            verdict, reason = Verdict.RESET, (f"{name}: {gap_s:.3f} s after {self._last_id} (max_gap_s {max_gap:g} "
                                              f"s): a sweep is missing, new window; no flow for {self._last_id}")
        if reason:
            log.warning(reason)
        c.accepted += 1
        c.non_finite_points += non_finite
        self._last_ns, self._last_id = frame.timestamp_ns, name
        return Admission(verdict, reason, non_finite, gap_s)

    def _drop(self, reason: str, gap_s: float | None = None) -> Admission:
        log.warning(reason)
        return Admission(Verdict.DROP, reason, 0, gap_s)
