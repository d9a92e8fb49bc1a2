"""Workers of the parallel runtime: model sets grouped per device, run inline, in a thread or in a process.

A ``DeviceGroup`` holds the model sets assigned to one device and one ring
buffer they share: each admitted sweep is uploaded once for the device and the
networks run one after another on it (launched back to back, then one
synchronisation brings all their outputs to the host). A worker runs one group:

* inline: in the caller's thread (the sequential baseline);
* thread: in its own thread, with its own CUDA stream on its device; the host
  prepares each frame once (in the caller's reused, pinned staging buffers)
  and every thread uploads it to its device;
* process: in a ``torch.multiprocessing`` spawn process (no shared GIL).

Process workers talk to the caller over a pipe each (``multiprocessing.Pipe``: messages are pickled and
written by the sending thread itself, no feeder thread) and exchange arrays through shared memory that is
allocated once and reused, not per message:

* frames in: the caller stages each frame once (the input columns and ego points the networks read) into a
  slot of its ``FrameSlots`` (shared-memory buffers, grow-only); every worker uploads from the same slot,
  page-locked in the worker, so a frame is prepared once whatever the number of workers. A job names the slot;
  a slot's buffer travels to a worker only the first time (and again after it grew). A worker holds the slot
  while its ring holds the sweep; the slot is reused once every worker let go of it.
* results out: the device copies the outputs straight into a shared reply arena that the caller maps, and
  the caller's results view it in place until they are garbage (``perception4d.runtime.arena``). The results
  equal the inline run's (tested).
* a job that arrives while the device runs a frame is launched before that frame is finished (each frame
  has its own reply arena), so the device does not wait for the host between frames.

Every job carries its sequence number; a worker answers each job exactly once
(its results, or the traceback of an unexpected error), in the order received.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
import traceback
import weakref
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from perception4d.core.frame import Frame
from perception4d.core.se3 import SE3
from perception4d.datasets.sample import INPUT_COLUMNS, sensor_origin
from perception4d.runtime.arena import ReplyArenas, register_host, shared_bytes, unregister_host
from perception4d.runtime.models import ModelSpec, load_model_set
from perception4d.runtime.policy import Admission
from perception4d.runtime.predictor import (Predictor, Result, Status, Warmup, check_outputs, check_velocity_dtype,
                                            push_sweep)
from perception4d.runtime.sweeps import (HostSweep, ProductScratch, StagingPool, SweepRing, fill_host_arrays,
                                         staging_rows)

log = logging.getLogger("perception4d.runtime")

WORKER_KINDS = ("inline", "thread", "process")
#: what a runtime may be asked for: a kind, or "auto" (process workers for model sets on two CUDA devices or more,
#: else inline: the measured winner, docs/benchmarks.md)
WORKER_CHOICES = ("auto", *WORKER_KINDS)
#: thread workers build their networks one at a time: parsing configs (``ast``) in two threads at once can fail
#: in CPython 3.11 ("AST constructor recursion depth mismatch")
_BUILD_LOCK = threading.Lock()


@dataclass(frozen=True)
class PredictorOptions:
    """Settings every predictor of a parallel runtime shares.

    outputs: what the results carry (``perception4d.runtime.predictor.OUTPUTS``; None: everything the networks
    predict); velocity_dtype: "float32", or "float16" (occupancy velocities rounded to float16: half the bytes
    to the host and from process workers; within ``VELOCITY_FP16_RTOL`` of the float32 values).
    """

    amp: bool | None = None  # None: fp16 autocast on CUDA, fp32 on the CPU
    mos_fusion: bool = False
    mos_prior: float = 0.5
    warmup: Warmup | None = None  # None: the predictor's default for its device
    host_transform: bool | None = None
    outputs: tuple[str, ...] | None = None
    velocity_dtype: str = "float32"
    engine: str = "auto"  # the fused sparse backbone: auto (gather-GEMM engine on CUDA) | spconv | gather

    def __post_init__(self):
        if self.outputs is not None:
            object.__setattr__(self, "outputs", check_outputs(self.outputs))
        check_velocity_dtype(self.velocity_dtype)


@dataclass(frozen=True)
class WorkerSpec:
    """One worker: its device, its model sets (run in this order) and resource limits."""

    name: str
    device: str
    models: tuple[ModelSpec, ...]
    options: PredictorOptions = PredictorOptions()
    gpu_memory_fraction: float | None = None  # torch.cuda.set_per_process_memory_fraction on the device
    host_memory_headroom_mb: int | None = None  # process workers: address space capped at warm-up size + this
    threads: int | None = None  # torch intra-op threads of a process worker (None: torch's default)


# -- messages -----------------------------------------------------------------------------------------
@dataclass
class Job:
    seq: int
    admission: Admission
    frame: Frame | None = None
    host: HostSweep | WireSweep | None = None  # the sweep prepared once by the caller (process workers: in a slot)
    prep_ms: float = 0.0  # the caller's host time preparing ``host`` (part of each result's ingest time)
    sent_at: float = 0.0  # when the caller handed it over (``time.perf_counter``: one clock for all processes)
    reply: int = -1  # process workers: the reply arena id the outputs go to (``perception4d.runtime.arena``)


@dataclass
class FlushJob:
    seq: int


@dataclass
class Ready:
    worker: str
    descriptions: list[str]
    warmup_s: float


@dataclass
class StartFailed:
    worker: str
    text: str


@dataclass
class Reply:
    worker: str
    seq: int
    results: list[Result]
    reply: int = -1  # process workers: the reply arena id the results' ``WireArray``s are in
    buffers: dict | None = None  # that id's buffers the caller has not got yet (first use, grown)
    marks: tuple[float, float, float] = (0.0, 0.0, 0.0)  # the worker's clock: job received, results ready, sent
    released: list | None = None  # process workers: the frame slots (slot, generation) their ring let go of


@dataclass
class Flushed:
    worker: str
    seq: int
    fused: dict  # model set name -> list[FusedMosOutput]


@dataclass
class Fatal:
    worker: str
    seq: int
    frame_id: str
    text: str


# -- the group ----------------------------------------------------------------------------------------
@dataclass
class FrameInFlight:
    """A frame a ``DeviceGroup`` launched and has not finished: its model sets' launched steps."""

    steps: list = dataclasses.field(default_factory=list)
    seq: int = -1  # the sweep's place in the ring (-1: it never got there)
    arena: object = None  # the HostArena its outputs go to

    def done(self) -> bool:
        """The device finished its steps (their copies to the host included)."""
        return all(getattr(s, "done", None) is None or s.done.query() for s in self.steps)

    @property
    def private(self) -> bool:
        """Its outputs are all in its own arena and its steps share nothing their finish reads: a later frame
        can be launched before it finishes."""
        return (self.arena is not None and self.arena.needed <= self.arena.capacity
                and all(isinstance(s, Result) or s.overlappable for s in self.steps))


