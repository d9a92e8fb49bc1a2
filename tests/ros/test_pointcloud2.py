"""PointCloud2 <-> numpy: offsets, byte order, padding, point_step, row_step, is_dense, and every malformed case."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perception4d.ros.pointcloud2 import (FLOAT32, FLOAT64, UINT8, UINT16, CloudError, CloudLayout, append_float_fields,
                                          decode_cloud, pack_fields, pack_rgb, read_field, unpack_rgb)

from .helpers import T, cloud_msg, field, header

NUMPY = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}


def raw_cloud(fields, point_step, records: bytes, width, height=1, row_step=None, big_endian=False, dense=True):
    row_step = point_step * width if row_step is None else row_step
    return T["sensor_msgs/msg/PointCloud2"](header=header(5, "lidar"), height=height, width=width, fields=fields,
                                            is_bigendian=big_endian, point_step=point_step, row_step=row_step,
                                            data=np.frombuffer(records, np.uint8), is_dense=dense)


def sample_points(n=50, seed=0):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-40, 40, (n, 4)).astype(np.float32)
    pts[:, 3] = rng.uniform(0, 1, n)
    return pts


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("big_endian", [False, True])
def test_decode_float_layouts_both_byte_orders(layout, big_endian):
    pts = sample_points()
    cloud = decode_cloud(cloud_msg(1, "lidar", pts, layout, big_endian))
    np.testing.assert_array_equal(cloud.points, pts)
    assert cloud.non_finite == 0 and cloud.records.shape == (50, 24 if layout == "padded" else 16)


@settings(max_examples=60, deadline=None)
@given(order=st.permutations(["x", "y", "z", "intensity", "ring"]), gaps=st.lists(st.integers(0, 6), min_size=6,
                                                                                   max_size=6),
       big=st.booleans(), xyz_type=st.sampled_from([FLOAT32, FLOAT64]), height=st.integers(1, 3),
       row_pad=st.integers(0, 9), inten_type=st.sampled_from([FLOAT32, UINT8, UINT16]))
def test_decode_any_field_order_offsets_padding_and_row_step(order, gaps, big, xyz_type, height, row_pad,
                                                              inten_type):
    """Fields in any order at any (unaligned) offsets, trailing record padding, padded rows, organised clouds."""
    types = {"x": xyz_type, "y": xyz_type, "z": xyz_type, "intensity": inten_type, "ring": UINT16}
    offsets, off = {}, 0
    for name, gap in zip(order, gaps):
        off += gap
        offsets[name] = off
        off += np.dtype(NUMPY[types[name]]).itemsize
    step, width = off + gaps[-1], 7
    o = ">" if big else "<"
    dt = np.dtype({"names": list(order), "formats": [o + NUMPY[types[n]] for n in order],
                   "offsets": [offsets[n] for n in order], "itemsize": step})
    rng = np.random.default_rng(len(order) + step)
    n = width * height
    rec = np.zeros(n, dt)
    xyz = rng.uniform(-50, 50, (n, 3)).astype(np.float32)
    for j, name in enumerate("xyz"):
        rec[name] = xyz[:, j]
    raw_inten = {FLOAT32: rng.uniform(0, 1, n), UINT8: rng.integers(0, 256, n), UINT16: rng.integers(0, 65536, n)}
    rec["intensity"] = raw_inten[inten_type]
    rec["ring"] = np.arange(n)
    row_step = step * width + row_pad
    rows = np.zeros((height, row_step), np.uint8)
    rows[:, :step * width] = rec.view(np.uint8).reshape(height, step * width)
    fields = [field(name, offsets[name], types[name]) for name in order]
    msg = raw_cloud(fields, step, rows.tobytes(), width, height, row_step, big)
    cloud = decode_cloud(msg)
    np.testing.assert_array_equal(cloud.points[:, :3], xyz)
    scale = {FLOAT32: 1.0, UINT8: 255.0, UINT16: 65535.0}[inten_type]
    np.testing.assert_allclose(cloud.points[:, 3], rec["intensity"].astype(np.float64) / scale, rtol=1e-6)
    assert (cloud.height, cloud.width, cloud.num_points) == (height, width, n)
    np.testing.assert_array_equal(read_field(msg, "ring"), np.arange(n))
    # the output cloud: input records unchanged, float32 fields appended in the same byte order
    extra = rng.standard_normal((n, 2)).astype(np.float32)
    payload = append_float_fields(cloud, [("flow_x", extra[:, 0]), ("moving_prob", extra[:, 1])])
    assert payload.point_step % 4 == 0 and payload.row_step == payload.point_step * width
    out = T["sensor_msgs/msg/PointCloud2"](
        header=header(5, "lidar"), height=payload.height, width=payload.width,
        fields=[field(f.name, f.offset, f.datatype) for f in payload.fields], is_bigendian=payload.big_endian,
        point_step=payload.point_step, row_step=payload.row_step, data=np.frombuffer(payload.data, np.uint8),
        is_dense=payload.is_dense)
    np.testing.assert_array_equal(read_field(out, "moving_prob"), extra[:, 1])
    np.testing.assert_array_equal(read_field(out, "ring"), np.arange(n))
    np.testing.assert_array_equal(decode_cloud(out).points, cloud.points)


def test_nan_points_are_kept_and_counted_whatever_is_dense_claims():
    pts = sample_points(10)
    pts[2, 0] = np.nan
    pts[5, 3] = np.inf
    cloud = decode_cloud(cloud_msg(1, "lidar", pts, is_dense=True))
    assert cloud.num_points == 10 and cloud.non_finite == 2 and cloud.is_dense
    assert np.isnan(cloud.points[2, 0])


def test_intensity_scale_parameter_and_clipping():
    pts = sample_points(8)
    pts[:, 3] = [0, 50, 100, 150, 200, 255, 300, -1]
    cloud = decode_cloud(cloud_msg(1, "lidar", pts), intensity_max=255.0)
    np.testing.assert_allclose(cloud.points[:, 3], np.clip(pts[:, 3] / 255.0, 0, 1), rtol=1e-6)
    assert cloud.intensity_clipped == 2


def test_empty_cloud_decodes_to_zero_points():
    cloud = decode_cloud(cloud_msg(1, "lidar", np.zeros((0, 4), np.float32)))
    assert cloud.num_points == 0 and cloud.points.shape == (0, 4)


def _good():
    return cloud_msg(1, "lidar", sample_points(6), "packed")


@pytest.mark.parametrize("change, reason, words", [
    (dict(fields=[field("x", 0), field("y", 4), field("z", 8)]), "layout", "missing field(s) ['intensity']"),
    (dict(point_step=12), "size", "does not fit in point_step 12"),
    (dict(point_step=20, row_step=120), "truncated", "96 bytes"),
    (dict(row_step=100), "truncated", "96 bytes, height 1 x row_step 100"),
    (dict(row_step=40), "size", "row_step 40 is less than width 6"),
    (dict(width=5, row_step=80), "size", "data has 96 bytes"),
    (dict(fields=[field("x", 0), field("y", 2), field("z", 8), field("intensity", 12)]), "layout", "overlap"),
    (dict(fields=[field("x", 0), field("x", 4), field("z", 8), field("intensity", 12)]), "layout", "duplicate"),
    (dict(fields=[field("x", 0), field("y", 4), field("z", 8), field("intensity", 12, 9)]), "layout",
     "unknown datatype 9"),
    (dict(fields=[field("x", 0, FLOAT32, 2), field("z", 8), field("y", 4 + 8), field("intensity", 12 + 4)]),
     "layout", "count 2"),
])
def test_malformed_clouds_raise_one_clear_error(change, reason, words):
    msg = _good()
    for k, v in change.items():
        setattr(msg, k, v)
    if "count 2" in words:
        msg.point_step, msg.row_step = 20, 120
        msg.data = np.zeros(120, np.uint8)
    with pytest.raises(CloudError) as e:
        decode_cloud(msg, "/points at 1 ns")
    assert e.value.reason == reason and words in str(e.value) and "/points at 1 ns" in str(e.value)


def test_truncated_data_is_detected():
    msg = _good()
    msg.data = msg.data[:-5]
    with pytest.raises(CloudError) as e:
        decode_cloud(msg)
    assert e.value.reason == "truncated"


def test_pack_fields_aligns_and_rgb_roundtrips():
    rgb = np.array([[1.0, 0.0, 0.0], [0.25, 0.55, 0.95], [0, 0, 0]])
    payload = pack_fields([("x", np.arange(3.0), FLOAT32), ("label", np.array([1, 2, 3]), UINT8),
                           ("rgb", pack_rgb(rgb), FLOAT32)])
    assert [(f.name, f.offset) for f in payload.fields] == [("x", 0), ("label", 4), ("rgb", 8)]
    assert payload.point_step == 12
    layout = CloudLayout(payload.fields, payload.point_step)
    rec = np.frombuffer(payload.data, layout.dtype())
    np.testing.assert_array_equal(unpack_rgb(rec["rgb"]), np.round(rgb * 255).astype(np.uint8))
    assert pack_rgb(np.array([[1.0, 0.5, 0.0]])).view(np.uint32)[0] == 0xFF8000
