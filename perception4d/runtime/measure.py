"""Measuring a runtime on a frame stream: latency (one frame in flight) and throughput (several in flight).

Latency is the host wall time from ``submit`` to the joined result of a
frame. A result exists only after every worker's outputs have been copied to
the host, and that copy waits for the device work, so no unsynchronised GPU
time can hide in it. Throughput is frames over the wall time of a run that
keeps ``max_in_flight`` frames queued. Stage times come from the results
(CUDA events on the workers' streams, see ``perception4d.runtime.timing``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from perception4d.core.frame import Frame
from perception4d.runtime.parallel import FrameResult, ParallelPredictor
from perception4d.runtime.predictor import Status
from perception4d.runtime.timing import HandOff, StageTimes

HANDOFF_FIELDS = HandOff.names()


@dataclass
class StreamStats:
    """One configuration measured on one stream."""

    label: str
    frames: int
    latency_ms: list[float] = field(default_factory=list)
    throughput_fps: float = 0.0
    failed: int = 0
    dropped: int = 0
    stage_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # model set -> stage -> median ms
    submit_ms: float = 0.0  # median of the caller's time in submit before the hand-over (gate, preparation)
    slowest: list[tuple[int, float]] = field(default_factory=list)  # (frame index, latency ms) of the 3 slowest
    handoff_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # worker -> HandOff field -> median ms

    @property
    def p50(self) -> float:
        return float(np.percentile(self.latency_ms, 50)) if self.latency_ms else float("nan")

    @property
    def p99(self) -> float:
        return float(np.percentile(self.latency_ms, 99)) if self.latency_ms else float("nan")


def stream_frames(preset, unique: int, total: int, seed: int = 0) -> list[Frame]:
    """``total`` sweeps from ``unique`` simulated ones, played forth and back (the ego reverses: poses stay
    continuous), re-timed at the sensor's period and renamed ``stream/<k>``; no labels."""
    from perception4d.sim import get_preset, simulate

    preset = get_preset(preset)
    unique = max(2, min(int(unique), int(total)))
    sim = simulate(preset, num_frames=unique, seed=seed, occupancy=None).frames
    cycle = list(range(unique)) + list(range(unique - 2, 0, -1))
    period = preset.frame_period_ns
    return [replace(sim[cycle[k % len(cycle)]], labels=None, timestamp_ns=k * period, frame_id=f"stream/{k}")
            for k in range(int(total))]


@dataclass
class _Seen:
    """What a measurement keeps of one result (a streaming consumer lets the result itself go)."""

    status: Status
    latency_ms: float
    submit_ms: float
    stages: dict[str, list[float]]  # model set -> StageTimes row (its OK results)
    handoff: dict[str, list[float]]  # worker -> HandOff row

    @classmethod
    def of(cls, r: FrameResult) -> "_Seen":
        return cls(r.status, r.latency_ms, r.submit_ms,
                   {n: res.timings.as_row() for n, res in r.results.items() if res.status == Status.OK},
                   {w: h.as_row() for w, h in r.handoff.items()})


def _medians(rows: dict[str, list[list[float]]], names) -> dict[str, dict[str, float]]:
    return {key: dict(zip(names, (float(v) for v in np.median(np.asarray(values), axis=0))))
            for key, values in rows.items()}


def _collect_stats(stats: StreamStats, seen: list[_Seen]) -> None:
    stats.failed = sum(r.status == Status.FAILED for r in seen)
    stats.dropped = sum(r.status == Status.DROPPED for r in seen)
    ok = [r for r in seen if r.status == Status.OK]
    stats.latency_ms = [r.latency_ms for r in ok]
    stats.slowest = sorted(((k, r.latency_ms) for k, r in enumerate(seen) if r.status == Status.OK),
                           key=lambda kv: -kv[1])[:3]
    if ok:
        stats.submit_ms = float(np.median([r.submit_ms for r in ok]))
    stages: dict[str, list] = {}
    handoff: dict[str, list] = {}
    for r in seen:
        for name, row in r.stages.items():
            stages.setdefault(name, []).append(row)
    for r in ok:
        for worker, row in r.handoff.items():
            handoff.setdefault(worker, []).append(row)
    stats.stage_ms = _medians(stages, StageTimes.names())
    stats.handoff_ms = _medians(handoff, HANDOFF_FIELDS)


def measure(predictor: ParallelPredictor, frames: list[Frame], label: str, warmup_frames: int = 5) -> StreamStats:
    """Latency over ``frames`` with ``step``, then throughput over the same frames re-timed after them.

    The first ``warmup_frames`` of the stream run untimed (the window fills; allocators settle). Each result is
    let go once its figures are read, as a streaming consumer does (a process worker's results view its reply
    arenas until then, ``perception4d.runtime.arena``).
    """
    stats = StreamStats(label, len(frames))
    period = frames[1].timestamp_ns - frames[0].timestamp_ns if len(frames) > 1 else 100_000_000
    for f in frames[:warmup_frames]:
        predictor.step(replace(f, timestamp_ns=f.timestamp_ns - (warmup_frames + 1) * period,
                               frame_id=f"warmup/{f.frame_id}"))
    seen = [_Seen.of(predictor.step(f)) for f in frames]
    _collect_stats(stats, seen)
    shift = frames[-1].timestamp_ns + period - frames[0].timestamp_ns
    later = [replace(f, timestamp_ns=f.timestamp_ns + shift, frame_id=f"{f.frame_id}+") for f in frames]
    t0 = time.perf_counter()
    for f in later:
        while predictor.outstanding >= predictor.max_in_flight:
            predictor.collect()
        predictor.submit(f)
    predictor.drain()
    stats.throughput_fps = len(later) / (time.perf_counter() - t0)
    return stats
