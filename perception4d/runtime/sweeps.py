"""The streaming window: sweeps uploaded once into a device ring buffer, re-aligned on the device every step.

Per sweep, once (``StagingPool.stage`` on the host, ``SweepRing.push`` per device):

* the input columns (x, y, z in the sensor frame, intensity) are gathered into
  a staging buffer of the pool (pinned host memory for CUDA targets), copied
  to the device with ``non_blocking``; one host copy serves every device of
  the process. The pool's buffers are allocated once and reused (grow-only:
  a larger sweep replaces a buffer by a larger one); a buffer is written
  again only once the ``HostSweep`` that used it is gone (every ring and job
  let go of it) and its host-to-device copies have completed (CUDA events);
* the sweep's points in its own ego frame (``Frame.xyz_in_ego``: the flow
  head's ego-motion baseline and the offline ``WindowSample.source_xyz``)
  are computed on the host with the same numpy arithmetic as the offline path
  (float64 products into reused scratch buffers, bit-identical) and uploaded
  beside them.

Per step (``SweepRing.assemble``), because the reference is always the newest
sweep and it moves with the ego:

* the composite transform ``ref_T_frame @ extrinsic`` of every sweep (T 4x4
  products on the host, in float64, in the order ``Window.align`` uses);
* the window points in the new reference frame and their time indices: on
  CUDA one kernel over the window (``perception4d.ops.align``: each sweep's
  transform in float64, rounded to float32; the products may round the last
  float64 bit differently from numpy's BLAS, so about one coordinate in 10^4
  differs by one float32 ulp); on the CPU numpy's ``SE3.transform_points``
  itself, bit-identical to the offline tools;
* then ``assemble_batch`` (shared with ``WindowBatcher``): the voxelization, the source rows,
  ego-motion flow and ``dt``.

The result is the ``BatchedWindows`` that ``WindowBatcher`` would build from
``build_window_sample`` of the same frames, field by field (tested).
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from perception4d.core.frame import Frame
from perception4d.core.geometry import Geometry
from perception4d.core.se3 import SE3
from perception4d.core.window import AlignedWindow
from perception4d.datasets.sample import (INPUT_COLUMNS, SampleMeta, WindowSample, sensor_origin, source_sweep,
                                          time_shift)
from perception4d.errors import ConfigError
from perception4d.models.preprocessor import BatchedWindows, assemble_batch
from perception4d.ops.align import align_window
from perception4d.ops.stage_numba import EGO_IDENTITY, EGO_TRANSLATION, stage_rows
from perception4d.utils.timing import NullTimer


@dataclass
class HostSweep:
    """One admitted sweep prepared on the host, device-independent."""

    frame_id: str
    timestamp_ns: int
    pose: SE3  # world_T_ego
    extrinsic: SE3  # ego_T_sensor
    columns: torch.Tensor  # (N, C) float32 CPU (pinned for CUDA targets): x, y, z (sensor frame), then the rest
    ego_xyz: torch.Tensor  # (N, 3) float32 CPU (pinned likewise): the points in the sweep's own ego frame
    origin: np.ndarray | None  # (3,) sensor position in the ego frame (None: extrinsic unknown)
    non_finite: int = 0  # rows with a non-finite input value (kept)
    slot: StagingSlot | None = field(default=None, repr=False, compare=False)  # the pool buffers it lives in

    @classmethod
    def from_frame(cls, frame: Frame, columns: tuple[str, ...] = INPUT_COLUMNS, non_finite: int = 0,
                   pin: bool = False) -> "HostSweep":
        """The sweep in buffers of its own (no pool: allocated for this sweep, freed with it)."""
        n = frame.num_points
        cols = torch.empty((n, len(columns)), dtype=torch.float32, pin_memory=pin)
        ego = torch.empty((n, 3), dtype=torch.float32, pin_memory=pin)
        fill_host_arrays(frame, columns, cols.numpy(), ego.numpy())
        return cls(frame.frame_id, frame.timestamp_ns, frame.pose, frame.extrinsic, cols, ego, sensor_origin(frame),
                   non_finite)

    @property
    def num_points(self) -> int:
        return int(self.columns.shape[0])

    def uploaded(self, device: torch.device) -> None:
        """Note the host-to-device copies just enqueued on ``device``'s current stream: the staging buffers are
        written again only after they completed."""
        if self.slot is not None and device.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            self.slot.uploads.append(event)


def is_identity(transform: SE3) -> bool:
    return bool(np.array_equal(transform.rotation, np.eye(3)) and not np.any(transform.translation))


def fill_host_arrays(frame: Frame, columns: tuple[str, ...], cols: np.ndarray, ego: np.ndarray,
                     scratch: Callable[[int], np.ndarray] | None = None) -> None:
    """The input columns of ``frame`` into ``cols`` and its points in its ego frame into ``ego``.

    ``ego`` holds exactly ``Frame.xyz_in_ego()`` (``SE3.transform_points``: float32 -> float64, the rotation
    product, the translation, rounded to float32). The columns, and the ego points of an identity or
    translation-only extrinsic, are written in one pass over the rows (``perception4d.ops.stage_numba``); a
    translation-only extrinsic skips the product when every coordinate is finite (multiplying by the identity's
    ones and zeros is exact there; a NaN or infinity would spread to the row's other coordinates through the
    zeros); otherwise the product runs in float64 in ``scratch(N)``, a (2, >= N, 3) float64 buffer (reused by
    a pool; None: allocated for this call).
    """
    e = frame.extrinsic
    identity = is_identity(e)
    t = e.translation
    # (a translation component of -0.0 would keep the sign of a -0.0 coordinate that the product makes +0.0)
    translation_only = (not identity and np.array_equal(e.rotation, np.eye(3))
                        and not np.any((t == 0) & np.signbit(t)))
    non_finite_xyz = stage_rows(frame.points, frame.column_sources(columns), t,
                                EGO_TRANSLATION if translation_only else EGO_IDENTITY, cols, ego)
    if identity or (translation_only and non_finite_xyz == 0):
        return
    _product_into(frame, ego, scratch or (lambda n: np.empty((2, n, 3), np.float64)))


def _product_into(frame: Frame, ego: np.ndarray, scratch: Callable[[int], np.ndarray]) -> None:
    """``Frame.xyz_in_ego()``'s arithmetic (float64 rotation product, translation, float32) into ``ego``."""
    e, pts = frame.extrinsic, frame.points
    t = e.translation
    n = frame.num_points
    buffer = scratch(n)
    x64, y64 = buffer[0, :n], buffer[1, :n]
    for j in range(3):
        x64[:, j] = pts[:, j]
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite rows are counted and logged by the gate
        np.matmul(x64, e.rotation.T, out=y64)
        for j in range(3):
            np.add(y64[:, j], t[j], out=ego[:, j], casting="same_kind")


