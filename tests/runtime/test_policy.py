"""The bad-frame policy: duplicates, late and rewound timestamps, gaps, empty and non-finite sweeps.

Never a crash, never an output presented for the wrong frame, and where the
frame is usable the outputs equal the offline path on the same window.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from perception4d.core import Frame, Window
from perception4d.datasets.sample import build_window_sample
from perception4d.inference import submission_flow
from perception4d.runtime.models import load_model_set
from perception4d.runtime.policy import FramePolicy, StreamGate, Verdict
from perception4d.runtime.predictor import Predictor, Status, Warmup

from .helpers import small_flow_spec, tiny_frames

MS = 1_000_000


def at(frame: Frame, t_ms: float, frame_id: str | None = None) -> Frame:
    return replace(frame, timestamp_ns=int(t_ms * MS), frame_id=frame_id or frame.frame_id)


def with_nan(frame: Frame, rows) -> Frame:
    pts = frame.points.copy()
    pts[rows, 0] = np.nan
    return replace(frame, points=pts)


@pytest.fixture(scope="module")
def frames():
    return [at(f, 100 * k) for k, f in enumerate(tiny_frames(5))]  # 10 Hz


@pytest.fixture(scope="module")
def loaded():
    return load_model_set(small_flow_spec(channels=(16, 32)), "cpu")


def offline(loaded, window_frames):
    tasks = ("flow", "mos") if len(window_frames) > 1 else ("mos",)  # one sweep: the MOS tool's window
    sample = build_window_sample(Window(tuple(window_frames)), loaded.geometry, "stream", with_targets=False,
                                 tasks=tasks)
    with torch.no_grad():
        return loaded.model(**loaded.model.data_preprocessor({"inputs": [sample]}), mode="predict")[0]


def test_gate_verdicts_and_counters(frames):
    gate = StreamGate(FramePolicy(max_gap_s=0.25))
    f0, f1 = frames[0], frames[1]
    assert gate.admit(f0).verdict == Verdict.ACCEPT
    assert gate.admit(f1).verdict == Verdict.ACCEPT
    dup = gate.admit(at(f1, 100, "dup"))
    assert dup.verdict == Verdict.DROP and "duplicate" in dup.reason and "dup" in dup.reason
    late = gate.admit(at(f0, 50, "late"))
    assert late.verdict == Verdict.DROP and "late" in late.reason
    empty = gate.admit(Frame(np.zeros((0, 4), np.float32), 200 * MS, frame_id="empty"))
    assert empty.verdict == Verdict.DROP and "no points" in empty.reason
    all_nan = gate.admit(at(with_nan(frames[2], slice(None)), 200, "nan"))
    assert all_nan.verdict == Verdict.DROP and "finite" in all_nan.reason
    some_nan = gate.admit(at(with_nan(frames[2], [0, 5, 9]), 200))
    assert some_nan.verdict == Verdict.ACCEPT and some_nan.non_finite == 3
    gap = gate.admit(at(frames[3], 700))
    assert gap.reset and "missing" in gap.reason and gap.gap_s == pytest.approx(0.5)
    rewind = gate.admit(at(frames[4], 100, "replay"))
    assert rewind.reset and "went back" in rewind.reason
    c = gate.counters
    assert (c.frames, c.accepted, c.dropped_duplicate, c.dropped_late, c.dropped_empty) == (9, 5, 1, 1, 2)
    assert (c.resets_gap, c.resets_rewind, c.non_finite_points, c.dropped) == (1, 1, 3, 4)


def test_dropped_frames_carry_no_output_and_the_window_skips_them(loaded, frames):
    pred = Predictor(loaded, "cpu", warmup=Warmup(steps=0))
    f0, f1, f2, f3 = frames[:4]
    assert pred.step(f0).mos is not None
    r1 = pred.step(f1)
    dup = pred.step(at(f1, 100, "f1-again"))
    assert dup.status == Status.DROPPED and dup.flow is None and dup.mos is None and dup.occupancy is None
    assert dup.frame_id == "f1-again" and "duplicate" in dup.message
    empty = pred.step(Frame(np.zeros((0, 4), np.float32), 200 * MS, frame_id="empty"))
    assert empty.status == Status.DROPPED and empty.mos is None
    # f2 is missing (the empty sweep took its place): f3 comes 0.2 s after f1, within max_gap_s
    r3 = pred.step(f3)
    assert r3.status == Status.OK and r3.health.window_frames == 3
    assert r3.flow.frame_id == f1.frame_id and r3.flow.dt == pytest.approx(0.2)
    ref = offline(loaded, [f0, f1, f3])
    np.testing.assert_array_equal(r3.flow.prediction.flow, submission_flow(ref.flow).flow)
    np.testing.assert_array_equal(r3.mos.prob, ref.mos.current)
    assert r1.flow.frame_id == f0.frame_id
    assert pred.gate.counters.dropped == 2


def test_non_finite_points_are_kept_counted_and_match_offline(loaded, frames):
    pred = Predictor(loaded, "cpu", warmup=Warmup(steps=0))
    bad = with_nan(frames[1], [0, 3, 7])
    seq = [frames[0], bad, frames[2]]
    results = [pred.step(f) for f in seq]
    assert [r.status for r in results] == [Status.OK] * 3
    r1, r2 = results[1], results[2]
    assert r1.health.non_finite == 3 and r1.health.dropped_non_finite == 3
    assert not r1.mos.in_grid[[0, 3, 7]].any() and np.all(r1.mos.prob[[0, 3, 7]] == 0.5)
    # bad is the flow source of r2: its non-finite rows get zero flow, not dynamic (submission convention)
    assert r2.flow.frame_id == bad.frame_id and r2.flow.non_finite == 3
    assert np.all(r2.flow.prediction.flow[[0, 3, 7]] == 0) and not r2.flow.prediction.is_dynamic[[0, 3, 7]].any()
    assert np.isfinite(r2.flow.prediction.flow).all()
    ref = offline(loaded, seq)
    np.testing.assert_array_equal(r2.flow.prediction.flow, submission_flow(ref.flow).flow)


def test_gap_and_rewind_restart_the_window(loaded, frames):
    pred = Predictor(loaded, "cpu", warmup=Warmup(steps=0))
    pred.step(frames[0])
    pred.step(frames[1])
    gap = pred.step(at(frames[2], 600))
    assert gap.status == Status.OK and gap.flow is None and gap.health.window_frames == 1
    assert "missing" in gap.health.reset and frames[1].frame_id in gap.health.reset
    assert gap.mos is not None and gap.mos.frame_id == frames[2].frame_id
    after = pred.step(at(frames[3], 700))
    assert after.flow.frame_id == frames[2].frame_id and after.health.window_frames == 2
    rewind = pred.step(at(frames[4], 0, "replayed/0"))
    assert rewind.health.reset and "went back" in rewind.health.reset and rewind.health.window_frames == 1
    assert rewind.flow is None and rewind.frame_id == "replayed/0"
    ref = offline(loaded, [at(frames[4], 0)])
    np.testing.assert_array_equal(rewind.mos.prob, ref.mos.current)
    c = pred.gate.counters
    assert (c.resets_gap, c.resets_rewind) == (1, 1)
