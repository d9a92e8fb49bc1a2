"""Datasets for the mmengine Runner: windows over readers, or over simulated sequences.

``tasks`` selects the targets and the window layout (perception4d.datasets.windows):
``("flow",)`` one sample per sweep with a next sweep and flow labels;
``("mos",)`` one sample per scan with MOS labels on every point of its window;
``("flow", "mos")`` flow windows carrying both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

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
    """The windows of ``readers`` whose target sweep (flow: sweep t; MOS: the current scan) has labels."""

    def __init__(self, readers: Sequence[SequenceReader], geometry: dict, tasks: Sequence[str] = ("flow",),
                 require_labels: bool = True, max_gap_s: float = DEFAULT_MAX_GAP_S, augment: dict | None = None,
                 short_window_prob: float = 0.0):
        self.geometry = Geometry.from_config(geometry)
        self.tasks = tuple(tasks)
        unknown = [t for t in self.tasks if t not in WINDOW_TASKS]
        if unknown or not self.tasks:
            raise ConfigError(f"dataset tasks must be a non-empty subset of {WINDOW_TASKS}, got {self.tasks}")
        self.readers = list(readers)
        self.require_labels = require_labels
        self.max_gap_s = max_gap_s
        self.augment = WindowAugment(**augment) if augment else None
        self.short_window_prob = float(short_window_prob)  # training: start some windows later (like log starts)
        layout = window_task(self.tasks)
        self.index: list[tuple[int, int, int]] = []  # (reader, first frame, last frame)
        for r_i, reader in enumerate(self.readers):
            for first, last in plan_windows(reader, self.geometry.num_frames, max_gap_s, layout).spans:
                target = last - 1 if layout == "flow" else last
                if require_labels and not self._labelled(reader, target):
                    continue
                self.index.append((r_i, first, last))
        if not self.index:
            raise ValueError(f"no {'+'.join(self.tasks)} samples in {[str(r) for r in self.readers]}"
                             + (" with labels" if require_labels else ""))

    def _labelled(self, reader: SequenceReader, i: int) -> bool:
        return all((_has_flow_labels if t == "flow" else _has_mos_labels)(reader, i) for t in self.tasks)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        r_i, first, last = self.index[i]
        reader = self.readers[r_i]
        min_len = 2 if window_task(self.tasks) == "flow" else 1
        if self.short_window_prob > 0 and np.random.random() < self.short_window_prob:
            first = int(np.random.randint(first, last - min_len + 2))
        window = Window(tuple(reader[k] for k in range(first, last + 1)))
        sample = build_window_sample(window, self.geometry, sequence_id=reader.sequence_id,
                                     with_targets=self.require_labels, max_gap_s=self.max_gap_s, tasks=self.tasks)
        if self.augment is not None:  # numpy's global RNG is seeded per worker by the Runner
            sample = self.augment(sample, np.random.default_rng(np.random.randint(2**31)))
        return {"inputs": sample}


@DATASETS.register_module()
class SimWindowDataset(WindowDataset):
    """Sequences from the built-in LiDAR simulator, generated at construction: one per (seed, preset)."""

    def __init__(self, geometry: dict, seeds: Sequence[int] = (0,), frames_per_sequence: int = 10,
                 preset: str | Sequence[str] = "hdl64e", preset_overrides: dict | None = None,
                 tasks: Sequence[str] = ("flow",), augment: dict | None = None, short_window_prob: float = 0.0):
        from dataclasses import replace

        from perception4d.sim import get_preset, simulate

        presets = [preset] if isinstance(preset, str) else list(preset)
        readers = []
        for name in presets:
            sensor = replace(get_preset(name), **(preset_overrides or {}))
            for seed in seeds:
                seq = simulate(preset=sensor, num_frames=frames_per_sequence, seed=int(seed), occupancy=None)
                readers.append(FrameListReader(seq.frames, f"sim_{name}_{seed}"))
        log.info("simulated %d sequences x %d frames (%s)", len(readers), frames_per_sequence, ", ".join(presets))
        super().__init__(readers, geometry, tasks=tasks, augment=augment, short_window_prob=short_window_prob)


@DATASETS.register_module()
class ReaderWindowDataset(WindowDataset):
    """Sequences found on disk by ``perception4d.io.open_dataset`` (AV2 logs, SemanticKITTI, simulator output)."""

    def __init__(self, geometry: dict, data_root: str, format: str | None = None, require_labels: bool = True,
                 tasks: Sequence[str] = ("flow",), max_gap_s: float = DEFAULT_MAX_GAP_S,
                 augment: dict | None = None):
        from perception4d.io import open_dataset

        super().__init__(open_dataset(data_root, format), geometry, tasks=tasks, require_labels=require_labels,
                         max_gap_s=max_gap_s, augment=augment)
