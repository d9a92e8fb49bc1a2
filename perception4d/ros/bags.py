"""Writing ``Frame`` sequences as rosbag2 files (a replay input from any reader or the simulator).

A frame becomes a ``sensor_msgs/msg/PointCloud2`` in its sensor frame (x, y,
z, intensity as little-endian float32, intensity in [0, 1] as the package's
readers give it) on ``/points``, its ego pose a ``/tf`` transform
``fixed_frame <- base_frame`` (or a ``nav_msgs/msg/Odometry`` on ``/odom``) at
the same stamp, written just before the cloud, and the extrinsic of the first
frame one ``/tf_static`` transform ``base_frame <- sensor_frame``. Messages
are written at their stamp, as a recorder on the vehicle would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from perception4d.core.frame import Frame
from perception4d.errors import ConfigError
from perception4d.ros import messages as m
from perception4d.ros.messages import RosbagsMessages
from perception4d.ros.pointcloud2 import FLOAT32, pack_fields


@dataclass(frozen=True)
class BagLayout:
    """Topics and frames of ``write_frames``."""

    storage: str = "sqlite3"  # sqlite3 | mcap
    pose_source: str = "tf"  # tf | odometry
    cloud_topic: str = "/points"
    odom_topic: str = "/odom"
    fixed_frame: str = "odom"
    base_frame: str = "base_link"
    sensor_frame: str = "lidar"
    version: int = 8


def write_frames(path: str | Path, frames: list[Frame], layout: BagLayout = BagLayout(),
                 messages: RosbagsMessages | None = None) -> Path:
    """Write ``frames`` as a rosbag2 at ``path`` (see the module docstring); the bag's path."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    if not frames:
        raise ConfigError("write_frames needs at least one frame")
    path = Path(path)
    f = messages or RosbagsMessages()
    plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[layout.storage]
    writer = Writer(path, version=layout.version, storage_plugin=plugin)
    writer.open()
    conns: dict[str, object] = {}

    def put(topic: str, msgtype: str, msg, stamp: int) -> None:
        if topic not in conns:
            conns[topic] = writer.add_connection(topic, msgtype, typestore=f.typestore)
        writer.write(conns[topic], stamp, f.serialize(msg, msgtype))

    try:
        first = frames[0]
        static = f.new(m.TF_MESSAGE, transforms=[m.transform_stamped(f, first.timestamp_ns, layout.base_frame,
                                                                     layout.sensor_frame, first.extrinsic)])
        put("/tf_static", m.TF_MESSAGE, static, first.timestamp_ns)
        for frame in frames:
            ts = frame.timestamp_ns
            if layout.pose_source == "odometry":
                put(layout.odom_topic, m.ODOMETRY,
                    m.odometry_message(f, ts, layout.fixed_frame, layout.base_frame, frame.pose), ts)
            else:
                tf = f.new(m.TF_MESSAGE, transforms=[m.transform_stamped(f, ts, layout.fixed_frame, layout.base_frame,
                                                                         frame.pose)])
                put("/tf", m.TF_MESSAGE, tf, ts)
            pts = frame.select_columns(("x", "y", "z", "intensity"))
            payload = pack_fields([(name, pts[:, j], FLOAT32) for j, name in enumerate(("x", "y", "z", "intensity"))])
            put(layout.cloud_topic, m.POINTCLOUD2, m.cloud_message(f, ts, layout.sensor_frame, payload), ts)
    finally:
        writer.close()
    return path
