"""The streaming window: sweeps uploaded once into a device ring buffer, re-aligned on the device every step.

Per sweep, once (``HostSweep.from_frame`` on the host, ``SweepRing.push`` per device):

* the input columns (x, y, z in the sensor frame, intensity) are gathered into
  pinned host memory (torch's caching host allocator recycles the block once
  its copies have completed) and copied to the device with ``non_blocking``;
  one host copy serves every device of the process;
* the sweep's points in its own ego frame (``Frame.xyz_in_ego``: the flow
  head's ego-motion baseline and the offline ``WindowSample.source_xyz``)
  are computed on the host with the same numpy arithmetic as the offline path
  and uploaded beside them.

Per step (``SweepRing.assemble``), because the reference is always the newest
sweep and it moves with the ego:

* the composite transform ``ref_T_frame @ extrinsic`` of every sweep (T 4x4
  products on the host, in float64, in the order ``Window.align`` uses);
* the window points in the new reference frame: on CUDA one float64 GEMM per
  sweep on the device (cuBLAS may round the last float64 bit differently from
  numpy's BLAS, so about one coordinate in 10^4 differs by one float32 ulp); on
  the CPU numpy's ``SE3.transform_points`` itself, bit-identical to the
  offline tools;
* time indices, the voxelization, and everything after it.

The result is the ``BatchedWindows`` that ``WindowBatcher`` would build from
``build_window_sample`` of the same frames, field by field (tested).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from perception4d.core.frame import Frame
from perception4d.core.geometry import Geometry
from perception4d.core.se3 import SE3
from perception4d.core.voxelize import voxelize
from perception4d.core.window import AlignedWindow
from perception4d.datasets.sample import INPUT_COLUMNS, SampleMeta, WindowSample, sensor_origin
from perception4d.errors import ConfigError
from perception4d.models.preprocessor import BatchedWindows
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

    @classmethod
    def from_frame(cls, frame: Frame, columns: tuple[str, ...] = INPUT_COLUMNS, non_finite: int = 0,
                   pin: bool = False) -> "HostSweep":
        n = frame.num_points
        cols = torch.empty((n, len(columns)), dtype=torch.float32, pin_memory=pin)
        ego = torch.empty((n, 3), dtype=torch.float32, pin_memory=pin)
        cols.numpy()[:] = frame.select_columns(columns)
        e = frame.extrinsic
        if np.array_equal(e.rotation, np.eye(3)) and not np.any(e.translation):
            ego.numpy()[:] = frame.xyz  # identity extrinsic: transform_points would return the same float32 values
        else:
            ego.numpy()[:] = frame.xyz_in_ego()
        return cls(frame.frame_id, frame.timestamp_ns, frame.pose, frame.extrinsic, cols, ego, sensor_origin(frame),
                   non_finite)

    @property
    def num_points(self) -> int:
        return int(self.columns.shape[0])


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
class AssembledWindow:
    """One step's network input and which sweeps it covers."""

    batch: BatchedWindows
    sweeps: list[Sweep]  # oldest first; the reference (newest) last
    source_index: int  # window position of the source sweep (flow: the one before the reference)


def transform_points(xyz: torch.Tensor, transform: SE3, host: bool) -> torch.Tensor:
    """(N, 3) float32 ``xyz`` mapped by ``transform`` in float64, rounded to float32, on ``xyz``'s device.

    ``host``: numpy's ``SE3.transform_points`` (CPU tensors only), the arithmetic of ``Window.align``.
    """
    if host:
        return torch.from_numpy(transform.transform_points(xyz.numpy()))
    m = torch.from_numpy(transform.as_matrix()[:3]).to(xyz.device)
    return (xyz.double() @ m[:, :3].T + m[:, 3]).float()


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
        self._next_seq += 1
        self._sweeps.append(sweep)
        return sweep

    def drop_newest(self, seq: int) -> bool:
        """Remove the newest sweep if it is ``seq`` (a sweep a network could not process); True if removed."""
        if self._sweeps and self._sweeps[-1].seq == seq:
            self._sweeps.pop()
            return True
        return False

    def latest(self, n: int) -> list[Sweep]:
        """The newest ``min(n, len)`` sweeps, oldest first."""
        n = min(int(n), len(self._sweeps))
        return list(self._sweeps)[len(self._sweeps) - n:]

    def assemble(self, geometry: Geometry, flow_layout: bool, sequence_id: str = "stream",
                 columns: tuple[str, ...] = INPUT_COLUMNS, timer=None) -> AssembledWindow:
        """The window of the newest ``geometry.num_frames`` sweeps as the network's input.

        ``flow_layout`` (two sweeps at least): the source is the sweep before the reference, as
        ``build_window_sample`` with flow among the tasks; otherwise the reference itself. ``timer``
        (``stage(name)``) times the ``align`` and ``voxelize`` stages.
        """
        timer = timer or NullTimer()
        sweeps = self.latest(geometry.num_frames)
        if not sweeps:
            raise ValueError("SweepRing.assemble: the ring is empty")
        n, dev = len(sweeps), self.device
        ref = sweeps[-1].host
        sizes = [s.num_points for s in sweeps]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        total = int(offsets[-1])
        points = torch.empty((total, len(columns)), dtype=torch.float32, device=dev)
        ref_inv = ref.pose.inverse()
        ref_T = []
        with timer.stage("align"):
            for k, s in enumerate(sweeps):  # the products of Window.align, in its order
                ref_T_frame = ref_inv @ s.host.pose
                sl = slice(int(offsets[k]), int(offsets[k + 1]))
                points[sl, :3] = transform_points(s.points[:, :3], ref_T_frame @ s.host.extrinsic,
                                                  self.host_transform)
                points[sl, 3:] = s.points[:, 3:]
                ref_T.append(ref_T_frame)
            shift = geometry.num_frames - n  # right-aligned: the reference always has time index num_frames - 1
            time = torch.repeat_interleave(torch.arange(shift, shift + n, dtype=torch.int32).to(dev),
                                           torch.tensor(sizes, dtype=torch.int64).to(dev), output_size=total)
        with timer.stage("voxelize"):  # one window: no batch index to build, upload or range-check
            sparse = voxelize(points, time, geometry, batch_size=1)

        src = n - 2 if (flow_layout and n >= 2) else n - 1
        s_lo, s_hi = int(offsets[src]), int(offsets[src + 1])
        source = sweeps[src]
        meta = SampleMeta(sequence_id=sequence_id, frame_id=source.frame_id, timestamp_ns=source.timestamp_ns,
                          next_timestamp_ns=ref.timestamp_ns)
        aligned = DeviceAlignedWindow(points, time, offsets, columns, n - 1, ref_T,
                                      [s.timestamp_ns for s in sweeps])
        sample = WindowSample(aligned=aligned, source_index=src, source_xyz=source.host.ego_xyz.numpy(), meta=meta,
                              frame_ids=tuple(s.frame_id for s in sweeps), sensor_origin=ref.origin)
        ns = s_hi - s_lo
        source_batch = torch.zeros(ns, dtype=torch.int64, device=dev)
        batch = BatchedWindows(
            sparse=sparse, points=points, time=time,
            source_rows=torch.arange(s_lo, s_hi, dtype=torch.int64, device=dev), source_batch=source_batch,
            ego_flow=points[s_lo:s_hi, :3] - source.ego_xyz,
            dt=torch.tensor([meta.dt], dtype=torch.float32, device=dev)[source_batch],
            source_counts=[ns], samples=[sample])
        return AssembledWindow(batch, sweeps, src)
