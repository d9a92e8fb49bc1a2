"""``voxelize_static``: the capacity-sized voxelizer of the one-graph streaming step, against ``voxelize``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from perception4d.core.geometry import Geometry
from perception4d.core.voxelize import voxelize
from perception4d.ops.voxelize_torch import voxelize_static
from perception4d.utils.device import device_constant

GEOM = Geometry(point_range=(-4.0, -4.0, -1.0, 4.0, 4.0, 1.0), voxel_size=(0.5, 0.5, 0.5), num_frames=3)


def _window(n: int, seed: int, nan_rows: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    pts = np.c_[rng.uniform(-5, 5, (n, 2)), rng.uniform(-1.5, 1.5, (n, 1)), rng.uniform(0, 1, (n, 1))]
    pts = pts.astype(np.float32)
    if n:
        pts[rng.integers(0, n, n // 20)] = np.nan  # non-finite points of the window itself
    pad = np.full((nan_rows, 4), np.nan, np.float32)  # the padding rows the step graph appends
    time = np.r_[rng.integers(0, GEOM.num_frames, n), np.zeros(nan_rows)].astype(np.int32)
    return torch.from_numpy(np.r_[pts, pad]), torch.from_numpy(time)


def _static(points, time, capacity):
    bounds = [device_constant(v, "cpu", torch.float32) for v in (GEOM.lower, GEOM.upper, GEOM.voxel_size)]
    return voxelize_static(points, time, *bounds, (1, *GEOM.spatial_shape), capacity)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 400), pad=st.integers(0, 64), extra=st.integers(0, 50), seed=st.integers(0, 2**16))
def test_padded_rows_and_capacity_leave_the_voxels_unchanged(n, pad, extra, seed):
    points, time = _window(n, seed, pad)
    ref = voxelize(points[:n], time[:n], GEOM, batch_size=1, backend="torch")
    v = ref.num_voxels
    cap = v + extra + 1
    va, num_voxels, drops = _static(points, time, cap)
    assert int(num_voxels) == v
    assert drops.tolist() == [ref.dropped.out_of_range, ref.dropped.non_finite + pad]
    torch.testing.assert_close(va.coords[:v], ref.coords, rtol=0, atol=0)
    torch.testing.assert_close(va.features[:v], ref.features, rtol=0, atol=0)
    torch.testing.assert_close(va.counts[:v], ref.counts, rtol=0, atol=0)
    torch.testing.assert_close(va.point_to_voxel[:n], ref.point_to_voxel, rtol=0, atol=0)
    assert (va.point_to_voxel[n:] == -1).all()
    # padding rows: batch index 1 (outside the window), no points, zero features
    assert va.coords.shape == (cap, 5) and (va.coords[v:, 0] == 1).all() and (va.coords[v:, 1:] == 0).all()
    assert (va.counts[v:] == 0).all() and (va.features[v:] == 0).all()


@pytest.mark.parametrize("cap_less", [1, 7])
def test_too_small_a_capacity_reports_the_true_count_and_never_points_outside(cap_less):
    points, time = _window(300, 4, 5)
    ref = voxelize(points[:300], time[:300], GEOM, batch_size=1, backend="torch")
    cap = ref.num_voxels - cap_less
    va, num_voxels, _ = _static(points, time, cap)
    assert int(num_voxels) == ref.num_voxels > cap  # the caller sees the overflow
    p2v = va.point_to_voxel
    assert int(p2v.max()) < cap
    kept = ref.point_to_voxel < cap  # points of the voxels that fit keep their row
    torch.testing.assert_close(p2v[:300][kept], ref.point_to_voxel[kept], rtol=0, atol=0)
    torch.testing.assert_close(va.coords, ref.coords[:cap], rtol=0, atol=0)


def test_more_than_one_window_is_refused():
    points, time = _window(10, 0)
    bounds = [device_constant(v, "cpu", torch.float32) for v in (GEOM.lower, GEOM.upper, GEOM.voxel_size)]
    with pytest.raises(ValueError, match="one window"):
        voxelize_static(points, time, *bounds, (2, *GEOM.spatial_shape), 8)
