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

Process workers exchange arrays through shared memory that is allocated once
and reused, not per message:

* frames in: the caller copies a frame's points once into a slot of its
  ``FrameSlots`` (shared-memory buffers, grow-only); every worker gets the
  same slot, so the points are copied once per frame whatever the number of
  workers. A job names the slot; a slot's buffer travels to a worker only the
  first time (and again after it grew). The slot is reused once every worker
  answered the frame.
* results out: each worker writes the arrays of its results into its own
  reply buffer for that slot (``ReplyWriter``, grow-only) and sends the
  results with the arrays replaced by their places in it; the caller copies
  them out on arrival (``ReplyBuffers.decode``). Compact: occupancy travels as
  its uint8 classes plus the velocities of the occupied cells only (the dense
  grid where more than ``ROWS_MAX_FRACTION`` of the cells are occupied; float16
  with ``velocity_dtype="float16"``), the dense grid is rebuilt by the caller;
  outputs the caller did not ask for (``outputs``) are not computed into the
  results at all. The results equal the inline run's (tested): exactly, but
  for free cells' velocity, which is 0 where the inline run may hold -0.0 (or
  NaN from a non-finite network output).

Every job carries its sequence number; a worker answers each job exactly once
(its results, or the traceback of an unexpected error), in the order received.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import queue
import threading
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch

from perception4d.core.frame import Frame
from perception4d.core.labels import OCC_FREE
from perception4d.core.se3 import SE3
from perception4d.runtime.models import ModelSpec, load_model_set
from perception4d.runtime.policy import Admission
from perception4d.runtime.predictor import (Predictor, Result, Status, Warmup, check_outputs, check_velocity_dtype,
                                            push_sweep)
from perception4d.runtime.sweeps import HostSweep, StagingPool, SweepRing

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
    frame: Frame | WireFrame | None = None  # process workers prepare the sweep themselves
    host: HostSweep | None = None  # inline / thread workers get it prepared once by the caller
    prep_ms: float = 0.0  # the caller's host time preparing ``host`` (part of each result's ingest time)


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
    slot: int = -1  # process workers: the reply buffer (of this frame's slot) the results' arrays are in
    buffer: torch.Tensor | None = None  # that buffer, sent when it is new to the caller (first use, grown)


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
        self.staging = StagingPool(pin=self.device.type == "cuda")  # sweeps this group prepares (process workers)
        self.predictors = [Predictor(m, self.device, amp=o.amp, mos_fusion=o.mos_fusion, mos_prior=o.mos_prior,
                                     warmup=o.warmup, ring=self.ring, host_transform=o.host_transform,
                                     outputs=o.outputs, velocity_dtype=o.velocity_dtype, staging=self.staging,
                                     engine=o.engine)
                           for m in loaded]
        self.warmup_s = sum(p.warmup_s for p in self.predictors)

    def describe(self) -> list[str]:
        return [p.describe() for p in self.predictors]

    def run(self, admission: Admission, frame: Frame | None = None, host: HostSweep | None = None,
            prep_ms: float = 0.0) -> list[Result]:
        """Upload the sweep once, then run every model set on it, in order."""
        t0 = time.perf_counter()
        try:
            if host is None:
                host = self.staging.stage(frame, non_finite=admission.non_finite)
            push_sweep(self.ring, host, admission)
        except Exception as exc:  # noqa: BLE001 - Predictor.failed re-raises anything but out-of-memory
            fid, ts = (frame.frame_id, frame.timestamp_ns) if frame is not None else (host.frame_id,
                                                                                      host.timestamp_ns)
            return [p.failed(fid, ts, exc, t0, "uploading the sweep") for p in self.predictors]
        ingest_ms = (time.perf_counter() - t0) * 1e3 + prep_ms
        seq = self.ring.latest(1)[0].seq
        # every network launched before the first waits: one synchronisation per frame on the device
        results = [p.finish(step) for p, step in zip(self.predictors, [p.launch(admission, t0, ingest_ms)
                                                                       for p in self.predictors])]
        if any(r.status == Status.FAILED for r in results):  # as a lone Predictor does: the sweep is left out
            self.ring.drop_newest(seq)
        return results

    def flush(self) -> dict:
        return {p.name: p.flush() for p in self.predictors}


