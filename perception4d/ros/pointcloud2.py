"""``sensor_msgs/msg/PointCloud2`` <-> numpy, without ROS.

A PointCloud2 is ``height x width`` point records of ``point_step`` bytes,
rows ``row_step`` bytes apart (a row may end with padding), in the byte order
``is_bigendian`` says. Each ``PointField`` names a typed value at a byte offset
inside the record; bytes no field covers are padding (PCL's 16-byte aligned
layouts put 4 bytes after ``z``; Velodyne and Ouster drivers add ``ring`` and
``time`` fields). Decoding builds one numpy structured dtype from the fields
(offsets, byte order and ``itemsize = point_step``) and views the message's
bytes through it: no per-point Python, no copy unless rows are padded.

Every inconsistency raises ``CloudError`` with a short ``reason`` that the
node counts (``layout``: a field missing, duplicated, overlapping, outside the
record, of an unknown datatype or count; ``size``: ``point_step`` /
``row_step`` / the data length disagree, ``truncated`` data). ``is_dense`` is
only a claim: non-finite rows are counted whatever it says and kept (the
streaming policy gives them the outputs of points outside the grid).

The functions work on any object with the message's attribute names: the
rosbags dataclasses of the replay and the rclpy messages of the live node.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perception4d.errors import Perception4DError

# sensor_msgs/msg/PointField datatypes
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)
DATATYPES: dict[int, str] = {INT8: "i1", UINT8: "u1", INT16: "i2", UINT16: "u2", INT32: "i4", UINT32: "u4",
                             FLOAT32: "f4", FLOAT64: "f8"}
#: the fields a perception input cloud must have (other fields are carried through untouched)
REQUIRED_FIELDS = ("x", "y", "z", "intensity")


class CloudError(Perception4DError, ValueError):
    """A PointCloud2 that cannot be decoded; ``reason`` is the counter it goes to (layout, size, truncated)."""

    def __init__(self, where: str, reason: str, problem: str):
        self.reason = reason
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class FieldSpec:
    """One ``sensor_msgs/msg/PointField``."""

    name: str
    offset: int
    datatype: int
    count: int = 1

    @property
    def size(self) -> int:
        return np.dtype(DATATYPES[self.datatype]).itemsize * self.count


@dataclass(frozen=True)
class CloudLayout:
    """The record layout of a cloud: its fields, ``point_step`` and byte order."""

    fields: tuple[FieldSpec, ...]
    point_step: int
    big_endian: bool = False

    @classmethod
    def of(cls, msg) -> "CloudLayout":
        fields = tuple(FieldSpec(str(f.name), int(f.offset), int(f.datatype), int(f.count)) for f in msg.fields)
        return cls(fields, int(msg.point_step), bool(msg.is_bigendian))

    def field(self, name: str) -> FieldSpec | None:
        return next((f for f in self.fields if f.name == name), None)

    def check(self, where: str) -> None:
        """Raise ``CloudError`` unless every field is a known type, inside the record and disjoint from the rest."""
        if self.point_step <= 0:
            raise CloudError(where, "size", f"point_step is {self.point_step}")
        names = [f.name for f in self.fields]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise CloudError(where, "layout", f"duplicate field name(s) {dup}")
        spans = []
        for f in self.fields:
            if f.datatype not in DATATYPES:
                raise CloudError(where, "layout", f"field {f.name!r} has unknown datatype {f.datatype} "
                                                  f"(PointField uses 1..8)")
            if f.count < 1:
                raise CloudError(where, "layout", f"field {f.name!r} has count {f.count}")
            if f.offset < 0 or f.offset + f.size > self.point_step:
                raise CloudError(where, "size", f"field {f.name!r} (offset {f.offset}, {f.size} bytes) does not fit "
                                                f"in point_step {self.point_step}")
            spans.append((f.offset, f.offset + f.size, f.name))
        spans.sort()
        for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
            if start < end:
                raise CloudError(where, "layout", f"fields {a!r} and {b!r} overlap")

    def dtype(self) -> np.dtype:
        """The numpy structured dtype of one record (``itemsize = point_step``, padding left out)."""
        order = ">" if self.big_endian else "<"
        formats = [order + DATATYPES[f.datatype] if f.count == 1 else (order + DATATYPES[f.datatype], (f.count,))
                   for f in self.fields]
        return np.dtype({"names": [f.name for f in self.fields], "formats": formats,
                         "offsets": [f.offset for f in self.fields], "itemsize": self.point_step})


@dataclass
class DecodedCloud:
    """The perception input of one cloud, with the raw records kept for the output cloud."""

    points: np.ndarray  # (N, 4) float32 x, y, z (sensor frame), intensity scaled to [0, 1]
    records: np.ndarray  # (N, point_step) uint8: the input records, row padding removed
    layout: CloudLayout
    height: int
    width: int
    non_finite: int  # rows with a non-finite x, y, z or intensity (kept)
    is_dense: bool  # what the message claimed
    intensity_clipped: int  # values outside [0, intensity_max] (clipped)

    @property
    def num_points(self) -> int:
        return self.points.shape[0]


def cloud_records(msg, layout: CloudLayout, where: str) -> tuple[np.ndarray, int, int]:
    """(N, point_step) uint8 records of ``msg`` (row padding removed), height and width; checks every size."""
    height, width, row_step = int(msg.height), int(msg.width), int(msg.row_step)
    if height < 0 or width < 0:
        raise CloudError(where, "size", f"height {height} / width {width}")
    step = layout.point_step
    if height * width and row_step < width * step:
        raise CloudError(where, "size", f"row_step {row_step} is less than width {width} x point_step {step}")
    data = np.frombuffer(msg.data, dtype=np.uint8) if len(msg.data) else np.zeros(0, np.uint8)
    expected = row_step * height
    if data.size != expected:
        reason = "truncated" if data.size < expected else "size"
        raise CloudError(where, reason, f"data has {data.size} bytes, height {height} x row_step {row_step} = "
                                        f"{expected} expected (point_step {step}, width {width})")
    if height * width == 0:
        return np.zeros((0, step), np.uint8), height, width
    rows = data.reshape(height, row_step)[:, :width * step]
    return np.ascontiguousarray(rows).reshape(height * width, step), height, width


def decode_cloud(msg, where: str = "PointCloud2", intensity_max: float = 0.0) -> DecodedCloud:
    """Decode a perception input cloud: x, y, z, intensity as float32, intensity scaled to [0, 1].

    ``intensity_max``: the raw intensity that maps to 1.0; 0 picks the field's type: the integer range for
    integer fields (255 for uint8, 65535 for uint16), 1.0 for floating-point fields (the convention of the
    package's readers). Values outside are clipped and counted.
    """
    layout = CloudLayout.of(msg)
    layout.check(where)
    missing = [n for n in REQUIRED_FIELDS if layout.field(n) is None]
    if missing:
        raise CloudError(where, "layout", f"missing field(s) {missing}; the cloud has "
                                          f"{[f.name for f in layout.fields]} and needs {list(REQUIRED_FIELDS)}")
    for name in REQUIRED_FIELDS:
        f = layout.field(name)
        if f.count != 1:
            raise CloudError(where, "layout", f"field {name!r} has count {f.count}, expected 1")
    records, height, width = cloud_records(msg, layout, where)
    view = records.view(layout.dtype()).reshape(-1)
    n = view.shape[0]
    points = np.empty((n, 4), np.float32)
    for j, name in enumerate(REQUIRED_FIELDS):
        points[:, j] = view[name]
    scale, clipped = _intensity_scale(layout.field("intensity"), intensity_max), 0
    inten = points[:, 3]
    if scale != 1.0:
        inten *= np.float32(1.0 / scale)
    finite = np.isfinite(inten)
    outside = finite & ((inten < 0) | (inten > 1))
    clipped = int(outside.sum())
    if clipped:
        np.clip(inten, 0.0, 1.0, out=inten, where=finite)
    non_finite = int(n - np.isfinite(points).all(axis=1).sum())
    return DecodedCloud(points, records, layout, height, width, non_finite, bool(msg.is_dense), clipped)


def _intensity_scale(field: FieldSpec, intensity_max: float) -> float:
    if intensity_max and intensity_max > 0:
        return float(intensity_max)
    kind = np.dtype(DATATYPES[field.datatype])
    return float(np.iinfo(kind).max) if kind.kind in "iu" else 1.0


@dataclass
class CloudPayload:
    """A PointCloud2 body without its header: fields, steps and data bytes."""

    fields: tuple[FieldSpec, ...]
    height: int
    width: int
    point_step: int
    row_step: int
    data: bytes
    big_endian: bool = False
    is_dense: bool = False


def append_float_fields(cloud: DecodedCloud, extra: list[tuple[str, np.ndarray]]) -> CloudPayload:
    """The input records, byte for byte, followed by float32 fields (in the input's byte order).

    The new fields start at the first 4-byte aligned offset after the input record; every input field (also
    the ones the network does not read: ring, time, ...) keeps its offset. Organised clouds stay organised.
    """
    layout = cloud.layout
    taken = {f.name for f in layout.fields}
    clash = sorted(taken & {name for name, _ in extra})
    if clash:
        raise CloudError("output cloud", "layout", f"the input already has field(s) {clash}")
    n = cloud.num_points
    start = -(-layout.point_step // 4) * 4
    step = start + 4 * len(extra)
    out = np.zeros((n, step), np.uint8)
    out[:, :layout.point_step] = cloud.records
    order = ">f4" if layout.big_endian else "<f4"
    fields = list(layout.fields)
    for j, (name, values) in enumerate(extra):
        values = np.asarray(values)
        if values.shape != (n,):
            raise ValueError(f"output field {name!r} has shape {values.shape}, the cloud has {n} points")
        off = start + 4 * j
        out[:, off:off + 4] = values.astype(order).view(np.uint8).reshape(n, 4)
        fields.append(FieldSpec(name, off, FLOAT32, 1))
    return CloudPayload(tuple(fields), cloud.height, cloud.width, step, step * cloud.width, out.tobytes(),
                        layout.big_endian, cloud.is_dense and cloud.non_finite == 0)


def pack_fields(columns: list[tuple[str, np.ndarray, int]], big_endian: bool = False) -> CloudPayload:
    """An unorganised cloud (height 1) of the given ``(name, (N,) values, datatype)`` columns, packed in order
    with each field aligned to its own size."""
    if not columns:
        raise ValueError("pack_fields needs at least one column")
    n = len(columns[0][1])
    order = ">" if big_endian else "<"
    fields, offset = [], 0
    for name, values, datatype in columns:
        size = np.dtype(DATATYPES[datatype]).itemsize
        offset = -(-offset // size) * size
        fields.append(FieldSpec(name, offset, datatype, 1))
        offset += size
    layout = CloudLayout(tuple(fields), -(-offset // 4) * 4, big_endian)
    rec = np.zeros(n, layout.dtype())
    dense = True
    for name, values, datatype in columns:
        if len(values) != n:
            raise ValueError(f"column {name!r} has {len(values)} rows, expected {n}")
        rec[name] = np.asarray(values).astype(order + DATATYPES[datatype])
        if datatype in (FLOAT32, FLOAT64) and name != "rgb":  # rgb carries integer bits, not a value
            dense = dense and bool(np.isfinite(np.asarray(values, np.float64)).all())
    return CloudPayload(layout.fields, 1, n, layout.point_step, layout.point_step * n, rec.tobytes(), big_endian,
                        dense)


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) colours in [0, 1] -> (N,) float32 carrying 0x00RRGGBB in its bits (the PCL / RViz ``rgb`` field)."""
    c = np.clip(np.round(np.asarray(rgb, np.float64) * 255), 0, 255).astype(np.uint32)
    return ((c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]).view(np.float32)


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """Inverse of ``pack_rgb``: (N, 3) uint8."""
    u = np.asarray(packed, np.float32).view(np.uint32)
    return np.stack([(u >> 16) & 255, (u >> 8) & 255, u & 255], axis=1).astype(np.uint8)


def read_field(msg, name: str, where: str = "PointCloud2") -> np.ndarray:
    """(N,) or (N, count) values of one field of any cloud, in the native byte order (for checks and tools)."""
    layout = CloudLayout.of(msg)
    layout.check(where)
    if layout.field(name) is None:
        raise CloudError(where, "layout", f"no field {name!r}; fields are {[f.name for f in layout.fields]}")
    records, _, _ = cloud_records(msg, layout, where)
    values = records.view(layout.dtype()).reshape(-1)[name]
    return values.astype(values.dtype.newbyteorder("="))
