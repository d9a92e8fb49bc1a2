"""Datasets for the mmengine Runner: windows over readers, or over simulated sequences.

``tasks`` selects the targets and the window layout (perception4d.datasets.windows):
``("flow",)`` one sample per sweep with a next sweep and flow labels;
``("mos",)`` one sample per scan with MOS labels on every point of its window;
``("flow", "mos")`` flow windows carrying both;
``("occupancy",)`` one sample per scan with that scan's occupancy ground truth
(``occupancy``: one list of ``OccupancyGT`` per reader, frame by frame; the
simulator dataset makes them with ``occupancy_grid``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from torch.utils.data import Dataset

from perception4d.core.frame import Frame
from perception4d.core.geometry import Geometry
from perception4d.core.window import Window
from perception4d.datasets.augment import WindowAugment
from perception4d.datasets.sample import DEFAULT_MAX_GAP_S, build_window_sample
from perception4d.datasets.windows import WINDOW_TASKS, plan_windows, window_task
from perception4d.errors import ConfigError
from perception4d.io.base import SequenceReader
from perception4d.registry import DATASETS

if TYPE_CHECKING:
    from perception4d.sim.occupancy import OccupancyGT

log = logging.getLogger("perception4d.datasets")


class FrameListReader(SequenceReader):
    """A SequenceReader over frames held in memory (simulated sequences, streams)."""

    format = "memory"

    def __init__(self, frames: Sequence[Frame], sequence_id: str):
        self._frames = list(frames)
        self._id = sequence_id

    @property
    def sequence_id(self) -> str:
        return self._id

    def __len__(self) -> int:
        return len(self._frames)

    def _read(self, index: int) -> Frame:
        return self._frames[index]

    def timestamp_ns(self, index: int) -> int:
        return self._frames[index].timestamp_ns


def _has_flow_labels(reader: SequenceReader, i: int) -> bool:
    has = getattr(reader, "has_flow_labels", None)
    if has is not None:
        return bool(has(i))
    lb = reader[i].labels
    return lb is not None and lb.flow is not None


def _has_mos_labels(reader: SequenceReader, i: int) -> bool:
    has = getattr(reader, "has_labels", None)
    if isinstance(has, bool):
        return has
    lb = reader[i].labels
    return lb is not None and (lb.semantic is not None or lb.moving is not None)


class WindowDataset(Dataset):
    """The windows of ``readers`` whose target sweep (flow: sweep t; MOS: the current scan) has labels.

    Occupancy targets belong to the window's newest sweep and come from ``occupancy[reader][frame]``
    (None where a frame has none).
    """

    def __init__(self, readers: Sequence[SequenceReader], geometry: dict, tasks: Sequence[str] = ("flow",),
                 require_labels: bool = True, max_gap_s: float = DEFAULT_MAX_GAP_S, augment: dict | None = None,
                 short_window_prob: float = 0.0,
                 occupancy: Sequence[Sequence[OccupancyGT | None]] | None = None):
        self.geometry = Geometry.from_config(geometry)
        self.tasks = tuple(tasks)
        unknown = [t for t in self.tasks if t not in WINDOW_TASKS]
        if unknown or not self.tasks:
            raise ConfigError(f"dataset tasks must be a non-empty subset of {WINDOW_TASKS}, got {self.tasks}")
        self.readers = list(readers)
        self.occupancy = None if occupancy is None else [list(o) for o in occupancy]
        self.require_labels = require_labels
        self.max_gap_s = max_gap_s
        self.augment = WindowAugment(**augment) if augment else None
        if "occupancy" in self.tasks and require_labels:
            self._check_occupancy()
        self.short_window_prob = float(short_window_prob)  # training: start some windows later (like log starts)
        layout = window_task(self.tasks)
        self.index: list[tuple[int, int, int]] = []  # (reader, first frame, last frame)
        for r_i, reader in enumerate(self.readers):
            for first, last in plan_windows(reader, self.geometry.num_frames, max_gap_s, layout).spans:
                target = last - 1 if layout == "flow" else last
                if require_labels and not self._labelled(r_i, target, last):
                    continue
                self.index.append((r_i, first, last))
        if not self.index:
            raise ValueError(f"no {'+'.join(self.tasks)} samples in {[str(r) for r in self.readers]}"
                             + (" with labels" if require_labels else ""))

    def _check_occupancy(self) -> None:
        if self.occupancy is None or len(self.occupancy) != len(self.readers):
            got = "none" if self.occupancy is None else f"{len(self.occupancy)} lists"
            raise ConfigError(f"the occupancy task needs one list of occupancy ground truth per reader "
                              f"({len(self.readers)}), got {got}")
        for reader, occ in zip(self.readers, self.occupancy):
            if len(occ) != len(reader):
                raise ConfigError(f"{reader.sequence_id}: {len(occ)} occupancy grids for {len(reader)} frames")
        a = self.augment
        if a is not None and (a.rotate or tuple(a.scale) != (1.0, 1.0) or a.z_shift != 0):
            raise ConfigError("the occupancy task allows only photometric augmentation (rotate=False, "
                              "scale=(1.0, 1.0), z_shift=0.0): the ground-truth grid is not transformed")

    def _labelled(self, r_i: int, target: int, last: int) -> bool:
        reader = self.readers[r_i]
        for t in self.tasks:
            if t == "occupancy":
                ok = self.occupancy[r_i][last] is not None
            else:
                ok = (_has_flow_labels if t == "flow" else _has_mos_labels)(reader, target)
            if not ok:
                return False
        return True

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        r_i, first, last = self.index[i]
        reader = self.readers[r_i]
        min_len = 2 if window_task(self.tasks) == "flow" else 1
        if self.short_window_prob > 0 and np.random.random() < self.short_window_prob:
            first = int(np.random.randint(first, last - min_len + 2))
        window = Window(tuple(reader[k] for k in range(first, last + 1)))
        occ = self.occupancy[r_i][last] if self.occupancy is not None else None
        sample = build_window_sample(window, self.geometry, sequence_id=reader.sequence_id,
                                     with_targets=self.require_labels, max_gap_s=self.max_gap_s, tasks=self.tasks,
                                     occupancy=occ)
        if self.augment is not None:  # numpy's global RNG is seeded per worker by the Runner
            sample = self.augment(sample, np.random.default_rng(np.random.randint(2**31)))
        return {"inputs": sample}


@DATASETS.register_module()
class SimWindowDataset(WindowDataset):
    """Sequences from the built-in LiDAR simulator, generated at construction: one per (seed, preset).

    With ``"occupancy"`` in ``tasks`` each frame is simulated with occupancy ground truth on
    ``occupancy_grid`` (``point_range``, ``voxel_size``; ego frame). ``terrain``: ``"flat"``,
    ``"urban"`` or a dict of ``perception4d.sim.TerrainConfig`` fields.
    """

    def __init__(self, geometry: dict, seeds: Sequence[int] = (0,), frames_per_sequence: int = 10,
                 preset: str | Sequence[str] = "hdl64e", preset_overrides: dict | None = None,
                 tasks: Sequence[str] = ("flow",), augment: dict | None = None, short_window_prob: float = 0.0,
                 occupancy_grid: dict | None = None, terrain: str | dict = "flat"):
        from dataclasses import replace

        from perception4d.sim import get_preset, simulate

        presets = [preset] if isinstance(preset, str) else list(preset)
        grid = None
        if "occupancy" in tuple(tasks):
            if occupancy_grid is None:
                raise ConfigError("SimWindowDataset: the occupancy task needs occupancy_grid=dict(point_range=..., "
                                  "voxel_size=...)")
            grid = Geometry.from_config({**occupancy_grid, "num_frames": 1})
        readers, occupancy = [], []
        for name in presets:
            sensor = replace(get_preset(name), **(preset_overrides or {}))
            for seed in seeds:
                seq = simulate(preset=sensor, num_frames=frames_per_sequence, seed=int(seed), occupancy=grid,
                               terrain=terrain)
                readers.append(FrameListReader(seq.frames, f"sim_{name}_{seed}"))
                occupancy.append(seq.occupancy)
        log.info("simulated %d sequences x %d frames (%s)", len(readers), frames_per_sequence, ", ".join(presets))
        super().__init__(readers, geometry, tasks=tasks, augment=augment, short_window_prob=short_window_prob,
                         occupancy=occupancy if grid is not None else None)


@DATASETS.register_module()
class ReaderWindowDataset(WindowDataset):
    """Sequences found on disk by ``perception4d.io.open_dataset`` (AV2 logs, SemanticKITTI, simulator output)."""

    def __init__(self, geometry: dict, data_root: str, format: str | None = None, require_labels: bool = True,
                 tasks: Sequence[str] = ("flow",), max_gap_s: float = DEFAULT_MAX_GAP_S,
                 augment: dict | None = None):
        from perception4d.io import open_dataset

        super().__init__(open_dataset(data_root, format), geometry, tasks=tasks, require_labels=require_labels,
                         max_gap_s=max_gap_s, augment=augment)
