"""The perception node's logic, without rclpy: cloud in, messages out.

``StreamCore`` is what the live node (ros_nodes/perception4d_ros) and
``p4d ros-replay`` both drive; the drivers only move messages:

1. ``offer(msg)`` puts a cloud in a one-message mailbox (``LatestSlot``). A
   cloud still waiting there when a newer one arrives is dropped and counted
   (``superseded``): with the sensor-data QoS (best effort, keep last 1) this
   is how the node keeps up with a sensor faster than the network: it skips
   old frames instead of queueing them, and its memory stays bounded (one
   waiting cloud, ``pending_limit`` clouds waiting for their flow, the
   predictor's ring).
2. ``process_next()`` (the worker thread) takes the newest cloud and calls
   ``handle_cloud``: decode (``perception4d.ros.pointcloud2``), pose and
   extrinsic at the stamp (``perception4d.ros.poses``), a ``Frame``, the
   predictor's step, the outputs (``perception4d.ros.outputs``).

Every bad input is logged (rate-limited per reason) and counted, and the
next cloud is handled normally: a malformed cloud (``layout``: missing or
unusable fields; ``size``: point_step / row_step / data length disagree;
``truncated``), a cloud without transforms in time (``no_pose``); the
runtime's frame policy counts duplicates, late (out-of-order) stamps, empty
or all-NaN clouds, and NaN points (kept). Counters and per-stage latencies go
out as ``diagnostic_msgs/DiagnosticArray``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, fields

import numpy as np

from perception4d.core.frame import Frame
from perception4d.ros import messages as m
from perception4d.ros.messages import MessageFactory, StatusReport
from perception4d.ros.outputs import CloudAssembler, PendingCloud, occupancy_cubes, occupancy_payload
from perception4d.ros.params import NodeParams
from perception4d.ros.pointcloud2 import CloudError, decode_cloud
from perception4d.ros.poses import PoseResolver, TransformUnavailable
from perception4d.runtime.predictor import Result, Status
from perception4d.runtime.timing import StageTimes

log = logging.getLogger("perception4d.ros")


@dataclass
class Publication:
    """One output message: topic, ROS type, the message, and the time it belongs to."""

    topic: str
    msgtype: str
    message: object
    stamp_ns: int  # header stamp
    log_ns: int  # arrival time of the input it answers (a replay writes it at this bag time)


@dataclass
class NodeCounters:
    """Clouds by what happened to them (the runtime's own counters are in ``StreamCore.gate_counters``)."""

    received: int = 0
    superseded: int = 0  # dropped unprocessed: a newer cloud arrived first (keep last 1)
    malformed_layout: int = 0
    malformed_size: int = 0
    malformed_truncated: int = 0
    no_pose: int = 0  # no transform at the stamp within tf_timeout_s
    stepped: int = 0  # handed to the predictor
    published_clouds: int = 0
    incomplete_clouds: int = 0  # published with a configured task missing (NaN fields)
    published_occupancy: int = 0
    intensity_clipped: int = 0  # points

    @property
    def malformed(self) -> int:
        return self.malformed_layout + self.malformed_size + self.malformed_truncated


class LatestSlot:
    """A one-message mailbox: ``put`` replaces (and counts) a message nobody took yet."""

    def __init__(self):
        self._cond = threading.Condition()
        self._item = None
        self.replaced = 0

    def put(self, item) -> None:
        with self._cond:
            if self._item is not None:
                self.replaced += 1
            self._item = item
            self._cond.notify()

    def empty(self) -> bool:
        with self._cond:
            return self._item is None

    def take(self, timeout_s: float | None = None):
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout_s)
            item, self._item = self._item, None
            return item


class LatencyStats:
    """Rolling per-stage milliseconds of each model set and the node's end-to-end latency."""

    def __init__(self, window: int = 200):
        self.window = window
        self.stages: dict[str, deque] = {}
        self.end_to_end: deque = deque(maxlen=window)  # arrival -> outputs built
        self.waited: deque = deque(maxlen=window)  # arrival -> processing started

    def add(self, results: dict[str, Result]) -> None:
        """Steps that ran the network (not the first sweep of a flow window, which only waits for the next)."""
        for name, r in results.items():
            if r.status == Status.OK and r.timings.voxelize + r.timings.backbone + r.timings.graph > 0:
                self.stages.setdefault(name, deque(maxlen=self.window)).append(r.timings.as_row())

    def summary(self, name: str) -> list[tuple[str, str]]:
        rows = self.stages.get(name)
        if not rows:
            return []
        a = np.asarray(rows)
        out = [(f"{k} ms (mean)", f"{v:.2f}") for k, v in zip(StageTimes.names(), a.mean(axis=0))]
        return out + [("total ms (p95)", f"{np.percentile(a[:, -1], 95):.2f}"), ("steps timed", str(len(a)))]


