"""``p4d ros-replay``: the perception node's logic on a rosbag2, without a ROS install.

Reads a rosbag2 (sqlite3 or mcap storage, through the ``rosbags`` library)
with ``sensor_msgs/msg/PointCloud2`` and ``/tf`` + ``/tf_static`` or
``nav_msgs/msg/Odometry``, feeds it to ``StreamCore`` (the live node's logic,
perception4d.ros.core) and writes the node's output topics to a new rosbag2
that ``ros2 bag play`` and Foxglove open: the annotated cloud, the occupied
voxels (and markers), the diagnostics; by default also ``/tf`` and
``/tf_static`` so a viewer can place the outputs.

Two clocks:

* ``rate = 0`` (default): every cloud is processed, in bag order. A cloud
  waits for its transforms until the bag's clock passes its stamp plus
  ``tf_timeout_s`` (transforms are often recorded just after the cloud);
  output is deterministic.
* ``rate > 0``: the bag is played in real time times ``rate`` by a feeder
  thread; clouds go through the node's one-message mailbox, so a cloud that
  arrives while the network is busy replaces the waiting one (counted as
  superseded), exactly as on the vehicle with the sensor-data QoS. This is
  the load test (``tools/benchmark.py ros-replay``: 2x the sensor rate).

Outputs are written at the bag time of the cloud they answer (its arrival),
with the cloud's header stamp, so the output bag lines up with the input.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from perception4d.errors import ConfigError, DataFormatError
from perception4d.ros import messages as m
from perception4d.ros.core import Publication, StreamCore
from perception4d.ros.messages import RosbagsMessages
from perception4d.ros.params import NodeParams
from perception4d.ros.poses import OdometryBuffer, PoseResolver, TfBuffer, TransformUnavailable

log = logging.getLogger("perception4d.ros")

STORAGES = ("sqlite3", "mcap")
COPY_MODES = ("tf", "all", "none")
TF_TOPICS = ("/tf", "/tf_static")


@dataclass
class ReplayReport:
    """What a replay read and wrote."""

    in_bag: Path
    out_bag: Path
    storage: str
    cloud_topic: str
    clouds: int = 0
    written: dict[str, int] = field(default_factory=dict)  # output topic -> messages
    copied: int = 0  # input messages copied to the output bag
    unreadable: int = 0  # input records that could not be deserialized (skipped, logged)
    wall_s: float = 0.0
    bag_s: float = 0.0  # time span of the clouds in the bag
    rate: float = 0.0


def bag_storage(path: str | Path) -> str:
    """``sqlite3`` or ``mcap``: the storage of a rosbag2 folder (its metadata) or single file (its suffix)."""
    path = Path(path)
    if path.is_file():
        return {".mcap": "mcap", ".db3": "sqlite3"}.get(path.suffix, "")
    meta = path / "metadata.yaml"
    if not meta.is_file():
        raise DataFormatError(path, "not a rosbag2 (no metadata.yaml, not a .mcap or .db3 file)")
    import yaml

    info = (yaml.safe_load(meta.read_text()) or {}).get("rosbag2_bagfile_information", {})
    return str(info.get("storage_identifier", ""))


def output_qos():
    """Reliable, keep last 1, volatile: what the live node offers (matches reliable and best-effort readers)."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    never = QosTime(2147483647, 4294967295)
    return [Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.VOLATILE, never, never,
                QosLiveliness.AUTOMATIC, never, False)]