def serve(group: DeviceGroup, name: str, inbox, outbox, wire: bool = False) -> None:
    """Answer jobs until ``None`` arrives (the worker loop of threads and processes).

    ``wire``: a process worker (frames arrive in shared-memory slots, results leave through reply buffers).
    """
    slots = SlotViews() if wire else None
    replies = ReplyWriter(group.spec.options.velocity_dtype) if wire else None
    while True:
        job = inbox.get()
        if job is None:
            return
        try:
            if isinstance(job, FlushJob):
                outbox.put(Flushed(name, job.seq, group.flush()))
                continue
            frame = job.frame.to_frame(slots) if isinstance(job.frame, WireFrame) else job.frame
            results = group.run(job.admission, frame=frame, host=job.host, prep_ms=job.prep_ms)
            if wire:
                slot = job.frame.points.slot
                results, buffer = replies.encode(results, slot)
                outbox.put(Reply(name, job.seq, results, slot, buffer))
            else:
                outbox.put(Reply(name, job.seq, results))
        except Exception:  # noqa: BLE001 - reported to the caller with the frame, the worker keeps serving
            fid = getattr(getattr(job, "frame", None), "frame_id", "") or getattr(getattr(job, "host", None),
                                                                                 "frame_id", "")
            outbox.put(Fatal(name, job.seq, fid, traceback.format_exc()))


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
#: headroom of a shared buffer over the frame or reply that needed it to grow
SHARED_GROWTH = 1.25


def new_shared(nbytes: int) -> torch.Tensor:
    """A 1-D uint8 CPU tensor of at least ``nbytes`` in shared memory (sent to another process, it maps the same
    pages instead of copying them)."""
    return torch.empty(max(int(nbytes * SHARED_GROWTH), 4096), dtype=torch.uint8).share_memory_()


@dataclass
class SlotRef:
    """Where a frame's points are: a slot of the caller's ``FrameSlots`` (float32, ``shape``)."""

    slot: int
    generation: int  # the slot's buffer changes (grows) with its generation
    shape: tuple[int, int]
    buffer: torch.Tensor | None = None  # the slot's buffer, attached when the receiving worker has not got it yet


class FrameSlots:
    """The caller's shared-memory slots for frames on their way to process workers (see the module docstring).

    ``put`` copies a frame's points into a free slot (growing its buffer when the frame does not fit);
    ``release`` frees the slot once every worker answered the frame; ``trim`` (a frame ran out of memory): the
    free slots' buffers are let go of (the workers' mappings too, when the slots are next used). One thread
    (the caller's).
    """

    def __init__(self):
        self.buffers: list[torch.Tensor] = []
        self.generations: list[int] = []
        self._free: list[int] = []

    def trim(self) -> None:
        for slot in self._free:
            self.buffers[slot] = torch.empty(0, dtype=torch.uint8)

    def put(self, points: np.ndarray) -> SlotRef:
        points = np.asarray(points, dtype=np.float32)
        if self._free:
            slot = self._free.pop()
        else:
            slot = len(self.buffers)
            self.buffers.append(torch.empty(0, dtype=torch.uint8))
            self.generations.append(0)
        if self.buffers[slot].numel() < points.nbytes:
            self.buffers[slot] = new_shared(points.nbytes)
            self.generations[slot] += 1
        np.copyto(self.buffers[slot].numpy()[:points.nbytes].view(np.float32).reshape(points.shape), points)
        return SlotRef(slot, self.generations[slot], tuple(points.shape))

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def __len__(self) -> int:
        return len(self.buffers)


class SlotViews:
    """A worker's view of the caller's ``FrameSlots``: each slot's buffer as last attached to a job."""

    def __init__(self):
        self._buffers: dict[int, tuple[int, torch.Tensor]] = {}

    def points(self, ref: SlotRef) -> np.ndarray:
        if ref.buffer is not None:
            self._buffers[ref.slot] = (ref.generation, ref.buffer)
        generation, buffer = self._buffers.get(ref.slot, (None, None))
        if generation != ref.generation:
            raise RuntimeError(f"frame slot {ref.slot}: generation {ref.generation} expected, this worker holds "
                               f"{generation}")
        nbytes = int(np.prod(ref.shape)) * 4
        return buffer.numpy()[:nbytes].view(np.float32).reshape(ref.shape)


@dataclass
class WireFrame:
    """A frame for a worker process: its points in a shared-memory slot, no labels."""

    points: SlotRef
    timestamp_ns: int
    pose: SE3
    extrinsic: SE3
    columns: tuple[str, ...]
    frame_id: str
    source: str
    pose_known: bool

    @classmethod
    def from_frame(cls, f: Frame, slots: FrameSlots) -> "WireFrame":
        return cls(slots.put(f.points), f.timestamp_ns, f.pose, f.extrinsic, f.columns, f.frame_id, f.source,
                   f.pose_known)

    def to_frame(self, slots: SlotViews) -> Frame:
        """The frame viewing the slot (valid until the worker answers the job)."""
        return Frame(slots.points(self.points), self.timestamp_ns, pose=self.pose, extrinsic=self.extrinsic,
                     columns=self.columns, frame_id=self.frame_id, source=self.source, pose_known=self.pose_known)


