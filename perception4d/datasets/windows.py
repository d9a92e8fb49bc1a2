"""Which frames make each window of a sequence, decided from the timestamps alone, and the samples.

Tasks differ in which windows exist:

* ``flow``: one window per sweep t that has a next sweep; the window ends at
  t+1 (the reference) and holds up to T sweeps. A pair t -> t+1 more than
  ``max_gap_s`` apart (a missing sweep) is skipped with a logged, counted
  warning (``WindowPlan.skipped``).
* ``mos``: one window per scan k, ending at k (the current scan).
* ``occupancy``: like ``mos``; the ground truth belongs to the window's newest scan.

Either way a window never spans a missing sweep: its context starts after the
gap, so the model predicts from a shorter window (time indices stay
right-aligned). Timestamps that do not increase raise ``WindowError`` before
any frame is read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from perception4d.core.geometry import Geometry
from perception4d.core.window import Window
from perception4d.datasets.sample import DEFAULT_MAX_GAP_S, WindowSample, build_window_sample, check_max_gap
from perception4d.errors import ConfigError, WindowError
from perception4d.io.base import SequenceReader

log = logging.getLogger("perception4d.windows")

WINDOW_TASKS = ("flow", "mos", "occupancy")


@dataclass(frozen=True)
class SkippedPair:
    """A source sweep without a flow prediction: its next sweep comes ``gap_s`` seconds later."""

    source_index: int
    reference_index: int
    source_timestamp_ns: int
    gap_s: float


@dataclass
class WindowPlan:
    """The windows of one sequence as (first, last) frame indices, inclusive."""

    sequence_id: str
    num_frames: int  # frames in the sequence
    max_gap_s: float
    task: str = "flow"
    spans: list[tuple[int, int]] = field(default_factory=list)
    skipped: list[SkippedPair] = field(default_factory=list)


def plan_windows(reader: SequenceReader, window_frames: int, max_gap_s: float = DEFAULT_MAX_GAP_S,
                 task: str = "flow") -> WindowPlan:
    """Windows of up to ``window_frames`` frames for ``task`` (one of ``WINDOW_TASKS``), cut at missing sweeps."""
    if task not in WINDOW_TASKS:
        raise ConfigError(f"window task must be one of {WINDOW_TASKS}, got {task!r}")
    max_gap_s = check_max_gap(max_gap_s)
    sid = reader.sequence_id
    ts = [int(reader.timestamp_ns(i)) for i in range(len(reader))]
    plan = WindowPlan(sid, len(ts), max_gap_s, task)
    gap_before = [False] * len(ts)  # gap_before[k]: frames k-1 and k are more than max_gap_s apart
    for k in range(1, len(ts)):
        if ts[k] <= ts[k - 1]:
            raise WindowError(f"{reader.format or 'sequence'} {sid}: timestamps must increase, frame {k - 1} at "
                              f"{ts[k - 1]} ns is followed by frame {k} at {ts[k]} ns")
        gap_before[k] = (ts[k] - ts[k - 1]) * 1e-9 > max_gap_s
    for last in range(1 if task == "flow" else 0, len(ts)):
        if task == "flow" and gap_before[last]:
            gap = (ts[last] - ts[last - 1]) * 1e-9
            plan.skipped.append(SkippedPair(last - 1, last, ts[last - 1], gap))
            log.warning("%s: no flow for frame %d (%d ns): the next sweep comes %.3f s later (max_gap_s %g s, "
                        "missing sweep)", sid, last - 1, ts[last - 1], gap, max_gap_s)
            continue
        first = max(0, last - window_frames + 1)
        for k in range(last, first, -1):
            if gap_before[k]:
                first = k
                break
        plan.spans.append((first, last))
    return plan


def iter_windows(reader: SequenceReader, geometry: Geometry, with_targets: bool = False,
                 max_gap_s: float = DEFAULT_MAX_GAP_S, plan: WindowPlan | None = None,
                 tasks: tuple[str, ...] = ("flow",), cache: dict | None = None) -> Iterator[WindowSample]:
    """The samples of ``plan`` (default: ``plan_windows`` for the tasks' window layout), each frame read once.

    ``cache`` (frame index -> Frame) holds the current window's frames; pass a dict to see them.
    """
    if plan is None:
        plan = plan_windows(reader, geometry.num_frames, max_gap_s, window_task(tasks))
    cache = {} if cache is None else cache
    for first, last in plan.spans:
        for k in [k for k in cache if k < first]:
            del cache[k]
        for k in range(first, last + 1):
            if k not in cache:
                cache[k] = reader[k]
        window = Window(tuple(cache[k] for k in range(first, last + 1)))
        yield build_window_sample(window, geometry, reader.sequence_id, with_targets=with_targets,
                                  max_gap_s=plan.max_gap_s, tasks=tasks)


def window_task(tasks: tuple[str, ...]) -> str:
    """The window layout a set of tasks needs: flow windows when flow is among them (MOS and occupancy
    ride along: occupancy then belongs to the reference sweep t+1), else one window per scan."""
    return "flow" if "flow" in tasks else "mos"