class BagOutput:
    """The output bag: connections added on first use, messages serialized with the typestore."""

    def __init__(self, path: Path, storage: str, version: int, messages: RosbagsMessages):
        from rosbags.rosbag2 import StoragePlugin, Writer

        if path.exists():
            raise ConfigError(f"output bag {path} exists; rosbag2 writers only create new bags")
        plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[storage]
        self.writer = Writer(path, version=version, storage_plugin=plugin)
        self.writer.open()
        self.messages = messages
        self._conns: dict[tuple[str, str], object] = {}
        self.written: dict[str, int] = {}

    def write(self, pub: Publication) -> None:
        key = (pub.topic, pub.msgtype)
        conn = self._conns.get(key)
        if conn is None:
            conn = self._conns[key] = self.writer.add_connection(pub.topic, pub.msgtype,
                                                                 typestore=self.messages.typestore,
                                                                 offered_qos_profiles=output_qos())
        self.writer.write(conn, pub.log_ns, self.messages.serialize(pub.message, pub.msgtype))
        self.written[pub.topic] = self.written.get(pub.topic, 0) + 1

    def copy(self, conn, log_ns: int, raw: bytes) -> None:
        key = (conn.topic, conn.msgtype)
        out = self._conns.get(key)
        if out is None:
            msgdef = getattr(conn.msgdef, "data", "") or None
            kw = dict(msgdef=msgdef, rihs01=conn.digest) if msgdef and conn.digest else dict(
                typestore=self.messages.typestore)
            qos = list(getattr(conn.ext, "offered_qos_profiles", []) or [])
            out = self._conns[key] = self.writer.add_connection(conn.topic, conn.msgtype, offered_qos_profiles=qos,
                                                                **kw)
        self.writer.write(out, log_ns, raw)

    def close(self) -> None:
        self.writer.close()


def select_cloud_connection(reader, topic: str, bag: Path):
    clouds = [c for c in reader.connections if c.msgtype == m.POINTCLOUD2]
    chosen = [c for c in clouds if c.topic == topic]
    if chosen:
        return chosen
    if len({c.topic for c in clouds}) == 1:
        log.warning("%s: no cloud topic %s; using the only PointCloud2 topic %s", bag, topic, clouds[0].topic)
        return clouds
    raise DataFormatError(bag, f"no PointCloud2 topic {topic!r}; PointCloud2 topics: "
                               f"{sorted({c.topic for c in clouds})} (set cloud_topic)")


def replay_bag(in_bag: str | Path, out_bag: str | Path, params: NodeParams, predictor, *, rate: float = 0.0,
               storage: str | None = None, version: int = 8, copy: str = "tf", diagnostics: bool = True,
               messages: RosbagsMessages | None = None) -> tuple[ReplayReport, StreamCore]:
    """Replay ``in_bag`` through the node's logic into ``out_bag`` (see the module docstring)."""
    from rosbags.rosbag2 import Reader

    in_bag, out_bag = Path(in_bag), Path(out_bag)
    if not in_bag.exists():
        raise DataFormatError(in_bag, "bag not found")
    if copy not in COPY_MODES:
        raise ConfigError(f"copy must be one of {COPY_MODES}, got {copy!r}")
    storage = storage or bag_storage(in_bag) or "sqlite3"
    if storage not in STORAGES:
        raise ConfigError(f"output storage must be one of {STORAGES}, got {storage!r}")
    messages = messages or RosbagsMessages()
    tf = TfBuffer()
    odom = OdometryBuffer() if params.pose_source == "odometry" else None
    core = StreamCore(params, predictor, messages, PoseResolver(params.frames, tf, odom))
    report = ReplayReport(in_bag, out_bag, storage, params.cloud_topic, rate=float(rate))
    out = BagOutput(out_bag, storage, version, messages)
    t0 = time.perf_counter()
    try:
        with Reader(in_bag) as reader:
            clouds = select_cloud_connection(reader, params.cloud_topic, in_bag)
            report.cloud_topic = clouds[0].topic
            tfs = [c for c in reader.connections if c.topic in TF_TOPICS and c.msgtype == m.TF_MESSAGE]
            odoms = [c for c in reader.connections if c.topic == params.odom_topic and c.msgtype == m.ODOMETRY]
            if odom is not None and not odoms:
                raise DataFormatError(in_bag, f"pose_source is odometry but the bag has no {m.ODOMETRY} topic "
                                              f"{params.odom_topic!r}")
            stream = _Stream(reader, clouds, tfs, odoms, messages, tf, odom)
            if rate > 0:  # read first: the storage's handles belong to this thread, the feeder plays from memory
                stream.records = list(stream.records)
                _run_realtime(core, stream, out, rate, diagnostics)
            else:
                _run_ordered(core, stream, out, diagnostics)
            report.clouds, report.unreadable = stream.clouds, stream.bad_messages
            report.bag_s = (stream.last_cloud_ns - stream.first_cloud_ns) * 1e-9 if stream.clouds else 0.0
            for pub in core.finish():
                out.write(pub)
            if diagnostics:
                out.write(core.diagnostics())
            if copy != "none":
                wanted = [c for c in reader.connections if copy == "all" or c.topic in TF_TOPICS]
                for conn, log_ns, raw in (reader.messages(connections=wanted) if wanted else ()):
                    out.copy(conn, log_ns, raw)
                    report.copied += 1
    finally:
        out.close()
    report.written = dict(out.written)
    report.wall_s = time.perf_counter() - t0
    return report, core


