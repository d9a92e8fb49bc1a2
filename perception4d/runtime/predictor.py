"""The streaming predictor: one model set, one device, one sweep at a time.

``Predictor.step(frame)`` admits the frame (``perception4d.runtime.policy``),
uploads it once into the device ring buffer (``perception4d.runtime.sweeps``),
re-aligns the window to it on the device and runs the network on exactly the
input the offline tools build (``build_window_sample`` + ``WindowBatcher``).

Which frame each output belongs to:

* flow: the sweep *before* the step's frame (flow needs the successor sweep,
  the step's frame is that successor); none on the first sweep of a window;
* MOS (online): the step's frame; the optional fused MOS (``mos_fusion``) is
  final for a scan only once it has left the horizon, i.e. T - 1 steps later,
  so each result carries the scans that became final at that step;
* occupancy: the step's frame.

``outputs`` selects what a result carries (``OUTPUTS``; default: everything
the network predicts, occupancy velocities included); what is not asked for
is not copied to the host. ``velocity_dtype="float16"`` rounds the occupancy
velocities to float16 on the device (half the copy; within a relative 2^-11
of the float32 values, ``VELOCITY_FP16_RTOL``), still handed out as float32.

Outputs reach the host in one go per step: the heads' reductions (the same
arithmetic as their ``predict``: flow's dynamic flags, MOS probabilities,
occupancy classes and masked velocities) run on the device, each array is
copied once, ``non_blocking``, into a pinned buffer of its own that is reused
step after step (``HostCopies``, grow-only), and the step synchronises once
before copying them out into the result's own arrays. On the CPU nothing is
copied. Heads of other kinds fall back to their own ``predict``.

fp16 autocast is on by default on CUDA (off on the CPU); the first steps
after construction run on synthetic sweeps (``Warmup``) so spconv's kernel
selection, numba's compilation and the allocators (staging and output
buffers included) are done before the first real frame.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np
import torch

from perception4d.core.frame import Frame
from perception4d.core.se3 import SE3
from perception4d.errors import ConfigError
from perception4d.inference import LoadedModel, submission_flow
from perception4d.models.heads.flow import FlowPrediction
from perception4d.models.heads.occupancy import OccupancyPrediction
from perception4d.mos.fusion import RecedingHorizonFusion
from perception4d.runtime.graphed import StepGraph, device_outputs, unsupported
from perception4d.runtime.models import LoadedModelSet, ModelSpec, load_model_set
from perception4d.runtime.policy import Admission, FramePolicy, StreamGate
from perception4d.runtime.sweeps import AssembledWindow, HostSweep, StagingPool, SweepRing
from perception4d.runtime.timing import EventTimer, StageTimes

log = logging.getLogger("perception4d.runtime")

#: what a result can carry; ``outputs=`` picks among them ("occupancy_velocity" needs "occupancy")
OUTPUTS = ("flow", "mos", "occupancy", "occupancy_velocity")
VELOCITY_DTYPES = ("float32", "float16")
#: velocity_dtype="float16": |v16 - v32| <= VELOCITY_FP16_RTOL * |v32| (+ VELOCITY_FP16_ATOL below float16's
#: normal range, 6.1e-5 m/s); beyond 65504 m/s float16 overflows to infinity
VELOCITY_FP16_RTOL = 2.0 ** -11
VELOCITY_FP16_ATOL = 2.0 ** -25


def check_outputs(outputs) -> tuple[str, ...]:
    """``outputs`` as a tuple in ``OUTPUTS`` order; None: all of them. Unknown names raise ``ConfigError``."""
    if outputs is None:
        return OUTPUTS
    names = (outputs,) if isinstance(outputs, str) else tuple(outputs)
    unknown = [o for o in names if o not in OUTPUTS]
    if unknown:
        raise ConfigError(f"outputs: unknown {unknown}; choose from {OUTPUTS}")
    if "occupancy_velocity" in names and "occupancy" not in names:
        raise ConfigError("outputs: 'occupancy_velocity' needs 'occupancy' as well")
    return tuple(o for o in OUTPUTS if o in names)


def check_velocity_dtype(velocity_dtype: str) -> str:
    if velocity_dtype not in VELOCITY_DTYPES:
        raise ConfigError(f"velocity_dtype must be one of {VELOCITY_DTYPES}, got {velocity_dtype!r}")
    return velocity_dtype


class Status(str, Enum):
    OK = "ok"  # the network ran; each task's output is present where the window allows one
    DROPPED = "dropped"  # the policy dropped the frame: no output at all
    FAILED = "failed"  # the step ran out of memory; ``message`` names the frame; the next step runs normally


@dataclass
class FlowOutput:
    """Scene flow of one sweep towards the next (AV2 convention, ego motion included, submission-ready)."""

    frame_id: str  # the source sweep: the one before the step's frame
    timestamp_ns: int
    next_frame_id: str  # the reference sweep: the step's frame
    dt: float
    prediction: FlowPrediction  # finite rows: points without a finite position get zero flow, not dynamic
    non_finite: int


@dataclass
class MosOutput:
    """Online moving probability of the step's frame (the newest window's prediction)."""

    frame_id: str
    timestamp_ns: int
    prob: np.ndarray  # (N,) float32; 0.5 for points outside the grid (no evidence)
    in_grid: np.ndarray  # (N,) bool
    window_frames: int


@dataclass
class FusedMosOutput:
    """Receding-horizon fused moving probability of an older scan, final now that it left the horizon."""

    frame_id: str
    timestamp_ns: int
    prob: np.ndarray  # (N,) float32
    online: np.ndarray  # (N,) float32: that scan's own online output
    num_predictions: int


@dataclass
class OccupancyOutput:
    frame_id: str  # the step's frame (its ego frame is the grid's frame)
    timestamp_ns: int
    prediction: OccupancyPrediction  # velocity None when "occupancy_velocity" is not among the outputs


@dataclass
class StepHealth:
    """What the step saw: the frame's points and the window the network ran on."""

    points: int
    non_finite: int  # rows of the frame with a non-finite value (kept, outside the grid)
    window_frames: int = 0
    window_points: int = 0
    voxels: int = 0
    dropped_out_of_range: int = 0  # window points outside the grid
    dropped_non_finite: int = 0  # window points the voxelizer dropped as non-finite
    reset: str = ""  # why the window restarted at this frame ("" if it did not)