class DeviceGroup:
    """The model sets of one device sharing one ring buffer (see the module docstring)."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.device = torch.device(spec.device)
        if spec.gpu_memory_fraction is not None and self.device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(float(spec.gpu_memory_fraction), self.device)
        with _BUILD_LOCK:
            loaded = [load_model_set(m, self.device) for m in spec.models]
        o = spec.options
        self.ring = SweepRing(self.device, max(m.geometry.num_frames for m in loaded), o.host_transform)
        # the predictors' warm-up sweeps, and frames handed to ``run`` without a staged sweep
        self.staging = StagingPool(pin=self.device.type == "cuda")
        self.predictors = [Predictor(m, self.device, amp=o.amp, mos_fusion=o.mos_fusion, mos_prior=o.mos_prior,
                                     warmup=o.warmup, ring=self.ring, host_transform=o.host_transform,
                                     outputs=o.outputs, velocity_dtype=o.velocity_dtype, staging=self.staging,
                                     engine=o.engine)
                           for m in loaded]
        self.warmup_s = sum(p.warmup_s for p in self.predictors)

    def describe(self) -> list[str]:
        return [p.describe() for p in self.predictors]

    def host_bytes(self) -> int:
        """The host buffers of one frame's outputs (as sized by the warm-up)."""
        return sum(b.numel() * b.element_size() for p in self.predictors for b in p.copies.buffers.values())

    def run(self, admission: Admission, frame: Frame | None = None, host: HostSweep | None = None,
            prep_ms: float = 0.0, arena=None) -> list[Result]:
        """Upload the sweep once (``host``: staged already; else ``frame`` is staged here), then run every model
        set on it, in order. ``arena``: the ``HostArena`` the outputs go to (process workers)."""
        return self.finish(self.launch(admission, frame, host, prep_ms, arena))

    def launch(self, admission: Admission, frame: Frame | None = None, host: HostSweep | None = None,
               prep_ms: float = 0.0, arena=None) -> FrameInFlight:
        """``run``'s first half: the sweep uploaded and every network launched, nothing waited for."""
        t0 = time.perf_counter()
        flight = FrameInFlight(arena=arena)
        try:
            if host is None:
                host = self.staging.stage(frame, non_finite=admission.non_finite)
            push_sweep(self.ring, host, admission)
        except Exception as exc:  # noqa: BLE001 - Predictor.failed re-raises anything but out-of-memory
            fid, ts = (frame.frame_id, frame.timestamp_ns) if frame is not None else (host.frame_id,
                                                                                      host.timestamp_ns)
            flight.steps = [p.failed(fid, ts, exc, t0, "uploading the sweep") for p in self.predictors]
            return flight
        ingest_ms = (time.perf_counter() - t0) * 1e3 + prep_ms
        flight.seq = self.ring.latest(1)[0].seq
        # every network launched before the first waits: one synchronisation per frame on the device
        with self._outputs_to(arena):
            flight.steps = [p.launch(admission, t0, ingest_ms) for p in self.predictors]
        return flight

    def finish(self, flight: FrameInFlight) -> list[Result]:
        """``run``'s second half (frames finish in the order they were launched)."""
        with self._outputs_to(flight.arena):
            results = [p.finish(step) for p, step in zip(self.predictors, flight.steps)]
        if flight.seq >= 0 and any(r.status == Status.FAILED for r in results):  # as a lone Predictor does
            self.ring.drop(flight.seq)
        return results

    @contextmanager
    def _outputs_to(self, arena):
        for p in self.predictors:
            p.copies.arena = arena
        try:
            yield
        finally:
            for p in self.predictors:
                p.copies.arena = None

    def flush(self) -> dict:
        return {p.name: p.flush() for p in self.predictors}


