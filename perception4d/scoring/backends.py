"""Where the work units run: in this process, in local worker processes, or on Ray actors.

Which one:

* ``local`` (the default): every unit in the driver's process, on one device. One GPU, or a quick CPU run.
* ``processes``: one worker process per GPU of this machine (``cuda`` of that GPU alone), or, without GPUs,
  CPUs / ``cpus_per_worker`` CPU workers with that many threads each. Needs nothing beyond the package:
  the way to use every GPU of one machine where Ray is not installed.
* ``ray``: one Ray actor per GPU of a Ray cluster (CPU actors without GPUs). The way to spread a dataset over
  several machines; every node must see ``--data`` and ``--out`` at the same paths (a shared file system)
  and have the package installed.

Every backend hands every finished chunk to the driver's ``on_chunk`` in the driver's thread, which alone
appends to the manifest: workers write outputs, never the manifest, so there is one writer per journal
whatever the number of workers.

The two pooled backends (``processes``, ``ray``) share one dispatch loop (``PoolBackend``) and differ only in
how a worker is started, called and stopped. Each worker holds one ``ScoreWorker`` and works on one unit at a
time, one chunk per call, so the driver sees progress every chunk and a dead worker costs at most the chunk
it was on; the driver keeps the queue of units and gives a worker its next unit when it finishes one. A
worker that dies (its process killed, out of host memory, node lost) is replaced and its unit is queued
again, resuming from the manifest; after ``retries`` such deaths the unit is reported failed with the last
error. An exception inside a unit is not retried (it would happen again): the worker reports it and the unit
is failed. There is no scheduler beyond the queue of units: Ray places actors by their GPU / CPU resources,
the processes backend gives each worker process the least used GPU.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from perception4d.errors import ConfigError
from perception4d.scoring.settings import Execution, WorkUnit
from perception4d.scoring.stream import ChunkResult
from perception4d.scoring.worker import ScoreWorker, WorkerInfo, WorkerSpec

log = logging.getLogger("perception4d.scoring")

OnChunk = Callable[[WorkerInfo, ChunkResult], None]
OnWorker = Callable[[WorkerInfo], None]
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
            on_worker: OnWorker | None = None) -> BackendRun:
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


# -- the pooled backends' shared part -------------------------------------------------------------
@dataclass(frozen=True)
class WorkerPlan:
    """How many workers and what each holds."""

    workers: int
    cpus: int  # CPUs (and torch threads) of each worker
    gpus: float  # GPUs of each worker (0: CPU workers)

    @property
    def device(self) -> str:
        return "cuda" if self.gpus > 0 else "cpu"


def plan_workers(execution: Execution, gpus: float, cpus: float, where: str) -> WorkerPlan:
    """The workers of ``execution`` on ``gpus`` GPUs and ``cpus`` CPUs (``where``: named in errors).

    Defaults: one GPU per worker when there are GPUs, else CPU workers; 1 CPU per CPU worker, min(8, CPUs /
    GPUs) per GPU worker (reading, metrics, writing); as many workers as fit.
    """
    g = execution.gpus_per_worker
    per_gpu = (1.0 if gpus >= 1 else 0.0) if g is None else float(g)
    if per_gpu > 0 and gpus < per_gpu:
        raise ConfigError(f"gpus_per_worker: each worker asks for {per_gpu:g} GPU but {where} has {gpus:g}")
    per_cpu = int(execution.cpus_per_worker or (max(1, min(8, int(cpus // gpus))) if per_gpu > 0 else 1))
    default = int(gpus // per_gpu) if per_gpu > 0 else max(1, int(cpus // per_cpu))
    return WorkerPlan(int(execution.workers or default), per_cpu, per_gpu)


@dataclass
class _Slot:
    """One worker as the dispatch loop sees it; ``handle`` is the backend's (a Ray actor, a process)."""

    name: str
    handle: object
    info: WorkerInfo | None = None
    unit: WorkUnit | None = None  # the unit of the call in flight (None: idle)
    gpu: int | None = None  # processes backend: the GPU it was given


