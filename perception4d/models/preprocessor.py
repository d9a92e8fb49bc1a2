"""The one preprocessing path: batch WindowSamples and voxelize them on the model's device.

Training, evaluation, the streaming predictor, ROS and batch scoring all go
through ``WindowBatcher`` so the network always sees identically prepared input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from mmengine.model import BaseDataPreprocessor

from perception4d.core.geometry import Geometry
from perception4d.core.sparse import SparseTensor4D
from perception4d.core.voxelize import HostStaging, pack_windows, voxelize
from perception4d.datasets.sample import WindowSample
from perception4d.ops.gather_conv import take_rows
from perception4d.registry import MODELS
from perception4d.utils.timing import NullTimer


@dataclass
class TargetTensors:
    flow: torch.Tensor  # (Ns, 3)
    valid: torch.Tensor  # (Ns,) bool
    dynamic: torch.Tensor  # (Ns,) bool


@dataclass
class OccupancyTargets:
    """Dense occupancy ground truth of a batch on one grid (the samples' reference ego frames)."""

    semantics: torch.Tensor  # (B, X, Y, Z) int64 compact class, 0 free, 255 ignore
    visible: torch.Tensor  # (B, X, Y, Z) bool
    velocity: torch.Tensor  # (B, X, Y, Z, 3) float32 m/s
    geometry: Geometry


def occupancy_targets(samples: list[WindowSample], device: torch.device) -> OccupancyTargets | None:
    """The samples' occupancy ground truth stacked on ``device``; None unless every sample has one."""
    occ = [s.occupancy for s in samples]
    if any(o is None for o in occ):
        return None
    geo = occ[0].geometry
    for s, o in zip(samples, occ):
        if o.geometry.point_range != geo.point_range or o.geometry.voxel_size != geo.voxel_size:
            raise ValueError(f"{s.meta.frame_id}: occupancy grid {o.geometry} differs from the batch's grid {geo}")

    def dev(arrays, dtype):
        return torch.from_numpy(np.stack(arrays)).to(device=device, non_blocking=True).to(dtype)  # copy, then widen

    return OccupancyTargets(semantics=dev([o.semantics for o in occ], torch.int64),
                            visible=dev([o.visible for o in occ], torch.bool),
                            velocity=dev([o.velocity for o in occ], torch.float32), geometry=geo)


@dataclass
class BatchedWindows:
    """A batch of windows on one device.

    points/time/batch cover every point of every window (concatenated in sample
    order); ``source_rows`` index the rows of the source sweeps' points, sample
    by sample (``source_counts`` of them each).
    """

    sparse: SparseTensor4D
    points: torch.Tensor  # (P, C) aligned points
    time: torch.Tensor  # (P,) int32
    source_rows: torch.Tensor  # (Ns,) int64
    source_batch: torch.Tensor  # (Ns,) int64
    ego_flow: torch.Tensor  # (Ns, 3)
    dt: torch.Tensor  # (Ns,) seconds between source and reference sweep
    source_counts: list[int]
    samples: list[WindowSample]
    targets: TargetTensors | None = None
    mos_labels: torch.Tensor | None = None  # (P,) uint8 over every point: 0 ignore, 1 static, 2 moving
    occupancy: OccupancyTargets | None = None  # the reference frames' occupancy ground truth

    @property
    def source_in_grid(self) -> torch.Tensor:
        return take_rows(self.sparse.point_to_voxel, self.source_rows) >= 0


def assemble_batch(samples: Sequence[WindowSample], points: torch.Tensor, time: torch.Tensor,
                   batch: torch.Tensor | None, offsets: np.ndarray, source_xyz: torch.Tensor, geometry: Geometry,
                   timer=None) -> BatchedWindows:
    """The network input of ``samples`` from their points already on the device (the device-side half of both
    ``WindowBatcher`` and the streaming ``SweepRing.assemble``).

    ``points`` (P, C) float32 (x, y, z first), ``time`` (P,) int32 and ``batch`` (P,) int32 (the window index;
    None for a single window) hold every window's aligned points, window ``b`` at rows
    ``offsets[b]:offsets[b + 1]``. ``source_xyz`` (Ns, 3) float32 on the same device: the source sweeps' points
    in their own ego frames, sample by sample. Builds the source rows and their sample index, the ego-motion
    flow (aligned minus own-frame position, float32), the per-point ``dt`` and the voxelization; targets, MOS
    labels and occupancy are left unset. ``timer`` (``stage(name)``) times the ``voxelize`` stage.
    """
    timer = timer or NullTimer()
    nb = len(samples)
    if nb == 0:
        raise ValueError("assemble_batch: samples must hold at least one WindowSample")
    device = points.device
    offsets = np.asarray(offsets, np.int64)
    if offsets.shape != (nb + 1,) or offsets[0] != 0 or offsets[-1] != points.shape[0]:
        raise ValueError(f"assemble_batch: offsets must be {nb + 1} row offsets from 0 to the {points.shape[0]} "
                         f"points, got {offsets.tolist()}")
    if batch is None and nb != 1:
        raise ValueError(f"assemble_batch: batch (the window index of every point) is required for {nb} samples")
    counts, shifts = [], []  # per sample: source rows, and global row = shift + position among all source rows
    for b, s in enumerate(samples):
        size = int(offsets[b + 1] - offsets[b])
        if int(s.aligned.offsets[-1]) != size:
            raise ValueError(f"assemble_batch: sample {b} ({s.meta.frame_id}) has {int(s.aligned.offsets[-1])} "
                             f"points but offsets give it {size} rows")
        sl = s.source_slice
        shifts.append(int(offsets[b]) + sl.start - sum(counts))
        counts.append(sl.stop - sl.start)
    ns = sum(counts)
    if tuple(source_xyz.shape) != (ns, 3) or source_xyz.dtype != torch.float32 or source_xyz.device != device:
        raise ValueError(f"assemble_batch: source_xyz must be ({ns}, 3) float32 on {device} (the samples' source "
                         f"points), got {tuple(source_xyz.shape)} {source_xyz.dtype} on {source_xyz.device}")
    with timer.stage("voxelize"):
        sparse = voxelize(points, time, geometry, batch=batch, batch_size=nb)

    def upload(values: list, dtype: torch.dtype) -> torch.Tensor:  # a few numbers: no stream synchronisation
        return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)

    if nb == 1:  # the streaming case: nothing to upload
        source_batch = torch.zeros(ns, dtype=torch.int64, device=device)
        source_rows = torch.arange(shifts[0], shifts[0] + ns, dtype=torch.int64, device=device)
        dt = torch.full((ns,), float(samples[0].meta.dt), dtype=torch.float32, device=device)
    else:
        source_batch = torch.repeat_interleave(torch.arange(nb, device=device), upload(counts, torch.int64),
                                               output_size=ns)
        source_rows = torch.arange(ns, dtype=torch.int64, device=device) + upload(shifts, torch.int64)[source_batch]
        dt = upload([s.meta.dt for s in samples], torch.float32)[source_batch]
    ego_flow = take_rows(points, source_rows)[:, :3] - source_xyz
    return BatchedWindows(sparse=sparse, points=points, time=time, source_rows=source_rows,
                          source_batch=source_batch, ego_flow=ego_flow, dt=dt, source_counts=counts,
                          samples=list(samples))


