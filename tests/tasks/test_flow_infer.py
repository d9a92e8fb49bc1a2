"""Scene-flow inference on bad input: gaps, timestamps that do not increase, empty sweeps, NaN points.

The model tests run the shipped checkpoint on the CPU (``load_model``) over a
coarse simulated sequence (HDL-32E every 1 deg of azimuth, ~11k points a sweep).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
from pyarrow import feather

from perception4d.cli import main
from perception4d.core import Frame, Geometry, Window
from perception4d.datasets.window_dataset import FrameListReader
from perception4d.datasets.sample import DEFAULT_MAX_GAP_S, build_window_sample
from perception4d.errors import ConfigError, WindowError
from perception4d.datasets.windows import SkippedPair, iter_windows, plan_windows
from perception4d.inference import load_model, predict_samples, submission_flow
from perception4d.io.av2_submission import write_av2_submission
from perception4d.sim import HDL32E, simulate, write_av2, write_semantickitti

COARSE = HDL32E.with_overrides(azimuth_resolution_deg=1.0)
GEOMETRY = Geometry.from_config(dict(point_range=(-51.2, -51.2, -2.2, 51.2, 51.2, 4.2), voxel_size=(0.2,) * 3,
                                     num_frames=5))


def frames_at(times_s, n=50, seed=0):
    """Cheap frames (random points) at the given times, ids ``seq/<k>``."""
    rng = np.random.default_rng(seed)
    return [Frame(rng.uniform(-10, 10, (n, 4)).astype(np.float32), round(t * 1e9), frame_id=f"seq/{k}")
            for k, t in enumerate(times_s)]


@pytest.fixture(scope="module")
def loaded():
    return load_model(device="cpu")


@pytest.fixture(scope="module")
def sim_frames():
    return simulate(COARSE, num_frames=5, seed=3, occupancy=None).frames


def predict(loaded, frames, with_targets=False):
    sample = build_window_sample(Window(tuple(frames)), loaded.geometry, "sim", with_targets=with_targets)
    return sample, predict_samples(loaded, [sample])[0].flow


def empty(frame):
    return frame.subset(np.zeros(frame.num_points, bool))


# --- timestamps and gaps -------------------------------------------------------------------------

def test_default_gap_accepts_10_and_20_hz_and_is_configurable():
    assert 0.1 < DEFAULT_MAX_GAP_S == 0.25
    for period in (0.05, 0.1):
        build_window_sample(Window(tuple(frames_at([k * period for k in range(5)]))), GEOMETRY)
    gap = Window(tuple(frames_at([0.0, 0.1, 0.6])))
    with pytest.raises(WindowError) as e:
        build_window_sample(gap, GEOMETRY, "log7")
    msg = str(e.value)
    assert "seq/1" in msg and "seq/2" in msg and "0.500 s" in msg and "log7" in msg
    build_window_sample(gap, GEOMETRY, max_gap_s=0.6)
    build_window_sample(gap, GEOMETRY, max_gap_s=None)
    for bad in (0, -0.1, float("nan"), "fast"):
        with pytest.raises(ConfigError, match="max_gap_s"):
            build_window_sample(gap, GEOMETRY, max_gap_s=bad)


def test_timestamps_not_increasing_name_the_frames():
    frames = frames_at([0.0, 0.1, 0.2])
    frames[2] = replace(frames[2], timestamp_ns=frames[1].timestamp_ns)  # repeated timestamp
    with pytest.raises(WindowError, match=r"seq/1 at 100000000 ns is followed by seq/2 at 100000000 ns"):
        build_window_sample(Window(tuple(frames)), GEOMETRY)
    reader = FrameListReader(frames, "dup")
    with pytest.raises(WindowError, match="seq/1 .* seq/2"):
        reader.window(2, 5)
    with pytest.raises(WindowError, match=r"dup: timestamps must increase, frame 1 at 100000000 ns is followed "
                                          r"by frame 2 at 100000000 ns"):
        plan_windows(reader, 5)
    gen = iter_windows(reader, GEOMETRY)
    with pytest.raises(WindowError):  # before any window is built
        next(gen)


def test_plan_cuts_windows_at_a_gap_and_skips_the_pair_spanning_it(caplog):
    times = [0.0, 0.1, 0.2, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7]
    reader = FrameListReader(frames_at(times), "gappy")
    with caplog.at_level(logging.WARNING, logger="perception4d.inference"):
        plan = plan_windows(reader, 5)
    assert plan.spans == [(0, 1), (0, 2), (3, 4), (3, 5), (3, 6), (3, 7), (4, 8)]
    assert plan.skipped == [SkippedPair(2, 3, 200_000_000, pytest.approx(1.0))]
    assert len(caplog.records) == 1 and "frame 2" in caplog.text and "1.000 s" in caplog.text
    assert plan_windows(reader, 5, max_gap_s=2.0).skipped == []

    samples = list(iter_windows(reader, GEOMETRY, plan=plan))
    assert [s.meta.timestamp_ns for s in samples] == [round(t * 1e9) for t in (0.0, 0.1, 1.2, 1.3, 1.4, 1.5,
                                                                                    1.6)]
    for s, (first, ref) in zip(samples, plan.spans):
        n = ref - first + 1
        assert s.aligned.num_frames == n and s.source_index == n - 2
        assert set(np.unique(s.aligned.time)) == set(range(5 - n, 5))  # right-aligned after the cut
        assert s.meta.next_timestamp_ns - s.meta.timestamp_ns == 100_000_000
    with pytest.raises(ConfigError):
        plan_windows(reader, 5, max_gap_s=0.0)


# --- empty sweeps, points outside the grid, NaN points (shipped checkpoint on the CPU) --------------

def test_empty_sweeps_give_valid_outputs(loaded, sim_frames):
    fr = list(sim_frames)
    sample, pred = predict(loaded, fr[:-2] + [empty(fr[-2]), fr[-1]], with_targets=True)  # empty source
    assert sample.source_xyz.shape == (0, 3) and sample.ego_flow.shape == (0, 3)
    assert sample.targets is not None and sample.targets.flow.shape == (0, 3)
    assert pred.flow.shape == (0, 3) and pred.is_dynamic.shape == (0,) and pred.in_grid.shape == (0,)

    n = fr[-2].num_points
    for frames in (fr[:-1] + [empty(fr[-1])],  # empty reference
                   [empty(fr[0])] + fr[1:],  # empty context sweep
                   [empty(f) for f in fr[:-2]] + fr[-2:]):  # only source and reference have points
        sample, pred = predict(loaded, frames)
        assert pred.flow.shape == (n, 3) and np.isfinite(pred.flow).all()
        assert pred.in_grid.mean() > 0.5  # the prediction really ran on the source's voxels

    sample, pred = predict(loaded, [empty(f) for f in fr])
    assert pred.flow.shape == (0, 3)


def test_window_entirely_outside_the_grid_gets_ego_flow(loaded, sim_frames):
    far = [replace(f, points=f.points + np.array([500, 0, 0, 0, 0], np.float32)) for f in sim_frames]
    samples = list(iter_windows(FrameListReader(far, "far"), loaded.geometry))
    assert len(samples) == 4
    for s in samples:
        pred = predict_samples(loaded, [s])[0].flow
        assert not pred.in_grid.any() and not pred.is_dynamic.any()
        np.testing.assert_array_equal(pred.flow, s.ego_flow)
        sub = submission_flow(pred)
        assert sub.non_finite == 0 and np.isfinite(sub.flow).all()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf * 0 in the alignment
def test_nan_points_are_dropped_and_the_submission_stays_valid(loaded, sim_frames, tmp_path, caplog):
    fr = [replace(f, labels=None) for f in sim_frames]
    src = fr[-2]
    n = src.num_points
    nan_xyz = np.arange(0, n, 97)
    nan_int = np.arange(13, n, 101)
    pts = src.points.copy()
    pts[nan_xyz, :3] = np.nan
    pts[nan_int, 3] = np.nan
    ctx = fr[0].points.copy()
    ctx[::50, 1] = np.inf
    bad = fr[:-2] + [replace(src, points=pts), fr[-1]]
    bad[0] = replace(fr[0], points=ctx)
    sample, pred = predict(loaded, bad)
    batch = loaded.model.data_preprocessor({"inputs": [sample]})["inputs"]
    n_bad = int((~np.isfinite(pts[:, :4]).all(axis=1)).sum())
    assert n_bad > len(nan_xyz) and batch.sparse.dropped.non_finite == n_bad + len(ctx[::50])

    finite = np.ones(n, bool)
    finite[nan_xyz] = False
    assert np.isfinite(pred.flow[finite]).all()
    assert np.isnan(pred.flow[nan_xyz]).all()  # no position, no ego flow either
    np.testing.assert_array_equal(pred.flow[nan_int], sample.ego_flow[nan_int])  # dropped: ego flow
    # the other points see the same input as if the non-finite points had been removed
    clean = [replace(f, points=f.points[np.isfinite(f.points).all(axis=1)]) for f in bad]
    _, ref = predict(loaded, clean)
    keep = np.isfinite(pts).all(axis=1)
    np.testing.assert_allclose(pred.flow[keep], ref.flow, atol=1e-5)

    with caplog.at_level(logging.WARNING, logger="perception4d.inference"):
        sub = submission_flow(pred, "sim/nan")
    assert sub.non_finite == len(nan_xyz) and f"sim/nan: {len(nan_xyz)} of {n} points" in caplog.text
    assert (sub.flow[nan_xyz] == 0).all() and not sub.is_dynamic[nan_xyz].any()
    np.testing.assert_array_equal(sub.flow[finite], pred.flow[finite])
    path = write_av2_submission(tmp_path, "log", 1, sub.flow, sub.is_dynamic)
    table = feather.read_table(path)
    assert table.num_rows == n and np.isfinite(table.to_pandas()[["flow_tx_m", "flow_ty_m", "flow_tz_m"]]).all().all()


# --- `p4d infer` on tampered logs: one clear message, or a counted skip ------------------------------

@pytest.fixture(scope="module")
def small_seq():
    return simulate(COARSE, num_frames=4, seed=5, occupancy=None)


def _rename_timestamps(log, mapping):
    """Move sweeps, flow labels and pose rows of an AV2 log to new timestamps."""
    for old, new in mapping.items():
        for sub in ("sensors/lidar", "flow_labels"):
            (log / sub / f"{old}.feather").rename(log / sub / f"{new}.feather")
    poses = feather.read_table(log / "city_SE3_egovehicle.feather").to_pandas()
    poses["timestamp_ns"] = poses["timestamp_ns"].map(lambda t: mapping.get(int(t), int(t)))
    feather.write_feather(pa.Table.from_pandas(poses, preserve_index=False), log / "city_SE3_egovehicle.feather")


def test_infer_skips_the_sweep_before_a_missing_sweep(small_seq, tmp_path, capsys):
    log = write_av2(small_seq, tmp_path / "av2")
    ts = [f.timestamp_ns for f in small_seq.frames]  # 20 Hz: 0, 50, 100, 150 ms
    shift = 1_000_000_000
    _rename_timestamps(log, {t: t + shift for t in ts[2:][::-1]})  # frames 2, 3 one second later
    out = tmp_path / "out"
    assert main(["infer", "--data", str(tmp_path / "av2"), "--out", str(out), "--pictures", "0", "--metrics"]) == 0
    text = capsys.readouterr().out
    assert f"skipped frame 1 ({ts[1]} ns): the next sweep comes 1.050 s later" in text
    assert "wrote flow for 2 sweeps" in text and "skipped 1 sweep(s)" in text
    assert "EPE 3-Way Average" in text
    written = sorted(int(p.stem) for p in (out / log.name).glob("*.feather"))
    assert written == [ts[0], ts[2] + shift]
    # with a larger max gap the pair across the gap is scored too
    out2 = tmp_path / "out2"
    assert main(["infer", "--data", str(tmp_path / "av2"), "--out", str(out2), "--pictures", "0",
                 "--max-gap-s", "2"]) == 0
    assert len(list((out2 / log.name).glob("*.feather"))) == 3


def test_infer_refuses_timestamps_that_do_not_increase(small_seq, tmp_path, capsys):
    seq_dir = write_semantickitti(small_seq, tmp_path / "kitti")
    times = (seq_dir / "times.txt").read_text().split()
    times[1], times[2] = times[2], times[1]
    (seq_dir / "times.txt").write_text("\n".join(times) + "\n")
    out = tmp_path / "out"
    assert main(["infer", "--data", str(tmp_path / "kitti"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "p4d infer: error: semantickitti 00: " in err and "Traceback" not in err
    assert "timestamps must increase, frame 1 at 100000000 ns is followed by frame 2 at 50000000 ns" in err
    assert not out.exists()  # checked before any output


def test_infer_reports_a_sweep_without_pose(small_seq, tmp_path, capsys):
    log = write_av2(small_seq, tmp_path / "av2")
    t = small_seq.frames[2].timestamp_ns
    for sub in ("sensors/lidar", "flow_labels"):
        (log / sub / f"{t}.feather").rename(log / sub / f"{t + 1234}.feather")
    assert main(["infer", "--data", str(log), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "p4d infer: error: " in err and "Traceback" not in err
    assert "city_SE3_egovehicle.feather: no pose row at timestamp" in err and f"{t + 1234}.feather" in err


def test_infer_writes_a_valid_file_for_a_sweep_with_nan_points(small_seq, tmp_path, capsys):
    log = write_av2(small_seq, tmp_path / "av2")
    t0 = small_seq.frames[0].timestamp_ns
    sweep = log / "sensors" / "lidar" / f"{t0}.feather"
    df = feather.read_table(sweep).to_pandas()
    df.loc[::200, "x"] = np.nan
    feather.write_feather(pa.Table.from_pandas(df, preserve_index=False), sweep)
    shutil.rmtree(log / "flow_labels")  # no labels needed to write a submission
    out = tmp_path / "out"
    assert main(["infer", "--data", str(log), "--out", str(out), "--pictures", "1"]) == 0
    n_nan = len(df.loc[::200])
    assert f"{n_nan} point(s) without a finite position got zero flow" in capsys.readouterr().out
    sub = feather.read_table(out / log.name / f"{t0}.feather").to_pandas()
    assert len(sub) == len(df)
    flow = sub[["flow_tx_m", "flow_ty_m", "flow_tz_m"]].to_numpy(np.float32)
    assert np.isfinite(flow).all() and (flow[::200] == 0).all() and not sub["is_dynamic"][::200].any()
