"""The streaming predictor gives the offline tools' results on the same windows (CPU, bit for bit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perception4d.core import Window
from perception4d.datasets.sample import build_window_sample
from perception4d.datasets.window_dataset import FrameListReader
from perception4d.datasets.windows import iter_windows, plan_windows
from perception4d.errors import ConfigError
from perception4d.inference import DEFAULT_FLOW, DEFAULT_MOS, load_model, predict_samples, submission_flow
from perception4d.models.preprocessor import WindowBatcher
from perception4d.mos.fusion import RecedingHorizonFusion
from perception4d.runtime.models import ModelSpec, load_model_set
from perception4d.runtime.predictor import Predictor, Status, Warmup
from perception4d.runtime.sweeps import HostSweep, SweepRing
from perception4d.runtime.timing import StageTimes

from .helpers import small_occ_spec, tiny_frames

NO_WARMUP = Warmup(steps=0)


@pytest.fixture(scope="module")
def frames():
    return tiny_frames(4)


@pytest.fixture(scope="module")
def flow_loaded():
    return load_model(DEFAULT_FLOW, device="cpu")


def test_flow_matches_offline_tool_and_names_the_source_sweep(flow_loaded, frames):
    pred = Predictor(flow_loaded, "cpu", warmup=Warmup(steps=1, points=500))
    assert pred.warmup_s > 0 and len(pred.ring) == 0  # warm-up leaves no sweep behind
    first = pred.step(frames[0])
    assert first.status == Status.OK and first.flow is None and "next sweep" in first.message
    for k in range(1, 3):
        r = pred.step(frames[k])
        assert r.status == Status.OK and r.frame_id == frames[k].frame_id
        assert r.flow.frame_id == frames[k - 1].frame_id and r.flow.next_frame_id == frames[k].frame_id
        sample = build_window_sample(Window(tuple(frames[:k + 1])), flow_loaded.geometry, with_targets=False)
        offline = predict_samples(flow_loaded, [sample])[0].flow
        sub = submission_flow(offline)  # what `p4d infer --task flow` writes
        np.testing.assert_array_equal(r.flow.prediction.flow, sub.flow)
        np.testing.assert_array_equal(r.flow.prediction.is_dynamic, sub.is_dynamic)
        np.testing.assert_array_equal(r.flow.prediction.ego_flow, offline.ego_flow)
        assert r.flow.dt == pytest.approx(sample.meta.dt)
        assert r.health.window_frames == k + 1 and r.health.points == frames[k].num_points
        t = r.timings
        assert isinstance(t, StageTimes) and t.backbone > 0 and t.voxelize > 0 and t.total >= t.backbone


@pytest.mark.slow
def test_mos_online_and_fused_match_offline_tool(frames):
    spec = ModelSpec("mos", checkpoint=str(DEFAULT_MOS))
    pred = Predictor(spec, "cpu", mos_fusion=True, warmup=NO_WARMUP)
    stream = frames[:3]
    results = [pred.step(f) for f in stream]
    tail = pred.flush()
    # the offline tool's loop: mos windows, RecedingHorizonFusion over window predictions
    loaded = load_model(DEFAULT_MOS, device="cpu")
    reader = FrameListReader(stream, "stream")
    plan = plan_windows(reader, loaded.geometry.num_frames, task="mos")
    fusion = RecedingHorizonFusion(loaded.geometry.num_frames)
    fused_offline = []
    for (first, last), sample in zip(plan.spans, iter_windows(reader, loaded.geometry, plan=plan, tasks=("mos",))):
        p = predict_samples(loaded, [sample])[0].mos
        r = results[last]
        np.testing.assert_array_equal(r.mos.prob, p.current)
        assert r.mos.frame_id == stream[last].frame_id
        span = range(last - first + 1)
        fused_offline += fusion.add_window(list(range(first, last + 1)), [p.frame(j) for j in span],
                                           [p.in_grid[p.offsets[j]:p.offsets[j + 1]] for j in span])
    fused_offline += list(fusion.flush())
    fused_stream = [f for r in results for f in r.mos_fused] + tail
    assert [f.frame_id for f in fused_stream] == [stream[f.scan_id].frame_id for f in fused_offline]
    for a, b in zip(fused_stream, fused_offline):
        np.testing.assert_array_equal(a.prob, b.fused)
        assert a.num_predictions == b.num_predictions


def test_occupancy_config_only_matches_predict_samples_and_says_random_init(frames):
    spec = small_occ_spec()
    pred = Predictor(spec, "cpu", warmup=NO_WARMUP)
    assert "RANDOM INIT" in pred.describe()
    loaded = load_model_set(spec, "cpu")  # same seed: same weights
    for k in range(3):
        r = pred.step(frames[k])
        window = Window(tuple(frames[max(0, k - 2):k + 1]))
        sample = build_window_sample(window, loaded.geometry, with_targets=False, tasks=("occupancy",))
        with torch.no_grad():
            offline = loaded.model(**loaded.model.data_preprocessor({"inputs": [sample]}), mode="predict")[0]
        assert r.occupancy.frame_id == frames[k].frame_id and r.flow is None and r.mos is None
        np.testing.assert_array_equal(r.occupancy.prediction.semantics, offline.occupancy.semantics)
        np.testing.assert_array_equal(r.occupancy.prediction.velocity, offline.occupancy.velocity)


@pytest.mark.parametrize("host_transform", [True, False])
def test_ring_assembles_the_window_batcher_input(flow_loaded, frames, host_transform):
    """The ring's input equals WindowBatcher(build_window_sample(...)) field by field; the device-side
    float64 transform (the CUDA path) may differ from numpy's BLAS by one float32 ulp in a few coordinates."""
    geometry = flow_loaded.geometry
    ring = SweepRing("cpu", geometry.num_frames, host_transform=host_transform)
    for f in frames:
        ring.push(HostSweep.from_frame(f))
    got = ring.assemble(geometry, flow_layout=True).batch
    sample = build_window_sample(Window(tuple(frames)), geometry, "stream", with_targets=False)
    ref = WindowBatcher(geometry)([sample], "cpu")
    if host_transform:
        torch.testing.assert_close(got.points, ref.points, rtol=0, atol=0)
        torch.testing.assert_close(got.sparse.features, ref.sparse.features, rtol=0, atol=0)
    else:
        torch.testing.assert_close(got.points, ref.points, rtol=1e-6, atol=1e-5)
    for name in ("time", "source_rows", "source_batch", "dt"):
        torch.testing.assert_close(getattr(got, name), getattr(ref, name), rtol=0, atol=0)
    torch.testing.assert_close(got.ego_flow, ref.ego_flow, rtol=0, atol=0 if host_transform else 1e-5)
    torch.testing.assert_close(got.sparse.coords, ref.sparse.coords, rtol=0, atol=0)
    torch.testing.assert_close(got.sparse.point_to_voxel, ref.sparse.point_to_voxel, rtol=0, atol=0)
    assert got.source_counts == ref.source_counts
    s, r = got.samples[0], ref.samples[0]
    assert (s.source_index, s.frame_ids, s.meta) == (r.source_index, r.frame_ids, r.meta)
    np.testing.assert_array_equal(s.aligned.offsets, r.aligned.offsets)
    np.testing.assert_array_equal(s.aligned.time, r.aligned.time)
    np.testing.assert_array_equal(s.source_xyz, r.source_xyz)
    np.testing.assert_array_equal(s.sensor_origin, r.sensor_origin)
    assert all(a.allclose(b, atol=0) for a, b in zip(s.aligned.ref_T_frame, r.aligned.ref_T_frame))


