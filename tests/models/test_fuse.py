"""Inference fusion (BatchNorm folded, bias/ReLU fused, residual folded) equals the unfused network."""

import pytest
import torch

from perception4d.core import Geometry
from perception4d.datasets.sample import build_window_sample
from perception4d.inference import DEFAULT_FLOW, DEFAULT_MOS, load_model
from perception4d.models.fuse import FusedSTDBlock, fold_linear, fuse_for_inference

from .helpers import toy_window


def _forward(model, samples):
    with torch.no_grad():
        return model(**model.data_preprocessor({"inputs": samples}), mode="tensor")


def _toy_samples(geometry: Geometry, tasks):
    return [build_window_sample(toy_window(n_frames=geometry.num_frames if "mos" in tasks else 4, seed=s), geometry,
                                "toy", with_targets=False, tasks=tasks) for s in (0, 1)]


@pytest.mark.parametrize("checkpoint,task", [(DEFAULT_FLOW, "flow"), (DEFAULT_MOS, "mos")])
def test_fused_shipped_network_matches_the_unfused_one_on_cpu(checkpoint, task):
    loaded = load_model(checkpoint, device="cpu", task=task)
    fused = fuse_for_inference(loaded.model)
    assert any(isinstance(m, FusedSTDBlock) for m in fused.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in fused.backbone.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in loaded.model.backbone.modules()) > 10  # copy untouched
    samples = _toy_samples(loaded.geometry, (task,))
    ref = _forward(loaded.model, samples)[task]
    out = _forward(fused, samples)[task]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_fold_linear_with_residual_is_exact_and_a_fused_network_refuses_training():
    torch.manual_seed(0)
    lin, bn = torch.nn.Linear(12, 4, bias=False), torch.nn.BatchNorm1d(4)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    bn.eval()
    x = torch.randn(50, 12)
    folded = fold_linear(lin, bn, residual=4)
    torch.testing.assert_close(folded(x), bn(lin(x)) + x[:, :4], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="residual"):
        fold_linear(lin, bn, residual=3)
    fused = fuse_for_inference(load_model(DEFAULT_FLOW, device="cpu").model)
    fused.eval()  # allowed
    with pytest.raises(RuntimeError, match="cannot be trained"):
        fused.train()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("half", [False, True])
def test_fused_network_matches_on_cuda_with_the_activation_in_the_kernel(half):
    loaded = load_model(DEFAULT_FLOW, device="cuda", task="flow")
    fused = fuse_for_inference(loaded.model, engine="spconv")
    samples = _toy_samples(loaded.geometry, ("flow",))
    ref = _forward(loaded.model, samples)["flow"]
    model = fused.half() if half else fused
    out = _forward(model, samples)["flow"]
    tol = 5e-2 if half else 1e-3
    assert (out.float() - ref.float()).abs().max() < tol


def test_dense_occupancy_head_folded_equals_the_unfused_head():
    from perception4d.inference import DEFAULT_OCCUPANCY
    from perception4d.models.fuse import fold_dense_conv

    torch.manual_seed(0)
    for conv in (torch.nn.Conv3d(4, 6, 3, padding=1, bias=False), torch.nn.ConvTranspose3d(4, 6, 2, stride=2)):
        bn = torch.nn.BatchNorm3d(6).eval()
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
        x = torch.randn(2, 4, 5, 6, 3)
        torch.testing.assert_close(fold_dense_conv(conv, bn)(x), bn(conv(x)), rtol=1e-5, atol=1e-5)
    loaded = load_model(DEFAULT_OCCUPANCY, device="cpu", task="occupancy")
    fused = fuse_for_inference(loaded.model)
    head = fused.heads["occupancy"]
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in head.modules())
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in loaded.model.heads["occupancy"].modules())
    samples = _toy_samples(loaded.geometry, ("occupancy",))
    ref = _forward(loaded.model, samples)["occupancy"]
    out = _forward(fused, samples)["occupancy"]
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(out.velocity, ref.velocity, rtol=1e-3, atol=1e-3)