def staging_rows(n: int, growth: float = 1.25, align: int = 1024) -> int:
    """Rows of a new staging buffer for an ``n``-point sweep: ``growth`` headroom, a multiple of ``align``."""
    return max(align, -(-int(n * growth) // align) * align)


class ProductScratch:
    """The (2, >= N, 3) float64 buffer ``fill_host_arrays`` computes a rotated extrinsic in, grown when a sweep
    needs more (``staging_rows``) and reused; ``reset`` lets it go."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._buffer = np.empty((2, 0, 3), np.float64)

    def __call__(self, n: int) -> np.ndarray:
        if self._buffer.shape[1] < n:
            self._buffer = np.empty((2, staging_rows(n), 3), np.float64)
        return self._buffer


class StagingSlot:
    """A pair of staging buffers of a ``StagingPool``: ``rows`` rows of input columns and of ego xyz."""

    def __init__(self, rows: int, width: int, pin: bool):
        self.columns = torch.empty((rows, width), dtype=torch.float32, pin_memory=pin)
        self.ego = torch.empty((rows, 3), dtype=torch.float32, pin_memory=pin)
        self.uploads: list = []  # CUDA events after the host-to-device copies that read these buffers

    @property
    def rows(self) -> int:
        return int(self.columns.shape[0])

    def wait_uploads(self) -> None:
        for event in self.uploads:
            event.synchronize()
        self.uploads.clear()


class StagingPool:
    """Reused, grow-only host buffers that sweeps are staged into (pinned for CUDA targets).

    ``stage(frame)`` takes a free slot (a slot too small for the frame is replaced by one ``staging_rows``
    larger, at least the frame's size), fills it (``fill_host_arrays``) and returns a ``HostSweep`` viewing it;
    the slot becomes free again when that ``HostSweep`` is garbage. ``stage`` runs in one thread (the pool's
    owner); slots may be released, and ``trim`` called, from any thread.

    ``trim()`` (after running out of memory): the next ``stage`` first lets go of every free slot and of the
    scratch buffer, so that one huge sweep does not keep its buffers for the rest of the stream.
    """

    def __init__(self, pin: bool = False, columns: tuple[str, ...] = INPUT_COLUMNS):
        self.pin = bool(pin)
        self.columns = tuple(columns)
        self._free: deque[StagingSlot] = deque()  # append / pop are atomic
        self._scratch = ProductScratch()
        self._trim = False
        self.allocations = 0  # slots allocated so far (a reused slot does not count)

    def trim(self) -> None:
        self._trim = True

    def _acquire(self, n: int) -> StagingSlot:
        if self._trim:
            self._trim = False
            self._scratch.reset()
            while self._free:
                try:
                    self._free.pop().wait_uploads()
                except IndexError:
                    break
        while self._free:
            try:
                slot = self._free.pop()  # the most recently released: warm in the caches
            except IndexError:  # released and taken between the test and the pop: none left
                break
            slot.wait_uploads()
            if slot.rows >= n:
                return slot
            # too small: dropped (freed once unreferenced), a larger one replaces it
        self.allocations += 1
        return StagingSlot(staging_rows(n), len(self.columns), self.pin)

    def stage(self, frame: Frame, non_finite: int = 0) -> HostSweep:
        """``frame`` prepared in pool buffers (the same values as ``HostSweep.from_frame``)."""
        n = frame.num_points
        slot = self._acquire(n)
        cols, ego = slot.columns[:n], slot.ego[:n]
        try:
            fill_host_arrays(frame, self.columns, cols.numpy(), ego.numpy(), self._scratch)
        except BaseException:
            self._free.append(slot)
            raise
        host = HostSweep(frame.frame_id, frame.timestamp_ns, frame.pose, frame.extrinsic, cols, ego,
                         sensor_origin(frame), non_finite, slot)
        weakref.finalize(host, self._free.append, slot)
        return host


@dataclass
class Sweep:
    """A sweep in the ring: its metadata, its device copies and the host arrays they came from."""

    seq: int  # position in the stream since the ring was created (the MOS fusion's scan id)
    host: HostSweep
    points: torch.Tensor  # (N, C) float32 on the ring's device, x, y, z in the sensor frame
    ego_xyz: torch.Tensor  # (N, 3) float32 on the ring's device

    @property
    def frame_id(self) -> str:
        return self.host.frame_id

    @property
    def timestamp_ns(self) -> int:
        return self.host.timestamp_ns

    @property
    def num_points(self) -> int:
        return self.host.num_points


class DeviceAlignedWindow(AlignedWindow):
    """An ``AlignedWindow`` whose points and time indices stay on the device until read.

    Nothing in the prediction path reads the aligned points on the host (the heads read ``offsets``), so
    copying them back every step would only cost time; reading ``points`` or ``time`` copies them once
    (free on the CPU, where the tensors are host memory).
    """

    def __init__(self, points, time, offsets, columns, ref_index, ref_T_frame, timestamps_ns):
        self._dev = {"points": torch.as_tensor(points), "time": torch.as_tensor(time)}
        self._host: dict[str, np.ndarray] = {}
        self.offsets, self.columns, self.ref_index = offsets, tuple(columns), ref_index
        self.ref_T_frame, self.timestamps_ns = tuple(ref_T_frame), tuple(timestamps_ns)

    def _fetch(self, name: str) -> np.ndarray:
        if name not in self._host:
            self._host[name] = self._dev[name].cpu().numpy()
        return self._host[name]

    @property
    def points(self) -> np.ndarray:
        return self._fetch("points")

    @points.setter
    def points(self, value) -> None:
        self._host["points"] = np.asarray(value)
        self._dev["points"] = torch.as_tensor(self._host["points"])

    @property
    def time(self) -> np.ndarray:
        return self._fetch("time")

    @time.setter
    def time(self, value) -> None:
        self._host["time"] = np.asarray(value)
        self._dev["time"] = torch.as_tensor(self._host["time"])


@dataclass
class WindowLayout:
    """Which sweeps a step's window holds and how they map into its reference (the newest sweep's ego frame)."""

    sweeps: list[Sweep]  # oldest first; the reference (newest) last
    offsets: np.ndarray  # (n + 1,) int64 row offsets of the sweeps in the window's points
    ref_T: list[SE3]  # each sweep's ego frame in the reference's (the products of ``Window.align``)
    shift: int  # added to the time index (a short window is right-aligned: the reference at T - 1)
    source_index: int  # window position of the source sweep (flow: the one before the reference)
    meta: SampleMeta

    @property
    def num_points(self) -> int:
        return int(self.offsets[-1])

    def transforms(self) -> list[np.ndarray]:
        """(4, 4) float64 sensor-to-reference transform of each sweep (``ref_T @ extrinsic``)."""
        return [(t @ s.host.extrinsic).as_matrix() for t, s in zip(self.ref_T, self.sweeps)]

    def raw_points(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """(P, C) every sweep's device points in its sensor frame, concatenated (into ``out`` if given)."""
        if out is None and len(self.sweeps) == 1:
            return self.sweeps[0].points
        return torch.cat([s.points for s in self.sweeps], out=out)


@dataclass
class AssembledWindow:
    """One step's network input and which sweeps it covers."""

    batch: BatchedWindows
    sweeps: list[Sweep]  # oldest first; the reference (newest) last
    source_index: int  # window position of the source sweep (flow: the one before the reference)


class SweepRing:
    """The newest ``capacity`` sweeps of a stream on one device (oldest first)."""

    def __init__(self, device: torch.device | str, capacity: int, host_transform: bool | None = None):
        self.device = torch.device(device)
        if int(capacity) < 1:
            raise ConfigError(f"SweepRing capacity must be >= 1, got {capacity}")
        if host_transform and self.device.type != "cpu":
            raise ConfigError(f"host_transform=True needs the sweeps in host memory, the ring is on {self.device}")
        self.host_transform = self.device.type == "cpu" if host_transform is None else bool(host_transform)
        self.capacity = int(capacity)
        self._sweeps: deque[Sweep] = deque(maxlen=self.capacity)
        self._next_seq = 0

    def __len__(self) -> int:
        return len(self._sweeps)

    def clear(self) -> None:
        self._sweeps.clear()

    def push(self, host: HostSweep) -> Sweep:
        """Upload the sweep (asynchronously from pinned memory on CUDA) and make it the newest."""
        nb = self.device.type == "cuda" and host.columns.is_pinned()
        sweep = Sweep(self._next_seq, host, host.columns.to(self.device, non_blocking=nb),
                      host.ego_xyz.to(self.device, non_blocking=nb))
        host.uploaded(self.device)
        self._next_seq += 1
        self._sweeps.append(sweep)
        return sweep

    def drop(self, seq: int) -> bool:
        """Remove sweep ``seq`` (one a network could not process: the next windows leave it out; usually the
        newest, or the one before it when a later sweep was launched already); True if removed."""
        for k in range(len(self._sweeps) - 1, -1, -1):
            if self._sweeps[k].seq == seq:
                del self._sweeps[k]
                return True
        return False

    def latest(self, n: int) -> list[Sweep]:
        """The newest ``min(n, len)`` sweeps, oldest first."""
        n = min(int(n), len(self._sweeps))
        return list(self._sweeps)[len(self._sweeps) - n:]

    def window(self, geometry: Geometry, flow_layout: bool, sequence_id: str = "stream",
               sweeps: list | None = None) -> WindowLayout:
        """The layout of the newest ``geometry.num_frames`` sweeps (or of ``sweeps``, a window taken earlier)
        as a window (see ``WindowLayout``).

        ``flow_layout`` (two sweeps at least): the source is the sweep before the reference, as
        ``build_window_sample`` with flow among the tasks; otherwise the reference itself.
        """
        sweeps = self.latest(geometry.num_frames) if sweeps is None else sweeps
        if not sweeps:
            raise ValueError("SweepRing.assemble: the ring is empty")
        n = len(sweeps)
        ref = sweeps[-1].host
        sizes = [s.num_points for s in sweeps]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        ref_inv = ref.pose.inverse()
        ref_T = [ref_inv @ s.host.pose for s in sweeps]  # the products of Window.align, in its order
        src = source_sweep(n, flow_layout)
        source = sweeps[src]
        meta = SampleMeta(sequence_id=sequence_id, frame_id=source.frame_id, timestamp_ns=source.timestamp_ns,
                          next_timestamp_ns=ref.timestamp_ns)
        return WindowLayout(sweeps, offsets, ref_T, time_shift(geometry, n), src, meta)

    def assemble(self, geometry: Geometry, flow_layout: bool, sequence_id: str = "stream",
                 columns: tuple[str, ...] = INPUT_COLUMNS, timer=None, sweeps: list | None = None) -> AssembledWindow:
        """The window of the newest ``geometry.num_frames`` sweeps (or of ``sweeps``) as the network's input
        (``window`` for the layout). ``timer`` (``stage(name)``) times the ``align`` and ``voxelize`` stages.
        """
        timer = timer or NullTimer()
        lay = self.window(geometry, flow_layout, sequence_id, sweeps)
        sweeps, offsets, ref_T, shift, src = lay.sweeps, lay.offsets, lay.ref_T, lay.shift, lay.source_index
        n, dev = len(sweeps), self.device
        ref = sweeps[-1].host
        sizes = np.diff(offsets)
        total = int(offsets[-1])
        with timer.stage("align"):
            if self.host_transform:  # numpy's arithmetic, bit-identical to the offline tools
                points = torch.empty((total, len(columns)), dtype=torch.float32, device=dev)
                for k, (s, ref_T_frame) in enumerate(zip(sweeps, ref_T)):
                    sl = slice(int(offsets[k]), int(offsets[k + 1]))
                    xyz = (ref_T_frame @ s.host.extrinsic).transform_points(s.points[:, :3].numpy())
                    points[sl, :3] = torch.from_numpy(xyz)
                    points[sl, 3:] = s.points[:, 3:]
                time = torch.repeat_interleave(torch.arange(shift, shift + n, dtype=torch.int32),
                                               torch.tensor(sizes, dtype=torch.int64), output_size=total)
            else:  # one kernel over the window (perception4d.ops.align)
                points, time = align_window(lay.raw_points(), lay.transforms(), offsets, shift)
        source = sweeps[src]
        aligned = DeviceAlignedWindow(points, time, offsets, columns, n - 1, ref_T,
                                      [s.timestamp_ns for s in sweeps])
        sample = WindowSample(aligned=aligned, source_index=src, source_xyz=source.host.ego_xyz.numpy(),
                              meta=lay.meta, frame_ids=tuple(s.frame_id for s in sweeps), sensor_origin=ref.origin)
        # one window: no batch index to build, upload or range-check
        batch = assemble_batch([sample], points, time, None, np.array([0, total]), source.ego_xyz, geometry, timer)
        return AssembledWindow(batch, sweeps, src)
