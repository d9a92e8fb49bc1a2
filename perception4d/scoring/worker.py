"""A scoring worker: one model on one device, scoring work units a chunk at a time.

The same class runs in the driver's process (local backend), in a worker
process (processes backend) and inside a Ray actor (ray backend); see
``perception4d.scoring.backends``. It builds one ``Predictor``
(model loaded, fused on CUDA, warmed up) and gives every work unit a fresh
stream over the same loaded network, so nothing of one unit's window leaks
into the next.
"""

from __future__ import annotations

import logging
import os
import socket
import traceback
from dataclasses import dataclass

from perception4d.errors import ConfigError
from perception4d.scoring.settings import ScoreSettings, WorkUnit
from perception4d.scoring.stream import ChunkResult, UnitScorer

log = logging.getLogger("perception4d.scoring")


@dataclass(frozen=True)
class WorkerSpec:
    """Plain data: a worker process or a Ray actor builds the same worker from it."""

    name: str
    settings: ScoreSettings
    tasks: tuple[str, ...]  # the tasks the run scores (checked against the model by the driver)
    device: str
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    warmup_steps: int | None = None  # None: the predictor's default for the device


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    pid: int
    host: str
    device: str
    model: str  # the predictor's description
    warmup_s: float


def resolve_tasks(model_tasks: tuple[str, ...], asked: tuple[str, ...] | None, model_name: str) -> tuple[str, ...]:
    """The tasks to score: every head of the model, or the asked subset (a task without a head is refused)."""
    if asked is None:
        return tuple(model_tasks)
    missing = [t for t in asked if t not in model_tasks]
    if missing:
        raise ConfigError(f"{model_name} has no {missing} head(s), only {list(model_tasks)}: pass a checkpoint "
                          f"trained for them or leave them out of --tasks")
    return tuple(asked)


class ScoreWorker:
    def __init__(self, spec: WorkerSpec):
        import torch

        from perception4d.runtime import ModelSpec, Predictor, Warmup
        from perception4d.runtime.policy import FramePolicy
        from perception4d.scoring.tasks import FlowTask, MosTask, OccupancyTask

        s = spec.settings
        self.spec = spec
        self.settings = s
        self.device = torch.device(spec.device)
        self.tasks = spec.tasks
        self.max_gap_s = float(s.max_gap_s)
        self.mos_fused = "mos" in self.tasks and s.mos_output == "fused"
        warmup = None if spec.warmup_steps is None else Warmup(steps=spec.warmup_steps)
        model = ModelSpec("score", config=s.config, checkpoint=s.checkpoint, device=spec.device,
                          cfg_options=dict(s.cfg_options))
        self.base = Predictor(model, self.device, amp=s.amp, mos_fusion=self.mos_fused, warmup=warmup,
                              policy=FramePolicy(s.max_gap_s))
        resolve_tasks(self.base.tasks, self.tasks, self.base.name)
        self._policy = FramePolicy(s.max_gap_s)
        self.handlers = {}
        if "flow" in self.tasks:
            self.handlers["flow"] = FlowTask(s.out)
        if "mos" in self.tasks:
            self.handlers["mos"] = MosTask(s.out, s.refine)
        if "occupancy" in self.tasks:
            self.handlers["occupancy"] = OccupancyTask(s.out, self.base.loaded.model.heads["occupancy"].grid,
                                                      s.occupancy_gt)
        self._unit: UnitScorer | None = None
        self._limit_threads()  # after the warm-up: numba's first compilation resets torch's thread count
        self.info = WorkerInfo(spec.name, os.getpid(), socket.gethostname(), str(self.device),
                               self.base.describe(), self.base.warmup_s)

    def _limit_threads(self) -> None:
        """Hold torch (and numba's parallel kernels) to ``spec.threads``.

        Checked before every chunk: LLVM's initialisation when numba compiles a function for the first time
        resets the OpenMP thread count that ``torch.set_num_threads`` set, and workers sharing a machine then
        oversubscribe its cores (measured: two one-thread CPU workers on two cores ran 5x slower per frame).
        """
        if not self.spec.threads:
            return
        import numba
        import torch

        n = int(self.spec.threads)
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        if numba.get_num_threads() != min(n, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))

    def new_stream(self, stream_id: str):
        """A predictor over the already loaded (and fused) network with an empty window."""
        from perception4d.runtime import Predictor, Warmup

        return Predictor(self.base.loaded, self.device, amp=self.base.amp, mos_fusion=self.mos_fused,
                         policy=self._policy, warmup=Warmup(steps=0), fuse=False, stream_id=stream_id)

    def work(self, unit: WorkUnit, done: frozenset[int], max_steps: int) -> ChunkResult:
        """Score up to ``max_steps`` frames of ``unit`` (started with ``done`` skipped, continued on later calls).

        An unexpected exception ends the unit with ``ChunkResult.error`` (its traceback's last lines); the
        records of frames finished before it in the same chunk are lost and scored again on resumption.
        """
        self._limit_threads()
        try:
            if self._unit is None or self._unit.unit != unit:
                self._unit = UnitScorer(self, unit, done)
            result = self._unit.run_chunk(max_steps)
        except Exception as exc:  # noqa: BLE001 - reported per unit; the worker goes on with the next one
            self._unit = None
            tb = traceback.format_exc().strip().splitlines()
            log.error("%s: %s failed: %s", self.spec.name, unit.name, tb[-1])
            return ChunkResult(unit.name, [], True, error=f"{type(exc).__name__}: {exc}\n" + "\n".join(tb[-6:]))
        if result.finished:
            self._unit = None
        return result
