"""The gather-GEMM engine runs the fused sparse U-Net with spconv's results (CPU here; CUDA graphs on a GPU)."""

import copy

import numpy as np
import pytest
import torch

from perception4d.inference import DEFAULT_FLOW, DEFAULT_MOS, load_model
from perception4d.models.backbone_spconv import SparseUNet4D
from perception4d.models.engine import GatherUNet, GraphedUNet
from perception4d.models.fuse import fuse_backbone, fuse_for_inference
from perception4d.models.spconv_utils import guard_spconv_dtypes, import_spconv, set_spconv_algo

from .test_fuse import _forward, _toy_samples

spconv = import_spconv()


def _random_backbone(seed: int = 0, channels=(8, 16, 24)) -> SparseUNet4D:
    torch.manual_seed(seed)
    net = SparseUNet4D(in_channels=6, channels=channels).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm1d):  # non-trivial statistics, so folding is exercised
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return net


def _input(seed: int, n: int, shape, batch: int = 2, channels: int = 6, device="cpu"):
    rng = np.random.default_rng(seed)
    c = np.unique(np.c_[rng.integers(0, batch, n), *(rng.integers(0, s, n) for s in shape)], axis=0)
    c = c[rng.permutation(len(c))]
    coords = torch.from_numpy(c).to(torch.int32).to(device)
    feats = torch.from_numpy(rng.normal(size=(len(c), channels)).astype(np.float32)).to(device)
    return spconv.SparseConvTensor(feats, coords, list(shape), batch)


@pytest.mark.parametrize("shape", [(24, 20, 8, 3), (23, 21, 7, 2)])  # odd extents: sites beyond the coarse grid
def test_engine_equals_spconv_backbone_fused_and_unfused(shape):
    net = _random_backbone()
    set_spconv_algo(net, "cpu")
    fused = fuse_backbone(copy.deepcopy(net))
    guard_spconv_dtypes(fused)
    set_spconv_algo(fused, "cpu")
    engine = GatherUNet(fused)
    x = _input(1, 1500, shape)
    with torch.no_grad():
        ref = net(x).features
        ref_fused = fused(x).features
        out = engine(x).features
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref_fused, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("checkpoint,task", [(DEFAULT_FLOW, "flow"), (DEFAULT_MOS, "mos")])
def test_shipped_networks_on_the_engine_match_spconv(checkpoint, task):
    loaded = load_model(checkpoint, device="cpu", task=task)
    on_engine = fuse_for_inference(loaded.model, engine="gather")
    assert isinstance(on_engine.backbone, GatherUNet)
    samples = _toy_samples(loaded.geometry, (task,))
    ref = _forward(loaded.model, samples)[task]
    out = _forward(on_engine, samples)[task]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_engine_selection_and_copies():
    loaded = load_model(DEFAULT_FLOW, device="cpu", task="flow")
    assert not isinstance(fuse_for_inference(loaded.model).backbone, GatherUNet)  # auto on the CPU: spconv
    with pytest.raises(ValueError, match="engine"):
        fuse_for_inference(loaded.model, engine="tensorrt")
    with pytest.raises(TypeError, match="fused"):
        GatherUNet(loaded.model.backbone)
    engine = fuse_for_inference(loaded.model, engine="gather")
    twin = copy.deepcopy(engine)
    samples = _toy_samples(loaded.geometry, ("flow",))
    torch.testing.assert_close(_forward(twin, samples)["flow"], _forward(engine, samples)["flow"])


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16", "amp"])
def test_cuda_graph_replays_equal_the_eager_engine_across_frame_sizes(precision):
    fused = fuse_backbone(_random_backbone(channels=(16, 32, 64, 64)))
    engine = GatherUNet(fused).cuda()
    if precision == "fp16":
        engine = engine.half()
    runner = GraphedUNet(engine, quantum=1024)
    shape = (96, 96, 16, 5)
    for i, n in enumerate([20000, 12000, 26000, 26000, 8000]):  # grows once at 26000, then reuses
        x = _input(10 + i, n, shape, batch=1, channels=6, device="cuda")
        feats = x.features.half() if precision == "fp16" else x.features
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=precision == "amp"):
            eager = engine.execute(feats, engine.plan(x.indices, shape, 1))
            graphed = runner(feats, x.indices, shape, 1)
        assert runner.disabled_reason is None, runner.disabled_reason
        tol = 1e-5 if precision == "fp32" else 2e-2
        torch.testing.assert_close(graphed.float(), eager.float(), rtol=tol, atol=tol)
    assert runner.captures_made == 2


@needs_cuda
def test_cuda_graph_grows_when_a_coarse_level_overflows():
    engine = GatherUNet(fuse_backbone(_random_backbone())).cuda()
    runner = GraphedUNet(engine, quantum=1024, margin=1.0)
    shape = (64, 64, 8, 3)
    dense_low = _input(0, 9000, (64, 64, 2, 3), batch=1, device="cuda")  # few coarse voxels
    spread = _input(1, 7000, shape, batch=1, device="cuda")  # fewer voxels, many more coarse voxels
    with torch.no_grad():
        runner(dense_low.features, dense_low.indices, shape, 1)
        out = runner(spread.features, spread.indices, shape, 1)
        eager = engine.execute(spread.features, engine.plan(spread.indices, shape, 1))
    assert runner.captures_made == 2
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)