@dataclass
class Result:
    """One model set's answer to one frame."""

    model: str
    frame_id: str
    timestamp_ns: int
    status: Status
    flow: FlowOutput | None = None
    mos: MosOutput | None = None
    mos_fused: list[FusedMosOutput] = field(default_factory=list)
    occupancy: OccupancyOutput | None = None
    timings: StageTimes = field(default_factory=StageTimes)
    health: StepHealth | None = None
    message: str = ""  # why the frame was dropped, why an output is missing, or the error


@dataclass(frozen=True)
class Warmup:
    """Synthetic steps run at construction: ``steps`` forwards on a full window of ``points``-point sweeps."""

    steps: int = 3
    points: int = 50_000


OOM_MESSAGES = ("out of memory", "can't allocate memory", "std::bad_alloc", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA / CPU allocation failures from torch, numpy, numba or spconv's C++ (its messages vary)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OOM_MESSAGES)


def synthetic_frame(k: int, points: int, geometry, seed: int = 0) -> Frame:
    """Sweep ``k`` of a synthetic stream filling the grid's inner 90 %; the ego moves 1 m along x per sweep."""
    rng = np.random.default_rng([seed, k])
    lo, hi = np.asarray(geometry.point_range[:3]), np.asarray(geometry.point_range[3:])
    mid, half = (lo + hi) / 2, (hi - lo) / 2 * 0.9
    xyz = mid + rng.uniform(-1, 1, (points, 3)) * half
    pts = np.c_[xyz, rng.uniform(0, 1, points)].astype(np.float32)
    return Frame(pts, k * 100_000_000, pose=SE3.from_yaw(0.0, [float(k), 0.0, 0.0]), frame_id=f"warmup/{k}")


class HostCopies:
    """The device-to-host copies of one step's outputs (see the module docstring).

    ``put(name, tensor)`` enqueues one ``non_blocking`` copy into the pinned buffer kept under ``name`` (grown,
    never shrunk, when a step needs more); ``wait()`` is the step's one synchronisation; ``take(view)`` copies
    a buffer out into an array of the result's own. On the CPU ``put`` returns the tensor itself and ``take``
    its numpy view: nothing is copied. One step at a time (the buffers are overwritten by the next one).

    ``arena``: a ``HostArena`` bound by a process worker for one frame (``perception4d.runtime.arena``): ``put``
    copies into it while it has room (on the CPU too) and ``take`` hands out its views uncopied (unless
    ``keep``: the predictor keeps the array past the step); the arena's owner decides when it is reused.
    """

    GROWTH = 1.25

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.buffers: dict[str, torch.Tensor] = {}
        self.arena = None

    def put(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        if self.arena is not None:
            view = self.arena.alloc(tensor.dtype, tensor.shape)
            if view is not None:
                view.copy_(tensor, non_blocking=self.cuda)
                return view
        if not self.cuda:
            return tensor
        n = tensor.numel()
        buf = self.buffers.get(name)
        if buf is None or buf.dtype != tensor.dtype or buf.numel() < n:
            buf = torch.empty(max(int(n * self.GROWTH), 1), dtype=tensor.dtype, pin_memory=True)
            self.buffers[name] = buf
        view = buf[:n].view(tensor.shape)
        view.copy_(tensor, non_blocking=True)
        return view

    def mark(self):
        """An event after the copies enqueued so far (None on the CPU: they are done)."""
        if not self.cuda:
            return None
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return event

    def wait(self, event=None) -> None:
        """Until the copies before ``event`` (None: everything enqueued on the stream) are on the host."""
        if event is not None:
            event.synchronize()
        elif self.cuda:
            torch.cuda.current_stream(self.device).synchronize()

    def trim(self) -> None:
        """Let go of the buffers (after running out of memory); the next step allocates what it needs."""
        self.buffers.clear()

    def take(self, view: torch.Tensor, dtype=None, keep: bool = False) -> np.ndarray:
        a = view.numpy()
        if self.arena is not None and not keep and self.arena.offset_of(a) is not None:
            return a if dtype is None or a.dtype == dtype else a.astype(dtype)
        if self.cuda:  # one thread's copy: torch's threaded one stalls when worker processes share the cores
            return np.array(a, dtype=dtype)
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)


@dataclass
class StagedOutputs:
    """One step's outputs on their way to the host (``HostCopies`` views), or host objects already."""

    flow: tuple | None = None  # (flow, is_dynamic, ego_flow, in_grid) views
    mos: tuple | None = None  # (prob, in_grid) views: the whole window (fusion) or the newest sweep
    mos_window: bool = False
    occupancy: tuple | None = None  # (semantics view, velocity view or None, the grid's Geometry)
    host: dict = field(default_factory=dict)  # task -> the head's own predict() output (heads of other kinds)
    status: torch.Tensor | None = None  # the step graph's status (``StepGraph.read_status``), a host view


@dataclass
class StepWindow:
    """What a step ran on: the window's sweeps and layout, and what the voxelizer made of it."""

    sweeps: list
    source_index: int
    offsets: np.ndarray  # (n + 1,) row offsets of the sweeps in the window
    dt: float  # seconds from the source sweep to the reference
    points: int
    voxels: int = 0
    out_of_range: int = 0
    non_finite: int = 0
    graphed: object = None  # the StepGraph's launched window (its counts arrive with the status)

    @classmethod
    def of(cls, asm: AssembledWindow) -> "StepWindow":
        sp = asm.batch.sparse
        return cls(asm.sweeps, asm.source_index, np.asarray(asm.batch.samples[0].aligned.offsets),
                   float(asm.batch.samples[0].meta.dt), sp.num_points, sp.num_voxels, sp.dropped.out_of_range,
                   sp.dropped.non_finite)


@dataclass
class LaunchedStep:
    """A step between ``Predictor.launch`` and ``Predictor.finish``."""

    result: Result
    sweeps: list
    t0: float
    ingest_ms: float
    window: StepWindow | None = None
    staged: StagedOutputs | None = None
    timer: EventTimer | None = None  # this step's stage timings
    done: object = None  # a CUDA event after the step's copies to the host (None: on the CPU, done at launch)
    overlappable: bool = False  # a later step may be launched before this one finishes (see ``launch``)


class Predictor:
    """Streaming inference of one model set on one device (see the module docstring).

    ``model``: a ``ModelSpec`` (built here), a ``LoadedModelSet`` or an offline ``LoadedModel``.
    ``ring``: a ring buffer shared with other predictors of the same device (each sweep is then uploaded
    once for all of them; the owner pushes); None: the predictor owns one. ``staging``: the host staging
    buffers of its sweeps (``StagingPool``, pinned for CUDA), shared with the ring's owner in the same
    thread; None: its own. ``outputs`` / ``velocity_dtype``: see the module docstring.
    """

    def __init__(self, model: ModelSpec | LoadedModelSet | LoadedModel, device: torch.device | str, *,
                 amp: bool | None = None, mos_fusion: bool = False, mos_prior: float = 0.5,
                 policy: FramePolicy | None = None, warmup: Warmup | None = None, ring: SweepRing | None = None,
                 host_transform: bool | None = None, stream_id: str = "stream", fuse: bool | None = None,
                 outputs=None, velocity_dtype: str = "float32", staging: StagingPool | None = None,
                 engine: str = "auto", graph: bool | None = None):
        self.device = torch.device(device)
        self.outputs = check_outputs(outputs)
        self.velocity_dtype = check_velocity_dtype(velocity_dtype)
        if self.device.type == "cuda" and self.device.index is None:  # "cuda" -> the current device, by index
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.loaded = self._load(model)
        # inference fusion (BatchNorm folded; on CUDA by default the sparse backbone on the gather-GEMM engine,
        # ``engine``: auto | spconv | gather): on by default on CUDA, where the network is launch-bound;
        # identical arithmetic up to rounding (perception4d.models.fuse, perception4d.models.engine)
        from perception4d.models.fuse import ENGINES, fuse_for_inference

        if engine not in ENGINES:
            raise ConfigError(f"engine {engine!r}: use one of {ENGINES}")
        self.engine = engine
        self.fused = self.device.type == "cuda" if fuse is None else bool(fuse)
        if self.fused:
            self.loaded = replace(self.loaded, model=fuse_for_inference(self.loaded.model, engine=engine))
            # the engine's CUDA-graph capacity check waits until the step's one synchronisation (``finish``)
            backbone = self.loaded.model.backbone
            if hasattr(backbone, "settle"):
                backbone.defer_checks = True
        self.name = self.loaded.name
        self.geometry = self.loaded.geometry
        self.tasks = self.loaded.tasks
        self.amp = self.device.type == "cuda" if amp is None else bool(amp)
        if self.amp and self.device.type != "cuda":
            raise ConfigError(f"{self.name}: fp16 autocast (amp) runs on CUDA only, the device is {self.device}")
        self.gate = StreamGate(policy)
        if ring is not None and ring.capacity < self.geometry.num_frames:
            raise ConfigError(f"{self.name}: the shared ring holds {ring.capacity} sweeps, the model needs "
                              f"{self.geometry.num_frames}")
        self._owns_ring = ring is None
        self.ring = ring if ring is not None else SweepRing(self.device, self.geometry.num_frames, host_transform)
        self.timer = EventTimer(self.device)  # the network's timer during this predictor's steps only
        self.staging = staging if staging is not None else StagingPool(pin=self.device.type == "cuda")
        self.copies = HostCopies(self.device)
        self.fusion = RecedingHorizonFusion(self.geometry.num_frames, mos_prior) if (
            mos_fusion and "mos" in self.tasks and "mos" in self.outputs) else None
        self.stream_id = stream_id
        self.graph = self._step_graph(graph)
        self._scans: dict[int, tuple[str, int]] = {}  # ring seq -> (frame id, timestamp) of scans in the fusion
        self.warmup_s = self._warm_up(warmup)

    def _step_graph(self, graph: bool | None) -> StepGraph | None:
        """The padded one-graph step (``perception4d.runtime.graphed``): by default on CUDA for a network fused
        on the gather-GEMM engine with CUDA graphs; ``graph=True`` elsewhere runs the padded step eagerly."""
        model = self.loaded.model
        reason = unsupported(model) if self.fused else "the network is not fused for inference (fuse=False)"
        if graph is None:
            graph = self.device.type == "cuda" and reason is None and model.backbone.cuda_graphs
        if not graph:
            return None
        if reason is not None:
            raise ConfigError(f"{self.name}: graph=True needs {reason.split(':')[0]} to change: {reason}")
        return StepGraph(model, self.geometry, self.device, self.amp, self.outputs, self.velocity_dtype,
                         capture=model.backbone.cuda_graphs, mos_window=self.fusion is not None)

    def _load(self, model) -> LoadedModelSet:
        if isinstance(model, ModelSpec):
            return load_model_set(model, self.device)
        if isinstance(model, LoadedModel):
            model = LoadedModelSet(model.config_path.stem, model.model, model.device, model.config_path,
                                   model.checkpoint_path)
        if not isinstance(model, LoadedModelSet):
            raise TypeError(f"Predictor needs a ModelSpec, LoadedModelSet or LoadedModel, got {type(model).__name__}")
        if model.device != self.device:
            model.model.to(self.device)
            model = replace(model, device=self.device)
        model.model.eval()
        return model

    def describe(self) -> str:
        return (f"{self.loaded.describe()}, {'fp16 autocast' if self.amp else 'fp32'}"
                + (", fused for inference" if self.fused else "")
                + (", sparse backbone on the gather-GEMM engine" if self.fused and
                   type(self.loaded.model.backbone).__name__ == "GatherUNet" else "")
                + (", one CUDA graph a step" if self.graph is not None and self.graph.capture else
                   ", padded step" if self.graph is not None else "")
                + (", fused MOS" if self.fusion is not None else "")
                + ("" if self.outputs == OUTPUTS else f", outputs {'+'.join(self.outputs)}")
                + (", float16 velocities" if self.velocity_dtype == "float16" else ""))

    # -- streaming ------------------------------------------------------------------------------------
    def step(self, frame: Frame) -> Result:
        """Admit ``frame``, upload it and predict; always returns a Result (see ``Status``)."""
        t0 = time.perf_counter()
        admission = self.gate.admit(frame)
        if not admission.accepted:
            return self.dropped(frame, admission, t0)
        try:
            ingest_ms = self.ingest(frame, admission)
        except Exception as exc:  # noqa: BLE001 - only allocation failures are turned into a result
            return self.failed(frame.frame_id, frame.timestamp_ns, exc, t0, f"{frame.num_points} points")
        return self.predict(admission, t0, ingest_ms)

    def dropped(self, frame: Frame, admission: Admission, t0: float) -> Result:
        return Result(self.name, frame.frame_id, frame.timestamp_ns, Status.DROPPED, message=admission.reason,
                      timings=StageTimes(total=(time.perf_counter() - t0) * 1e3),
                      health=StepHealth(points=frame.num_points, non_finite=admission.non_finite))

    def ingest(self, frame: Frame, admission: Admission) -> float:
        """Host preparation and upload of an admitted frame into the ring; milliseconds (host wall time)."""
        t0 = time.perf_counter()
        push_sweep(self.ring, self.staging.stage(frame, non_finite=admission.non_finite), admission)
        return (time.perf_counter() - t0) * 1e3

    def predict(self, admission: Admission, t0: float, ingest_ms: float = 0.0) -> Result:
        """Run the network on the window ending at the ring's newest sweep (pushed by ``ingest``)."""
        return self.finish(self.launch(admission, t0, ingest_ms))

    def launch(self, admission: Admission, t0: float, ingest_ms: float = 0.0) -> Result | LaunchedStep:
        """``predict``'s first half: the network and its outputs' copies to the host enqueued, not waited for
        (model sets sharing a device launch one after another and then wait once). ``finish`` completes it."""
        sweeps = self.ring.latest(self.geometry.num_frames)
        newest = sweeps[-1]
        n = len(sweeps)
        health = StepHealth(points=newest.num_points, non_finite=admission.non_finite, window_frames=n,
                            reset=admission.reason if admission.reset else "")
        result = Result(self.name, newest.frame_id, newest.timestamp_ns, Status.OK, health=health)
        if self.tasks == ("flow",) and n < 2:
            result.message = f"{newest.frame_id}: first sweep of a window; its flow comes with the next sweep"
            result.timings = StageTimes(ingest=ingest_ms, total=(time.perf_counter() - t0) * 1e3)
            return result
        step = LaunchedStep(result, sweeps, t0, ingest_ms, timer=EventTimer(self.device))
        self.timer = step.timer
        try:
            step.window, step.staged = self._forward(self.ring)
            step.done = self.copies.mark()
            # a later step may be launched first only if nothing this one's finish reads is shared: the step
            # graph's status travels with the step's copies; the engine's deferred check (settle) does not
            step.overlappable = (step.window.graphed is not None
                                 or getattr(self.loaded.model.backbone, "settle", None) is None)
        except Exception as exc:  # noqa: BLE001 - only allocation failures are turned into a result
            return self._step_failed(step, exc)
        return step

    def finish(self, step: Result | LaunchedStep) -> Result:
        """``predict``'s second half: the step's one synchronisation, then the result from the host copies.

        Steps finish in the order they were launched; a later step may be launched before an earlier one
        finishes when their outputs go to different host buffers (a process worker's reply arenas)."""
        if isinstance(step, Result):
            return step
        result = step.result
        try:
            self.copies.wait(step.done)  # every output of this step is on the host after it
            if not self._settle(step.window, step.staged):  # a graph outgrew its capacities: once more, grown
                step.timer.reset()
                self.timer = step.timer
                step.window, step.staged = self._forward(self.ring, step.sweeps)
                self.copies.wait()
                if not self._settle(step.window, step.staged):
                    raise RuntimeError(f"{self.name}: the sparse engine overflowed twice on one window")
            t_out = time.perf_counter()
            self._outputs(result, step.window, step.staged)
            step.timer.add("outputs", (time.perf_counter() - t_out) * 1e3)
        except Exception as exc:  # noqa: BLE001 - only allocation failures are turned into a result
            return self._step_failed(step, exc)
        result.timings = step.timer.stage_times((time.perf_counter() - step.t0) * 1e3)
        result.timings.ingest = step.ingest_ms
        return result

    def _step_failed(self, step: LaunchedStep, exc: Exception) -> Result:
        newest = step.sweeps[-1]
        failed = self.failed(newest.frame_id, newest.timestamp_ns, exc, step.t0,
                             f"{len(step.sweeps)} sweeps, {sum(s.num_points for s in step.sweeps)} points")
        failed.health, failed.timings.ingest = step.result.health, step.ingest_ms
        if self._owns_ring:  # a shared ring is trimmed by its owner once every model set has run
            self.ring.drop(newest.seq)
        return failed

    def failed(self, frame_id: str, timestamp_ns: int, exc: Exception, t0: float, what: str) -> Result:
        """The result of a step that ran out of memory (any other exception propagates: it is a bug)."""
        if not is_out_of_memory(exc):
            raise exc
        self.gate.counters.failed += 1
        self.timer.reset()
        self.staging.trim()  # the host buffers a huge sweep grew are let go of, as the device's cached blocks
        self.copies.trim()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        message = (f"{self.name}: out of memory on {self.device} at frame {frame_id} ({what}): "
                   f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}; the sweep is left out of "
                   f"the following windows")
        log.error(message)
        return Result(self.name, frame_id, timestamp_ns, Status.FAILED, message=message,
                      timings=StageTimes(total=(time.perf_counter() - t0) * 1e3))

    def flush(self) -> list[FusedMosOutput]:
        """End of the stream: the fused MOS of the scans still inside the horizon."""
        if self.fusion is None:
            return []
        return [self._fused(f) for f in self.fusion.flush()]

    # -- internals --------------------------------------------------------------------------------------
    @torch.no_grad()
    def _forward(self, ring: SweepRing, sweeps: list | None = None) -> tuple[AssembledWindow, StagedOutputs]:
        """The network on the window of ``sweeps`` (None: the ring's newest); its outputs' copies to the host
        enqueued (not waited for)."""
        if self.device.type == "cuda":  # spconv launches on the current device: make it this predictor's
            with torch.cuda.device(self.device):
                return self._forward_on_device(ring, sweeps)
        return self._forward_on_device(ring, sweeps)

    def _forward_on_device(self, ring: SweepRing, sweeps: list | None) -> tuple[StepWindow, StagedOutputs]:
        flow_layout = "flow" in self.tasks
        if self.graph is not None:  # the padded step, one CUDA graph (perception4d.runtime.graphed)
            layout = ring.window(self.geometry, flow_layout, sequence_id=self.stream_id, sweeps=sweeps)
            try:
                launched = self.graph.launch(layout, self.timer)
            except Exception as exc:  # noqa: BLE001 - out of memory is the step's; anything else: run eagerly
                if is_out_of_memory(exc):
                    raise
                log.warning("%s: the one-graph step failed on %s (%s: %s); running eagerly from now on", self.name,
                            self.device, type(exc).__name__, str(exc).splitlines()[0][:300] if str(exc) else "")
                self.graph = None
                self.timer.reset()
                return self._forward_on_device(ring, sweeps)
            window = StepWindow(layout.sweeps, layout.source_index, layout.offsets, float(layout.meta.dt),
                                launched.num_points, graphed=launched)
            with self.timer.stage("outputs"):
                staged = self._stage_outputs(window, launched.out, {})
                staged.status = self.copies.put("graph_status", launched.status)
            return window, staged
        asm = ring.assemble(self.geometry, flow_layout=flow_layout, sequence_id=self.stream_id, timer=self.timer,
                            sweeps=sweeps)
        model = self.loaded.model
        previous, model.timer = model.timer, self.timer
        try:
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp), \
                    self.timer.stage("network"):
                raw = model(inputs=asm.batch, mode="tensor")
        finally:
            model.timer = previous
        with self.timer.stage("outputs"):
            window = StepWindow.of(asm)
            reduced, host = device_outputs(self.loaded.model.heads, raw, asm.batch, self.outputs, self.velocity_dtype)
            staged = self._stage_outputs(window, reduced, host)
        return window, staged

    def _stage_outputs(self, window: StepWindow, reduced: dict, host: dict) -> StagedOutputs:
        """The copies to the host of the outputs ``device_outputs`` reduced (capacity-sized tensors are cut to
        the window: the source rows, the window's points or, without fusion, the newest sweep's)."""
        put, n, o = self.copies.put, len(window.sweeps), window.offsets
        out = StagedOutputs(host=host)
        if window.source_index != n - 2:  # flow needs the sweep after its source: none on a window's first sweep
            out.host.pop("flow", None)
        elif "flow" in reduced:
            ns = int(o[n - 1] - o[n - 2])
            out.flow = tuple(put(k, reduced[k][:ns]) for k in ("flow", "flow_dynamic", "flow_ego", "flow_in_grid"))
        if "mos_prob" in reduced:
            out.mos_window = self.fusion is not None
            if out.mos_window:
                rows = slice(0, window.points)
            elif window.graphed is not None and window.graphed.mos_newest:  # computed on the newest sweep alone
                rows = slice(0, int(o[n] - o[n - 1]))
            else:
                rows = slice(int(o[n - 1]), int(o[n]))
            out.mos = (put("mos_prob", reduced["mos_prob"][rows]), put("mos_in_grid", reduced["mos_in_grid"][rows]))
        if "occupancy_semantics" in reduced:
            vel = reduced.get("occupancy_velocity")
            out.occupancy = (put("occupancy_semantics", reduced["occupancy_semantics"]),
                             None if vel is None else put("occupancy_velocity", vel),
                             self.loaded.model.heads["occupancy"].grid)
        return out

    def _outputs(self, result: Result, window: StepWindow, staged: StagedOutputs) -> None:
        """The result's outputs from the staged copies (on the host once ``copies.wait()`` returned)."""
        sweeps, n = window.sweeps, len(window.sweeps)
        take = self.copies.take
        h = result.health
        h.window_points, h.voxels = window.points, window.voxels
        h.dropped_out_of_range, h.dropped_non_finite = window.out_of_range, window.non_finite
        newest = sweeps[-1]
        flow = staged.host.get("flow")
        if staged.flow is not None:
            flow = FlowPrediction(*(take(v) for v in staged.flow))
        if flow is not None:
            src = sweeps[window.source_index]
            sub = submission_flow(flow, src.frame_id)
            result.flow = FlowOutput(src.frame_id, src.timestamp_ns, newest.frame_id, window.dt,
                                     replace(flow, flow=sub.flow, is_dynamic=sub.is_dynamic), sub.non_finite)
        elif "flow" in self.tasks and "flow" in self.outputs and window.source_index != n - 2:
            result.message = f"{newest.frame_id}: first sweep of a window; its flow comes with the next sweep"
        if staged.mos is not None or "mos" in staged.host:
            if staged.mos is not None:  # the fusion keeps the window's arrays: they must be the result's own
                prob, in_grid = (take(v, keep=self.fusion is not None) for v in staged.mos)
                o = window.offsets if staged.mos_window else np.array([0, len(prob)])
            else:
                pred = staged.host["mos"]
                prob, in_grid, o = pred.prob, pred.in_grid, pred.offsets
            last = slice(int(o[-2]), int(o[-1]))
            # take() gave the newest sweep's rows arrays of their own on CUDA; otherwise they are cut out
            own = (self.copies.cuda or self.copies.arena is not None) and staged.mos is not None \
                and not staged.mos_window
            result.mos = MosOutput(newest.frame_id, newest.timestamp_ns, prob if own else prob[last].copy(),
                                   in_grid if own else in_grid[last].copy(), n)
            if self.fusion is not None:
                for s in sweeps:
                    self._scans.setdefault(s.seq, (s.frame_id, s.timestamp_ns))
                fused = self.fusion.add_window([s.seq for s in sweeps], [prob[o[j]:o[j + 1]] for j in range(n)],
                                               [in_grid[o[j]:o[j + 1]] for j in range(n)])
                result.mos_fused = [self._fused(f) for f in fused]
        occ = staged.host.get("occupancy")
        if staged.occupancy is not None:
            sem, vel, grid = staged.occupancy
            occ = OccupancyPrediction(semantics=take(sem), velocity=None if vel is None else take(vel, np.float32),
                                      geometry=grid)
        elif occ is not None:  # a head's own predict: dense float32 velocities
            if "occupancy_velocity" not in self.outputs:
                occ = replace(occ, velocity=None)
            elif self.velocity_dtype == "float16":
                occ = replace(occ, velocity=occ.velocity.astype(np.float16).astype(np.float32))
        if occ is not None:
            result.occupancy = OccupancyOutput(newest.frame_id, newest.timestamp_ns, occ)

    def _settle(self, window: StepWindow, staged: StagedOutputs) -> bool:
        """The deferred checks of a step (the step graph's status, ``GatherUNet.settle``), after the step's
        synchronisation; False: a capacity was exceeded, the capture has grown and the step must run again."""
        if window.graphed is not None:
            status = self.copies.take(staged.status)
            fits, window.voxels, window.out_of_range, window.non_finite = self.graph.read_status(
                window.graphed, status)
            if not fits:
                log.info("%s: the step graph's capacities were exceeded (%d voxels); capturing it again",
                         self.name, window.voxels)
                self.copies.wait()  # a later step may be running on the old capture: it must end first
                self.graph.grow(window.graphed)
            return fits
        settle = getattr(self.loaded.model.backbone, "settle", None)
        return True if settle is None else settle()

    def _fused(self, f) -> FusedMosOutput:
        frame_id, ts = self._scans.pop(f.scan_id)
        return FusedMosOutput(frame_id, ts, f.fused, f.online, f.num_predictions)

    def _warm_up(self, warmup: Warmup | None) -> float:
        if warmup is None:
            warmup = Warmup() if self.device.type == "cuda" else Warmup(steps=1, points=2_000)
        if warmup.steps <= 0:
            return 0.0
        t0 = time.perf_counter()
        ring = SweepRing(self.device, self.geometry.num_frames, self.ring.host_transform)
        first = self.geometry.num_frames - 1
        for k in range(first + warmup.steps):
            frame = synthetic_frame(k, warmup.points, self.geometry)
            ring.push(self.staging.stage(frame))
            if k >= first:
                window, staged = self._forward(ring)  # the outputs' copies too (their buffers); no results built
                self.copies.wait()
                self._settle(window, staged)  # an overflow grows the capture here, before the first real frame
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timer.reset()
        elapsed = time.perf_counter() - t0
        log.info("%s: warm-up %d steps of %d-point sweeps in %.2f s", self.name, warmup.steps, warmup.points,
                 elapsed)
        return elapsed


def push_sweep(ring: SweepRing, host: HostSweep, admission: Admission) -> None:
    """Make an admitted sweep the ring's newest, emptying the ring first when the policy restarts the window."""
    if admission.reset:
        ring.clear()
    ring.push(host)
