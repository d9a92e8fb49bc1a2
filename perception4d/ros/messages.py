"""ROS 2 messages without ROS: a factory per binding and the builders of the node's output messages.

The node's logic builds its messages through a ``MessageFactory``: ``new(type,
**fields)`` with the field names of the ROS definition. ``RosbagsMessages``
makes rosbags' typestore dataclasses (the replay writes them to a bag); the
live node hands in a factory that makes rclpy message classes. rosbags'
dataclasses have no defaults, so its factory fills every field not given with
the ROS default (zero, empty string, empty sequence, nested default message),
read from the typestore's definitions; rclpy messages default themselves.

Reading goes the other way by attribute names only (``header.stamp.sec``,
``transform.rotation.w``, ...), which both bindings share.
"""

from __future__ import annotations

import array
from dataclasses import dataclass

import numpy as np

from perception4d.core.se3 import SE3
from perception4d.ros.pointcloud2 import CloudPayload

POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
MARKER_ARRAY = "visualization_msgs/msg/MarkerArray"
DIAGNOSTIC_ARRAY = "diagnostic_msgs/msg/DiagnosticArray"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"
ODOMETRY = "nav_msgs/msg/Odometry"

# diagnostic_msgs/msg/DiagnosticStatus levels; visualization_msgs/msg/Marker type and actions
DIAG_OK, DIAG_WARN, DIAG_ERROR = 0, 1, 2
MARKER_CUBE_LIST, MARKER_ADD, MARKER_DELETEALL = 6, 0, 3


class MessageFactory:
    """Builds messages of one ROS binding; see the module docstring."""

    def new(self, typename: str, **fields):
        raise NotImplementedError

    def uint8_array(self, data: bytes):
        """The binding's value for a ``uint8[]`` field."""
        raise NotImplementedError

    def byte(self, value: int):
        """The binding's value for a ``byte`` field (rclpy: a 1-byte ``bytes``; rosbags: an int)."""
        raise NotImplementedError


class RosbagsMessages(MessageFactory):
    """rosbags typestore dataclasses (ROS 2 Humble definitions unless another typestore is given)."""

    def __init__(self, typestore=None):
        if typestore is None:
            from rosbags.typesys import Stores, get_typestore

            typestore = get_typestore(Stores.ROS2_HUMBLE)
        self.typestore = typestore

    def new(self, typename: str, **fields):
        _, defs = self.typestore.fielddefs[typename]
        unknown = set(fields) - {name for name, _ in defs}
        if unknown:
            raise TypeError(f"{typename} has no field(s) {sorted(unknown)}")
        values = {name: fields[name] if name in fields else self._default(desc) for name, desc in defs}
        return self.typestore.types[typename](**values)

    def uint8_array(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8)

    def byte(self, value: int) -> int:
        return int(value)

    def serialize(self, msg, typename: str) -> bytes:
        return bytes(self.typestore.serialize_cdr(msg, typename))

    def deserialize(self, raw: bytes, typename: str):
        return self.typestore.deserialize_cdr(raw, typename)

    def _default(self, desc):
        from rosbags.interfaces import Nodetype

        kind, rest = desc
        if kind == Nodetype.NAME:
            return self.new(rest)
        if kind == Nodetype.BASE:
            return _base_default(rest[0])
        sub, length = rest
        if kind == Nodetype.SEQUENCE:
            if sub[0] == Nodetype.BASE and sub[1][0] not in ("string", "bool"):
                return np.zeros(0, dtype=_NUMPY[sub[1][0]])
            return []
        # fixed-size array
        if sub[0] == Nodetype.BASE and sub[1][0] not in ("string", "bool"):
            return np.zeros(length, dtype=_NUMPY[sub[1][0]])
        return [self._default(sub) for _ in range(length)]


_NUMPY = {"bool": np.bool_, "byte": np.uint8, "char": np.uint8, "int8": np.int8, "uint8": np.uint8,
          "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32, "int64": np.int64,
          "uint64": np.uint64, "float32": np.float32, "float64": np.float64}


def _base_default(name: str):
    if name == "string":
        return ""
    if name == "bool":
        return False
    return 0.0 if name.startswith("float") else 0


class RclpyMessages(MessageFactory):
    """rclpy message classes (``rosidl_runtime_py``); imported only by the live node, inside a ROS 2 install."""

    def __init__(self):
        from rosidl_runtime_py.utilities import get_message

        self._get = get_message
        self._classes: dict[str, type] = {}

    def new(self, typename: str, **fields):
        cls = self._classes.get(typename)
        if cls is None:
            cls = self._classes[typename] = self._get(typename)
        return cls(**fields)

    def uint8_array(self, data: bytes) -> array.array:
        out = array.array("B")
        out.frombytes(data)  # the generated setter takes an array('B') as is (a list would be checked per item)
        return out

    def byte(self, value: int) -> bytes:
        return bytes([int(value)])


