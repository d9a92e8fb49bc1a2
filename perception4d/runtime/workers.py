"""Workers of the parallel runtime: model sets grouped per device, run inline, in a thread or in a process.

A ``DeviceGroup`` holds the model sets assigned to one device and one ring
buffer they share: each admitted sweep is uploaded once for the device and the
networks run one after another on it. A worker runs one group:

* inline: in the caller's thread (the sequential baseline);
* thread: in its own thread, with its own CUDA stream on its device; the host
  prepares each frame once (pinned) and every thread uploads it to its device;
* process: in a ``torch.multiprocessing`` spawn process (no shared GIL); frames
  go in and results come back through queues, large arrays through shared
  memory (torch's CPU tensor sharing) instead of pickled bytes.

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
from perception4d.core.se3 import SE3
from perception4d.runtime.models import ModelSpec, load_model_set
from perception4d.runtime.policy import Admission
from perception4d.runtime.predictor import Predictor, Result, Status, Warmup, push_sweep
from perception4d.runtime.sweeps import HostSweep, SweepRing

log = logging.getLogger("perception4d.runtime")

WORKER_KINDS = ("inline", "thread", "process")


@dataclass(frozen=True)
class PredictorOptions:
    """Settings every predictor of a parallel runtime shares."""

    amp: bool | None = None  # None: fp16 autocast on CUDA, fp32 on the CPU
    mos_fusion: bool = False
    mos_prior: float = 0.5
    warmup: Warmup | None = None  # None: the predictor's default for its device
    host_transform: bool | None = None


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
    frame: Frame | None = None  # process workers prepare the sweep themselves
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
        loaded = [load_model_set(m, self.device) for m in spec.models]
        o = spec.options
        self.ring = SweepRing(self.device, max(m.geometry.num_frames for m in loaded), o.host_transform)
        self.predictors = [Predictor(m, self.device, amp=o.amp, mos_fusion=o.mos_fusion, mos_prior=o.mos_prior,
                                     warmup=o.warmup, ring=self.ring, host_transform=o.host_transform)
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
                host = HostSweep.from_frame(frame, non_finite=admission.non_finite, pin=self.device.type == "cuda")
            push_sweep(self.ring, host, admission)
        except Exception as exc:  # noqa: BLE001 - Predictor.failed re-raises anything but out-of-memory
            fid, ts = (frame.frame_id, frame.timestamp_ns) if frame is not None else (host.frame_id,
                                                                                      host.timestamp_ns)
            return [p.failed(fid, ts, exc, t0, "uploading the sweep") for p in self.predictors]
        ingest_ms = (time.perf_counter() - t0) * 1e3 + prep_ms
        seq = self.ring.latest(1)[0].seq
        results = [p.predict(admission, t0, ingest_ms) for p in self.predictors]
        if any(r.status == Status.FAILED for r in results):  # as a lone Predictor does: the sweep is left out
            self.ring.drop_newest(seq)
        return results

    def flush(self) -> dict:
        return {p.name: p.flush() for p in self.predictors}


def serve(group: DeviceGroup, name: str, inbox, outbox, wire: bool = False) -> None:
    """Answer jobs until ``None`` arrives (the worker loop of threads and processes)."""
    while True:
        job = inbox.get()
        if job is None:
            return
        try:
            if isinstance(job, FlushJob):
                outbox.put(Flushed(name, job.seq, share_arrays(group.flush()) if wire else group.flush()))
                continue
            frame = job.frame.to_frame() if isinstance(job.frame, WireFrame) else job.frame
            results = group.run(job.admission, frame=frame, host=job.host, prep_ms=job.prep_ms)
            outbox.put(Reply(name, job.seq, share_arrays(results) if wire else results))
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


# -- process workers ----------------------------------------------------------------------------------
@dataclass
class WireFrame:
    """A frame for a worker process: the points as a CPU tensor (sent through shared memory), no labels."""

    points: torch.Tensor
    timestamp_ns: int
    pose: SE3
    extrinsic: SE3
    columns: tuple[str, ...]
    frame_id: str
    source: str
    pose_known: bool

    @classmethod
    def from_frame(cls, f: Frame) -> "WireFrame":
        return cls(torch.from_numpy(f.points), f.timestamp_ns, f.pose, f.extrinsic, f.columns, f.frame_id, f.source,
                   f.pose_known)

    def to_frame(self) -> Frame:
        return Frame(self.points.numpy(), self.timestamp_ns, pose=self.pose, extrinsic=self.extrinsic,
                     columns=self.columns, frame_id=self.frame_id, source=self.source, pose_known=self.pose_known)


@dataclass
class SharedArray:
    """A numpy array travelling as a CPU tensor (torch moves its storage to shared memory when sent)."""

    tensor: torch.Tensor


#: arrays from this size on travel through shared memory; smaller ones are pickled
SHARE_MIN_BYTES = 64 * 1024


def share_arrays(obj):
    """``obj`` with every large numpy array inside dataclasses, lists and dicts wrapped in ``SharedArray``."""
    return _map_arrays(obj, lambda a: SharedArray(torch.from_numpy(np.ascontiguousarray(a)))
                       if a.nbytes >= SHARE_MIN_BYTES and a.dtype != object else a)


def unshare_arrays(obj):
    return _map_arrays(obj, lambda a: a, lambda s: s.tensor.numpy())


def _map_arrays(obj, on_array, on_shared=None):
    if isinstance(obj, np.ndarray):
        return on_array(obj)
    if isinstance(obj, SharedArray):
        return on_shared(obj) if on_shared is not None else obj
    if isinstance(obj, list):
        return [_map_arrays(v, on_array, on_shared) for v in obj]
    if isinstance(obj, dict):
        return {k: _map_arrays(v, on_array, on_shared) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changed = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            new = _map_arrays(value, on_array, on_shared)
            if new is not value:
                changed[f.name] = new
        if not changed:
            return obj
        out = copy.copy(obj)
        for k, v in changed.items():
            object.__setattr__(out, k, v)  # also for frozen dataclasses; no re-validation of unchanged data
        return out
    return obj


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

    def send(self, job) -> None:
        if self.kind == "inline":  # answered at once, in the caller's thread
            self.inbox = _ImmediateInbox(job)
            serve(self.group, self.name, self.inbox, self.outbox)
            return
        if self.kind == "process" and isinstance(job, Job):
            job = dataclasses.replace(job, frame=WireFrame.from_frame(job.frame), host=None)
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
