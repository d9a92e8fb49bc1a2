"""``assemble_batch``, the device-side half of the offline batcher and of the streaming ring, vs host references."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from perception4d.core import SE3, Window
from perception4d.core.geometry import Geometry
from perception4d.core.voxelize import voxelize_windows
from perception4d.datasets.sample import build_window_sample
from perception4d.models.preprocessor import WindowBatcher, assemble_batch
from perception4d.runtime.sweeps import HostSweep, SweepRing

from .helpers import toy_sequence

GEOMETRY = Geometry(point_range=(-12.8, -12.8, -2.4, 12.8, 12.8, 4.0), voxel_size=(0.4, 0.4, 0.4), num_frames=4)
#: a sensor mounted off the ego origin, so that the source points in their own ego frame differ from the raw ones
EXTRINSIC = SE3.from_yaw(0.03, [1.2, -0.1, 1.7])


@pytest.fixture(scope="module")
def frames():
    seq = toy_sequence(n_frames=5, n_static=600, n_moving=120, seed=4)
    return [dataclasses.replace(f, extrinsic=EXTRINSIC) for f in seq]


def with_empty(frame):
    """``frame`` with no points (a sweep that returned nothing)."""
    return dataclasses.replace(frame, points=frame.points[:0], labels=None)


def samples_of(frames):
    """Windows of different lengths and layouts: flow over 4 and 2 sweeps, MOS (source = reference) over 3."""
    return [build_window_sample(Window(tuple(frames[1:5])), GEOMETRY, "a"),
            build_window_sample(Window(tuple(frames[0:2])), GEOMETRY, "b", with_targets=False),
            build_window_sample(Window(tuple(frames[2:5])), GEOMETRY, "c", tasks=("mos",))]


def host_reference(samples):
    """The per-source-point fields computed on the host from the samples alone."""
    sizes = [s.aligned.points.shape[0] for s in samples]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    counts = [s.source_slice.stop - s.source_slice.start for s in samples]
    return dict(
        source_rows=np.concatenate([np.arange(s.source_slice.start, s.source_slice.stop) + o
                                    for s, o in zip(samples, starts)]).astype(np.int64),
        source_batch=np.repeat(np.arange(len(samples)), counts).astype(np.int64),
        ego_flow=np.concatenate([s.ego_flow for s in samples]),
        dt=np.repeat(np.array([s.meta.dt for s in samples], np.float32), counts),
        counts=counts)


def assert_batch_matches_host(got, samples):
    ref = host_reference(samples)
    for name in ("source_rows", "source_batch", "ego_flow", "dt"):
        a = getattr(got, name).numpy()
        assert a.dtype == ref[name].dtype, name
        np.testing.assert_array_equal(a, ref[name], err_msg=name)
    assert got.source_counts == ref["counts"]
    sparse = voxelize_windows([s.aligned for s in samples], GEOMETRY, "cpu")
    for name in ("coords", "features", "point_to_voxel"):
        torch.testing.assert_close(getattr(got.sparse, name), getattr(sparse, name), rtol=0, atol=0)
    np.testing.assert_array_equal(got.points.numpy(), np.concatenate([s.aligned.points for s in samples]))
    np.testing.assert_array_equal(got.time.numpy(), np.concatenate([s.aligned.time for s in samples]))


def test_window_batcher_matches_the_host_computation(frames):
    samples = samples_of(frames)
    assert np.abs(samples[0].ego_flow).max() > 0.1  # the ego moves: a wrong row or frame would show
    got = WindowBatcher(GEOMETRY)(samples, "cpu")
    assert_batch_matches_host(got, samples)
    assert got.sparse.batch_size == 3 and got.samples == samples
    # targets stay with the batcher: only when every sample has them
    assert got.targets is None and got.mos_labels is None and got.occupancy is None
    both = WindowBatcher(GEOMETRY)([samples[0], samples[0]], "cpu")
    np.testing.assert_array_equal(both.targets.flow.numpy(), np.concatenate([samples[0].targets.flow] * 2))


def test_an_empty_source_sweep_gives_empty_source_fields(frames):
    window = Window((frames[0], with_empty(frames[1]), frames[2]))
    empty = build_window_sample(window, GEOMETRY, "e", with_targets=False)  # flow: the source is the empty sweep
    samples = [empty, samples_of(frames)[1]]
    got = WindowBatcher(GEOMETRY)(samples, "cpu")
    assert got.source_counts[0] == 0 and got.source_counts[1] > 0
    assert_batch_matches_host(got, samples)


@pytest.mark.parametrize("flow_layout", [True, False])
@pytest.mark.parametrize("num_sweeps", [1, 2, 4])
def test_ring_matches_the_batcher_for_every_window_length_and_layout(frames, flow_layout, num_sweeps):
    ring = SweepRing("cpu", GEOMETRY.num_frames, host_transform=True)
    for f in frames[:num_sweeps]:
        ring.push(HostSweep.from_frame(f))
    asm = ring.assemble(GEOMETRY, flow_layout=flow_layout, sequence_id="s")
    tasks = ("flow",) if (flow_layout and num_sweeps >= 2) else ("mos",)
    sample = build_window_sample(Window(tuple(frames[:num_sweeps])), GEOMETRY, "s", with_targets=False, tasks=tasks)
    assert asm.source_index == sample.source_index
    assert_batch_matches_host(asm.batch, [sample])


def test_assemble_batch_refuses_inconsistent_input(frames):
    samples = samples_of(frames)[:2]
    pts = torch.from_numpy(np.concatenate([s.aligned.points for s in samples]))
    time = torch.from_numpy(np.concatenate([s.aligned.time for s in samples]))
    batch = torch.from_numpy(np.repeat(np.arange(2, dtype=np.int32), [len(s.aligned.points) for s in samples]))
    offsets = np.array([0, len(samples[0].aligned.points), len(pts)])
    xyz = torch.from_numpy(np.concatenate([s.source_xyz for s in samples]))
    ok = assemble_batch(samples, pts, time, batch, offsets, xyz, GEOMETRY)
    assert_batch_matches_host(ok, samples)
    with pytest.raises(ValueError, match="batch .* is required for 2 samples"):
        assemble_batch(samples, pts, time, None, offsets, xyz, GEOMETRY)
    with pytest.raises(ValueError, match="source_xyz must be"):
        assemble_batch(samples, pts, time, batch, offsets, xyz[1:], GEOMETRY)
    with pytest.raises(ValueError, match="source_xyz must be"):
        assemble_batch(samples, pts, time, batch, offsets, xyz.double(), GEOMETRY)
    with pytest.raises(ValueError, match="offsets must be 3 row offsets"):
        assemble_batch(samples, pts, time, batch, offsets[:2], xyz, GEOMETRY)
    with pytest.raises(ValueError, match="sample 0 .* offsets give it"):
        assemble_batch(samples, pts, time, batch, np.array([0, 5, len(pts)]), xyz, GEOMETRY)
    with pytest.raises(ValueError, match="at least one"):
        assemble_batch([], pts, time, batch, offsets, xyz, GEOMETRY)
