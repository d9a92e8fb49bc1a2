"""Several networks on several devices at once: ``ParallelPredictor``.

Each model set is assigned a device (a runtime config, e.g. the flow+MOS
network on cuda:0 and the occupancy network on cuda:1). Model sets are grouped
per device (``group="device"``: one worker per device, one upload of each sweep
per device, its networks one after another) or one worker each
(``group="model"``: e.g. two streams on one GPU, two CPU workers). Workers are
``inline`` (the caller's thread: the sequential baseline), ``thread`` (own
CUDA stream each) or ``process`` (spawned, no shared GIL); ``auto`` (the
default): process workers for model sets on two CUDA devices or more, else
inline (the measured winners; thread workers on CUDA log a warning: an open
race has made the occupancy network's outputs differ from the sequential
run's in some GPU runs).

Fallback: a model set asking for a CUDA device that does not exist runs on
``cuda:(index % device_count)``, or on the CPU without CUDA; ``layout_notes``
says so. The API and the results stay the same: every worker runs the same
``Predictor`` code on the same admitted sweeps.

The frame gate (``perception4d.runtime.policy``) runs once, in the caller;
dropped frames never reach a worker. Each admitted frame is prepared once in
the caller: staged in reused (pinned) host buffers for inline and thread
workers, staged into a reused shared-memory slot for process workers
(``perception4d.runtime.workers``). ``outputs`` says what the results carry
(default: everything the networks predict). A process worker's outputs are
copied by its device straight into shared memory that the results view in
place (``perception4d.runtime.arena``; ``max_leased``: results a caller may
hold before it gets copies). Results are joined per frame and handed
out in submission order: ``step`` (one frame in flight: latency) or ``submit``
/ ``collect`` (up to ``max_in_flight`` frames in flight: throughput). A worker
that runs out of memory answers that frame with a FAILED result naming it and
keeps serving; any other error in a worker raises ``WorkerError`` here.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import wait as wait_any

import torch

from perception4d.core.frame import Frame
from perception4d.errors import ConfigError, Perception4DError
from perception4d.runtime.arena import ReplyPool
from perception4d.runtime.models import ModelSpec
from perception4d.runtime.policy import FramePolicy, StreamGate
from perception4d.runtime.predictor import FusedMosOutput, Result, Status, StepHealth
from perception4d.runtime.sweeps import StagingPool
from perception4d.runtime.timing import HandOff, StageTimes
from perception4d.runtime.workers import (WORKER_CHOICES, Fatal, FlushJob, Flushed, FrameSlots, Job,
                                          PredictorOptions, Ready, Reply, StartFailed, WireSweep, Worker, WorkerSpec)

log = logging.getLogger("perception4d.runtime")

GROUPINGS = ("device", "model")


class WorkerError(Perception4DError, RuntimeError):
    """A worker failed to start, died, or raised something other than out-of-memory."""


@dataclass
class FrameResult:
    """Every model set's result for one frame, joined."""

    seq: int
    frame_id: str
    timestamp_ns: int
    status: Status  # OK; DROPPED (by the gate); FAILED when any model set failed (the others' outputs stay)
    results: dict[str, Result] = field(default_factory=dict)  # by model set name, in configuration order
    latency_ms: float = 0.0  # submit -> all results joined (host wall time)
    message: str = ""
    submit_ms: float = 0.0  # the caller's time in ``submit`` before the hand-over: the gate, the frame's preparation
    handoff: dict[str, HandOff] = field(default_factory=dict)  # by worker: where the rest of the latency went

    def _first(self, task: str):
        return next((getattr(r, task) for r in self.results.values() if getattr(r, task) is not None), None)

    @property
    def flow(self):
        return self._first("flow")

    @property
    def mos(self):
        return self._first("mos")

    @property
    def occupancy(self):
        return self._first("occupancy")

    @property
    def mos_fused(self) -> list[FusedMosOutput]:
        return [f for r in self.results.values() for f in r.mos_fused]


def resolve_device(requested: str, cuda_count: int) -> tuple[torch.device, str]:
    """The device a model set runs on, and a note when it is not the one asked for."""
    want = torch.device(requested)
    if want.type != "cuda":
        return want, ""
    if cuda_count == 0:
        return torch.device("cpu"), f"asked {requested}, no CUDA device: cpu"
    index = 0 if want.index is None else want.index
    if index >= cuda_count:
        got = torch.device("cuda", index % cuda_count)
        return got, f"asked {requested}, {cuda_count} CUDA device(s): {got}"
    return torch.device("cuda", index), ""


