"""``score()``: the predictor over whole datasets, resumable, in this process, in worker processes or on Ray.

One run:

1. lock the output folder, check its manifest against the settings (a rerun resumes;
   different settings are refused), delete temporary files a killed run left;
2. build the model once on the CPU to check it (config, checkpoint, tasks) and read its
   window length;
3. find the sequences; open each (a sequence that cannot be opened, or whose timestamps do
   not increase, is reported failed with the reader's message and the rest goes on);
4. cut them into work units, drop the frames the journals already hold, and run the units on
   the backend (``perception4d.scoring.backends`` says which to use when); every chunk's records
   are appended to the journals as they arrive;
5. write what needs a complete sequence (occupancy.json), then the report: metrics per
   sequence and overall through the metrics' own API, error profiles, failures.

The progress bar (tqdm) shows frames/s and the time left.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from perception4d.errors import ConfigError, Perception4DError
from perception4d.scoring.backends import BackendRun, LocalBackend, ProcessBackend, RayBackend, UnitFailure
from perception4d.scoring.manifest import MANIFEST_VERSION, FrameRecord, RunFolder, RunHeader, file_sha256
from perception4d.scoring.settings import (Execution, ScoreSettings, SequenceSource, WorkUnit, discover_sources,
                                           open_source, split_units)
from perception4d.scoring.stream import ChunkResult
from perception4d.scoring.worker import WorkerInfo, WorkerSpec, resolve_tasks

log = logging.getLogger("perception4d.scoring")


@dataclass
class SequenceState:
    """One sequence of the dataset in this run."""

    source: SequenceSource
    sequence_id: str = ""
    num_frames: int = 0
    error: str = ""  # why it could not be opened (then it has no frames to score)
    records: dict[int, FrameRecord] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.error and len(self.records) == self.num_frames


@dataclass
class ModelFacts:
    """What the driver learns from building the model once."""

    description: str
    tasks: tuple[str, ...]
    num_frames: int  # the window length T
    occupancy_grid: object | None
    random_init: bool


@dataclass
class RunStats:
    backend: str
    workers: list[WorkerInfo]
    wall_s: float
    startup_s: float
    scoring_s: float
    frames_scored: int  # frames finished by this run (not those resumed from the manifest)
    steps: int  # predictor steps (context steps included)
    crashes: int
    resumed_frames: int
    removed_temporaries: int

    @property
    def frames_per_s(self) -> float:
        return self.frames_scored / self.scoring_s if self.scoring_s > 0 else float("nan")


@dataclass
class ScoreRun:
    """What ``score`` did; ``report`` is what it wrote to ``report.json``."""

    out: Path
    sequences: list[SequenceState]
    failures: list[UnitFailure]
    stats: RunStats
    report: dict

    @property
    def complete(self) -> bool:
        """Every frame of every openable sequence has its line in the manifest (nothing left to resume)."""
        return not self.failures and all(s.complete for s in self.sequences if not s.error)


@dataclass(frozen=True)
class ScoreEvent:
    """Progress as the driver sees it (``observer`` of ``score``)."""

    kind: str  # "worker" (a worker is ready) or "chunk" (a chunk's records are in the manifest)
    worker: WorkerInfo
    chunk: ChunkResult | None = None
    frames_done: int = 0  # finished frames of the dataset, manifest included


def inspect_model(settings: ScoreSettings) -> ModelFacts:
    from perception4d.runtime.models import ModelSpec, load_model_set

    loaded = load_model_set(ModelSpec("score", config=settings.config, checkpoint=settings.checkpoint,
                                      cfg_options=dict(settings.cfg_options)), "cpu")
    tasks = resolve_tasks(loaded.tasks, settings.tasks, loaded.describe())
    heads = loaded.model.heads
    grid = heads["occupancy"].grid if "occupancy" in tasks else None
    return ModelFacts(loaded.describe(), tasks, loaded.geometry.num_frames, grid, loaded.random_init)


def make_header(settings: ScoreSettings, facts: ModelFacts, fmt: str) -> RunHeader:
    from perception4d.runtime.models import ModelSpec, resolve_config

    config = resolve_config(ModelSpec("score", config=settings.config, checkpoint=settings.checkpoint))
    return RunHeader(MANIFEST_VERSION, str(config), file_sha256(config), settings.checkpoint,
                     file_sha256(settings.checkpoint), dict(settings.cfg_options), str(Path(settings.data).resolve()),
                     fmt, facts.tasks, settings.mos_output, settings.refine,
                     None if settings.occupancy_gt is None else str(Path(settings.occupancy_gt).resolve()),
                     float(settings.max_gap_s), settings.amp)


def open_sequences(sources: list[SequenceSource], facts: ModelFacts, settings: ScoreSettings) -> list[SequenceState]:
    """Open every sequence once: its length and its timestamps (refused when they do not increase)."""
    from perception4d.datasets.windows import plan_windows, window_task

    out = []
    for src in sources:
        state = SequenceState(src)
        try:
            reader = open_source(src)
            state.sequence_id, state.num_frames = str(reader.sequence_id), len(reader)
            plan_windows(reader, facts.num_frames, settings.max_gap_s, window_task(facts.tasks))
        except (Perception4DError, OSError) as e:
            state.error = f"{type(e).__name__}: {e}"
            state.num_frames = 0
            log.error("sequence %s is not scored: %s", src.key, state.error)
        out.append(state)
    return out


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def score(settings: ScoreSettings, execution: Execution = Execution(),
          observer: Callable[[ScoreEvent], None] | None = None) -> ScoreRun:
    """Score ``settings.data`` into ``settings.out`` (see the module docstring); resumes an earlier run there."""
    t_start = time.perf_counter()
    folder = RunFolder(settings.out)
    folder.root.mkdir(parents=True, exist_ok=True)
    folder.lock()
    try:
        if execution.restart:
            folder.clear()
        facts = inspect_model(settings)
        sources = discover_sources(settings.data, settings.format)
        fmt = sources[0].format
        folder.check_header(make_header(settings, facts, fmt))
        removed = folder.remove_stale_temporaries()
        sequences = open_sequences(sources, facts, settings)
        by_key = {s.source.key: s for s in sequences}
        for s in sequences:
            if not s.error:
                s.records = {i: r for i, r in folder.journal(s.source.key).load().items() if i < s.num_frames}
        resumed = sum(len(s.records) for s in sequences)
        units = deque(sorted((u for s in sequences if not s.error
                              for u in split_units(s.source, s.num_frames, execution.segment_frames)
                              if any(i not in s.records for i in range(u.start, u.stop))),
                             key=lambda u: -(u.stop - u.start)))
        total = sum(s.num_frames for s in sequences)
        if resumed:
            log.info("%s: resuming, %d of %d frames already finished", folder.root, resumed, total)
        spec = WorkerSpec("local", settings, facts.tasks, execution.device or _default_device(),
                          threads=execution.threads)
        counters = {"frames": 0, "steps": 0}
        workers: list[WorkerInfo] = []
        bars = []  # the progress bar starts with the first worker (its rate and ETA leave model loading out)

        def on_worker(info: WorkerInfo) -> None:
            workers.append(info)
            if not bars:
                bars.append(_progress(total, resumed + counters["frames"], execution.progress))
            log.info("%s ready on %s (pid %d, %s): %s, warm-up %.1f s", info.name, info.host, info.pid, info.device,
                     info.model, info.warmup_s)
            if observer:
                observer(ScoreEvent("worker", info, frames_done=resumed + counters["frames"]))

        def on_chunk(info: WorkerInfo, res: ChunkResult) -> None:
            grouped: dict[str, list[FrameRecord]] = {}
            for r in res.records:
                if r.index not in by_key[r.sequence].records:
                    grouped.setdefault(r.sequence, []).append(r)
            for key, recs in grouped.items():
                folder.journal(key).append(recs)
                by_key[key].records.update((r.index, r) for r in recs)
            n = sum(len(v) for v in grouped.values())
            counters["frames"] += n
            counters["steps"] += res.steps
            bars[0].update(n)
            if observer:
                observer(ScoreEvent("chunk", info, res, resumed + counters["frames"]))

        done_of = _done_of(by_key)
        if units:
            backend, shutdown = _backend(spec, execution)
            try:
                ran = backend.run(units, done_of, on_chunk, on_worker)
            finally:
                for bar in bars:
                    bar.close()
                shutdown()
        else:
            ran = BackendRun([], [], 0.0, 0.0)
        _finalize_sequences(settings, facts, sequences)
        stats = RunStats(execution.backend, workers, time.perf_counter() - t_start, ran.startup_s, ran.scoring_s,
                         counters["frames"], counters["steps"], ran.crashes, resumed, removed)
        from perception4d.scoring.report import build_report, print_summary, write_report

        report = build_report(settings, facts, sequences, ran.failures, stats)
        write_report(folder.root, report, sequences, facts.tasks)
        run = ScoreRun(folder.root, sequences, ran.failures, stats, report)
        if execution.progress:
            print_summary(report)
        return run
    finally:
        folder.unlock()


def _done_of(by_key: dict[str, SequenceState]):
    def done_of(unit: WorkUnit) -> frozenset:
        recs = by_key[unit.source.key].records
        return frozenset(i for i in range(unit.start, unit.stop) if i in recs)

    return done_of


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="frame", desc="score", disable=not enabled, smoothing=0.1,
                dynamic_ncols=True)


def _backend(spec: WorkerSpec, execution: Execution):
    """The backend and its shutdown (a Ray cluster started here is shut down again)."""
    if execution.backend == "local":
        return LocalBackend(spec, execution), lambda: None
    if execution.backend == "processes":
        return ProcessBackend(spec, execution), lambda: None  # its workers end with its run
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs the ray package (pip install 'perception4d[ray]')") from None
    started = False
    if execution.ray_address is not None or not ray.is_initialized():
        if ray.is_initialized():
            raise ConfigError("Ray is already initialised in this process; leave out ray_address to use it")
        ray.init(address=execution.ray_address, include_dashboard=False, log_to_driver=False)
        started = True
    return RayBackend(spec, execution), (ray.shutdown if started else (lambda: None))


def _finalize_sequences(settings: ScoreSettings, facts: ModelFacts, sequences: list[SequenceState]) -> None:
    """Outputs that need the whole sequence: occupancy.json (from the manifest, so it covers resumed frames)."""
    if "occupancy" not in facts.tasks:
        return
    from perception4d.scoring.tasks import SequenceNames, occupancy_json

    for s in sequences:
        if s.complete:
            names = SequenceNames.of(open_source(s.source), s.source.index)
            occupancy_json(Path(settings.out), names.occupancy, facts.occupancy_grid, s.records.values())