# -- process workers: results out ---------------------------------------------------------------------
#: arrays from this size on travel in the reply buffer; smaller ones are pickled with the message
INLINE_MAX_BYTES = 16 * 1024
ALIGN = 64


@dataclass
class WireArray:
    """An array's place in a reply buffer."""

    offset: int
    dtype: str
    shape: tuple[int, ...]

    def view(self, buffer: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self.dtype)
        n = int(np.prod(self.shape)) * dtype.itemsize
        return buffer[self.offset:self.offset + n].view(dtype).reshape(self.shape)


@dataclass
class OccupiedVelocity:
    """The velocities of the occupied cells of an occupancy grid (classes != free, in C order), (K, 3)."""

    values: np.ndarray | WireArray


#: occupancy velocities travel as the occupied cells' rows up to this fraction of occupied cells, as the dense
#: grid beyond (gathering and scattering rows costs more than copying the grid there)
ROWS_MAX_FRACTION = 0.25


def grid_rows(grid: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``grid[mask]`` of an (X, Y, Z, 3) grid: (K, 3), each row moved as one item when the grid is contiguous."""
    if not grid.flags.c_contiguous:
        return grid[mask]
    row = np.dtype((np.void, 3 * grid.dtype.itemsize))
    return grid.reshape(-1, 3).view(row).ravel()[mask.ravel()].view(grid.dtype).reshape(-1, 3)


def scatter_rows(mask: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The dense float32 (X, Y, Z, 3) grid holding ``rows`` at ``mask`` (in C order) and 0 elsewhere."""
    dense = np.zeros((*mask.shape, 3), np.float32)
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    row = np.dtype((np.void, 12))
    dense.reshape(-1, 3).view(row).ravel()[mask.ravel()] = rows.view(row).ravel()
    return dense


def map_arrays(obj, fn):
    """``obj`` with ``fn`` applied to every numpy array / ``WireArray`` inside dataclasses, lists and dicts
    (containers with nothing changed are returned as they are; dataclasses are copied, not re-validated)."""
    if isinstance(obj, (np.ndarray, WireArray)):
        return fn(obj)
    if isinstance(obj, list):
        return [map_arrays(v, fn) for v in obj]
    if isinstance(obj, dict):
        return {k: map_arrays(v, fn) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changed = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            new = map_arrays(value, fn)
            if new is not value:
                changed[f.name] = new
        if not changed:
            return obj
        out = copy.copy(obj)
        for k, v in changed.items():
            object.__setattr__(out, k, v)  # also for frozen dataclasses
        return out
    return obj


def _compact_occupancy(result: Result, velocity_dtype: str) -> Result:
    """The occupied cells' velocities only (up to ``ROWS_MAX_FRACTION`` of the cells), in float16 when the
    predictor rounded them to float16 already (exact)."""
    occ = result.occupancy
    if occ is None or occ.prediction.velocity is None:
        return result
    pred = occ.prediction
    occupied = pred.semantics != OCC_FREE
    if np.count_nonzero(occupied) <= ROWS_MAX_FRACTION * occupied.size:
        velocity = OccupiedVelocity(grid_rows(pred.velocity, occupied))
        if velocity_dtype == "float16":
            velocity.values = velocity.values.astype(np.float16)
    elif velocity_dtype == "float16":
        velocity = pred.velocity.astype(np.float16)
    else:
        return result
    pred = dataclasses.replace(pred, velocity=velocity)
    return dataclasses.replace(result, occupancy=dataclasses.replace(occ, prediction=pred))


class ReplyWriter:
    """A worker's reply buffers, one per frame slot (shared memory, grow-only), and the results' encoding."""

    def __init__(self, velocity_dtype: str = "float32"):
        self.velocity_dtype = velocity_dtype
        self.buffers: dict[int, torch.Tensor] = {}

    def encode(self, results: list[Result], slot: int) -> tuple[list[Result], torch.Tensor | None]:
        """The results with their large arrays written into slot ``slot``'s buffer and replaced by
        ``WireArray``s; the buffer when the caller does not have it yet (new or grown), else None."""
        results = [_compact_occupancy(r, self.velocity_dtype) for r in results]
        arrays: list[np.ndarray] = []

        def collect(a):
            if a.nbytes >= INLINE_MAX_BYTES and a.dtype != object:
                arrays.append(a)
            return a

        map_arrays(results, collect)
        places, end = {}, 0
        for a in arrays:
            if id(a) not in places:
                places[id(a)] = end
                end += -(-a.nbytes // ALIGN) * ALIGN
        if not places:
            return results, None
        buffer, fresh = self.buffers.get(slot), None
        if buffer is None or buffer.numel() < end:
            buffer = fresh = self.buffers[slot] = new_shared(end)
        raw = buffer.numpy()

        def place(a):
            if id(a) not in places:
                return a
            w = WireArray(places[id(a)], a.dtype.str, tuple(a.shape))
            np.copyto(w.view(raw), a)
            return w

        return map_arrays(results, place), fresh


class ReplyBuffers:
    """The caller's mappings of the workers' reply buffers, by (worker, slot)."""

    def __init__(self):
        self.buffers: dict[tuple[str, int], torch.Tensor] = {}

    def decode(self, reply: Reply) -> list[Result]:
        """The reply's results with arrays of their own (copied out of the reply buffer, which is reused)."""
        if reply.buffer is not None:
            self.buffers[(reply.worker, reply.slot)] = reply.buffer
        buffer = self.buffers.get((reply.worker, reply.slot))
        raw = None if buffer is None else buffer.numpy()
        return [_dense_occupancy(r, raw) for r in map_arrays(reply.results, lambda a: _own(a, raw))]


def _own(a, raw: np.ndarray | None):
    if isinstance(a, WireArray):
        return np.array(a.view(raw))
    return a


def _dense_occupancy(result: Result, raw: np.ndarray | None) -> Result:
    """The dense float32 velocity grid back (``_compact_occupancy`` reversed, after the arrays were copied out)."""
    occ = result.occupancy
    if occ is None or occ.prediction.velocity is None:
        return result
    pred = occ.prediction
    if isinstance(pred.velocity, OccupiedVelocity):
        velocity = scatter_rows(pred.semantics != OCC_FREE, pred.velocity.values)
    elif pred.velocity.dtype != np.float32:
        velocity = pred.velocity.astype(np.float32)
    else:
        return result
    pred = dataclasses.replace(pred, velocity=velocity)
    return dataclasses.replace(result, occupancy=dataclasses.replace(occ, prediction=pred))


def _address_space_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise OSError("VmSize not found in /proc/self/status")


def process_main(spec: WorkerSpec, inbox, outbox) -> None:
    """Entry point of a spawned worker process."""
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
    """One started worker (inline, thread or process) and its inbox."""

    def __init__(self, spec: WorkerSpec, kind: str, outbox, mp_context=None):
        self.spec, self.kind, self.outbox = spec, kind, outbox
        self.group: DeviceGroup | None = None
        self.handle = None
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
            self.inbox = mp_context.Queue()
            self.handle = mp_context.Process(target=process_main, args=(spec, self.inbox, outbox),
                                             name=f"p4d-{spec.name}", daemon=True)
            self.handle.start()
        else:
            raise ValueError(f"unknown worker kind {kind!r}; use one of {WORKER_KINDS}")

    @property
    def name(self) -> str:
        return self.spec.name

    def alive(self) -> bool:
        return self.kind == "inline" or self.handle.is_alive()

    def send(self, job, slots: FrameSlots | None = None) -> None:
        """Hand over a job; a process worker's frame (a ``WireFrame``) gets its slot's buffer attached when this
        worker does not hold that buffer yet (``slots``: the caller's)."""
        if self.kind == "inline":  # answered at once, in the caller's thread
            self.inbox = _ImmediateInbox(job)
            serve(self.group, self.name, self.inbox, self.outbox)
            return
        if self.kind == "process" and isinstance(job, Job) and isinstance(job.frame, WireFrame):
            ref = job.frame.points
            if self._slot_generations.get(ref.slot) != ref.generation:
                ref = dataclasses.replace(ref, buffer=slots.buffers[ref.slot])
                job = dataclasses.replace(job, frame=dataclasses.replace(job.frame, points=ref))
                self._slot_generations[ref.slot] = ref.generation
        self.inbox.put(job)

    def stop(self, timeout: float = 30.0) -> None:
        if self.kind == "inline":
            return
        if self.handle.is_alive():
            self.inbox.put(None)
            self.handle.join(timeout)
        if self.kind == "process" and self.handle.is_alive():
            log.warning("worker %s did not stop within %.0f s; terminating it", self.name, timeout)
            self.handle.terminate()
            self.handle.join(5.0)


class _ImmediateInbox:
    """The inline worker's inbox: one job, then the stop sentinel."""

    def __init__(self, job):
        self._items = [job, None]

    def get(self):
        return self._items.pop(0)
