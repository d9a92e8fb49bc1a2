"""Where the work units run: in this process, or on Ray actors (one per GPU, CPU actors without GPUs).

Both backends hand every finished chunk to the driver's ``on_chunk`` in the
driver's thread, which alone appends to the manifest: workers write outputs,
never the manifest, so there is one writer per journal whatever the cluster.

Ray: each actor (``ScoreActor``) holds one ``ScoreWorker`` and works on one
unit at a time, one chunk per call, so the driver sees progress every chunk
and a dead actor costs at most the chunk it was on. An actor that dies (its
process killed, out of host memory, node lost: ``RayActorError``) is
replaced and its unit is queued again, resuming from the manifest; after
``retries`` such deaths the unit is reported failed with the last error. An
exception inside a unit is not retried (it would happen again): the worker
reports it and the unit is failed. Scheduling is Ray's (the actors' GPU / CPU
resources); there is no scheduler here beyond the queue of units.

Every node must see ``--data`` and ``--out`` at the same paths (a shared
file system) and have the package installed.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from perception4d.errors import ConfigError
from perception4d.scoring.settings import Execution, WorkUnit
from perception4d.scoring.stream import ChunkResult
from perception4d.scoring.worker import ScoreWorker, WorkerInfo, WorkerSpec

log = logging.getLogger("perception4d.scoring")

OnChunk = Callable[[WorkerInfo, ChunkResult], None]
DoneOf = Callable[[WorkUnit], frozenset]


@dataclass
class UnitFailure:
    unit: str
    sequence: str
    reason: str
    attempts: int


@dataclass
class BackendRun:
    workers: list[WorkerInfo]
    failures: list[UnitFailure]
    startup_s: float  # until every worker was ready (models loaded, warmed up)
    scoring_s: float  # from then to the last chunk
    crashes: int = 0  # worker deaths (retried or not)


class LocalBackend:
    """Every unit in this process, one after the other, on ``execution.device``."""

    def __init__(self, spec: WorkerSpec, execution: Execution):
        self.spec, self.execution = spec, execution

    def run(self, units: deque[WorkUnit], done_of: DoneOf, on_chunk: OnChunk,
            on_worker: Callable[[WorkerInfo], None] | None = None) -> BackendRun:
        t0 = time.perf_counter()
        worker = ScoreWorker(self.spec)
        if on_worker:
            on_worker(worker.info)
        t1 = time.perf_counter()
        failures = []
        while units:
            unit = units.popleft()
            done = done_of(unit)
            while True:
                res = worker.work(unit, done, self.execution.chunk_frames)
                on_chunk(worker.info, res)
                if res.error:
                    failures.append(UnitFailure(unit.name, unit.source.key, res.error, 1))
                if res.finished:
                    break
        return BackendRun([worker.info], failures, t1 - t0, time.perf_counter() - t1)


@functools.lru_cache(maxsize=None)
def _actor_class():
    import ray

    @ray.remote
    class ScoreActor:
        def __init__(self, spec: WorkerSpec):
            self.worker = ScoreWorker(spec)

        def info(self) -> WorkerInfo:
            info = self.worker.info
            gpus = ray.get_gpu_ids()
            return replace(info, device=f"{info.device} (GPU {','.join(map(str, gpus))})") if gpus else info

        def work(self, unit: WorkUnit, done: frozenset, max_steps: int) -> ChunkResult:
            return self.worker.work(unit, done, max_steps)

    return ScoreActor


@dataclass
class _Slot:
    name: str
    actor: object
    info: WorkerInfo | None = None
    unit: WorkUnit | None = None


class RayBackend:
    """Units spread over Ray actors; see the module docstring."""

    def __init__(self, spec: WorkerSpec, execution: Execution):
        import ray

        if not ray.is_initialized():
            raise ConfigError("the Ray backend needs ray.init() first (the driver calls it for --ray)")
        self.spec, self.execution = spec, execution
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        cpus = float(resources.get("CPU", 1))
        g = execution.gpus_per_worker
        self.gpus = (1.0 if gpus >= 1 else 0.0) if g is None else float(g)
        if self.gpus > 0 and gpus < self.gpus:
            raise ConfigError(f"each worker asks for {self.gpus:g} GPU but the Ray cluster has {gpus:g}")
        self.cpus = int(execution.cpus_per_worker or (max(1, min(8, int(cpus // gpus))) if self.gpus > 0 else 1))
        default = int(gpus // self.gpus) if self.gpus > 0 else max(1, int(cpus // self.cpus))
        self.num_workers = int(execution.workers or default)
        self.device = "cuda" if self.gpus > 0 else "cpu"
        self.crashes = 0
        self._serial = 0

    def _new_slot(self) -> _Slot:
        self._serial += 1
        name = f"worker-{self._serial}"
        spec = replace(self.spec, name=name, device=self.device, threads=self.cpus)
        actor = _actor_class().options(num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0,
                                       max_task_retries=0).remote(spec)
        return _Slot(name, actor)

    def _start(self, slots: list[_Slot], on_worker) -> None:
        """Wait until the actors are placed and warmed up (no free GPU for too long is an error)."""
        import ray

        refs = {s.actor.info.remote(): s for s in slots}
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=self.execution.worker_start_timeout_s)
        if pending:
            raise ConfigError(f"{len(pending)} of {len(refs)} score workers did not start within "
                              f"{self.execution.worker_start_timeout_s:g} s (each needs {self.gpus:g} GPU and "
                              f"{self.cpus} CPU; the cluster has {ray.cluster_resources()})")
        from ray.exceptions import RayActorError, RayTaskError

        for ref in ready:
            slot = refs[ref]
            try:
                slot.info = ray.get(ref)  # an actor that failed to build raises its error here
            except (RayActorError, RayTaskError) as e:
                raise ConfigError(f"score worker {slot.name} failed to start: {_first_line(e)}") from None
            if on_worker:
                on_worker(slot.info)

    def run(self, units: deque[WorkUnit], done_of: DoneOf, on_chunk: OnChunk,
            on_worker: Callable[[WorkerInfo], None] | None = None) -> BackendRun:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        t0 = time.perf_counter()
        slots = [self._new_slot() for _ in range(min(self.num_workers, max(1, len(units))))]
        self._start(slots, on_worker)
        t1 = time.perf_counter()
        attempts: dict[str, int] = {}
        failures: list[UnitFailure] = []
        inflight: dict[object, _Slot] = {}

        def submit(slot: _Slot, unit: WorkUnit, first: bool) -> None:
            slot.unit = unit
            done = done_of(unit) if first else frozenset()
            inflight[slot.actor.work.remote(unit, done, self.execution.chunk_frames)] = slot

        for slot in slots:
            if units:
                submit(slot, units.popleft(), True)
        while inflight:
            [ref], _ = ray.wait(list(inflight), num_returns=1)
            slot = inflight.pop(ref)
            unit = slot.unit
            try:
                res = ray.get(ref)
            except RayActorError as e:  # the worker process died
                self.crashes += 1
                n = attempts[unit.name] = attempts.get(unit.name, 0) + 1
                reason = f"worker {slot.name} (pid {slot.info.pid if slot.info else '?'}) died: {_first_line(e)}"
                log.error("%s while scoring %s (attempt %d of %d)", reason, unit.name, n,
                          self.execution.retries + 1)
                if n <= self.execution.retries:
                    units.appendleft(unit)
                else:
                    failures.append(UnitFailure(unit.name, unit.source.key, reason, n))
                ray.kill(slot.actor, no_restart=True)
                slots.remove(slot)
                if units:
                    new = self._new_slot()
                    self._start([new], on_worker)
                    slots.append(new)
                    submit(new, units.popleft(), True)
                continue
            except RayTaskError as e:  # the call itself failed (e.g. a result that does not serialise)
                res = ChunkResult(unit.name, [], True, error=_first_line(e))
            if not res.finished:  # the next call first: the actor works while the driver writes the journal
                submit(slot, unit, False)
            elif units:
                submit(slot, units.popleft(), True)
            else:
                slot.unit = None
            on_chunk(slot.info, res)
            if res.error:
                failures.append(UnitFailure(unit.name, unit.source.key, res.error, attempts.get(unit.name, 0) + 1))
        for slot in slots:
            ray.kill(slot.actor, no_restart=True)
        return BackendRun([s.info for s in slots if s.info], failures, t1 - t0, time.perf_counter() - t1,
                          self.crashes)


def _first_line(exc: BaseException) -> str:
    """A one-line summary; for an error raised inside the actor, the original exception's line (the last)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    inner = [ln for ln in lines if "Error: " in ln or "Exception: " in ln]
    text = inner[-1] if inner and len(lines) > 1 else (lines[0] if lines else "")
    return f"{type(exc).__name__}: {text}"[:500]