def test_amp_on_cpu_and_a_too_small_shared_ring_are_refused(flow_loaded):
    with pytest.raises(ConfigError, match="CUDA only"):
        Predictor(flow_loaded, "cpu", amp=True, warmup=NO_WARMUP)
    with pytest.raises(ConfigError, match="holds 2 sweeps"):
        Predictor(flow_loaded, "cpu", ring=SweepRing("cpu", 2), warmup=NO_WARMUP)


@pytest.mark.parametrize("engine", ["auto", "gather"])
def test_fused_predictor_matches_the_unfused_one(flow_loaded, frames, engine):
    plain = Predictor(flow_loaded, "cpu", warmup=NO_WARMUP)
    fused = Predictor(flow_loaded, "cpu", warmup=NO_WARMUP, fuse=True, engine=engine)
    assert not plain.fused and fused.fused and "fused for inference" in fused.describe()
    assert ("gather-GEMM engine" in fused.describe()) == (engine == "gather")  # auto on the CPU: spconv
    assert fused.loaded.model is not flow_loaded.model  # a fused copy; the offline model is untouched
    for f in frames[:3]:
        a, b = plain.step(f), fused.step(f)
        if a.flow is not None:
            np.testing.assert_allclose(b.flow.prediction.flow, a.flow.prediction.flow, atol=1e-4)
    with pytest.raises(ConfigError, match="engine 'tensorrt'"):
        Predictor(flow_loaded, "cpu", warmup=NO_WARMUP, engine="tensorrt")


def test_a_step_whose_engine_capacity_check_fails_runs_its_window_again(flow_loaded, frames, monkeypatch):
    """The engine's CUDA-graph capacity check is deferred to the step's synchronisation (``GatherUNet.settle``);
    a failed check (a coarser level overflowed: that output is wrong) runs the window once more."""
    ref = Predictor(flow_loaded, "cpu", warmup=NO_WARMUP, fuse=True, engine="gather")
    pred = Predictor(flow_loaded, "cpu", warmup=NO_WARMUP, fuse=True, engine="gather")
    backbone = pred.loaded.model.backbone
    assert backbone.defer_checks and flow_loaded.model.backbone is not backbone
    calls, verdicts = [], iter([False, True])
    forward = pred._forward

    def counting_forward(ring, sweeps=None):
        calls.append(len(ring))
        return forward(ring, sweeps)

    monkeypatch.setattr(pred, "_forward", counting_forward)
    for f in frames[:2]:
        want = ref.step(f)
        if want.flow is None:
            assert pred.step(f).flow is None
            continue
        monkeypatch.setattr(backbone, "settle", lambda: next(verdicts))
        got = pred.step(f)
        assert got.status == Status.OK and len(calls) == 2  # launched, checked, launched again
        np.testing.assert_array_equal(got.flow.prediction.flow, want.flow.prediction.flow)
    monkeypatch.setattr(backbone, "settle", lambda: False)  # never fits: an error, not a wrong result
    with pytest.raises(RuntimeError, match="overflowed twice"):
        pred.step(frames[2])
