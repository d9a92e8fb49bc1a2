"""scatter_sum / scatter_mean / scatter_max against dense per-segment references, values and gradients."""

from __future__ import annotations

import pytest
import torch

from perception4d.ops.scatter import scatter_max, scatter_mean, scatter_sum


def _case(seed: int, n: int = 200, c: int = 3, segments: int = 17, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(n, c, generator=g, dtype=dtype)
    index = torch.randint(-1, segments - 2, (n,), generator=g)  # last two segments stay empty
    return values, index, segments


def _dense(values, index, segments, reduce):
    rows = []
    for s in range(segments):
        sel = values[index == s]
        if sel.shape[0] == 0:
            rows.append(values.new_zeros(values.shape[1:]))
        elif reduce == "sum":
            rows.append(sel.sum(0))
        elif reduce == "mean":
            rows.append(sel.mean(0))
        else:
            rows.append(sel.max(0).values)
    return torch.stack(rows)


@pytest.mark.parametrize("reduce,fn", [("sum", scatter_sum), ("mean", scatter_mean), ("max", scatter_max)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_dense_reference_values_and_gradients(reduce, fn, seed):
    values, index, segments = _case(seed)
    a = values.clone().requires_grad_(True)
    b = values.clone().requires_grad_(True)
    out = fn(a, index, segments)
    ref = _dense(b, index, segments, reduce)
    assert out.shape == (segments, values.shape[1])
    torch.testing.assert_close(out, ref)
    assert torch.all(out[-2:] == 0)  # empty segments are 0
    weight = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed + 10))
    (ga,) = torch.autograd.grad((out * weight).sum(), a)
    (gb,) = torch.autograd.grad((ref * weight).sum(), b)
    torch.testing.assert_close(ga, gb)
    assert torch.all(ga[index == -1] == 0)  # ignored rows get no gradient


@pytest.mark.parametrize("fn", [scatter_mean, scatter_max])
def test_gradcheck(fn):
    values, index, segments = _case(5, n=30, c=2, segments=6)
    values.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: fn(v, index, segments), (values,))


def test_float32_and_1d_values():
    values = torch.tensor([1.0, 3.0, 5.0, -2.0], dtype=torch.float32)
    index = torch.tensor([0, 0, 2, -1])
    torch.testing.assert_close(scatter_mean(values, index, 3), torch.tensor([2.0, 0.0, 5.0]))
    torch.testing.assert_close(scatter_max(values, index, 3), torch.tensor([3.0, 0.0, 5.0]))
    # negative maxima are kept (not clipped at the 0 of empty segments)
    torch.testing.assert_close(scatter_max(torch.tensor([-4.0, -1.0]), torch.tensor([1, 1]), 2),
                               torch.tensor([0.0, -1.0]))


def test_empty_input():
    values = torch.zeros((0, 4))
    index = torch.zeros((0,), dtype=torch.int64)
    assert scatter_mean(values, index, 5).shape == (5, 4)
    assert scatter_max(values, index, 0).shape == (0, 4)


def test_bad_index_is_rejected():
    values = torch.ones(3, 2)
    with pytest.raises(ValueError, match=r"index values must lie in \[-1, 2\)"):
        scatter_mean(values, torch.tensor([0, 1, 2]), 2)
    with pytest.raises(ValueError, match="index must be int64"):
        scatter_max(values, torch.tensor([0, 1, 1], dtype=torch.int32), 2)
    with pytest.raises(ValueError, match="rows"):
        scatter_sum(values, torch.tensor([0, 1]), 2)
