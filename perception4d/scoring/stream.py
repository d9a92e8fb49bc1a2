"""One work unit streamed through the runtime predictor, a chunk of frames at a time.

The predictor (``perception4d.runtime.Predictor``) is the contract: a frame
goes in, a ``Result`` comes out, with each output naming the frame it
belongs to (flow: the sweep before the step's frame; fused MOS: a scan that
left the horizon; online MOS and occupancy: the step's frame). This module
only decides which frames to feed and which outputs to keep:

* **Targets** are the unit's frames without a manifest line. Their outputs
  are written; every other output is discarded.
* **Context.** Outputs depend only on the sweeps in the predictor's window
  (the last T admitted sweeps since the last window reset), and a fused MOS
  scan only on windows that contain it. Starting the stream T - 1 admitted
  sweeps before the first target (``context_start``; never across a gap,
  where the window restarts anyway) therefore gives the outputs of a run from
  the start of the sequence, exactly. This is what makes segments and
  resumption free of seams.
* **Resolution.** The unit runs until every target is resolved for every
  task: written, or skipped / failed with a reason (no next sweep for flow,
  a window reset at a missing sweep, a sweep the frame policy dropped, a
  step out of memory, a file that cannot be read). It may read past its last
  frame: flow of frame k needs sweep k + 1, the fused MOS of scan k needs
  the windows up to k + T - 1.

A file that cannot be read (``DataFormatError`` / ``OSError`` from the
reader) fails that frame for every task; the stream continues as if the
sweep were missing, as the runtime's frame policy treats a dropped sweep.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from perception4d.errors import DataFormatError
from perception4d.runtime.policy import usable_rows
from perception4d.runtime.predictor import Status as StepStatus
from perception4d.scoring.manifest import FrameRecord, Status, TaskOutcome
from perception4d.scoring.settings import WorkUnit, open_source
from perception4d.scoring.tasks import SequenceNames

READ_ERRORS = (DataFormatError, OSError)
LAST_SWEEP = "last sweep of the sequence: flow needs the next sweep"


@dataclass
class ChunkResult:
    """What a worker reports after a chunk of steps."""

    unit: str
    records: list[FrameRecord] = field(default_factory=list)
    finished: bool = False
    steps: int = 0  # predictor steps run (context steps included)
    seconds: float = 0.0  # the chunk's wall time in the worker
    error: str = ""  # an unexpected exception: the unit stopped and is reported failed


@dataclass
class PendingFrame:
    index: int
    frame: object | None  # the Frame (None: it could not be read)
    frame_id: str
    timestamp_ns: int
    outcomes: dict[str, TaskOutcome] = field(default_factory=dict)


def read_frame(reader, index: int):
    """``reader[index]``, or the read error's message."""
    try:
        return reader[index], ""
    except READ_ERRORS as e:
        return None, f"{type(e).__name__}: {e}"


def context_start(reader, first: int, need: int, max_gap_s: float, columns, cache: dict) -> int:
    """The index to start streaming at so that ``need`` usable sweeps precede frame ``first``.

    Walks back from ``first - 1``, stops at a gap longer than ``max_gap_s`` (the window restarts there) or at
    frame 0; unreadable or empty frames do not count (the runtime drops them). What was read is left in
    ``cache`` (index -> (frame or None, read error)).
    """
    newer_ts = int(reader.timestamp_ns(first))
    start, count, i = first, 0, first - 1
    while i >= 0 and count < need:
        ts = int(reader.timestamp_ns(i))
        if (newer_ts - ts) * 1e-9 > max_gap_s:
            break
        frame, error = read_frame(reader, i)
        cache[i] = (frame, error)
        start = i
        if frame is not None and bool(usable_rows(frame, columns).any()):
            count += 1
            newer_ts = ts
        i -= 1
    return start


