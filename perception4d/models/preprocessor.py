"""The one preprocessing path: batch WindowSamples and voxelize them on the model's device.

Training, evaluation, the streaming predictor, ROS and batch scoring all go
through ``WindowBatcher`` so the network always sees identically prepared input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from mmengine.model import BaseDataPreprocessor

from perception4d.core.geometry import Geometry
from perception4d.core.sparse import SparseTensor4D
from perception4d.core.voxelize import HostStaging, pack_windows, voxelize
from perception4d.datasets.sample import WindowSample
from perception4d.registry import MODELS


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
        return self.sparse.point_to_voxel[self.source_rows] >= 0


class WindowBatcher:
    """Host -> device batching and voxelization of WindowSamples (no learnable state).

    One pinned staging buffer per batcher: the points go to the device in one
    asynchronous copy, time/batch indices in another.
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
        counts = [s.source_slice.stop - s.source_slice.start for s in samples]
        rows = np.concatenate([np.arange(s.source_slice.start, s.source_slice.stop, dtype=np.int64) + off
                               for s, off in zip(samples, packed.offsets[:-1])])
        sparse = voxelize(packed.points, packed.time, self.geometry, batch=packed.batch, batch_size=len(samples))

        def dev(arrays, dtype):
            return torch.from_numpy(np.concatenate(arrays)).to(device=device, dtype=dtype, non_blocking=True)

        source_batch = torch.repeat_interleave(torch.arange(len(samples), device=device),
                                               torch.tensor(counts, device=device))
        dt = torch.tensor([s.meta.dt for s in samples], dtype=torch.float32, device=device)[source_batch]
        targets = None
        if all(s.targets is not None for s in samples):
            targets = TargetTensors(flow=dev([s.targets.flow for s in samples], torch.float32),
                                    valid=dev([s.targets.valid for s in samples], torch.bool),
                                    dynamic=dev([s.targets.dynamic for s in samples], torch.bool))
        mos = None
        if all(s.mos_labels is not None for s in samples):
            mos = dev([s.mos_labels for s in samples], torch.uint8)
        return BatchedWindows(sparse=sparse, points=packed.points, time=packed.time,
                              source_rows=dev([rows], torch.int64), source_batch=source_batch,
                              ego_flow=dev([s.ego_flow for s in samples], torch.float32), dt=dt,
                              source_counts=counts, samples=list(samples), targets=targets, mos_labels=mos,
                              occupancy=occupancy_targets(samples, device))


@MODELS.register_module()
class WindowDataPreprocessor(BaseDataPreprocessor):
    """mmengine data preprocessor: ``{'inputs': [WindowSample, ...]}`` -> ``{'inputs': BatchedWindows}``."""

    def __init__(self, geometry: dict):
        super().__init__()
        self.batcher = WindowBatcher(Geometry.from_config(geometry))

    def forward(self, data: dict, training: bool = False) -> dict:
        return {"inputs": self.batcher(list(data["inputs"]), self.device)}