class _Stream:
    """The bag's messages in log order, transforms fed to their buffers, clouds handed out."""

    def __init__(self, reader, clouds, tfs, odoms, messages, tf: TfBuffer, odom: OdometryBuffer | None):
        self.messages, self.tf, self.odom = messages, tf, odom
        self.cloud_ids = {c.id for c in clouds}
        self.tf_static = {c.id for c in tfs if c.topic == "/tf_static"}
        self.tf_ids = {c.id for c in tfs}
        self.odom_ids = {c.id for c in odoms} if odom is not None else set()
        self.connections = list(clouds) + list(tfs) + (list(odoms) if odom is not None else [])
        self.records = reader.messages(connections=self.connections)
        self.clouds = 0
        self.first_cloud_ns = self.last_cloud_ns = 0
        self.bad_messages = 0

    def __iter__(self):
        """Yields (log_ns, cloud message or None); transforms are applied before they are yielded."""
        for conn, log_ns, raw in self.records:
            try:
                msg = self.messages.deserialize(raw, conn.msgtype)
            except Exception as exc:  # noqa: BLE001 - a corrupt record is counted, the replay goes on
                self.bad_messages += 1
                log.warning("%s message at %d ns cannot be deserialized (%s); skipped", conn.topic, log_ns, exc)
                continue
            if conn.id in self.cloud_ids:
                if not self.clouds:
                    self.first_cloud_ns = log_ns
                self.clouds += 1
                self.last_cloud_ns = log_ns
                yield log_ns, msg
                continue
            if conn.id in self.tf_ids:
                self.tf.add_message(msg, static=conn.id in self.tf_static)
            elif conn.id in self.odom_ids:
                self.odom.add_message(msg)
            yield log_ns, None


def _ready(core: StreamCore, msg, now_ns: int) -> bool:
    """Whether a cloud can be handled now: its transforms are there, or will not come in time."""
    stamp = m.stamp_ns(msg.header)
    try:
        core.poses.resolve(msg.header.frame_id, stamp, 0.0)
        return True
    except TransformUnavailable as e:
        return not e.retry or now_ns > stamp + int(core.params.tf_timeout_s * 1e9)


class _Diagnostics:
    def __init__(self, core: StreamCore, out: BagOutput, enabled: bool):
        self.core, self.out, self.enabled = core, out, enabled
        self.period_ns = int(core.params.diagnostics_period_s * 1e9)
        self.next_ns: int | None = None

    def tick(self, now_ns: int) -> None:
        if not self.enabled or self.period_ns <= 0:
            return
        if self.next_ns is None:
            self.next_ns = now_ns + self.period_ns
        elif now_ns >= self.next_ns:
            self.out.write(self.core.diagnostics(now_ns))
            self.next_ns = now_ns + self.period_ns