class WindowBatcher:
    """Host -> device batching and voxelization of WindowSamples (no learnable state).

    One pinned staging buffer per batcher: the points go to the device in one
    asynchronous copy, time/batch indices in another; ``assemble_batch`` does the rest on the device.
    """

    def __init__(self, geometry: Geometry):
        self.geometry = geometry
        self._staging: dict[torch.device, HostStaging] = {}

    def _stage(self, device: torch.device) -> HostStaging:
        if device not in self._staging:
            self._staging[device] = HostStaging(device)
        return self._staging[device]

    def __call__(self, samples: list[WindowSample], device: torch.device | str) -> BatchedWindows:
        device = torch.device(device)
        if not samples:
            raise ValueError("WindowBatcher needs at least one sample")
        packed = pack_windows([s.aligned for s in samples], self.geometry, device, staging=self._stage(device))

        def dev(arrays, dtype):
            return torch.from_numpy(np.concatenate(arrays)).to(device=device, dtype=dtype, non_blocking=True)

        source_xyz = dev([np.asarray(s.source_xyz, np.float32) for s in samples], torch.float32)
        out = assemble_batch(samples, packed.points, packed.time, packed.batch, packed.offsets, source_xyz,
                             self.geometry)
        if all(s.targets is not None for s in samples):
            out.targets = TargetTensors(flow=dev([s.targets.flow for s in samples], torch.float32),
                                        valid=dev([s.targets.valid for s in samples], torch.bool),
                                        dynamic=dev([s.targets.dynamic for s in samples], torch.bool))
        if all(s.mos_labels is not None for s in samples):
            out.mos_labels = dev([s.mos_labels for s in samples], torch.uint8)
        out.occupancy = occupancy_targets(samples, device)
        return out


@MODELS.register_module()
class WindowDataPreprocessor(BaseDataPreprocessor):
    """mmengine data preprocessor: ``{'inputs': [WindowSample, ...]}`` -> ``{'inputs': BatchedWindows}``."""

    def __init__(self, geometry: dict):
        super().__init__()
        self.batcher = WindowBatcher(Geometry.from_config(geometry))

    def forward(self, data: dict, training: bool = False) -> dict:
        return {"inputs": self.batcher(list(data["inputs"]), self.device)}