def model_tasks(predictor) -> dict[str, tuple[str, ...]]:
    """Tasks of each model set of a ``Predictor`` or ``ParallelPredictor`` (from its configs)."""
    if hasattr(predictor, "tasks") and hasattr(predictor, "name"):
        return {predictor.name: tuple(predictor.tasks)}
    from mmengine.config import Config

    from perception4d.runtime.models import resolve_config

    out = {}
    for spec in (s for w in predictor.specs for s in w.models):
        cfg = Config.fromfile(str(resolve_config(spec)))
        if spec.cfg_options:
            cfg.merge_from_dict(dict(spec.cfg_options))
        out[spec.name] = tuple(cfg.model.heads.keys())
    return out


class StreamCore:
    """See the module docstring. ``predictor``: a runtime ``Predictor`` or ``ParallelPredictor``."""

    def __init__(self, params: NodeParams, predictor, messages: MessageFactory, poses: PoseResolver,
                 tasks: dict[str, tuple[str, ...]] | None = None):
        self.params = params
        self.predictor = predictor
        self.messages = messages
        self.poses = poses
        self.model_tasks = tasks if tasks is not None else model_tasks(predictor)
        available = {t for ts in self.model_tasks.values() for t in ts}
        wanted = set(params.tasks) if params.tasks else available
        missing = sorted(wanted - available)
        if missing:
            from perception4d.errors import ConfigError

            raise ConfigError(f"tasks {missing} requested, the model sets {self.model_tasks} do not have them")
        self.tasks = tuple(t for t in ("flow", "mos", "occupancy") if t in wanted)
        flow_models = {n for n, ts in self.model_tasks.items() if "flow" in ts}
        self.assembler = CloudAssembler("flow" in self.tasks, "mos" in self.tasks, flow_models,
                                        params.pending_limit)
        self.counters = NodeCounters()
        self.latency = LatencyStats()
        self.slot = LatestSlot()
        self.pose_timeout_s = float(params.tf_timeout_s)  # how long a lookup may wait for transforms
        self._seq = 0
        self.last_log_ns = 0
        self._last_warn: dict[str, float] = {}
        self.last_error = ""

    @property
    def gate_counters(self):
        return self.predictor.gate.counters

    # -- driving ------------------------------------------------------------------------------------------
    def offer(self, msg, log_ns: int | None = None) -> None:
        """A cloud arrived (subscription callback / replay clock); keeps only the newest unprocessed one."""
        self.counters.received += 1
        before = self.slot.replaced
        self.slot.put((msg, log_ns, time.perf_counter()))
        if self.slot.replaced != before:
            self.counters.superseded += 1

    def process_next(self, timeout_s: float | None = 0.1) -> list[Publication] | None:
        """Handle the newest offered cloud (None when none came within ``timeout_s``)."""
        item = self.slot.take(timeout_s)
        if item is None:
            return None
        msg, log_ns, arrived = item
        return self.handle_cloud(msg, log_ns, arrived, counted=True)

    def handle_cloud(self, msg, log_ns: int | None = None, arrived: float | None = None,
                     counted: bool = False) -> list[Publication]:
        """Decode, locate, predict and build the outputs of one cloud; never raises on bad input."""
        t0 = time.perf_counter()
        arrived = t0 if arrived is None else arrived
        if not counted:
            self.counters.received += 1
        stamp = m.stamp_ns(msg.header)
        log_ns = stamp if log_ns is None else int(log_ns)
        where = f"{self.params.cloud_topic} cloud at {stamp} ns ({msg.header.frame_id or 'no frame'})"
        try:
            cloud = decode_cloud(msg, where, self.params.intensity_max)
        except CloudError as e:
            setattr(self.counters, f"malformed_{e.reason}", getattr(self.counters, f"malformed_{e.reason}") + 1)
            self._warn(f"malformed_{e.reason}", f"{e}; dropped")
            return []
        self.counters.intensity_clipped += cloud.intensity_clipped
        try:
            pose, extrinsic = self.poses.resolve(msg.header.frame_id, stamp, self.pose_timeout_s)
        except TransformUnavailable as e:
            self.counters.no_pose += 1
            self._warn("no_pose", f"{where}: {e}; dropped")
            return []
        self._seq += 1
        frame = Frame(cloud.points, stamp, pose=pose, extrinsic=extrinsic,
                      frame_id=f"{msg.header.frame_id}@{stamp}#{self._seq}", source=self.params.cloud_topic)
        status, results = self._step(frame)
        self.counters.stepped += 1
        self.latency.add(results)
        self.latency.waited.append((t0 - arrived) * 1e3)
        pubs = []
        entry = PendingCloud(self._seq, frame.frame_id, stamp, msg.header.frame_id, log_ns, cloud)
        for p in self.assembler.add(entry, status, results):
            pubs.append(self._cloud_publication(p))
        if "occupancy" in self.tasks:
            pubs += self._occupancy_publications(results, stamp, log_ns)
        self.counters.incomplete_clouds = self.assembler.incomplete
        self.last_log_ns = max(self.last_log_ns, log_ns)
        self.latency.end_to_end.append((time.perf_counter() - arrived) * 1e3)
        return pubs

    def finish(self) -> list[Publication]:
        """End of the stream: the clouds still waiting for their flow, published as they are."""
        pubs = [self._cloud_publication(p) for p in self.assembler.flush()]
        self.counters.incomplete_clouds = self.assembler.incomplete
        return pubs

    # -- internals ----------------------------------------------------------------------------------------
    def _step(self, frame: Frame) -> tuple[Status, dict[str, Result]]:
        out = self.predictor.step(frame)
        if isinstance(out, Result):
            if out.status == Status.FAILED:
                self.last_error = out.message
            return out.status, {out.model: out}
        if out.status == Status.FAILED:
            self.last_error = out.message
        return out.status, dict(out.results)

    def _cloud_publication(self, p: PendingCloud) -> Publication:
        self.counters.published_clouds += 1
        msg = m.cloud_message(self.messages, p.stamp_ns, p.header_frame, p.payload())
        return Publication(self.params.output_cloud_topic, m.POINTCLOUD2, msg, p.stamp_ns, p.log_ns)

    def _occupancy_publications(self, results: dict[str, Result], stamp: int, log_ns: int) -> list[Publication]:
        occ = next((r.occupancy for r in results.values() if r.occupancy is not None), None)
        if occ is None:
            return []
        self.counters.published_occupancy += 1
        base = self.params.frames.base_frame
        pubs = [Publication(self.params.occupancy_topic, m.POINTCLOUD2,
                            m.cloud_message(self.messages, stamp, base, occupancy_payload(occ.prediction)),
                            stamp, log_ns)]
        if self.params.occupancy_markers:
            pubs.append(Publication(self.params.occupancy_markers_topic, m.MARKER_ARRAY,
                                    m.marker_array(self.messages, stamp, base, occupancy_cubes(occ.prediction)),
                                    stamp, log_ns))
        return pubs

    def _warn(self, key: str, text: str, every_s: float = 5.0) -> None:
        """Log a bad-input line; the same kind at most once every ``every_s`` seconds (the rest are counted)."""
        now = time.monotonic()
        if now - self._last_warn.get(key, -1e9) >= every_s:
            self._last_warn[key] = now
            log.warning(text)
        else:
            log.debug(text)

    # -- diagnostics --------------------------------------------------------------------------------------
    def diagnostics(self, stamp_ns: int | None = None) -> Publication:
        """The node's status and one status per model set, with counters and per-stage latencies."""
        stamp = self.last_log_ns if stamp_ns is None else int(stamp_ns)
        c, g = self.counters, self.gate_counters
        dropped = c.superseded + c.malformed + c.no_pose + g.dropped
        values = [(f.name, str(getattr(c, f.name))) for f in fields(c)]
        values += [("malformed", str(c.malformed))]
        values += [(f"policy_{f.name}", str(getattr(g, f.name))) for f in fields(g)]
        values += [("dropped_frames", str(dropped)),
                   ("drop_rate", f"{dropped / c.received:.3f}" if c.received else "0"),
                   ("waiting_for_flow", str(len(self.assembler)))]
        e2e = np.asarray(self.latency.end_to_end)
        if e2e.size:
            values += [("end_to_end ms (mean)", f"{e2e.mean():.2f}"),
                       ("end_to_end ms (p95)", f"{np.percentile(e2e, 95):.2f}"),
                       ("queue wait ms (mean)", f"{np.mean(self.latency.waited):.2f}")]
        level = m.DIAG_ERROR if g.failed else (m.DIAG_WARN if dropped else m.DIAG_OK)
        summary = (f"{c.stepped} of {c.received} clouds processed, {dropped} dropped "
                   f"({c.superseded} superseded, {c.malformed} malformed, {c.no_pose} without pose, "
                   f"{g.dropped} by the frame policy), {g.failed} failed")
        statuses = [StatusReport(level, "perception4d: node", summary, self.params.cloud_topic, values)]
        for name, tasks in self.model_tasks.items():
            rows = self.latency.summary(name)
            statuses.append(StatusReport(m.DIAG_OK if rows else m.DIAG_WARN, f"perception4d: {name}",
                                         f"{'+'.join(tasks)}" + ("" if rows else ", no step timed yet"),
                                         name, rows + ([("last error", self.last_error)] if self.last_error else [])))
        return Publication(self.params.diagnostics_topic, m.DIAGNOSTIC_ARRAY,
                           m.diagnostic_array(self.messages, stamp, statuses), stamp, stamp)


def build_predictor(params: NodeParams, warmup=None):
    """The runtime the parameters describe: one model set -> ``Predictor``; several, or a runtime config ->
    ``ParallelPredictor``. ``warmup``: a ``perception4d.runtime.Warmup`` (None: the device's default)."""
    from perception4d.runtime import ParallelPredictor, Predictor, PredictorOptions
    from perception4d.runtime.config import load_runtime_config
    from perception4d.runtime.policy import FramePolicy

    if params.runtime_config:
        rc = load_runtime_config(params.runtime_config)
        return rc.build(options=PredictorOptions(amp=rc.amp, mos_fusion=rc.mos_fusion, warmup=warmup))
    specs = params.model_specs()
    policy = FramePolicy(params.max_gap_s)
    if len(specs) == 1:
        return Predictor(specs[0], specs[0].device, policy=policy, warmup=warmup)
    return ParallelPredictor(specs, workers=params.workers, policy=policy, options=PredictorOptions(warmup=warmup))