def resolve_workers(workers: str, devices: Sequence[str]) -> str:
    """The worker kind for workers on ``devices``: ``auto`` is process for two CUDA devices or more, else inline
    (see the module docstring); thread workers on CUDA log the open race."""
    cuda_devices = {str(d) for d in devices if torch.device(d).type == "cuda"}
    if workers == "auto":
        return "process" if len(devices) > 1 and len(cuda_devices) > 1 else "inline"
    if workers == "thread" and cuda_devices:
        log.warning("thread workers on CUDA: the occupancy network's outputs have been seen to differ from the "
                    "sequential run's in some runs (an open race); process workers are the tested choice")
    return workers


def plan_workers(models: Sequence[ModelSpec], group: str = "device", options: PredictorOptions = PredictorOptions(),
                 cuda_count: int | None = None, **limits) -> tuple[list[WorkerSpec], list[str]]:
    """Worker specs (model sets grouped per resolved device, or one per model set) and layout notes."""
    if group not in GROUPINGS:
        raise ConfigError(f"group must be one of {GROUPINGS}, got {group!r}")
    names = [m.name for m in models]
    if not models or len(set(names)) != len(names):
        raise ConfigError(f"model sets need unique names, got {names}")
    if cuda_count is None:
        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    groups: dict[str, list[ModelSpec]] = {}
    notes = []
    for m in models:
        device, note = resolve_device(m.device, cuda_count)
        notes.append(f"{m.name} -> {device}" + (f" ({note})" if note else ""))
        key = str(device) if group == "device" else f"{m.name}@{device}"
        groups.setdefault(key, []).append(m)
    specs = []
    for key, ms in groups.items():
        device = key.split("@")[-1]
        specs.append(WorkerSpec("+".join(m.name for m in ms), device, tuple(ms), options, **limits))
    return specs, notes