def _frame_id(job) -> str:
    return getattr(getattr(job, "frame", None), "frame_id", "") or getattr(getattr(job, "host", None), "frame_id", "")


def serve(group: DeviceGroup, name: str, inbox, outbox, wire: bool = False) -> None:
    """Answer jobs until ``None`` arrives (the worker loop of threads and processes).

    ``wire``: a process worker (``inbox`` / ``outbox``: its ``Channel``; sweeps arrive staged in shared-memory
    slots, outputs leave through reply arenas, each reply says which slots the worker's ring let go of). A job
    that arrives while the device runs the frame in flight is launched at once, before that frame is finished,
    so it queues behind it on the device while the host finishes the other (answers stay in order); the worker
    polls its pipe and the frame's completion meanwhile (as CUDA's spinning synchronisation would).
    """
    if wire:
        return _serve_wire(group, name, inbox, outbox)
    while True:
        job = inbox.get()
        received = time.perf_counter()
        if job is None:
            return
        try:
            if isinstance(job, FlushJob):
                outbox.put(Flushed(name, job.seq, group.flush()))
                continue
            results = group.run(job.admission, frame=job.frame, host=job.host, prep_ms=job.prep_ms)
            ready = time.perf_counter()
            outbox.put(Reply(name, job.seq, results, marks=(received, ready, ready)))
        except Exception:  # noqa: BLE001 - reported to the caller with the frame, the worker keeps serving
            outbox.put(Fatal(name, job.seq, _frame_id(job), traceback.format_exc()))


def _serve_wire(group: DeviceGroup, name: str, inbox, outbox) -> None:
    slots = SlotViews(group.device)
    arenas = ReplyArenas(group.device, group.host_bytes())
    pending = None  # (job, received, FrameInFlight): launched, not answered

    def answer(job: Job, received: float, flight: FrameInFlight) -> None:
        try:
            results = group.finish(flight)
            ready = time.perf_counter()
            results, buffers = arenas.encode(results, job.reply)
            outbox.put(Reply(name, job.seq, results, job.reply, buffers, (received, ready, time.perf_counter()),
                             slots.take_released()))
        except Exception:  # noqa: BLE001 - reported to the caller with the frame, the worker keeps serving
            outbox.put(Fatal(name, job.seq, _frame_id(job), traceback.format_exc()))

    while True:
        if pending is not None:
            # while the device runs the frame in flight, watch for the next job: launched as soon as it comes, it
            # queues behind this frame on the device (no idle gap); the frame is answered once it is done
            while pending[2].private and not inbox.poll() and not pending[2].done():
                pass
            if not (pending[2].private and inbox.poll()):
                answer(*pending)
                pending = None
        job = inbox.get()
        received = time.perf_counter()
        if not isinstance(job, Job):  # stop or flush: after the frame in flight
            if pending is not None:
                answer(*pending)
                pending = None
            if job is None:
                return
            try:
                outbox.put(Flushed(name, job.seq, group.flush()))
            except Exception:  # noqa: BLE001 - as for frames
                outbox.put(Fatal(name, job.seq, "", traceback.format_exc()))
            continue
        try:
            flight = group.launch(job.admission, host=job.host.to_host(slots), prep_ms=job.prep_ms,
                                  arena=arenas.bind(job.reply))
        except Exception:  # noqa: BLE001 - as for frames; the one in flight is answered first (order)
            if pending is not None:
                answer(*pending)
                pending = None
            outbox.put(Fatal(name, job.seq, _frame_id(job), traceback.format_exc()))
            continue
        if pending is not None:
            answer(*pending)
        pending = (job, received, flight)