class PoolBackend:
    """Units spread over worker processes by one dispatch loop (see the module docstring).

    Subclasses start (``_launch``, ``_wait_ready``), call (``_call``, ``_next_reply``) and stop (``_stop``)
    their workers; ``plan`` says how many and with what.
    """

    plan: WorkerPlan

    def __init__(self, spec: WorkerSpec, execution: Execution):
        self.spec, self.execution = spec, execution
        self.crashes = 0
        self._serial = 0

    # -- what a backend provides ---------------------------------------------------------------
    def _launch(self, name: str, spec: WorkerSpec, live: list[_Slot]) -> _Slot:
        """Start a worker building ``spec`` (``live``: the other workers); do not wait for it."""
        raise NotImplementedError

    def _wait_ready(self, slots: list[_Slot]) -> Iterator[_Slot]:
        """Each of ``slots`` with its ``info`` set as it becomes ready; ``ConfigError`` when one cannot start."""
        raise NotImplementedError

    def _call(self, slot: _Slot, unit: WorkUnit, done: frozenset, max_steps: int) -> None:
        """Ask ``slot``'s worker for the next chunk of ``unit`` (``ScoreWorker.work``), without waiting."""
        raise NotImplementedError

    def _next_reply(self) -> tuple[_Slot, ChunkResult | None, str]:
        """Wait for a call in flight: its slot and result, or its slot, None and why the worker died."""
        raise NotImplementedError

    def _stop(self, slots: list[_Slot], kill: bool = False) -> None:
        """Stop these workers (dead or alive; ``kill``: now, even while they start or work)."""
        raise NotImplementedError

    # -- the dispatch loop ---------------------------------------------------------------------
    def _new_slot(self, live: list[_Slot]) -> _Slot:
        self._serial += 1
        name = f"worker-{self._serial}"
        spec = replace(self.spec, name=name, device=self.plan.device, threads=self.plan.cpus)
        return self._launch(name, spec, live)

    def _start(self, slots: list[_Slot], on_worker: OnWorker | None) -> None:
        try:
            for slot in self._wait_ready(slots):
                if on_worker:
                    on_worker(slot.info)
        except BaseException:
            self._stop(slots, kill=True)
            raise

    def run(self, units: deque[WorkUnit], done_of: DoneOf, on_chunk: OnChunk,
            on_worker: OnWorker | None = None) -> BackendRun:
        t0 = time.perf_counter()
        slots: list[_Slot] = []
        try:
            for _ in range(min(self.plan.workers, max(1, len(units)))):
                slots.append(self._new_slot(slots))
        except BaseException:
            self._stop(slots, kill=True)
            raise
        self._start(slots, on_worker)
        t1 = time.perf_counter()
        attempts: dict[str, int] = {}
        failures: list[UnitFailure] = []

        def submit(slot: _Slot, unit: WorkUnit, first: bool) -> None:
            slot.unit = unit
            self._call(slot, unit, done_of(unit) if first else frozenset(), self.execution.chunk_frames)

        try:
            for slot in slots:
                if units:
                    submit(slot, units.popleft(), True)
            while any(s.unit is not None for s in slots):
                slot, res, death = self._next_reply()
                unit = slot.unit
                if res is None:  # the worker process died
                    self.crashes += 1
                    n = attempts[unit.name] = attempts.get(unit.name, 0) + 1
                    reason = f"worker {slot.name} (pid {slot.info.pid if slot.info else '?'}) died: {death}"
                    log.error("%s while scoring %s (attempt %d of %d)", reason, unit.name, n,
                              self.execution.retries + 1)
                    if n <= self.execution.retries:
                        units.appendleft(unit)
                    else:
                        failures.append(UnitFailure(unit.name, unit.source.key, reason, n))
                    slots.remove(slot)
                    self._stop([slot])
                    if units:
                        new = self._new_slot(slots)
                        self._start([new], on_worker)
                        slots.append(new)
                        submit(new, units.popleft(), True)
                    continue
                if not res.finished:  # the next call first: the worker works while the driver writes the journal
                    submit(slot, unit, False)
                elif units:
                    submit(slot, units.popleft(), True)
                else:
                    slot.unit = None
                on_chunk(slot.info, res)
                if res.error:
                    failures.append(UnitFailure(unit.name, unit.source.key, res.error,
                                                attempts.get(unit.name, 0) + 1))
            t2 = time.perf_counter()  # the last chunk: stopping the workers is not scoring time
        finally:
            self._stop(slots)
        return BackendRun([s.info for s in slots if s.info], failures, t1 - t0, t2 - t1, self.crashes)


# -- Ray ------------------------------------------------------------------------------------------
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


