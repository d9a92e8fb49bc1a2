"""GraphedCall: a fixed-shape step replayed as one CUDA graph equals running it eagerly (GPU; CPU runs it directly)."""

import copy

import pytest
import torch

from perception4d.inference import DEFAULT_OCCUPANCY, load_model
from perception4d.models.cuda_graph import GraphedCall
from perception4d.models.fuse import fuse_for_inference

from .test_fuse import _forward, _toy_samples

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(4, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 3, 1))


def test_cpu_inputs_and_autograd_run_the_function_itself():
    net = _net()
    call = GraphedCall(net, "test net")
    x = torch.randn(1, 4, 6, 6, 3)
    with torch.no_grad():
        torch.testing.assert_close(call(x), net(x))
    assert call(x).requires_grad  # autograd on: never replayed
    assert call.captures_made == 0 and call.disabled_reason is None


@cuda
def test_replays_equal_eager_runs_and_outputs_are_not_overwritten():
    net = _net().cuda().eval()
    call = GraphedCall(net, "test net")
    xs = [torch.randn(2, 4, 8, 8, 4, device="cuda") for _ in range(3)]
    with torch.no_grad():
        outs = [call(x) for x in xs]  # captured once, replayed for the next inputs
        for x, out in zip(xs, outs):
            torch.testing.assert_close(out, net(x), rtol=1e-5, atol=1e-5)
        assert call.captures_made == 1
        call(torch.randn(1, 4, 8, 8, 4, device="cuda"))  # another shape: its own graph
        assert call.captures_made == 2
        half = copy.deepcopy(net).half()  # new parameters: a copy captures its own graph
        call_half = GraphedCall(half, "half net")
        torch.testing.assert_close(call_half(xs[0].half()).float(), net(xs[0]), rtol=2e-2, atol=2e-2)
    assert call.disabled_reason is None


@cuda
def test_a_step_that_cannot_be_captured_runs_eagerly():
    def step(x):
        return x * float(x.sum())  # reads a value back to the host: not capturable

    call = GraphedCall(step, "host read")
    x = torch.randn(100, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(call(x), step(x))
    assert call.disabled_reason is not None
    with torch.no_grad():
        torch.testing.assert_close(call(x), step(x))  # stays eager


@cuda
def test_fused_occupancy_network_replays_its_decoder():
    loaded = load_model(DEFAULT_OCCUPANCY, device="cuda", task="occupancy")
    eager = fuse_for_inference(loaded.model, cuda_graphs=False)
    graphed = fuse_for_inference(loaded.model)
    samples = _toy_samples(loaded.geometry, ("occupancy",))
    ref = _forward(eager, samples)["occupancy"]
    for _ in range(3):  # cuDNN may pick other (TF32) algorithms inside the capture: fp32 agrees to ~1e-3
        out = _forward(graphed, samples)["occupancy"]
        torch.testing.assert_close(out.logits, ref.logits, rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(out.velocity, ref.velocity, rtol=1e-2, atol=1e-2)
        assert (out.logits.argmax(1) != ref.logits.argmax(1)).float().mean() < 1e-3
    call = graphed.heads["occupancy"]._graphed
    assert call.captures_made == 1 and call.disabled_reason is None
    half = copy.deepcopy(graphed).half()  # casting resets the graphs: captured again with the half weights
    out = _forward(half, samples)["occupancy"]
    assert (out.logits.float() - ref.logits).abs().max() < 5e-2