# -- reading ----------------------------------------------------------------------------------------------
def stamp_ns(header) -> int:
    """Nanoseconds of a ``std_msgs/msg/Header`` stamp."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def quaternion_se3(q, t) -> SE3:
    """SE3 of a ``geometry_msgs`` quaternion (x, y, z, w) and translation (x, y, z); raises ValueError when the
    quaternion is degenerate or non-finite."""
    quat = np.array([q.w, q.x, q.y, q.z], dtype=np.float64)
    trans = np.array([t.x, t.y, t.z], dtype=np.float64)
    if not (np.isfinite(quat).all() and np.isfinite(trans).all()):
        raise ValueError("non-finite transform")
    if np.linalg.norm(quat) < 1e-6:
        raise ValueError("zero quaternion")
    return SE3.from_quaternion(*quat, trans)


def transform_se3(transform) -> SE3:
    """``geometry_msgs/msg/Transform`` -> SE3 (``parent_T_child`` of a TransformStamped)."""
    return quaternion_se3(transform.rotation, transform.translation)


def pose_se3(pose) -> SE3:
    """``geometry_msgs/msg/Pose`` -> SE3."""
    return quaternion_se3(pose.orientation, pose.position)


# -- building ---------------------------------------------------------------------------------------------
def header(f: MessageFactory, stamp: int, frame_id: str):
    sec, nanosec = divmod(int(stamp), 1_000_000_000)
    return f.new("std_msgs/msg/Header", stamp=f.new("builtin_interfaces/msg/Time", sec=sec, nanosec=nanosec),
                 frame_id=frame_id)


def cloud_message(f: MessageFactory, stamp: int, frame_id: str, payload: CloudPayload):
    fields = [f.new("sensor_msgs/msg/PointField", name=p.name, offset=p.offset, datatype=p.datatype, count=p.count)
              for p in payload.fields]
    return f.new(POINTCLOUD2, header=header(f, stamp, frame_id), height=payload.height, width=payload.width,
                 fields=fields, is_bigendian=payload.big_endian, point_step=payload.point_step,
                 row_step=payload.row_step, data=f.uint8_array(payload.data), is_dense=payload.is_dense)


def transform_stamped(f: MessageFactory, stamp: int, parent: str, child: str, parent_T_child: SE3):
    """``geometry_msgs/msg/TransformStamped`` (used to build test and benchmark bags)."""
    qw, qx, qy, qz = parent_T_child.quaternion()
    t = parent_T_child.translation
    tf = f.new("geometry_msgs/msg/Transform",
               translation=f.new("geometry_msgs/msg/Vector3", x=float(t[0]), y=float(t[1]), z=float(t[2])),
               rotation=f.new("geometry_msgs/msg/Quaternion", x=qx, y=qy, z=qz, w=qw))
    return f.new("geometry_msgs/msg/TransformStamped", header=header(f, stamp, parent), child_frame_id=child,
                 transform=tf)


def odometry_message(f: MessageFactory, stamp: int, parent: str, child: str, parent_T_child: SE3):
    """``nav_msgs/msg/Odometry`` with the pose only (used to build test and benchmark bags)."""
    qw, qx, qy, qz = parent_T_child.quaternion()
    t = parent_T_child.translation
    pose = f.new("geometry_msgs/msg/Pose",
                 position=f.new("geometry_msgs/msg/Point", x=float(t[0]), y=float(t[1]), z=float(t[2])),
                 orientation=f.new("geometry_msgs/msg/Quaternion", x=qx, y=qy, z=qz, w=qw))
    return f.new(ODOMETRY, header=header(f, stamp, parent), child_frame_id=child,
                 pose=f.new("geometry_msgs/msg/PoseWithCovariance", pose=pose))


@dataclass(frozen=True)
class CubeList:
    """One CUBE_LIST marker: voxel centres of one class, its colour and the voxel size."""

    ns: str
    marker_id: int
    centres: np.ndarray  # (K, 3) float
    rgb: tuple[float, float, float]
    size: tuple[float, float, float]


def marker_array(f: MessageFactory, stamp: int, frame_id: str, cubes: list[CubeList]):
    """A MarkerArray that first deletes the previous frame's markers, then adds one CUBE_LIST per class."""
    markers = [f.new("visualization_msgs/msg/Marker", header=header(f, stamp, frame_id), action=MARKER_DELETEALL)]
    identity = f.new("geometry_msgs/msg/Pose", orientation=f.new("geometry_msgs/msg/Quaternion", w=1.0))
    for c in cubes:
        points = [f.new("geometry_msgs/msg/Point", x=float(x), y=float(y), z=float(z)) for x, y, z in c.centres]
        markers.append(f.new(
            "visualization_msgs/msg/Marker", header=header(f, stamp, frame_id), ns=c.ns, id=c.marker_id,
            type=MARKER_CUBE_LIST, action=MARKER_ADD, pose=identity,
            scale=f.new("geometry_msgs/msg/Vector3", x=c.size[0], y=c.size[1], z=c.size[2]),
            color=f.new("std_msgs/msg/ColorRGBA", r=float(c.rgb[0]), g=float(c.rgb[1]), b=float(c.rgb[2]), a=1.0),
            points=points))
    return f.new(MARKER_ARRAY, markers=markers)


@dataclass
class StatusReport:
    """One ``diagnostic_msgs/msg/DiagnosticStatus``: level, name, summary and key/value pairs."""

    level: int
    name: str
    message: str
    hardware_id: str
    values: list[tuple[str, str]]


def diagnostic_array(f: MessageFactory, stamp: int, statuses: list[StatusReport]):
    items = [f.new("diagnostic_msgs/msg/DiagnosticStatus", level=f.byte(s.level), name=s.name, message=s.message,
                   hardware_id=s.hardware_id,
                   values=[f.new("diagnostic_msgs/msg/KeyValue", key=k, value=v) for k, v in s.values])
             for s in statuses]
    return f.new(DIAGNOSTIC_ARRAY, header=header(f, stamp, ""), status=items)
