"""The runtime on CUDA (skipped without a GPU): offline parity, fp16 autocast, a real out-of-memory, streams, 2 GPUs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from perception4d.core import Frame, Window
from perception4d.datasets.sample import build_window_sample
from perception4d.inference import DEFAULT_FLOW, load_model, predict_samples
from perception4d.runtime.parallel import ParallelPredictor
from perception4d.runtime.predictor import Predictor, Status, Warmup
from perception4d.runtime.sweeps import SweepRing
from perception4d.runtime.workers import FrameSlots, PredictorOptions, SlotViews, WireSweep

from .helpers import small_flow_spec, small_occ_spec, tiny_frames

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
WARMUP = Warmup(steps=2, points=5_000)


@pytest.fixture(scope="module")
def frames():
    return tiny_frames(5, azimuth_deg=1.0)


def test_cuda_fp32_matches_the_offline_tool_and_amp_stays_close(frames):
    loaded = load_model(DEFAULT_FLOW, device="cuda")
    fp32 = Predictor(loaded, "cuda", amp=False, warmup=WARMUP)
    amp = Predictor(load_model(DEFAULT_FLOW, device="cuda"), "cuda", warmup=WARMUP)
    assert amp.amp and "fp16 autocast" in amp.describe()
    for k, f in enumerate(frames):
        a, b = fp32.step(f), amp.step(f)
        if k == 0:
            continue
        sample = build_window_sample(Window(tuple(frames[max(0, k - 4):k + 1])), loaded.geometry, with_targets=False)
        offline = predict_samples(loaded, [sample])[0].flow
        # the window is aligned on the device (float64 kernel): a few coordinates differ by one float32 ulp
        np.testing.assert_allclose(a.flow.prediction.flow, offline.flow, atol=1e-3)
        assert np.abs(b.flow.prediction.flow - offline.flow).max() < 5e-2
        for t in (a.timings, b.timings):  # CUDA-event stage times (voxelize to heads: one graph replay)
            assert t.graph > 0 and t.align > 0 and t.total >= t.graph and t.voxelize == t.backbone == 0
    assert fp32.graph is not None and fp32.graph.static.graph is not None  # captured


@pytest.mark.parametrize("device", [f"cuda:{k}" for k in range(min(torch.cuda.device_count(), 2))])
@pytest.mark.parametrize("amp", [False, True])
def test_one_graph_step_matches_the_eager_step_on_every_gpu(frames, device, amp):
    """The padded step captured as one CUDA graph (the default) gives the eager fused step's outputs, on each
    GPU (a capture on the second device uses that device's streams and library handles)."""
    from perception4d.runtime.models import load_model_set

    specs = [small_flow_spec("flowmos", device), small_occ_spec("occupancy", device)]
    for spec in specs:
        loaded = load_model_set(spec, device)
        eager = Predictor(loaded, device, amp=amp, warmup=WARMUP, graph=False, mos_fusion=True)
        graphed = Predictor(loaded, device, amp=amp, warmup=WARMUP, mos_fusion=True)
        assert graphed.graph is not None and graphed.graph.capture and "one CUDA graph" in graphed.describe()
        later = [replace(f, timestamp_ns=f.timestamp_ns + 250_000_000, frame_id=f"again/{k}")
                 for k, f in enumerate(frames)]
        for f in list(frames) + later:
            a, b = eager.step(f), graphed.step(f)
            assert a.status == b.status == Status.OK
            assert (a.health.voxels, a.health.dropped_non_finite, a.health.dropped_out_of_range) == (
                b.health.voxels, b.health.dropped_non_finite, b.health.dropped_out_of_range)
            tol = 5e-2 if amp else 1e-3
            if a.flow is not None:
                assert np.abs(a.flow.prediction.flow - b.flow.prediction.flow).max() < tol
            if a.mos is not None:
                assert np.abs(a.mos.prob - b.mos.prob).max() < tol
                for x, y in zip(a.mos_fused, b.mos_fused):
                    assert np.abs(x.prob - y.prob).max() < tol
            if a.occupancy is not None:
                same = (a.occupancy.prediction.semantics == b.occupancy.prediction.semantics).mean()
                assert same > (0.995 if amp else 0.9999)
        assert graphed.graph.static.graph is not None


def test_cuda_out_of_memory_names_the_frame_and_the_predictor_recovers(frames):
    device = torch.device("cuda", torch.cuda.current_device())  # the memory-fraction cap needs an index
    pred = Predictor(small_flow_spec(), device, warmup=WARMUP)
    assert pred.step(frames[0]).status == Status.OK
    assert pred.step(frames[1]).status == Status.OK
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    cap = (torch.cuda.memory_reserved(device) + 512 * 2**20) / total
    rng = np.random.default_rng(0)
    n = 30_000_000  # ~1.4 GB of device memory for the sweep alone
    big = Frame(np.c_[rng.uniform(-12, 12, (n, 2)), rng.uniform(-1, 3, n), rng.uniform(0, 1, n)].astype(np.float32),
                frames[2].timestamp_ns, pose=frames[2].pose, extrinsic=frames[2].extrinsic, frame_id="huge/2")
    torch.cuda.set_per_process_memory_fraction(cap, device)
    try:
        failed = pred.step(big)
        assert failed.status == Status.FAILED and "huge/2" in failed.message and "out of memory" in failed.message
        after = pred.step(frames[3])  # still under the cap
        assert after.status == Status.OK and after.flow.frame_id == frames[1].frame_id
        assert pred.gate.counters.failed == 1
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def test_pinned_staging_and_output_buffers_are_reused_and_grow(frames):
    """Every step stages its sweep in pinned pool buffers and copies its outputs into the same pinned buffers;
    a larger sweep grows them once."""
    pred = Predictor(small_flow_spec(), "cuda", warmup=WARMUP)
    later = [replace(f, timestamp_ns=f.timestamp_ns + 250_000_000, frame_id=f"again/{k}") for k, f in enumerate(frames)]
    stream = list(frames) + later
    for f in stream[:6]:
        assert pred.step(f).status == Status.OK
    buffers = {k: b.data_ptr() for k, b in pred.copies.buffers.items()}
    assert {"flow", "flow_dynamic", "mos_prob"} <= set(buffers)
    assert all(b.is_pinned() for b in pred.copies.buffers.values())
    allocations = pred.staging.allocations
    for f in stream[6:]:
        assert pred.step(f).status == Status.OK
    assert {k: b.data_ptr() for k, b in pred.copies.buffers.items()} == buffers  # the same buffers every step
    assert pred.staging.allocations == allocations  # staging slots reused once the ring let go of them
    assert all(s.host.columns.is_pinned() and s.host.ego_xyz.is_pinned() for s in pred.ring.latest(5))
    last = stream[-1]
    big = replace(last, points=np.concatenate([last.points] * 4), labels=None, frame_id="big",
                  timestamp_ns=last.timestamp_ns + 50_000_000)
    r = pred.step(big)
    assert r.status == Status.OK and r.mos.prob.shape == (big.num_points,)
    assert pred.staging.allocations == allocations + 1  # one larger slot
    assert pred.copies.buffers["mos_prob"].data_ptr() != buffers["mos_prob"]  # grown


def _compare(a, b, atol=1e-3):
    assert [r.frame_id for r in a] == [r.frame_id for r in b]
    for x, y in zip(a, b):
        for name in x.results:
            rx, ry = x.results[name], y.results[name]
            assert rx.status == ry.status == Status.OK
            if rx.flow is not None:
                np.testing.assert_allclose(rx.flow.prediction.flow, ry.flow.prediction.flow, atol=atol)
            if rx.mos is not None:
                np.testing.assert_allclose(rx.mos.prob, ry.mos.prob, atol=atol)
            if rx.occupancy is not None:
                assert (rx.occupancy.prediction.semantics == ry.occupancy.prediction.semantics).mean() > 0.999


def _run(models, workers, group, frames):
    options = PredictorOptions(amp=False, warmup=WARMUP)
    with ParallelPredictor(models, workers=workers, group=group, options=options) as pp:
        for f in frames:
            pp.submit(f)
        return pp.drain()


def test_two_streams_on_one_gpu_match_the_sequential_run(frames):
    models = [small_flow_spec("flowmos", "cuda:0"), small_occ_spec("occupancy", "cuda:0")]
    _compare(_run(models, "thread", "model", frames), _run(models, "inline", "device", frames))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("workers", ["thread", "process"])
def test_two_gpus_match_one_gpu(frames, workers):
    one = [small_flow_spec("flowmos", "cuda:0"), small_occ_spec("occupancy", "cuda:0")]
    two = [replace(one[0]), replace(one[1], device="cuda:1")]
    _compare(_run(two, workers, "device", frames), _run(one, "inline", "device", frames))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_process_workers_outputs_land_in_page_locked_shared_arenas(frames, capfd):
    """The devices copy the outputs into shared reply arenas (page-locked: no refusal logged) that the caller's
    results view in place; the values are the inline run's (``test_two_gpus_match_one_gpu`` compares them)."""
    two = [small_flow_spec("flowmos", "cuda:0"), small_occ_spec("occupancy", "cuda:1")]
    options = PredictorOptions(amp=False, warmup=WARMUP)
    with ParallelPredictor(two, workers="process", group="device", options=options) as pp:
        got = [pp.step(f) for f in frames[:3]]
        raws = [raw for pool in pp.reply_pools.values() for bufs in pool._raw.values() for raw in bufs.values()]
        last = got[-1]
        for a in (last.occupancy.prediction.velocity, last.mos.prob):  # (arrays under 16 KiB are pickled)
            assert any(np.shares_memory(a, raw) for raw in raws)
        assert all(pool.copied == 0 for pool in pp.reply_pools.values())
    assert "cudaHostRegister refused" not in capfd.readouterr().err


def test_frame_slots_are_page_locked_in_a_worker_and_upload_asynchronously(frames):
    """A worker's view of a caller slot is registered with CUDA: its sweep uploads without a staging copy."""
    slots, views = FrameSlots(), SlotViews("cuda:0")
    wire = WireSweep.stage(frames[0], slots, ["w"], non_finite=0)
    wire = replace(wire, points=replace(wire.points, buffer=slots.buffers[wire.points.slot]))
    host = wire.to_host(views)
    assert host.columns.is_pinned() and host.ego_xyz.is_pinned()
    ring = SweepRing(torch.device("cuda:0"), 2)
    ring.push(host)
    torch.cuda.synchronize()
    np.testing.assert_array_equal(ring.latest(1)[0].points.cpu().numpy(), host.columns.numpy())
