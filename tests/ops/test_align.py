"""align_window: every sweep of a window mapped into the reference frame in one pass (CUDA kernel vs reference)."""

import numpy as np
import pytest
import torch

from perception4d.core.se3 import SE3
from perception4d.ops.align import align_window, align_window_torch


def _window(seed: int, sizes, columns: int = 4):
    rng = np.random.default_rng(seed)
    points = torch.from_numpy(rng.normal(0, 40, (sum(sizes), columns)).astype(np.float32))
    transforms = [(SE3.from_yaw(float(rng.uniform(-3, 3)), rng.normal(0, 500, 3))).as_matrix() for _ in sizes]
    return points, transforms, np.concatenate([[0], np.cumsum(sizes)])


def test_reference_equals_numpy_transform_points_per_sweep():
    points, transforms, offsets = _window(0, [5, 0, 7, 3])
    out, time = align_window(points, transforms, offsets, time_shift=2)  # CPU: the reference
    for k, m in enumerate(transforms):
        sl = slice(int(offsets[k]), int(offsets[k + 1]))
        se3 = SE3(m[:3, :3], m[:3, 3])
        np.testing.assert_allclose(out[sl, :3].numpy(), se3.transform_points(points[sl, :3].numpy()), rtol=0,
                                   atol=1e-4)
        assert (out[sl, 3:] == points[sl, 3:]).all() and (time[sl] == 2 + k).all()


def test_offsets_and_points_are_checked():
    points, transforms, offsets = _window(1, [3, 4])
    with pytest.raises(ValueError, match="row offsets"):
        align_window(points, transforms, offsets[:-1], 0)
    with pytest.raises(ValueError, match="float32"):
        align_window(points.double(), transforms, offsets, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("sizes", [[1], [1000, 0, 2500, 17], [130_000] * 11])
def test_cuda_kernel_equals_the_reference(sizes):
    points, transforms, offsets = _window(2, sizes)
    ref, ref_time = align_window_torch(points.double().float().cuda(), transforms, offsets, 3)
    out, time = align_window(points.cuda(), transforms, offsets, 3)
    assert torch.equal(time, ref_time)
    assert torch.equal(out[:, 3:], ref[:, 3:])
    # float64 products in another summation order: equal, or one float32 ulp apart in rare coordinates
    diff = (out[:, :3] - ref[:, :3]).abs()
    ulp = torch.finfo(torch.float32).eps * ref[:, :3].abs().clamp(min=1e-30)
    assert (diff <= ulp).all()
    assert (diff > 0).float().mean() < 1e-3