class ParallelPredictor:
    """Model sets on their devices, one frame stream (see the module docstring).

    ``outputs`` / ``velocity_dtype``: shorthands for the ``PredictorOptions`` fields of those names, e.g.
    ``outputs=("flow", "mos", "occupancy")``: occupancy classes without velocities (None: as ``options`` says).
    ``max_leased``: process workers' results view shared reply arenas until they are garbage; past this many
    frames' results alive per worker, the arrays are copied instead (see ``perception4d.runtime.arena``).
    ``FrameResult.handoff`` says where each frame's time went between the caller and each worker.
    ``poll_ms``: while waiting for process workers, the caller polls their pipes for up to this long before it
    sleeps on them (waking a sleeping thread costs ~0.1-0.3 ms; polling keeps a core busy meanwhile; 0: sleep).
    """

    def __init__(self, models: Sequence[ModelSpec], *, workers: str = "auto", group: str = "device",
                 options: PredictorOptions = PredictorOptions(), policy: FramePolicy | None = None,
                 max_in_flight: int = 2, start_timeout_s: float = 900.0, reply_timeout_s: float = 600.0,
                 cuda_count: int | None = None, outputs: Sequence[str] | None = None,
                 velocity_dtype: str | None = None, max_leased: int = 4, poll_ms: float = 20.0, **limits):
        if outputs is not None:
            options = replace(options, outputs=tuple(outputs))
        if velocity_dtype is not None:
            options = replace(options, velocity_dtype=velocity_dtype)
        if workers not in WORKER_CHOICES:
            raise ConfigError(f"workers must be one of {WORKER_CHOICES}, got {workers!r}")
        if int(max_in_flight) < 1:
            raise ConfigError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.model_names = [m.name for m in models]
        self.specs, self.layout_notes = plan_workers(models, group, options, cuda_count, **limits)
        self.kind = resolve_workers(workers, [s.device for s in self.specs])
        for note in self.layout_notes:
            (log.warning if "asked" in note else log.info)("layout: %s", note)
        self.gate = StreamGate(policy)
        self.max_in_flight = int(max_in_flight)
        self.reply_timeout_s = float(reply_timeout_s)
        self.poll_s = max(float(poll_ms), 0.0) / 1e3
        self.options = options
        self._pin = any(torch.device(s.device).type == "cuda" for s in self.specs)
        self.staging = StagingPool(pin=self._pin)  # inline / thread workers: each frame staged once, here
        self.frame_slots = FrameSlots()  # process workers: each frame staged once into shared memory
        self.reply_pools = {s.name: ReplyPool(max_leased) for s in self.specs}  # process workers' reply arenas
        ctx = None
        if self.kind == "process":
            import torch.multiprocessing as tmp

            ctx = tmp.get_context("spawn")
        self._replies = queue.Queue()  # inline and thread workers answer here; process workers through their pipe
        self._workers: list[Worker] = []
        self._pending: dict[int, dict[str, list[Result]]] = {}
        self._handoffs: dict[int, dict[str, HandOff]] = {}
        self._sent: dict[int, dict[str, float]] = {}  # seq -> worker -> when the job was handed over
        self._meta: dict[int, tuple[str, int, float, float]] = {}  # seq -> frame id, timestamp, submitted, submit ms
        self._done: dict[int, FrameResult] = {}
        self._flushed: dict[int, dict[str, dict]] = {}
        self._next_seq = self._next_out = self._flush_count = 0
        self.descriptions: dict[str, list[str]] = {}
        self.warmup_s: dict[str, float] = {}
        try:
            for spec in self.specs:
                self._workers.append(Worker(spec, self.kind, self._replies, ctx))
            self._wait_ready(start_timeout_s)
        except BaseException:
            self.close()
            raise

    # -- lifecycle --------------------------------------------------------------------------------------
    def _wait_ready(self, timeout_s: float) -> None:
        waiting = {w.name for w in self._workers}
        deadline = time.monotonic() + timeout_s
        while waiting:
            msg = self._get(deadline, f"start of worker(s) {sorted(waiting)}")
            if isinstance(msg, StartFailed):
                raise WorkerError(f"worker {msg.worker} failed to start:\n{msg.text}")
            if isinstance(msg, Ready):
                waiting.discard(msg.worker)
                self.descriptions[msg.worker] = msg.descriptions
                self.warmup_s[msg.worker] = msg.warmup_s

    def describe(self) -> str:
        lines = [f"{self.kind} workers: " + "; ".join(self.layout_notes)]
        for worker, descs in self.descriptions.items():
            lines += [f"  [{worker}] {d}" for d in descs]
        return "\n".join(lines)

    def close(self) -> None:
        for w in self._workers:
            try:
                w.stop()
            except Exception as exc:  # noqa: BLE001 - closing must reach every worker
                log.warning("stopping worker %s: %s", w.name, exc)
        self._workers = []

    def __enter__(self) -> "ParallelPredictor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- streaming --------------------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Frames submitted and not answered by every worker yet."""
        return len(self._pending)

    @property
    def outstanding(self) -> int:
        """Frames submitted and not collected yet (answered or not)."""
        return self._next_seq - self._next_out

    def step(self, frame: Frame) -> FrameResult:
        """Submit one frame and wait for its joined result (earlier submitted results must be collected first)."""
        if self._next_out != self._next_seq:
            raise RuntimeError(f"step() with {self._next_seq - self._next_out} submitted frame(s) not collected; "
                               f"collect() them first")
        self.submit(frame)
        return self.collect()

    def submit(self, frame: Frame) -> int:
        """Hand a frame to every worker (waits while ``max_in_flight`` frames are unanswered); its sequence number."""
        while self.in_flight >= self.max_in_flight:
            self._pump()
        t0 = time.perf_counter()
        seq = self._next_seq
        self._next_seq += 1
        admission = self.gate.admit(frame)
        if not admission.accepted:
            results = {n: Result(n, frame.frame_id, frame.timestamp_ns, Status.DROPPED, message=admission.reason,
                                 timings=StageTimes(), health=StepHealth(frame.num_points, admission.non_finite))
                       for n in self.model_names}
            self._done[seq] = FrameResult(seq, frame.frame_id, frame.timestamp_ns, Status.DROPPED, results,
                                          (time.perf_counter() - t0) * 1e3, admission.reason)
            return seq
        t_prep = time.perf_counter()
        if self.kind == "process":  # staged once into a shared slot, uploaded from it by every worker
            job = Job(seq, admission, host=WireSweep.stage(frame, self.frame_slots, [w.name for w in self._workers],
                                                           admission.non_finite))
        else:  # prepared once (pinned when a worker uploads to CUDA), uploaded per device
            job = Job(seq, admission, frame=frame, host=self.staging.stage(frame, non_finite=admission.non_finite))
        job.prep_ms = (time.perf_counter() - t_prep) * 1e3
        self._pending[seq] = {}
        self._handoffs[seq] = {}
        self._meta[seq] = (frame.frame_id, frame.timestamp_ns, t0, (time.perf_counter() - t0) * 1e3)
        self._sent[seq] = {}
        for w in self._workers:
            try:
                self._sent[seq][w.name] = w.send(job, self.frame_slots, self._acquire_reply(w))
            except OSError as exc:  # a process worker's pipe broke: it died
                raise WorkerError(f"worker {w.name} died (its pipe broke sending frame {frame.frame_id}: "
                                  f"{type(exc).__name__}: {exc})") from None
        return seq

    def collect(self) -> FrameResult:
        """The next frame's joined result, in submission order (blocks until it is complete)."""
        if self._next_out >= self._next_seq:
            raise RuntimeError("collect(): no submitted frame is waiting")
        while self._next_out not in self._done:
            self._pump()
        out = self._done.pop(self._next_out)
        self._next_out += 1
        return out

    def drain(self) -> list[FrameResult]:
        return [self.collect() for _ in range(self._next_seq - self._next_out)]

    def flush(self) -> dict[str, list[FusedMosOutput]]:
        """End of the stream: the fused MOS still held, per model set (every submitted frame is answered first)."""
        self._flush_count += 1
        seq = -self._flush_count  # flushes are numbered apart from frames: they produce no FrameResult
        self._flushed[seq] = {}
        for w in self._workers:
            w.send(FlushJob(seq))
        deadline = time.monotonic() + self.reply_timeout_s
        while len(self._flushed[seq]) < len(self._workers):
            self._handle(self._get(deadline, f"flush {seq}"))
        merged: dict[str, list[FusedMosOutput]] = {}
        for fused in self._flushed.pop(seq).values():
            merged.update(fused)
        return merged

    # -- replies ----------------------------------------------------------------------------------------
    def _acquire_reply(self, worker: Worker) -> int:
        return self.reply_pools[worker.name].acquire() if worker.kind == "process" else -1

    def _get(self, deadline: float, what: str):
        while True:
            try:
                if self.kind != "process":
                    return self._replies.get(timeout=1.0)
                conns = [w.conn for w in self._workers]
                ready, until = wait_any(conns, timeout=0), time.perf_counter() + self.poll_s
                while not ready and time.perf_counter() < until:
                    ready = wait_any(conns, timeout=0)
                ready = ready or wait_any(conns, timeout=1.0)
                if ready:
                    return ready[0].recv()
            except queue.Empty:
                pass
            except (EOFError, OSError):  # a worker's pipe closed: it died
                pass
            dead = [w.name for w in self._workers if not w.alive()]
            if dead:
                raise WorkerError(f"worker(s) {dead} died while waiting for {what}") from None
            if time.monotonic() > deadline:
                raise WorkerError(f"no answer for {what} within the time limit") from None

    def _pump(self) -> None:
        if not self._pending:
            raise RuntimeError("no frame in flight")
        oldest = min(self._pending)
        frame_id = self._meta[oldest][0]
        self._handle(self._get(time.monotonic() + self.reply_timeout_s, f"frame {frame_id} (seq {oldest})"))

    def _handle(self, msg) -> None:
        if isinstance(msg, Fatal):
            raise WorkerError(f"worker {msg.worker} failed on frame {msg.frame_id or '?'} (seq {msg.seq}):\n{msg.text}")
        if isinstance(msg, Flushed):
            self._flushed[msg.seq][msg.worker] = msg.fused
            return
        if not isinstance(msg, Reply):
            raise WorkerError(f"unexpected message {type(msg).__name__} from a worker")
        arrived = time.perf_counter()
        if msg.released:  # slots of sweeps this worker's ring let go of
            self.frame_slots.release(msg.worker, msg.released)
        parts = self._pending[msg.seq]
        parts[msg.worker] = (msg.results if msg.reply < 0 else
                             self.reply_pools[msg.worker].decode(msg.results, msg.reply, msg.buffers))
        received, ready, sent = msg.marks
        self._handoffs[msg.seq][msg.worker] = HandOff(
            to_worker=max(received - self._sent[msg.seq][msg.worker], 0.0) * 1e3, run=(ready - received) * 1e3,
            encode=(sent - ready) * 1e3, to_caller=max(arrived - sent, 0.0) * 1e3,
            decode=(time.perf_counter() - arrived) * 1e3)
        if len(parts) < len(self._workers):
            return
        del self._pending[msg.seq]
        del self._sent[msg.seq]
        frame_id, ts, t0, submit_ms = self._meta.pop(msg.seq)
        by_name = {r.model: r for results in parts.values() for r in results}
        results = {n: by_name[n] for n in self.model_names}
        failed = [r.message for r in results.values() if r.status == Status.FAILED]
        if failed:  # out of memory: the host buffers a huge frame grew are let go of
            self.staging.trim()
            self.frame_slots.trim()
        self._done[msg.seq] = FrameResult(msg.seq, frame_id, ts, Status.FAILED if failed else Status.OK, results,
                                          (time.perf_counter() - t0) * 1e3, "; ".join(failed), submit_ms,
                                          self._handoffs.pop(msg.seq))