@needs_cuda
@pytest.mark.parametrize("half", [False, True])
def test_shipped_flow_network_on_the_engine_matches_spconv_on_cuda(half):
    loaded = load_model(DEFAULT_FLOW, device="cuda", task="flow")
    samples = _toy_samples(loaded.geometry, ("flow",))
    ref = _forward(loaded.model, samples)["flow"]
    on_engine = fuse_for_inference(loaded.model)  # auto on CUDA: the engine with CUDA graphs
    assert isinstance(on_engine.backbone, GatherUNet)
    model = on_engine.half() if half else on_engine
    for _ in range(3):  # capture, then replays
        out = _forward(model, samples)["flow"]
    assert (out.float() - ref.float()).abs().max() < (5e-2 if half else 1e-3)


@needs_cuda
def test_cuda_graph_capacities_shrink_after_a_run_of_small_frames():
    engine = GatherUNet(fuse_backbone(_random_backbone())).cuda()
    runner = GraphedUNet(engine, quantum=1024, shrink_after=3)
    shape = (64, 64, 8, 3)
    big = _input(0, 30000, shape, batch=1, device="cuda")
    with torch.no_grad():
        runner(big.features, big.indices, shape, 1)
        first = next(iter(runner._captures.values())).capacities
        for i in range(4):
            small = _input(1 + i, 4000, shape, batch=1, device="cuda")
            out = runner(small.features, small.indices, shape, 1)
            eager = engine.execute(small.features, engine.plan(small.indices, shape, 1))
            torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    assert runner.captures_made == 2
    assert next(iter(runner._captures.values())).capacities[0] < first[0] / 2


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_cuda_graphs_on_two_devices_of_one_process():
    """Captured and eager runs on a GPU that is not the current device (Triton launches on the current device
    unless told otherwise: this once failed with "Pointer argument cannot be accessed from Triton")."""
    fused = fuse_backbone(_random_backbone())
    shape = (64, 64, 8, 3)
    for dev in ("cuda:0", "cuda:1", "cuda:0"):
        engine = GatherUNet(fused).to(dev)
        runner = GraphedUNet(engine, quantum=1024)
        x = _input(0, 6000, shape, batch=1, device=dev)
        with torch.no_grad():
            out = runner(x.features, x.indices, shape, 1)
            eager = engine.execute(x.features, engine.plan(x.indices, shape, 1))
        assert runner.disabled_reason is None, runner.disabled_reason
        torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)


@needs_cuda
def test_deferred_capacity_check_reports_the_overflow_and_the_frame_fits_when_run_again():
    engine = GatherUNet(fuse_backbone(_random_backbone())).cuda()
    runner = GraphedUNet(engine, quantum=1024, margin=1.0)
    runner.defer_checks = True
    shape = (64, 64, 8, 3)
    dense_low = _input(0, 9000, (64, 64, 2, 3), batch=1, device="cuda")  # few coarse voxels
    spread = _input(1, 7000, shape, batch=1, device="cuda")  # fewer voxels, many more coarse voxels
    with torch.no_grad():
        runner(dense_low.features, dense_low.indices, shape, 1)
        assert runner.settle() and runner.pending is None
        runner(spread.features, spread.indices, shape, 1)  # overflows a coarse level: its output is wrong
        assert runner.settle() is False and runner.captures_made == 2  # grown to this frame's sizes
        out = runner(spread.features, spread.indices, shape, 1)
        assert runner.settle()
        eager = engine.execute(spread.features, engine.plan(spread.indices, shape, 1))
    assert runner.captures_made == 2
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    assert runner.settle()  # nothing pending: True


def test_weights_cast_once_under_autocast_follow_in_place_updates():
    """Under autocast the engine casts each weight once and keeps it (no cast kernel per layer and frame); an
    in-place update of the parameters (load_state_dict) is seen at the next call."""
    engine = GatherUNet(fuse_backbone(_random_backbone()), cuda_graphs=False)
    x = _input(2, 800, (24, 20, 8, 3))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        first = engine(x).features
        cached = engine.stem._casts["weight"][1]
        again = engine(x).features
        assert engine.stem._casts["weight"][1] is cached  # not cast again
        torch.testing.assert_close(again, first, rtol=0, atol=0)
        state = {k: v * 1.5 for k, v in engine.state_dict().items()}
        engine.load_state_dict(state)
        fresh = copy.deepcopy(engine)
        for m in fresh.modules():
            m.__dict__.pop("_casts", None)
        updated, want = engine(x).features, fresh(x).features
    assert engine.stem._casts["weight"][1] is not cached
    assert not torch.equal(updated, first)
    torch.testing.assert_close(updated, want, rtol=0, atol=0)
