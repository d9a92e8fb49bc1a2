"""The padded one-graph streaming step (``perception4d.runtime.graphed``) gives the eager step's results.

On the CPU the padded step runs without capture: the same modules on capacity-sized buffers, so these tests
check the padding (NaN point rows, padding voxels, padded source rows) and the capacity logic; the CUDA
capture itself is compared in tests/runtime/test_gpu_runtime.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from perception4d.errors import ConfigError
from perception4d.inference import DEFAULT_MOS
from perception4d.runtime.models import ModelSpec, load_model_set
from perception4d.runtime.predictor import Predictor, Status, Warmup
from perception4d.runtime.graphed import StepGraph

from .helpers import small_flow_spec, small_occ_spec, tiny_frames

NO_WARMUP = Warmup(steps=0)


@pytest.fixture(scope="module")
def frames():
    return tiny_frames(6)


def _pair(spec, **kw):
    loaded = load_model_set(spec, "cpu")
    eager = Predictor(loaded, "cpu", warmup=NO_WARMUP, fuse=True, engine="gather", graph=False, **kw)
    padded = Predictor(loaded, "cpu", warmup=NO_WARMUP, fuse=True, engine="gather", graph=True, **kw)
    assert eager.graph is None and isinstance(padded.graph, StepGraph) and "padded step" in padded.describe()
    return eager, padded


def _close(a, b, atol=1e-5):
    assert (a.frame_id, a.status, a.message) == (b.frame_id, b.status, b.message)
    ha, hb = a.health, b.health
    assert (ha.window_points, ha.voxels, ha.dropped_out_of_range, ha.dropped_non_finite) == (
        hb.window_points, hb.voxels, hb.dropped_out_of_range, hb.dropped_non_finite)
    assert (a.flow is None) == (b.flow is None) and (a.mos is None) == (b.mos is None)
    if a.flow is not None:
        assert a.flow.frame_id == b.flow.frame_id and a.flow.dt == b.flow.dt
        np.testing.assert_allclose(b.flow.prediction.flow, a.flow.prediction.flow, atol=atol)
        np.testing.assert_array_equal(b.flow.prediction.ego_flow, a.flow.prediction.ego_flow)
        np.testing.assert_array_equal(b.flow.prediction.in_grid, a.flow.prediction.in_grid)
    if a.mos is not None:
        np.testing.assert_allclose(b.mos.prob, a.mos.prob, atol=atol)
        np.testing.assert_array_equal(b.mos.in_grid, a.mos.in_grid)
    assert len(a.mos_fused) == len(b.mos_fused)
    for x, y in zip(a.mos_fused, b.mos_fused):
        assert x.frame_id == y.frame_id
        np.testing.assert_allclose(y.prob, x.prob, atol=atol)
    assert (a.occupancy is None) == (b.occupancy is None)
    if a.occupancy is not None:
        pa, pb = a.occupancy.prediction, b.occupancy.prediction
        assert (pa.semantics != pb.semantics).mean() < 1e-3  # an argmax may flip on a rounding tie
        np.testing.assert_allclose(pb.velocity, pa.velocity, atol=1e-4)


@pytest.mark.parametrize("fusion", [True, False])
def test_flow_and_mos_network_padded_step_matches_the_eager_step(frames, fusion):
    """With fusion the MOS head runs on the whole window; without, on the newest sweep's rows alone."""
    eager, padded = _pair(small_flow_spec(), mos_fusion=fusion)
    for f in frames:
        _close(eager.step(f), padded.step(f))
    assert padded.graph.static.mos_newest == (not fusion)
    assert padded.graph.captures_made >= 1
    caps = padded.graph.static.caps
    assert caps.points > max(f.num_points for f in frames) and caps.voxels[0] % padded.graph.quantum == 0


def test_occupancy_network_padded_step_matches_the_eager_step(frames):
    eager, padded = _pair(small_occ_spec())
    for f in frames[:4]:
        _close(eager.step(f), padded.step(f))


@pytest.mark.slow
def test_shipped_mos_network_padded_step_matches_the_eager_step(frames):
    eager, padded = _pair(ModelSpec("mos", checkpoint=str(DEFAULT_MOS)), mos_fusion=True)
    for f in frames[:3]:
        _close(eager.step(f), padded.step(f))


def test_a_window_beyond_the_capacities_grows_the_graph_and_runs_again(frames):
    """Capacities sized exactly on the first window (no margin, small quantum): the growing window exceeds
    the voxel capacity, which the status shows after the step's synchronisation; the step runs once more on
    a larger graph and still gives the eager result."""
    eager, padded = _pair(small_flow_spec())
    padded.graph.margin, padded.graph.quantum = 1.0, 64
    calls = []
    forward = padded._forward

    def counting_forward(ring, sweeps=None):
        calls.append(len(ring))
        return forward(ring, sweeps)

    padded._forward = counting_forward
    for f in frames:
        _close(eager.step(f), padded.step(f))
    assert padded.graph.captures_made >= 3  # the first window, then at least one more point and voxel growth
    assert len(calls) > len(frames)  # at least one window ran twice


def test_graph_true_needs_the_gather_engine():
    loaded = load_model_set(small_flow_spec(), "cpu")
    with pytest.raises(ConfigError, match="GatherUNet"):
        Predictor(loaded, "cpu", warmup=NO_WARMUP, fuse=True, engine="spconv", graph=True)
    with pytest.raises(ConfigError, match="not fused"):
        Predictor(loaded, "cpu", warmup=NO_WARMUP, graph=True)
    assert Predictor(loaded, "cpu", warmup=NO_WARMUP, fuse=True, engine="gather").graph is None  # CPU default


def test_an_empty_frame_in_the_stream_keeps_both_steps_equal(frames):
    eager, padded = _pair(small_flow_spec())
    empty = frames[2].__class__(np.zeros((0, 4), np.float32), frames[2].timestamp_ns, pose=frames[2].pose,
                                frame_id="empty")
    for f in [*frames[:2], empty, *frames[3:5]]:
        a, b = eager.step(f), padded.step(f)
        assert a.status == b.status
        if a.status == Status.OK:
            _close(a, b)


def test_capacities_shrink_after_windows_far_below_them(frames):
    """A warm-up on dense synthetic sweeps sizes the graph far above the stream's windows (padded rows cost as
    much as real ones): after ``shrink_after`` such windows it is captured again at their sizes."""
    loaded = load_model_set(small_flow_spec(), "cpu")
    pred = Predictor(loaded, "cpu", warmup=Warmup(steps=1, points=40_000), fuse=True, engine="gather", graph=True)
    eager = Predictor(loaded, "cpu", warmup=NO_WARMUP, fuse=True, engine="gather", graph=False)
    g = pred.graph
    g.shrink_after = 3
    big = g.static.caps
    for f in frames:
        _close(eager.step(f), pred.step(f))
    small = g.static.caps
    assert small.points < big.points // 2 and small.voxels[0] < big.voxels[0] // 2
    assert small.points >= max(f.num_points for f in frames)