def _run_ordered(core: StreamCore, stream: _Stream, out: BagOutput, diagnostics: bool) -> None:
    waiting: deque = deque()  # (log_ns, cloud) waiting for their transforms
    diag = _Diagnostics(core, out, diagnostics)
    core.pose_timeout_s = 0.0  # one thread: nothing arrives while a lookup waits; the bag clock decides (_ready)

    def handle(log_ns, msg):
        for pub in core.handle_cloud(msg, log_ns):
            out.write(pub)
        diag.tick(log_ns)

    for now_ns, msg in stream:
        if msg is not None:
            waiting.append((now_ns, msg))
        while waiting and (_ready(core, waiting[0][1], now_ns) or len(waiting) > 64):
            handle(*waiting.popleft())
    while waiting:
        handle(*waiting.popleft())


def _run_realtime(core: StreamCore, stream: _Stream, out: BagOutput, rate: float, diagnostics: bool) -> None:
    """The feeder thread plays the bag at ``rate`` x real time; this thread is the node's worker."""
    done = threading.Event()
    failure: list[BaseException] = []
    diag = _Diagnostics(core, out, diagnostics)

    def feed():
        try:
            start_wall, start_ns = time.perf_counter(), None
            for log_ns, msg in stream:
                start_ns = log_ns if start_ns is None else start_ns
                delay = start_wall + (log_ns - start_ns) * 1e-9 / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                if msg is not None:
                    core.offer(msg, log_ns)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the worker
            failure.append(exc)
        finally:
            done.set()

    feeder = threading.Thread(target=feed, name="bag-feeder", daemon=True)
    feeder.start()
    while True:
        pubs = core.process_next(timeout_s=0.05)
        if pubs is None:
            if done.is_set() and core.slot.empty():
                break
            continue
        for pub in pubs:
            out.write(pub)
        diag.tick(core.last_log_ns)
    feeder.join()
    if failure:
        raise failure[0]


def params_from_args(args) -> NodeParams:
    """``NodeParams`` of ``p4d ros-replay``: the ``--params`` YAML (or the defaults), then the options."""
    from dataclasses import asdict

    base = NodeParams.from_yaml(args.params) if args.params else NodeParams()
    values = asdict(base)
    overrides = {"checkpoints": args.checkpoint, "configs": args.config, "devices": args.device,
                 "runtime_config": args.runtime_config, "cloud_topic": args.cloud_topic,
                 "pose_source": args.pose_source, "fixed_frame": args.fixed_frame, "base_frame": args.base_frame,
                 "odom_topic": args.odom_topic,
                 "tasks": None if args.tasks is None else [t for t in args.tasks.split(",") if t]}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if args.checkpoint is not None and args.config is None:
        values["configs"] = []
    return NodeParams.from_mapping(values, "p4d ros-replay options")


def replay_from_args(args) -> tuple[ReplayReport, StreamCore]:
    from perception4d.ros.core import build_predictor

    params = params_from_args(args)
    predictor = build_predictor(params)
    try:
        return replay_bag(args.in_bag, args.out_bag, params, predictor, rate=args.rate, storage=args.storage,
                          version=args.bag_version, copy=args.copy)
    finally:
        close = getattr(predictor, "close", None)
        if close is not None:
            close()


def print_replay(report: ReplayReport, core: StreamCore) -> None:
    c, g = core.counters, core.gate_counters
    print(f"replayed {report.clouds} clouds of {report.cloud_topic} ({report.bag_s:.1f} s of bag) from "
          f"{report.in_bag} in {report.wall_s:.1f} s" + (f" at {report.rate:g}x" if report.rate else ""))
    print(f"  processed {c.stepped}, superseded {c.superseded}, malformed {c.malformed}, without pose {c.no_pose}, "
          f"dropped by the frame policy {g.dropped}, failed {g.failed}, unreadable records {report.unreadable}")
    written = ", ".join(f"{t}: {n}" for t, n in sorted(report.written.items()))
    print(f"  wrote {report.out_bag} ({report.storage}): {written}; {report.copied} input messages copied")
