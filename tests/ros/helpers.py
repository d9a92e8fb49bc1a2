"""Real rosbag2 files for the ROS tests, written with rosbags' own writer from simulated or recorded Frames.

Clouds are encoded here with plain numpy (not with the module under test):
little- or big-endian float32 records ``x, y, z, <pad>, intensity, ring``
in the PCL-style 16-byte aligned layout, or a packed ``x, y, z, intensity``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from perception4d.core.frame import Frame
from perception4d.core.se3 import SE3

TS = get_typestore(Stores.ROS2_HUMBLE)
T = TS.types
FLOAT32, UINT16 = 7, 4
SENSOR_QOS = [Qos(QosHistory.KEEP_LAST, 1, QosReliability.BEST_EFFORT, QosDurability.VOLATILE, QosTime(0, 0),
                  QosTime(0, 0), QosLiveliness.AUTOMATIC, QosTime(0, 0), False)]


def time_msg(ns: int):
    return T["builtin_interfaces/msg/Time"](sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def header(ns: int, frame: str):
    return T["std_msgs/msg/Header"](stamp=time_msg(ns), frame_id=frame)


def field(name, offset, datatype=FLOAT32, count=1):
    return T["sensor_msgs/msg/PointField"](name=name, offset=offset, datatype=datatype, count=count)


def encode_points(points: np.ndarray, layout: str = "padded", big_endian: bool = False) -> tuple[list, int, bytes]:
    """(fields, point_step, data) of (N, 4) x, y, z, intensity rows.

    padded: x y z <4 pad> intensity ring(uint16) <pad> -> 24-byte records; packed: x y z intensity, 16 bytes.
    """
    o = ">" if big_endian else "<"
    n = len(points)
    if layout == "packed":
        dt = np.dtype({"names": ["x", "y", "z", "intensity"], "formats": [o + "f4"] * 4,
                       "offsets": [0, 4, 8, 12], "itemsize": 16})
        fields = [field("x", 0), field("y", 4), field("z", 8), field("intensity", 12)]
    else:
        dt = np.dtype({"names": ["x", "y", "z", "intensity", "ring"], "formats": [o + "f4"] * 4 + [o + "u2"],
                       "offsets": [0, 4, 8, 16, 20], "itemsize": 24})
        fields = [field("x", 0), field("y", 4), field("z", 8), field("intensity", 16), field("ring", 20, UINT16)]
    rec = np.zeros(n, dt)
    for j, name in enumerate(("x", "y", "z", "intensity")):
        rec[name] = points[:, j]
    if "ring" in dt.names:
        rec["ring"] = np.arange(n) % 32
    return fields, dt.itemsize, rec.tobytes()


def cloud_msg(stamp: int, frame: str, points: np.ndarray, layout: str = "padded", big_endian: bool = False,
              **overrides):
    fields, step, data = encode_points(points, layout, big_endian)
    values = dict(header=header(stamp, frame), height=1, width=len(points), fields=fields, is_bigendian=big_endian,
                  point_step=step, row_step=step * len(points), data=np.frombuffer(data, np.uint8),
                  is_dense=bool(np.isfinite(points).all()))
    values.update(overrides)
    return T["sensor_msgs/msg/PointCloud2"](**values)


def transform_stamped(stamp: int, parent: str, child: str, pose: SE3):
    qw, qx, qy, qz = pose.quaternion()
    t = pose.translation
    return T["geometry_msgs/msg/TransformStamped"](
        header=header(stamp, parent), child_frame_id=child,
        transform=T["geometry_msgs/msg/Transform"](
            translation=T["geometry_msgs/msg/Vector3"](x=t[0], y=t[1], z=t[2]),
            rotation=T["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw)))


def tf_message(*transforms):
    return T["tf2_msgs/msg/TFMessage"](transforms=list(transforms))


def odometry(stamp: int, parent: str, child: str, pose: SE3):
    qw, qx, qy, qz = pose.quaternion()
    t = pose.translation
    p = T["geometry_msgs/msg/Pose"](position=T["geometry_msgs/msg/Point"](x=t[0], y=t[1], z=t[2]),
                                    orientation=T["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw))
    twist = T["geometry_msgs/msg/Twist"](linear=T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0),
                                         angular=T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0))
    return T["nav_msgs/msg/Odometry"](
        header=header(stamp, parent), child_frame_id=child,
        pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=p, covariance=np.zeros(36)),
        twist=T["geometry_msgs/msg/TwistWithCovariance"](twist=twist, covariance=np.zeros(36)))


@dataclass
class BagSpec:
    """How ``write_bag`` lays a sequence out."""

    storage: str = "sqlite3"
    pose_source: str = "tf"  # tf: /tf odom <- base_link; odometry: /odom
    sensor_frame: str = "lidar"
    layout: str = "padded"
    big_endian: bool = False
    tf_after_cloud_ns: int = 0  # write each /tf this long after its cloud (bag time), as recorders often do


class BagWriter:
    """A rosbag2 being written: ``add(topic, msgtype, msg, log_ns)``."""

    def __init__(self, path: Path, storage: str = "sqlite3"):
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self.writer = Writer(path, version=8, storage_plugin=plugin)
        self.writer.open()
        self.conns = {}

    def add(self, topic: str, msg, log_ns: int, qos=()):
        key = (topic, msg.__msgtype__)
        if key not in self.conns:
            self.conns[key] = self.writer.add_connection(topic, msg.__msgtype__, typestore=TS,
                                                         offered_qos_profiles=list(qos))
        self.writer.write(self.conns[key], log_ns, bytes(TS.serialize_cdr(msg, msg.__msgtype__)))

    def close(self):
        self.writer.close()


def write_bag(path: Path, frames: list[Frame], spec: BagSpec = BagSpec()) -> Path:
    """A rosbag2 of ``frames``: /points (sensor frame), /tf_static base_link <- sensor, poses on /tf or /odom."""
    bag = BagWriter(path, spec.storage)
    extrinsic = frames[0].extrinsic
    bag.add("/tf_static", tf_message(transform_stamped(frames[0].timestamp_ns, "base_link", spec.sensor_frame,
                                                       extrinsic)), frames[0].timestamp_ns)
    for f in frames:
        ts = f.timestamp_ns
        pts = f.select_columns(("x", "y", "z", "intensity"))
        bag.add("/points", cloud_msg(ts, spec.sensor_frame, pts, spec.layout, spec.big_endian), ts, SENSOR_QOS)
        if spec.pose_source == "odometry":
            bag.add("/odom", odometry(ts, "odom", "base_link", f.pose), ts + spec.tf_after_cloud_ns)
        else:
            bag.add("/tf", tf_message(transform_stamped(ts, "odom", "base_link", f.pose)),
                    ts + spec.tf_after_cloud_ns)
    bag.close()
    return path


def roundtrip_frames(frames: list[Frame]) -> list[Frame]:
    """The Frames a bag of ``frames`` carries: poses and extrinsic through (w, x, y, z) quaternions, as the
    bag stores them; points and stamps unchanged."""
    def rt(pose: SE3) -> SE3:
        return SE3.from_quaternion(*pose.quaternion(), pose.translation)

    return [replace(f, points=f.select_columns(("x", "y", "z", "intensity")), columns=("x", "y", "z", "intensity"),
                    pose=rt(f.pose), extrinsic=rt(f.extrinsic), labels=None) for f in frames]


def read_bag(path: Path) -> dict[str, list[tuple[int, object]]]:
    """topic -> [(log_ns, message)] of every message of a rosbag2."""
    from rosbags.rosbag2 import Reader

    out: dict[str, list] = {}
    with Reader(path) as reader:
        for conn, log_ns, raw in reader.messages():
            out.setdefault(conn.topic, []).append((log_ns, TS.deserialize_cdr(raw, conn.msgtype)))
    return out


def records(msg) -> np.ndarray:
    """The structured records of an output cloud (little-endian float32 fields only), by plain numpy."""
    o = ">" if msg.is_bigendian else "<"
    names = [f.name for f in msg.fields]
    formats = [o + {7: "f4", 4: "u2", 2: "u1"}[f.datatype] for f in msg.fields]
    dt = np.dtype({"names": names, "formats": formats, "offsets": [f.offset for f in msg.fields],
                   "itemsize": msg.point_step})
    return np.frombuffer(msg.data.tobytes(), dt)