class UnitScorer:
    """Streams one ``WorkUnit`` through a fresh predictor stream of ``worker`` (a ``ScoreWorker``)."""

    def __init__(self, worker, unit: WorkUnit, done: frozenset[int] | set[int]):
        self.unit = unit
        self.worker = worker
        self.tasks = worker.tasks
        self.reader = open_source(unit.source)
        self.n = len(self.reader)
        if self.n != unit.num_frames:
            raise DataFormatError(unit.source.path, f"now holds {self.n} frames, the run planned {unit.num_frames}")
        self.names = SequenceNames.of(self.reader, unit.source.index)
        targets = [i for i in range(unit.start, unit.stop) if i not in done]
        self.targets = set(targets)
        self.pending: dict[int, PendingFrame] = {}
        self.unresolved = set(targets)
        self.ready: list[FrameRecord] = []
        self.cache: dict[int, object] = {}
        self.predictor = worker.new_stream(unit.source.key)
        geometry = self.predictor.geometry
        self.next_index = (context_start(self.reader, targets[0], geometry.num_frames - 1, worker.max_gap_s,
                                         self.predictor.gate.policy.columns, self.cache) if targets else self.n)
        self.index_of: dict[str, int] = {}
        self.window: deque[int] = deque(maxlen=geometry.num_frames)  # admitted indices in the predictor's ring
        self.flow_waiting: list[int] = []  # admitted frames whose flow comes with a later sweep
        self.finished = not targets

    # -- driving -------------------------------------------------------------------------------------
    def run_chunk(self, max_steps: int) -> ChunkResult:
        t0 = time.perf_counter()
        steps = 0
        while not self.finished and steps < max_steps:
            if self.next_index >= self.n:
                self._end_of_sequence()
            else:
                self._step(self.next_index)
                self.next_index += 1
                steps += 1
            self.finished = not self.unresolved
        records, self.ready = self.ready, []
        return ChunkResult(self.unit.name, records, self.finished, steps, time.perf_counter() - t0)

    def _step(self, k: int) -> None:
        frame, error = self.cache.pop(k) if k in self.cache else read_frame(self.reader, k)
        if frame is None:
            self._resolve_all(k, Status.FAILED, error)
            return
        if k in self.targets:
            self.pending[k] = PendingFrame(k, frame, frame.frame_id, int(frame.timestamp_ns))
        result = self.predictor.step(frame)
        if result.status == StepStatus.DROPPED:
            self._resolve_all(k, Status.SKIPPED, result.message)
            return
        if result.status == StepStatus.FAILED:
            self._resolve_all(k, Status.FAILED, result.message)
            return
        if result.health is not None and result.health.reset:
            for i in self.flow_waiting:
                self._resolve(i, "flow", TaskOutcome(Status.SKIPPED, reason=result.health.reset))
            self.flow_waiting.clear()
            self.window.clear()
        self.window.append(k)
        self.index_of[frame.frame_id] = k
        if "flow" in self.tasks:
            self._flow(k, result)
        if "mos" in self.tasks:
            self._mos(k, result)
        if "occupancy" in self.tasks:
            if result.occupancy is not None:
                self._output(k, "occupancy", lambda p: self.worker.handlers["occupancy"].outcome(
                    self.names, k, p.frame, result.occupancy.prediction, (self.window[0], k)))
            else:
                self._resolve(k, "occupancy", TaskOutcome(Status.SKIPPED, reason=result.message or "no output"))
        for old in [fid for fid, i in self.index_of.items() if i < self.window[0]]:  # left the window and fusion
            del self.index_of[old]

    def _flow(self, k: int, result) -> None:
        if result.flow is not None:
            s = self.index_of[result.flow.frame_id]
            for i in [i for i in self.flow_waiting if i < s]:  # cannot get a flow any more
                self._resolve(i, "flow", TaskOutcome(Status.SKIPPED, reason=f"no flow: the window moved on at "
                                                                           f"{result.frame_id}"))
            self.flow_waiting = [i for i in self.flow_waiting if i > s]
            self._output(s, "flow", lambda p: self.worker.handlers["flow"].outcome(self.names, p.frame, result.flow))
        self.flow_waiting.append(k)

    def _mos(self, k: int, result) -> None:
        if self.worker.mos_fused:
            for f in result.mos_fused:
                i = self.index_of[f.frame_id]
                self._output(i, "mos", lambda p, f=f: self.worker.handlers["mos"].outcome(self.names, p.index,
                                                                                          p.frame, f.prob))
        elif result.mos is not None:
            self._output(k, "mos", lambda p: self.worker.handlers["mos"].outcome(self.names, k, p.frame,
                                                                                result.mos.prob))
        else:
            self._resolve(k, "mos", TaskOutcome(Status.SKIPPED, reason=result.message or "no output"))

    def _end_of_sequence(self) -> None:
        if "mos" in self.tasks and self.worker.mos_fused:
            for f in self.predictor.flush():
                i = self.index_of[f.frame_id]
                self._output(i, "mos", lambda p, f=f: self.worker.handlers["mos"].outcome(self.names, p.index,
                                                                                          p.frame, f.prob))
        for i in self.flow_waiting:
            self._resolve(i, "flow", TaskOutcome(Status.SKIPPED, reason=LAST_SWEEP))
        self.flow_waiting.clear()
        for i in sorted(self.unresolved):
            self._resolve_all(i, Status.SKIPPED, "no output for this frame")

    # -- resolution ----------------------------------------------------------------------------------
    def _output(self, index: int, task: str, make) -> None:
        """Write ``task``'s output of a target frame (``make(pending) -> TaskOutcome``); others are discarded."""
        p = self.pending.get(index)
        if p is None or task in p.outcomes:
            return
        self._resolve(index, task, make(p))

    def _resolve_all(self, index: int, status: str, reason: str) -> None:
        if index not in self.unresolved:
            return
        if index not in self.pending:
            ts = int(self.reader.timestamp_ns(index))
            self.pending[index] = PendingFrame(index, None, "", ts)
        for task in self.tasks:
            self._resolve(index, task, TaskOutcome(status, reason=reason))

    def _resolve(self, index: int, task: str, outcome: TaskOutcome) -> None:
        p = self.pending.get(index)
        if p is None or task in p.outcomes:
            return
        p.outcomes[task] = outcome
        if len(p.outcomes) == len(self.tasks):
            del self.pending[index]
            self.unresolved.discard(index)
            self.ready.append(FrameRecord(self.unit.source.key, index, p.frame_id, p.timestamp_ns,
                                          {t: p.outcomes[t] for t in self.tasks}))