# -- thread workers -----------------------------------------------------------------------------------
def thread_main(spec: WorkerSpec, inbox: queue.Queue, outbox: queue.Queue) -> None:
    device = torch.device(spec.device)
    with ExitStack() as stack:
        if device.type == "cuda":
            stack.enter_context(torch.cuda.device(device))
            stack.enter_context(torch.cuda.stream(torch.cuda.Stream(device)))
        try:
            group = DeviceGroup(spec)
        except Exception:  # noqa: BLE001 - reported to the caller
            outbox.put(StartFailed(spec.name, traceback.format_exc()))
            return
        outbox.put(Ready(spec.name, group.describe(), group.warmup_s))
        serve(group, spec.name, inbox, outbox)


# -- process workers: frames in -----------------------------------------------------------------------
@dataclass
class SlotRef:
    """Where a staged sweep is: ``rows`` rows of a slot of the caller's ``FrameSlots``."""

    slot: int
    generation: int  # the slot's buffer changes (grows) with its generation
    rows: int
    buffer: torch.Tensor | None = None  # the slot's buffer, attached when the receiving worker has not got it yet


def slot_arrays(buffer: torch.Tensor, rows: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A slot buffer's (capacity, width) input columns and (capacity, 3) ego points, the first ``rows`` rows."""
    capacity = buffer.numel() // (4 * (width + 3))
    floats = buffer[:capacity * (width + 3) * 4].view(torch.float32)
    columns = floats[:capacity * width].view(capacity, width)
    ego = floats[capacity * width:].view(capacity, 3)
    return columns[:rows], ego[:rows]


class FrameSlots:
    """The caller's shared-memory slots of staged sweeps on their way to process workers.

    ``put(frame, holders)`` stages the frame once (``fill_host_arrays``: the input columns and the ego points
    the networks read, exactly what ``StagingPool.stage`` makes) into a free slot, growing its buffer when the
    frame does not fit; each holder (worker) keeps the slot while its ring holds the sweep and says so when it
    let go of it (``release``), after which the slot is free again. ``trim`` (a frame ran out of memory): the
    free slots' buffers are let go of. One thread (the caller's).
    """

    def __init__(self, columns: tuple[str, ...] = INPUT_COLUMNS):
        self.columns = tuple(columns)
        self.buffers: list[torch.Tensor] = []
        self.generations: list[int] = []
        self.holders: list[set[str]] = []
        self._free: list[int] = []
        self._scratch = ProductScratch()

    def trim(self) -> None:
        for slot in self._free:
            self.buffers[slot] = torch.empty(0, dtype=torch.uint8)
        self._scratch.reset()

    def put(self, frame: Frame, holders) -> SlotRef:
        n, width = frame.num_points, len(self.columns)
        if self._free:
            slot = self._free.pop()
        else:
            slot = len(self.buffers)
            self.buffers.append(torch.empty(0, dtype=torch.uint8))
            self.generations.append(0)
            self.holders.append(set())
        if self.buffers[slot].numel() < n * (width + 3) * 4:
            self.buffers[slot] = shared_bytes(staging_rows(n) * (width + 3) * 4)
            self.generations[slot] += 1
        columns, ego = slot_arrays(self.buffers[slot], n, width)
        try:
            fill_host_arrays(frame, self.columns, columns.numpy(), ego.numpy(), self._scratch)
        except BaseException:
            self._free.append(slot)
            raise
        self.holders[slot] = set(holders)
        return SlotRef(slot, self.generations[slot], n)

    def release(self, holder: str, refs) -> None:
        """``holder`` let go of these ``(slot, generation)``s."""
        for slot, generation in refs:
            if generation == self.generations[slot] and holder in self.holders[slot]:
                self.holders[slot].discard(holder)
                if not self.holders[slot]:
                    self._free.append(slot)

    def __len__(self) -> int:
        return len(self.buffers)


class SharedSlot:
    """A worker's hold on one caller slot (the ``HostSweep``'s ``slot``): reported released once the sweep is
    garbage (its ring let go of it), like a ``StagingSlot`` returns to its pool."""

    def __init__(self, ref: SlotRef, released: list):
        self.uploads: list = []  # the HostSweep's upload events (the slot is released only after its step)
        weakref.finalize(self, released.append, (ref.slot, ref.generation))

    def wait_uploads(self) -> None:
        for event in self.uploads:
            event.synchronize()
        self.uploads.clear()


class SlotViews:
    """A worker's view of the caller's ``FrameSlots``: each slot's buffer as last attached to a job, page-locked
    for its device (``cudaHostRegister``) so that uploads from it are asynchronous."""

    def __init__(self, device: torch.device | str = "cpu", width: int = len(INPUT_COLUMNS)):
        self.device = torch.device(device)
        self.width = width
        self._buffers: dict[int, tuple[int, torch.Tensor, bool]] = {}
        self.released: list[tuple[int, int]] = []  # slots let go of since the last reply

    def take_released(self) -> list[tuple[int, int]]:
        out, self.released[:] = list(self.released), []
        return out

    def arrays(self, ref: SlotRef) -> tuple[torch.Tensor, torch.Tensor]:
        if ref.buffer is not None:
            old = self._buffers.get(ref.slot)
            if old is not None and old[2]:  # grown: the caller freed the slot, no sweep of this worker views it
                unregister_host(old[1])
            registered = self.device.type == "cuda" and register_host(ref.buffer)
            self._buffers[ref.slot] = (ref.generation, ref.buffer, registered)
        generation, buffer, _ = self._buffers.get(ref.slot, (None, None, False))
        if generation != ref.generation:
            raise RuntimeError(f"frame slot {ref.slot}: generation {ref.generation} expected, this worker holds "
                               f"{generation}")
        return slot_arrays(buffer, ref.rows, self.width)


@dataclass
class WireSweep:
    """An admitted frame for a worker process: staged by the caller in a shared-memory slot, with its metadata."""

    points: SlotRef
    frame_id: str
    timestamp_ns: int
    pose: SE3
    extrinsic: SE3
    origin: np.ndarray | None
    non_finite: int

    @classmethod
    def stage(cls, f: Frame, slots: FrameSlots, holders, non_finite: int) -> "WireSweep":
        return cls(slots.put(f, holders), f.frame_id, f.timestamp_ns, f.pose, f.extrinsic, sensor_origin(f),
                   non_finite)

    def to_host(self, views: SlotViews) -> HostSweep:
        """The sweep viewing the slot, held (not written by the caller) until the sweep is garbage."""
        columns, ego = views.arrays(self.points)
        return HostSweep(self.frame_id, self.timestamp_ns, self.pose, self.extrinsic, columns, ego, self.origin,
                         self.non_finite, SharedSlot(self.points, views.released))


# -- process workers: the loop ----------------------------------------------------------------------
def _address_space_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise OSError("VmSize not found in /proc/self/status")


class Channel:
    """A process worker's end of its pipe as its inbox and outbox: ``get`` / ``put`` / ``poll`` (a message
    waiting?). Messages are pickled by the sending thread (torch's reductions: shared tensors travel as handles)."""

    def __init__(self, conn):
        self.conn = conn

    def get(self):
        return self.conn.recv()

    def put(self, msg) -> None:
        self.conn.send(msg)

    def poll(self) -> bool:
        return self.conn.poll(0)


def process_main(spec: WorkerSpec, conn) -> None:
    """Entry point of a spawned worker process (``conn``: its end of the pipe to the caller)."""
    inbox = outbox = Channel(conn)
    if spec.threads:
        torch.set_num_threads(int(spec.threads))
    logging.basicConfig(level=logging.WARNING, format=f"[{spec.name} pid {os.getpid()}] %(levelname)s %(message)s")
    device = torch.device(spec.device)
    with ExitStack() as stack:
        if device.type == "cuda":
            torch.cuda.set_device(device)
            stack.enter_context(torch.cuda.stream(torch.cuda.Stream(device)))
        try:
            group = DeviceGroup(spec)
            if spec.host_memory_headroom_mb is not None:
                import resource

                limit = _address_space_bytes() + int(spec.host_memory_headroom_mb) * 2**20
                resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
        except Exception:  # noqa: BLE001 - reported to the caller
            outbox.put(StartFailed(spec.name, traceback.format_exc()))
            return
        if spec.threads:  # numba's first compilation in this process (warm-up) resets torch's thread count
            torch.set_num_threads(int(spec.threads))
        outbox.put(Ready(spec.name, group.describe(), group.warmup_s))
        serve(group, spec.name, inbox, outbox, wire=True)


class Worker:
    """One started worker (inline, thread or process) and its inbox.

    ``outbox``: the caller's queue that inline and thread workers answer into; a process worker answers through
    its pipe (``conn``, the caller's end).
    """

    def __init__(self, spec: WorkerSpec, kind: str, outbox, mp_context=None):
        self.spec, self.kind, self.outbox = spec, kind, outbox
        self.group: DeviceGroup | None = None
        self.handle = self.conn = None
        self._slot_generations: dict[int, int] = {}  # process workers: the frame slot buffers they hold
        if kind == "inline":
            self.inbox = None
            try:
                self.group = DeviceGroup(spec)
                outbox.put(Ready(spec.name, self.group.describe(), self.group.warmup_s))
            except Exception:  # noqa: BLE001 - reported like the other kinds
                outbox.put(StartFailed(spec.name, traceback.format_exc()))
        elif kind == "thread":
            self.inbox = queue.Queue()
            self.handle = threading.Thread(target=thread_main, args=(spec, self.inbox, outbox),
                                           name=f"p4d-{spec.name}", daemon=True)
            self.handle.start()
        elif kind == "process":
            self.conn, child = mp_context.Pipe()
            self.inbox = Channel(self.conn)
            self.handle = mp_context.Process(target=process_main, args=(spec, child), name=f"p4d-{spec.name}",
                                             daemon=True)
            self.handle.start()
            child.close()  # the worker's end lives in the worker: its death is the caller's end of file
        else:
            raise ValueError(f"unknown worker kind {kind!r}; use one of {WORKER_KINDS}")

    @property
    def name(self) -> str:
        return self.spec.name

    def alive(self) -> bool:
        return self.kind == "inline" or self.handle.is_alive()

    def send(self, job, slots: FrameSlots | None = None, reply: int = -1) -> float:
        """Hand over a job; a process worker's sweep (a ``WireSweep``) gets its slot's buffer attached when this
        worker does not hold that buffer yet (``slots``: the caller's), and its outputs go to reply arena id
        ``reply``. When it was handed over (perf_counter)."""
        sent_at = time.perf_counter()
        if isinstance(job, Job):
            job = dataclasses.replace(job, sent_at=sent_at, reply=reply)
        if self.kind == "inline":  # answered at once, in the caller's thread
            self.inbox = _ImmediateInbox(job)
            serve(self.group, self.name, self.inbox, self.outbox)
            return sent_at
        if self.kind == "process" and isinstance(job, Job) and isinstance(job.host, WireSweep):
            ref = job.host.points
            if self._slot_generations.get(ref.slot) != ref.generation:
                ref = dataclasses.replace(ref, buffer=slots.buffers[ref.slot])
                job = dataclasses.replace(job, host=dataclasses.replace(job.host, points=ref))
                self._slot_generations[ref.slot] = ref.generation
        self.inbox.put(job)
        return sent_at

    def stop(self, timeout: float = 30.0) -> None:
        if self.kind == "inline":
            return
        if self.handle.is_alive():
            try:
                self.inbox.put(None)
            except OSError:  # the pipe broke: the worker is going
                pass
            self.handle.join(timeout)
        if self.kind == "process" and self.handle.is_alive():
            log.warning("worker %s did not stop within %.0f s; terminating it", self.name, timeout)
            self.handle.terminate()
            self.handle.join(5.0)
        if self.conn is not None:
            self.conn.close()


class _ImmediateInbox:
    """The inline worker's inbox: one job, then the stop sentinel."""

    def __init__(self, job):
        self._items = [job, None]

    def get(self):
        return self._items.pop(0)
