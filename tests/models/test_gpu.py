"""GPU checks of every layer of the flow network at its real widths (skipped without CUDA).

fp32 against the CPU, fp16 (half weights) and autocast inference against fp32,
and an autocast training step (what AmpOptimWrapper runs).
"""

import pytest
import torch

from .helpers import amp_training_step
from .test_flow_net import build_small_model, samples

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _predict(model, batch_samples, **autocast):
    with torch.no_grad(), torch.autocast("cuda", **autocast) if autocast else torch.no_grad():
        return model(**model.data_preprocessor({"inputs": batch_samples}), mode="tensor")["flow"]


def test_cuda_fp32_matches_cpu():
    model = build_small_model().eval()
    batch_samples = samples(2)
    with torch.no_grad():
        cpu = model(**model.data_preprocessor({"inputs": batch_samples}), mode="tensor")["flow"]
    gpu = _predict(model.cuda(), batch_samples)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)


def test_cuda_half_and_autocast_inference_match_fp32():
    model = build_small_model().cuda().eval()
    batch_samples = samples(2)
    ref = _predict(model, batch_samples)
    amp = _predict(model, batch_samples, dtype=torch.float16)
    half = _predict(model.half(), batch_samples)
    for out in (amp, half):
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        assert (out - ref).abs().max() < 5e-2


def test_cuda_autocast_training_step():
    amp_training_step(build_small_model().cuda().train(), samples(2))
