"""Scene-flow datasets for the mmengine Runner: windows over readers, or over simulated sequences."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch.utils.data import Dataset

from perception4d.core.frame import Frame
from perception4d.core.geometry import Geometry
from perception4d.datasets.sample import build_window_sample
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


class WindowFlowDataset(Dataset):
    """Every sweep t that has a next sweep t+1 (and, when ``require_labels``, flow labels) is one sample.

    The window is sweeps t-(T-2) .. t+1, shorter at the start of a sequence.
    """

    def __init__(self, readers: Sequence[SequenceReader], geometry: dict, require_labels: bool = True):
        self.geometry = Geometry.from_config(geometry)
        self.readers = list(readers)
        self.require_labels = require_labels
        self.index: list[tuple[int, int]] = []  # (reader, reference frame index t+1)
        for r_i, reader in enumerate(self.readers):
            for ref in range(1, len(reader)):
                if require_labels and not self._has_flow(reader, ref - 1):
                    continue
                self.index.append((r_i, ref))
        if not self.index:
            raise ValueError(f"no scene-flow samples in {[str(r) for r in self.readers]}"
                             + (" with flow labels" if require_labels else ""))

    @staticmethod
    def _has_flow(reader: SequenceReader, i: int) -> bool:
        has = getattr(reader, "has_flow_labels", None)
        if has is not None:
            return bool(has(i))
        lb = reader[i].labels
        return lb is not None and lb.flow is not None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        r_i, ref = self.index[i]
        reader = self.readers[r_i]
        window = reader.window(ref, self.geometry.num_frames)
        return {"inputs": build_window_sample(window, self.geometry, sequence_id=reader.sequence_id,
                                              with_targets=self.require_labels)}


@DATASETS.register_module()
class SimFlowDataset(WindowFlowDataset):
    """Sequences from the built-in LiDAR simulator, generated at construction: one per (seed, preset)."""

    def __init__(self, geometry: dict, seeds: Sequence[int] = (0,), frames_per_sequence: int = 10,
                 preset: str | Sequence[str] = "hdl64e", preset_overrides: dict | None = None):
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
        super().__init__(readers, geometry)


@DATASETS.register_module()
class ReaderFlowDataset(WindowFlowDataset):
    """Sequences found on disk by ``perception4d.io.open_dataset`` (AV2 logs with flow labels, simulator output)."""

    def __init__(self, geometry: dict, data_root: str, format: str | None = None, require_labels: bool = True):
        from perception4d.io import open_dataset

        super().__init__(open_dataset(data_root, format), geometry, require_labels=require_labels)
