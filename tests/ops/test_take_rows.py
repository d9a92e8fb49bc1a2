"""take_rows: row gathers with -1 -> zero rows; the CUDA kernel against torch's gather (any dtype, odd widths)."""

import pytest
import torch

from perception4d.ops.gather_conv import take_rows, triton_available


def _reference(src: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    out = src[idx.long().clamp(min=0)].clone()
    out[idx < 0] = 0
    return out


def test_cpu_gathers_rows_and_zeroes_negative_indices():
    src = torch.arange(12, dtype=torch.float32).view(4, 3)
    idx = torch.tensor([3, -1, 0, 0, 2])
    assert take_rows(src, idx).tolist() == [[9, 10, 11], [0, 0, 0], [0, 1, 2], [0, 1, 2], [6, 7, 8]]
    assert take_rows(torch.tensor([5, 6, 7]), torch.tensor([-1, 2])).tolist() == [0, 7]
    assert take_rows(torch.zeros(0, 2), torch.tensor([-1, -1])).shape == (2, 2)
    with pytest.raises(ValueError, match="take_rows"):
        take_rows(torch.zeros(2, 2, 2), torch.tensor([0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.int64, torch.bool])
@pytest.mark.parametrize("shape", [(5003,), (5003, 1), (5003, 3), (5003, 6), (5003, 16), (5003, 33)])
def test_cuda_kernel_equals_torch_gather(dtype, shape):
    if not triton_available():
        pytest.skip("Triton is not installed")
    torch.manual_seed(0)
    src = (torch.randn(*shape, device="cuda") * 100).to(dtype)
    for idx_dtype in (torch.int64, torch.int32):
        idx = torch.randint(-1, shape[0], (20011,), device="cuda", dtype=idx_dtype)
        out = take_rows(src, idx)
        assert out.dtype == src.dtype and out.shape == (20011, *shape[1:])
        torch.testing.assert_close(out, _reference(src, idx), rtol=0, atol=0)
    assert take_rows(src, torch.zeros(0, dtype=torch.int64, device="cuda")).shape == (0, *shape[1:])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_gradients_flow_through_the_torch_gather():
    src = torch.randn(50, 4, device="cuda", requires_grad=True)
    idx = torch.tensor([1, -1, 1, 7], device="cuda")
    take_rows(src, idx).sum().backward()
    expected = torch.zeros(50, device="cuda")
    expected[1], expected[7] = 2, 1
    torch.testing.assert_close(src.grad[:, 0], expected)