class RayBackend(PoolBackend):
    """Units spread over Ray actors (clusters); see the module docstring."""

    def __init__(self, spec: WorkerSpec, execution: Execution):
        import ray

        if not ray.is_initialized():
            raise ConfigError("the Ray backend needs ray.init() first (the driver calls it for --ray)")
        super().__init__(spec, execution)
        resources = ray.cluster_resources()
        self.plan = plan_workers(execution, float(resources.get("GPU", 0)), float(resources.get("CPU", 1)),
                                 "the Ray cluster")
        self._inflight: dict[object, _Slot] = {}

    def _launch(self, name: str, spec: WorkerSpec, live: list[_Slot]) -> _Slot:
        actor = _actor_class().options(num_cpus=self.plan.cpus, num_gpus=self.plan.gpus, max_restarts=0,
                                       max_task_retries=0).remote(spec)
        return _Slot(name, actor)

    def _wait_ready(self, slots: list[_Slot]) -> Iterator[_Slot]:
        """Wait until the actors are placed and warmed up (no free GPU for too long is an error)."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        refs = {s.handle.info.remote(): s for s in slots}
        timeout = self.execution.worker_start_timeout_s
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        if pending:
            raise ConfigError(f"{len(pending)} of {len(refs)} score workers did not start within {timeout:g} s "
                              f"(each needs {self.plan.gpus:g} GPU and {self.plan.cpus} CPU; the cluster has "
                              f"{ray.cluster_resources()})")
        for ref in ready:
            slot = refs[ref]
            try:
                slot.info = ray.get(ref)  # an actor that failed to build raises its error here
            except (RayActorError, RayTaskError) as e:
                raise ConfigError(f"score worker {slot.name} failed to start: {_first_line(e)}") from None
            yield slot

    def _call(self, slot: _Slot, unit: WorkUnit, done: frozenset, max_steps: int) -> None:
        self._inflight[slot.handle.work.remote(unit, done, max_steps)] = slot

    def _next_reply(self) -> tuple[_Slot, ChunkResult | None, str]:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        [ref], _ = ray.wait(list(self._inflight), num_returns=1)
        slot = self._inflight.pop(ref)
        try:
            return slot, ray.get(ref), ""
        except RayActorError as e:
            return slot, None, _first_line(e)
        except RayTaskError as e:  # the call itself failed (e.g. a result that does not serialise)
            return slot, ChunkResult(slot.unit.name, [], True, error=_first_line(e)), ""

    def _stop(self, slots: list[_Slot], kill: bool = False) -> None:
        import ray

        for slot in slots:
            ray.kill(slot.handle, no_restart=True)


# -- local worker processes -------------------------------------------------------------------------
@dataclass
class _Process:
    process: object  # multiprocessing's SpawnProcess
    conn: object  # the driver's end of the worker's pipe


class ProcessBackend(PoolBackend):
    """Units spread over worker processes of this machine, one per GPU (see the module docstring).

    Each worker is a spawned Python process (no fork: CUDA) that sees only its GPU (``CUDA_VISIBLE_DEVICES``)
    and talks to the driver over its own pipe: the driver sends ``(unit, done, max_steps)``, the worker
    answers with the ``ChunkResult``. A worker that exits without answering (killed, out of memory) is seen
    through its process sentinel.
    """

    def __init__(self, spec: WorkerSpec, execution: Execution):
        import multiprocessing

        import torch

        super().__init__(spec, execution)
        gpus = torch.cuda.device_count()  # NVML: no CUDA context in the driver
        self.plan = plan_workers(execution, float(gpus), float(_cpu_count()), "this machine")
        if self.plan.gpus > 1:
            raise ConfigError(f"gpus_per_worker must be at most 1 with the processes backend (a worker process "
                              f"scores on one GPU), got {self.plan.gpus:g}")
        if self.plan.gpus > 0:
            capacity = int(round(gpus / self.plan.gpus))
            if self.plan.workers > capacity:
                raise ConfigError(f"workers: {self.plan.workers} workers of {self.plan.gpus:g} GPU each need "
                                  f"{self.plan.workers * self.plan.gpus:g} GPUs, this machine has {gpus}")
        self._gpu_ids = _visible_gpus(gpus)
        self._context = multiprocessing.get_context("spawn")
        self._inflight: dict[object, _Slot] = {}  # pipe -> slot

    def _least_used_gpu(self, live: list[_Slot]) -> int:
        used = [sum(s.gpu == g for s in live) for g in range(len(self._gpu_ids))]
        return used.index(min(used))

    def _launch(self, name: str, spec: WorkerSpec, live: list[_Slot]) -> _Slot:
        gpu = self._least_used_gpu(live) if self.plan.gpus > 0 else None
        env = {"OMP_NUM_THREADS": str(self.plan.cpus),
               "CUDA_VISIBLE_DEVICES": self._gpu_ids[gpu] if gpu is not None else ""}
        label = f"GPU {self._gpu_ids[gpu]}" if gpu is not None else None
        ours, theirs = self._context.Pipe()
        process = self._context.Process(target=process_worker_main, args=(spec, theirs, label),
                                        name=f"p4d-score-{name}", daemon=True)
        with _environment(env):  # a spawned child takes the driver's environment as it is at start()
            process.start()
        theirs.close()
        return _Slot(name, _Process(process, ours), gpu=gpu)

    def _wait_ready(self, slots: list[_Slot]) -> Iterator[_Slot]:
        from multiprocessing.connection import wait

        timeout = self.execution.worker_start_timeout_s
        deadline = time.monotonic() + timeout
        waiting = {s.handle.conn: s for s in slots}
        while waiting:
            sentinels = {s.handle.process.sentinel: s for s in waiting.values()}
            ready = wait([*waiting, *sentinels], timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise ConfigError(f"{len(waiting)} of {len(slots)} score workers did not start within {timeout:g} "
                                  f"s (model loading and warm-up)")
            for obj in ready:
                slot = waiting.get(obj) or sentinels[obj]
                if slot.handle.conn not in waiting:
                    continue
                kind, payload = self._receive(slot)
                if kind != "ready":
                    raise ConfigError(f"score worker {slot.name} failed to start: {payload}")
                slot.info = payload
                del waiting[slot.handle.conn]
                yield slot

    def _receive(self, slot: _Slot) -> tuple[str, object]:
        """The worker's next message, or ``("died", why)`` when its process is gone."""
        proc: _Process = slot.handle
        try:
            if proc.conn.poll():
                return proc.conn.recv()
        except (EOFError, OSError):
            pass
        proc.process.join(timeout=10)
        return "died", _exit_reason(proc.process.exitcode)

    def _call(self, slot: _Slot, unit: WorkUnit, done: frozenset, max_steps: int) -> None:
        try:
            slot.handle.conn.send((unit, done, max_steps))
        except OSError:  # the worker is gone: its sentinel reports it in _next_reply
            pass
        self._inflight[slot.handle.conn] = slot

    def _next_reply(self) -> tuple[_Slot, ChunkResult | None, str]:
        from multiprocessing.connection import wait

        sentinels = {s.handle.process.sentinel: s for s in self._inflight.values()}
        ready = wait([*self._inflight, *sentinels])
        slot = next((self._inflight[o] for o in ready if o in self._inflight), None) or sentinels[ready[0]]
        del self._inflight[slot.handle.conn]
        kind, payload = self._receive(slot)
        if kind == "chunk":
            return slot, payload, ""
        return slot, None, str(payload)

    def _stop(self, slots: list[_Slot], kill: bool = False) -> None:
        for slot in slots:
            if self._inflight.pop(slot.handle.conn, None) is not None or kill:  # busy: the run is cut short
                slot.handle.process.kill()
            with contextlib.suppress(OSError):
                slot.handle.conn.send(None)  # finish: the worker returns and its process exits
        for slot in slots:
            slot.handle.process.join(timeout=30)
            if slot.handle.process.is_alive():
                slot.handle.process.kill()
                slot.handle.process.join()
            slot.handle.conn.close()


