"""Numba (CPU) and torch voxelization backends give identical results; voxelize_windows on real scans."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from perception4d.core.frame import Frame
from perception4d.core.geometry import Geometry
from perception4d.core.voxelize import voxelize, voxelize_windows
from perception4d.core.window import Window

GEOM = Geometry(point_range=(-4.0, -3.2, -1.0, 4.0, 3.2, 1.4), voxel_size=(0.4, 0.2, 0.3), num_frames=3)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _points(n: int, c: int, seed: int, geom: Geometry = GEOM) -> np.ndarray:
    """Random points spilling past the range, with exact boundary values and NaN/Inf rows mixed in."""
    rng = np.random.default_rng(seed)
    lo, hi = geom.lower, geom.upper
    span = hi - lo
    pts = rng.uniform(lo - 0.1 * span, hi + 0.1 * span, size=(n, 3)).astype(np.float32)
    feats = rng.normal(size=(n, c - 3)).astype(np.float32)
    pts = np.concatenate([pts, feats], 1)
    k = n // 10
    rows = rng.choice(n, size=4 * k, replace=False)
    axes = rng.integers(0, 3, size=4 * k)
    pts[rows[:k], axes[:k]] = lo[axes[:k]]  # exactly at min: kept
    pts[rows[k:2 * k], axes[k:2 * k]] = hi[axes[k:2 * k]]  # exactly at max: dropped
    edges = rng.integers(0, 8, size=k) * np.asarray(geom.voxel_size, np.float32)[axes[2 * k:3 * k]]
    pts[rows[2 * k:3 * k], axes[2 * k:3 * k]] = lo[axes[2 * k:3 * k]] + edges  # on voxel faces
    bad = rng.choice([np.nan, np.inf, -np.inf], size=k)
    pts[rows[3 * k:], rng.integers(0, c, size=k)] = bad
    return pts


def _assert_same(a, b):
    assert torch.equal(a.coords.cpu(), b.coords.cpu())
    assert torch.equal(a.point_to_voxel.cpu(), b.point_to_voxel.cpu())
    assert torch.equal(a.counts.cpu(), b.counts.cpu())
    torch.testing.assert_close(a.features.cpu(), b.features.cpu(), rtol=1e-6, atol=1e-6)
    assert a.dropped == b.dropped
    assert a.batch_size == b.batch_size and a.spatial_shape == b.spatial_shape


@pytest.mark.parametrize("n,c,batch_size,seed", [(500, 4, 1, 0), (3000, 3, 3, 1), (20000, 6, 2, 2)])
def test_backends_agree_on_random_points(n, c, batch_size, seed):
    pts = _points(n, c, seed)
    rng = np.random.default_rng(seed + 100)
    time = rng.integers(0, GEOM.num_frames, size=n)
    batch = rng.integers(0, batch_size, size=n) if batch_size > 1 else None
    a = voxelize(pts, time, GEOM, batch=batch, backend="numba")
    b = voxelize(torch.from_numpy(pts), torch.from_numpy(time), GEOM,
                 batch=None if batch is None else torch.from_numpy(batch), backend="torch")
    _assert_same(a, b)
    a.validate()
    assert a.num_voxels > 0 and a.features.shape == (a.num_voxels, c) and a.features.dtype == torch.float32
    assert a.dropped.non_finite == int((~np.isfinite(pts).all(1)).sum())
    lo, hi = GEOM.lower, GEOM.upper
    inside = np.isfinite(pts).all(1) & ((pts[:, :3] >= lo) & (pts[:, :3] < hi)).all(1)
    assert a.dropped.out_of_range == int((np.isfinite(pts).all(1) & ~inside).sum())
    assert torch.equal(a.point_to_voxel >= 0, torch.from_numpy(inside))


def test_boundary_values_min_kept_max_dropped():
    lo, hi = GEOM.lower, GEOM.upper
    below_hi = np.nextafter(hi, -np.inf, dtype=np.float32)
    pts = np.array([lo, hi, [lo[0], lo[1], hi[2]], below_hi, [hi[0], 0.0, 0.0]], dtype=np.float32)
    for backend in ("numba", "torch"):
        st = voxelize(pts, np.zeros(5, np.int64), GEOM, backend=backend)
        assert st.point_to_voxel.tolist()[1:3] == [-1, -1] and st.point_to_voxel[4] == -1
        assert st.dropped.out_of_range == 3
        assert st.coords[st.point_to_voxel[0]].tolist() == [0, 0, 0, 0, 0]
        x, y, z, t = GEOM.spatial_shape
        assert st.coords[st.point_to_voxel[3]].tolist() == [0, x - 1, y - 1, z - 1, 0]


@pytest.mark.parametrize("geom", [
    Geometry((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.01, 0.01, 0.01), 4),  # 38-bit keys: three radix passes
    Geometry((0.0, 0.0, 0.0, 1.0, 1.0, 1.0), (1.0, 1.0, 1.0), 1),  # one voxel: every point in one row
])
def test_backends_agree_on_extreme_grids(geom):
    n = 12000
    pts = _points(n, 4, 7, geom)
    time = np.random.default_rng(8).integers(0, geom.num_frames, size=n)
    batch = np.random.default_rng(9).integers(0, 2, size=n)
    a = voxelize(pts, time, geom, batch=batch, backend="numba")
    b = voxelize(pts, time, geom, batch=batch, backend="torch")
    _assert_same(a, b)
    a.validate()


def test_empty_and_all_dropped_inputs():
    for backend in ("numba", "torch"):
        st = voxelize(np.zeros((0, 5), np.float32), np.zeros(0, np.int64), GEOM, backend=backend)
        assert st.num_voxels == 0 and st.features.shape == (0, 5) and st.num_points == 0
        assert st.batch_size == 1 and st.dropped.total == 0
        pts = np.array([[100.0, 0, 0, 1], [0, 0, np.nan, 1], [0, 0, 0, np.inf]], np.float32)
        st = voxelize(pts, np.array([0, 1, 2]), GEOM, batch=np.array([0, 0, 1]), backend=backend)
        assert st.num_voxels == 0 and st.features.shape == (0, 4) and st.coords.shape == (0, 5)
        assert st.point_to_voxel.tolist() == [-1, -1, -1]
        assert st.dropped.out_of_range == 1 and st.dropped.non_finite == 2 and st.batch_size == 2


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_bad_time_and_batch_indices_raise(backend):
    pts = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"time index outside \[0, 3\).*\[0, 3\]"):
        voxelize(pts, np.array([0, 1, 3]), GEOM, backend=backend)
    with pytest.raises(ValueError, match="time index"):
        voxelize(pts, np.array([0, -1, 2]), GEOM, backend=backend)
    # with a batch size the torch backend checks the ranges after voxelizing (one read-back): same errors
    for time in ([0, 1, 3], [0, -1, 2], [2**40, 0, 0]):
        with pytest.raises(ValueError, match=r"time index outside \[0, 3\)"):
            voxelize(pts, np.array(time), GEOM, batch=np.zeros(3, np.int64), batch_size=1, backend=backend)
    with pytest.raises(ValueError, match="time must hold integer"):
        voxelize(pts, np.array([0.0, 1.0, 2.0]), GEOM, backend=backend)
    with pytest.raises(ValueError, match=r"time must have shape \(3,\)"):
        voxelize(pts, np.array([0, 1]), GEOM, backend=backend)
    with pytest.raises(ValueError, match=r"batch index outside \[0, 2\)"):
        voxelize(pts, np.zeros(3, np.int64), GEOM, batch=np.array([0, 1, 2]), batch_size=2, backend=backend)
    with pytest.raises(ValueError, match="points must be"):
        voxelize(np.zeros((3, 2), np.float32), np.zeros(3, np.int64), GEOM, backend=backend)


def test_auto_backend_and_drop_log(caplog):
    pts = np.array([[0.1, 0.1, 0.1, 1.0], [50.0, 0, 0, 1.0]], np.float32)
    with caplog.at_level(logging.DEBUG, logger="perception4d.voxelize"):
        voxelize(pts, np.zeros(2, np.int32), GEOM)
    messages = [r.getMessage() for r in caplog.records if r.name == "perception4d.voxelize"]
    assert len(messages) == 1 and "[numba]" in messages[0]
    assert "dropped 1 out of range, 0 non-finite" in messages[0]
    with pytest.raises(ValueError, match="backend must be one of"):
        voxelize(pts, np.zeros(2, np.int32), GEOM, backend="cuda")


@CUDA
def test_cuda_torch_backend_matches_cpu_numba():
    n = 50000
    pts = _points(n, 4, 11)
    time = np.random.default_rng(12).integers(0, GEOM.num_frames, size=n)
    batch = np.random.default_rng(13).integers(0, 4, size=n)
    dev = torch.device("cuda")
    b = voxelize(torch.from_numpy(pts).to(dev), torch.from_numpy(time).to(dev), GEOM,
                 batch=torch.from_numpy(batch).to(dev))
    assert {t.device.type for t in (b.coords, b.features, b.counts, b.point_to_voxel)} == {"cuda"}
    _assert_same(voxelize(pts, time, GEOM, batch=batch, backend="numba"), b)
    with pytest.raises(ValueError, match="runs on CPU"):
        voxelize(torch.from_numpy(pts).to(dev), torch.from_numpy(time).to(dev), GEOM, backend="numba")


def _kitti_window(root, scans: list[str], t0: int) -> Window:
    frames = []
    for k, name in enumerate(scans):
        path = root / "sequences" / "00" / "velodyne" / f"{name}.bin"
        pts = np.fromfile(path, dtype=np.float32).reshape(-1, 4)
        frames.append(Frame(points=pts, timestamp_ns=(t0 + k) * 100_000_000, frame_id=f"00/{name}",
                            source=str(path)))
    return Window(tuple(frames))


def test_voxelize_windows_on_semantickitti_scans(semantickitti_root):
    geom = Geometry((-51.2, -51.2, -4.0, 51.2, 51.2, 2.4), (0.2, 0.2, 0.2), 2)
    windows = [_kitti_window(semantickitti_root, ["000000", "000001"], 0).align(),
               _kitti_window(semantickitti_root, ["000001"], 1).align()]
    st = voxelize_windows(windows, geom, device="cpu")
    st.validate()
    points = np.concatenate([w.points for w in windows])
    time = np.concatenate([w.time for w in windows])
    batch = np.repeat([0, 1], [len(w.points) for w in windows])
    assert st.batch_size == 2 and st.num_points == len(points) == 124668 + 2 * 124605
    ref = voxelize(torch.from_numpy(points), torch.from_numpy(time), geom, batch=torch.from_numpy(batch),
                   backend="torch")
    _assert_same(st, ref)
    kept = st.point_to_voxel >= 0
    coords = st.coords[st.point_to_voxel[kept]].numpy()
    assert np.array_equal(coords[:, 0], batch[kept.numpy()])
    assert np.array_equal(coords[:, 4], time[kept.numpy()])
    inside = ((points[:, :3] >= geom.lower) & (points[:, :3] < geom.upper)).all(1)
    assert st.dropped.out_of_range == int((~inside).sum()) > 0 and st.dropped.non_finite == 0
    assert int(st.counts.sum()) == int(inside.sum())
    # both windows hold scan 000001 at a different time index; its voxels match one for one
    b0 = st.coords[(st.coords[:, 0] == 0) & (st.coords[:, 4] == 1)][:, 1:4]
    b1 = st.coords[(st.coords[:, 0] == 1) & (st.coords[:, 4] == 0)][:, 1:4]
    assert torch.equal(b0, b1)
    assert float(st.features[:, 3].min()) >= 0.0 and float(st.features[:, 3].max()) <= 1.0
    with pytest.raises(ValueError, match="window 0 has 2 frames but geometry.num_frames is 1"):
        voxelize_windows(windows, geom.with_frames(1), device="cpu")


def test_reversed_numpy_views_are_accepted():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-5, 5, (200, 4)).astype(np.float32)
    t = rng.integers(0, 2, 200).astype(np.int32)
    for backend in ("numba", "torch"):
        a = voxelize(pts[::-1], t[::-1], GEOM, backend=backend)
        b = voxelize(np.ascontiguousarray(pts[::-1]), np.ascontiguousarray(t[::-1]), GEOM, backend=backend)
        assert torch.equal(a.coords, b.coords) and torch.equal(a.point_to_voxel, b.point_to_voxel)
