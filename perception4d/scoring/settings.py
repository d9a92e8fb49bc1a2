"""What a scoring run is asked to do, which sequences it finds and how their frames are cut into work units.

``ScoreSettings`` holds everything that changes the outputs (model, data,
tasks, MOS variant, gap threshold, precision); it is recorded in the run's
manifest, and a rerun into the same folder must ask for the same thing.
``Execution`` holds what only changes how the work is spread (backend,
workers, chunk and segment sizes, retries); it may differ between a run and
its resumption.

A ``WorkUnit`` is a contiguous range of frames of one sequence. Long
sequences are split into segments so that a dataset of a few long recordings
(SemanticKITTI's validation split is one sequence of 4,071 scans) still keeps
every worker busy; each segment replays the few sweeps before its first frame
(``perception4d.scoring.stream.context_start``), so its outputs equal those of
an unsplit run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from perception4d.datasets.sample import DEFAULT_MAX_GAP_S
from perception4d.errors import ConfigError, DataFormatError

TASKS = ("flow", "mos", "occupancy")
MOS_OUTPUTS = ("fused", "online")
BACKENDS = ("local", "processes", "ray")


@dataclass(frozen=True)
class ScoreSettings:
    """The outputs a run produces (recorded in ``manifest/run.json``; a resumed run must match)."""

    config: str  # the model config (.py)
    checkpoint: str | None  # trained weights; None: random init (timing only, said in the report)
    data: str  # a dataset root, a sequence folder or a log
    out: str
    format: str | None = None  # semantickitti | av2 | nuscenes; None: detected
    tasks: tuple[str, ...] | None = None  # None: every head of the model
    mos_output: str = "fused"  # fused (receding-horizon, as `p4d infer --task mos`) | online
    refine: bool = False  # MOS: instance-aware refinement of the written output
    occupancy_gt: str | None = None  # occupancy ground-truth folder (p4d simulate / occupancy-gt layout)
    max_gap_s: float = DEFAULT_MAX_GAP_S
    amp: bool | None = None  # None: fp16 autocast on CUDA, fp32 on the CPU
    cfg_options: dict = field(default_factory=dict)  # dotted config overrides (ModelSpec.cfg_options)

    def __post_init__(self):
        if self.tasks is not None:
            tasks = tuple(self.tasks)
            bad = [t for t in tasks if t not in TASKS]
            if bad or not tasks:
                raise ConfigError(f"tasks must be a non-empty subset of {list(TASKS)}, got {list(tasks)}")
            object.__setattr__(self, "tasks", tuple(t for t in TASKS if t in tasks))
        if self.mos_output not in MOS_OUTPUTS:
            raise ConfigError(f"mos_output must be one of {MOS_OUTPUTS}, got {self.mos_output!r}")


@dataclass(frozen=True)
class Execution:
    """How the work is spread; free to change between a run and its resumption."""

    backend: str = "local"  # local: in this process; processes: one worker process per GPU of this machine;
    #                         ray: one actor per GPU of a Ray cluster (both: CPU workers without GPUs)
    device: str | None = None  # local backend: the device (None: cuda if available, else cpu)
    threads: int | None = None  # local backend: torch threads (None: torch's default)
    ray_address: str | None = None  # None: the already initialised Ray, else a new local cluster
    workers: int | None = None  # processes / ray: workers (None: one per GPU, else CPUs // cpus_per_worker)
    cpus_per_worker: int | None = None  # processes / ray: CPUs (and torch threads) of each worker; None: 1 for
    #                                     CPU workers, min(8, CPUs / GPUs) for GPU workers (reading, metrics, writing)
    gpus_per_worker: float | None = None  # processes / ray: None: 1 when there are GPUs, else 0 (CPU workers);
    #                                       processes: at most 1 (0.5: two worker processes share a GPU)
    retries: int = 2  # a unit whose worker died is re-run this many times before it is reported failed
    segment_frames: int = 400  # frames per work unit (0: whole sequences)
    chunk_frames: int = 16  # frames a worker scores between two reports to the driver
    worker_start_timeout_s: float = 900.0  # processes / ray: workers not ready by then (ray: no free GPU) are an
    #                                        error
    progress: bool = True  # a progress bar (tqdm) on stderr
    restart: bool = False  # forget an earlier run in ``out`` (its manifest and outputs) instead of resuming it

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        for name in ("retries", "segment_frames"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("chunk_frames", "cpus_per_worker", "threads"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.workers is not None and int(self.workers) < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.gpus_per_worker is not None and float(self.gpus_per_worker) < 0:
            raise ConfigError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")


@dataclass(frozen=True)
class SequenceSource:
    """One sequence of the dataset, as a worker opens it (plain data: it travels to worker processes)."""

    key: str  # unique, file-name safe: the manifest journal's name and the report's row
    path: str  # the folder ``open_dataset`` opens for it
    format: str
    index: int  # position among the dataset's sequences (the MOS / occupancy folder names use it)
    member: int = 0  # which of ``open_dataset(path)``'s readers (nuScenes: the scene)


@dataclass(frozen=True)
class WorkUnit:
    """Frames ``start .. stop - 1`` of one sequence."""

    source: SequenceSource
    start: int
    stop: int
    num_frames: int  # frames in the whole sequence

    @property
    def name(self) -> str:
        return f"{self.source.key}[{self.start}:{self.stop}]"


def _safe_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "sequence"


def discover_sources(data: str | Path, fmt: str | None) -> list[SequenceSource]:
    """Every sequence under ``data`` (the folders ``open_dataset`` would open), without opening them.

    Opening is left to ``open_source`` so that one unreadable sequence fails alone.
    """
    from perception4d.io import open_dataset
    from perception4d.io.discover import av2_log_dirs, detect_formats, semantickitti_sequence_dirs

    path = Path(data)
    if not path.is_dir():
        raise DataFormatError(path, "not a folder")
    if fmt is None:
        found = detect_formats(path)
        if len(found) != 1:
            open_dataset(path)  # raises the reader's own message (no layout, or several)
        fmt = found[0]
    if fmt == "semantickitti":
        dirs = semantickitti_sequence_dirs(path)
    elif fmt == "av2":
        dirs = av2_log_dirs(path)
    elif fmt == "nuscenes":
        readers = open_dataset(path, fmt)  # one set of tables for all scenes
        names = [str(r.sequence_id) for r in readers]
        return _keyed([(n, str(path), k) for k, n in enumerate(names)], fmt)
    else:
        open_dataset(path, fmt)  # unknown format: the reader's ConfigError
        raise AssertionError(fmt)
    if not dirs:
        open_dataset(path, fmt)  # raises: no sequence of that format
    return _keyed([(d.name, str(d), 0) for d in dirs], fmt)


def _keyed(items: list[tuple[str, str, int]], fmt: str) -> list[SequenceSource]:
    out, seen = [], set()
    for index, (name, path, member) in enumerate(items):
        key = _safe_key(name)
        if key in seen:
            key = f"{key}-{index}"
        seen.add(key)
        out.append(SequenceSource(key, path, fmt, index, member))
    return out


def open_source(source: SequenceSource):
    """The ``SequenceReader`` of one source (``DataFormatError`` naming the file when it cannot be read)."""
    from perception4d.io import open_dataset

    readers = open_dataset(source.path, source.format)
    if source.member >= len(readers):
        raise DataFormatError(source.path, f"holds {len(readers)} sequence(s), expected sequence "
                                           f"{source.member} ({source.key})")
    return readers[source.member]


def split_units(source: SequenceSource, num_frames: int, segment_frames: int) -> list[WorkUnit]:
    """The sequence's frames in segments of at most ``segment_frames`` (0: one unit), sizes within one."""
    if num_frames <= 0:
        return []
    if segment_frames <= 0 or num_frames <= segment_frames:
        return [WorkUnit(source, 0, num_frames, num_frames)]
    parts = -(-num_frames // segment_frames)
    bounds = [round(k * num_frames / parts) for k in range(parts + 1)]
    return [WorkUnit(source, a, b, num_frames) for a, b in zip(bounds[:-1], bounds[1:])]