def process_worker_main(spec: WorkerSpec, conn, label: str | None) -> None:
    """A worker process of ``ProcessBackend``: build the worker, then answer chunk calls until told to stop.

    Messages to the driver: ``("ready", WorkerInfo)`` or ``("error", why)`` once, then ``("chunk",
    ChunkResult)`` per call. ``None`` from the driver (or its end of the pipe closing) ends the process.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle (it stops the workers)
    try:
        worker = ScoreWorker(spec)
    except Exception as exc:  # noqa: BLE001 - sent to the driver, which refuses the run with it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    info = worker.info if label is None else replace(worker.info, device=f"{worker.info.device} ({label})")
    conn.send(("ready", info))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the driver is gone
            return
        if request is None:
            return
        unit, done, max_steps = request
        result = worker.work(unit, done, max_steps)
        try:
            conn.send(("chunk", result))
        except (EOFError, OSError):
            return
        except Exception as exc:  # noqa: BLE001 - a result that does not serialise fails its unit
            conn.send(("chunk", ChunkResult(unit.name, [], True, error=f"{type(exc).__name__}: {exc}")))


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _visible_gpus(count: int) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` entry of each of this process's ``count`` GPUs."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(i) for i in range(count)]
    return [v.strip() for v in visible.split(",") if v.strip()][:count]


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "its pipe closed (process still running)"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def _first_line(exc: BaseException) -> str:
    """A one-line summary; for an error raised inside the actor, the original exception's line (the last)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    inner = [ln for ln in lines if "Error: " in ln or "Exception: " in ln]
    text = inner[-1] if inner and len(lines) > 1 else (lines[0] if lines else "")
    return f"{type(exc).__name__}: {text}"[:500]
