"""Stage timings of one streaming step without extra device synchronisation.

``StageTimer`` (perception4d.utils.timing) synchronises the device around
every stage, which serialises the host and the GPU and would distort the very
overlap the runtime is built for. ``EventTimer`` has the same ``stage(name)``
interface (so ``Perception4DNet.timer`` accepts it) but on CUDA records a pair
of CUDA events on the current stream per stage and reads them only after the
step's outputs reached the host (the step ends with a device-to-host copy, so
the events have completed by then). On the CPU it measures wall time.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch

#: the stages a streaming step reports, in order
STAGES = ("ingest", "align", "voxelize", "encoder", "backbone", "head", "graph", "outputs")


class MsRecord:
    """Milliseconds by name (a dataclass of float fields): a table row in field order, and the field names."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def as_row(self) -> list[float]:
        return [getattr(self, name) for name in self.names()]


@dataclass
class StageTimes(MsRecord):
    """Milliseconds per stage of one step; 0.0 where a stage did not run.

    ingest: host checks, pinned staging and the host-to-device copy of the new sweep (shared by the model sets
    of one device); align: the window's sweeps transformed into the newest ego frame; voxelize: the
    SparseTensor4D; encoder / backbone / head: the network; graph: voxelize to the heads' outputs replayed as
    one CUDA graph (``perception4d.runtime.graphed``; the four stages before it are then 0); outputs:
    device-to-host copies and the per-task outputs. total: wall time from the frame's arrival to the result (on
    the device's timeline for the stages, on the host's for the total).
    """

    ingest: float = 0.0
    align: float = 0.0
    voxelize: float = 0.0
    encoder: float = 0.0
    backbone: float = 0.0
    head: float = 0.0
    graph: float = 0.0
    outputs: float = 0.0
    total: float = 0.0


@dataclass
class HandOff(MsRecord):
    """Where one frame's time went between the caller and one worker, in ms (``ParallelPredictor``).

    to_worker: the caller's hand-over -> the worker has the job (pipe or queue, pickling); run: the worker's step
    of its model sets (the sweep's upload included; for a job launched while another frame was in flight, also
    the wait for that frame); encode: the results placed in the reply arena (process workers); to_caller: the
    reply's way back; decode: the caller turning the reply into results (views of the arena, or copies).
    """

    to_worker: float = 0.0
    run: float = 0.0
    encode: float = 0.0
    to_caller: float = 0.0
    decode: float = 0.0


class EventTimer:
    """``stage(name)`` timings: CUDA events on the current stream (no synchronisation), wall time on the CPU."""

    enabled = True

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        self._pending: list[tuple[str, object, object]] = []
        self._ms: dict[str, float] = {}

    def reset(self) -> None:
        self._pending.clear()
        self._ms.clear()

    @contextmanager
    def stage(self, name: str):
        if self._cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(torch.cuda.current_stream(self.device))
            try:
                with torch.profiler.record_function(f"stage:{name}"):  # a range in profiles (free without one)
                    yield
            finally:
                end.record(torch.cuda.current_stream(self.device))
                self._pending.append((name, start, end))
        else:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self._ms[name] = self._ms.get(name, 0.0) + (time.perf_counter() - t0) * 1e3

    def add(self, name: str, ms: float) -> None:
        """Add a host-measured duration (e.g. a stage timed before this step's events)."""
        self._ms[name] = self._ms.get(name, 0.0) + ms

    def collect(self) -> dict[str, float]:
        """Milliseconds per stage name; waits for the recorded events (already complete after the outputs' copy)."""
        for name, start, end in self._pending:
            end.synchronize()
            self._ms[name] = self._ms.get(name, 0.0) + start.elapsed_time(end)
        self._pending.clear()
        return dict(self._ms)

    def stage_times(self, total_ms: float) -> StageTimes:
        """The collected stages as ``StageTimes``; a ``network`` stage (the whole model call) counts as
        encoder + backbone + head, its remainder (the heads' device-to-host outputs) goes to ``outputs``."""
        ms = self.collect()
        network = ms.pop("network", None)
        if network is not None:
            inner = sum(ms.get(k, 0.0) for k in ("encoder", "backbone", "head"))
            ms["outputs"] = ms.get("outputs", 0.0) + max(network - inner, 0.0)
        return StageTimes(**{k: ms.get(k, 0.0) for k in STAGES}, total=total_ms)
