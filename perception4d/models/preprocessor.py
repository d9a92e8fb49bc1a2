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
from perception4d.core.voxelize import voxelize
from perception4d.datasets.sample import WindowSample
from perception4d.registry import MODELS


@dataclass
class TargetTensors:
    flow: torch.Tensor  # (Ns, 3)
    valid: torch.Tensor  # (Ns,) bool
    dynamic: torch.Tensor  # (Ns,) bool


@dataclass
class BatchedWindows:
    """A batch of windows on one device.

    points/time/batch cover every point of every window (concatenated in sample
    order); ``source_rows`` index the rows of the source sweeps' points, sample
    by sample (``source_counts`` of them each).
    """

    sparse: SparseTensor4D
    points: torch.Tensor  # (P, C) aligned points
    time: torch.Tensor  # (P,) int64
    source_rows: torch.Tensor  # (Ns,) int64
    source_batch: torch.Tensor  # (Ns,) int64
    ego_flow: torch.Tensor  # (Ns, 3)
    dt: torch.Tensor  # (Ns,) seconds between source and reference sweep
    source_counts: list[int]
    samples: list[WindowSample]
    targets: TargetTensors | None = None

    @property
    def source_in_grid(self) -> torch.Tensor:
        return self.sparse.point_to_voxel[self.source_rows] >= 0


class WindowBatcher:
    """Host -> device batching and voxelization of WindowSamples (no learnable state)."""

    def __init__(self, geometry: Geometry):
        self.geometry = geometry

    def __call__(self, samples: list[WindowSample], device: torch.device | str) -> BatchedWindows:
        device = torch.device(device)
        pts, times, batch, src_rows, src_batch, ego, dts, counts = [], [], [], [], [], [], [], []
        offset = 0
        for b, s in enumerate(samples):
            a = s.aligned
            pts.append(a.points)
            times.append(a.time)
            batch.append(np.full(len(a.points), b, np.int64))
            sl = s.source_slice
            src_rows.append(np.arange(sl.start, sl.stop, dtype=np.int64) + offset)
            src_batch.append(np.full(sl.stop - sl.start, b, np.int64))
            ego.append(s.ego_flow)
            dts.append(np.full(sl.stop - sl.start, s.meta.dt, np.float32))
            counts.append(sl.stop - sl.start)
            offset += len(a.points)

        def to_dev(arrs, dtype=None):
            t = torch.from_numpy(np.concatenate(arrs) if arrs else np.zeros(0))
            if dtype is not None:
                t = t.to(dtype)
            return t.to(device, non_blocking=True)

        points = to_dev(pts, torch.float32)
        time = to_dev(times, torch.int64)
        bidx = to_dev(batch, torch.int64)
        sparse = voxelize(points, time, self.geometry, batch=bidx, batch_size=len(samples))
        targets = None
        if samples and all(s.targets is not None for s in samples):
            targets = TargetTensors(flow=to_dev([s.targets.flow for s in samples], torch.float32),
                                    valid=to_dev([s.targets.valid for s in samples], torch.bool),
                                    dynamic=to_dev([s.targets.dynamic for s in samples], torch.bool))
        return BatchedWindows(sparse=sparse, points=points, time=time, source_rows=to_dev(src_rows, torch.int64),
                              source_batch=to_dev(src_batch, torch.int64), ego_flow=to_dev(ego, torch.float32),
                              dt=to_dev(dts, torch.float32), source_counts=counts, samples=list(samples),
                              targets=targets)


@MODELS.register_module()
class WindowDataPreprocessor(BaseDataPreprocessor):
    """mmengine data preprocessor: ``{'inputs': [WindowSample, ...]}`` -> ``{'inputs': BatchedWindows}``."""

    def __init__(self, geometry: dict):
        super().__init__()
        self.batcher = WindowBatcher(Geometry.from_config(geometry))

    def forward(self, data: dict, training: bool = False) -> dict:
        return {"inputs": self.batcher(list(data["inputs"]), self.device)}
