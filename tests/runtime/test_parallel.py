"""ParallelPredictor: the same results inline, in two threads and in two processes; layout fallback; configs."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from perception4d.core import Frame
from perception4d.errors import ConfigError
from perception4d.runtime.config import load_runtime_config
from perception4d.runtime.models import ModelSpec
from perception4d.runtime.parallel import ParallelPredictor, WorkerError, plan_workers
from perception4d.runtime.predictor import Predictor, Status, Warmup
from perception4d.runtime.workers import PredictorOptions

from .helpers import CONFIGS, assert_results_equal, small_flow_spec, small_occ_spec, tiny_frames

OPTIONS = PredictorOptions(mos_fusion=True, warmup=Warmup(steps=1, points=300))


def specs():
    return [small_flow_spec("flowmos", channels=(16, 32)), small_occ_spec("occupancy", channels=(16, 32))]


@pytest.fixture(scope="module")
def stream():
    frames = tiny_frames(4, azimuth_deg=8.0)
    dup = replace(frames[1], frame_id="duplicate")  # same timestamp as frames[1]: dropped
    return [frames[0], frames[1], dup, frames[2], frames[3]]


@pytest.fixture(scope="module")
def alone(stream):
    """Each model set alone in its own Predictor: the reference."""
    out = {}
    for spec in specs():
        pred = Predictor(spec, "cpu", mos_fusion=True, warmup=Warmup(steps=0))
        out[spec.name] = ([pred.step(f) for f in stream], pred.flush())
    return out


def check_against_alone(results, fused, alone, stream):
    assert [r.frame_id for r in results] == [f.frame_id for f in stream]
    assert [r.seq for r in results] == list(range(len(stream)))
    assert results[2].status == Status.DROPPED and "duplicate" in results[2].message
    for name, (ref, ref_tail) in alone.items():
        for fr, r in zip(results, ref):
            assert_results_equal(fr.results[name], r)
        got = [f for fr in results for f in fr.results[name].mos_fused] + fused.get(name, [])
        want = [f for r in ref for f in r.mos_fused] + ref_tail
        assert [f.frame_id for f in got] == [f.frame_id for f in want]
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a.prob, b.prob)
    assert results[-1].flow.frame_id == stream[-2].frame_id and results[-1].occupancy is not None


@pytest.mark.parametrize("workers, group", [("inline", "device"), ("thread", "model")])
def test_inline_and_two_thread_workers_give_each_model_alone_results(stream, alone, workers, group):
    with ParallelPredictor(specs(), workers=workers, group=group, options=OPTIONS, max_in_flight=3) as pp:
        assert len(pp.specs) == (1 if group == "device" else 2)
        assert "RANDOM INIT" in pp.describe()
        first = pp.step(stream[0])  # one frame in flight
        for f in stream[1:]:
            pp.submit(f)  # pipelined: up to 3 in flight
        results = [first] + pp.drain()
        fused = pp.flush()
    assert all(r.latency_ms > 0 for r in results)
    check_against_alone(results, fused, alone, stream)


def test_fallback_layout_without_enough_gpus():
    models = [ModelSpec("a", config="x.py", device="cuda:0"), ModelSpec("b", config="y.py", device="cuda:1")]
    specs_, notes = plan_workers(models, "device", cuda_count=0)
    assert [(w.name, w.device) for w in specs_] == [("a+b", "cpu")]
    assert "asked cuda:1, no CUDA device: cpu" in notes[1]
    specs_, notes = plan_workers(models, "device", cuda_count=1)
    assert [(w.name, w.device) for w in specs_] == [("a+b", "cuda:0")] and "1 CUDA device(s): cuda:0" in notes[1]
    specs_, _ = plan_workers(models, "model", cuda_count=1)
    assert [(w.name, w.device) for w in specs_] == [("a", "cuda:0"), ("b", "cuda:0")]
    specs_, notes = plan_workers(models, "device", cuda_count=2)
    assert [(w.name, w.device) for w in specs_] == [("a", "cuda:0"), ("b", "cuda:1")] and "asked" not in "".join(notes)
    with pytest.raises(ConfigError, match="unique names"):
        plan_workers([models[0], models[0]])


def test_auto_workers_are_processes_on_two_gpus_else_inline(caplog):
    from perception4d.runtime.parallel import resolve_workers

    assert resolve_workers("auto", ["cuda:0", "cuda:1"]) == "process"
    assert resolve_workers("auto", ["cuda:0", "cuda:0"]) == "inline"
    assert resolve_workers("auto", ["cpu", "cpu"]) == "inline" and resolve_workers("auto", ["cuda:0"]) == "inline"
    assert resolve_workers("process", ["cpu"]) == "process"
    with caplog.at_level("WARNING", logger="perception4d.runtime"):
        assert resolve_workers("thread", ["cuda:0", "cuda:1"]) == "thread"
    assert "open race" in caplog.text


def test_a_worker_that_cannot_start_is_reported():
    bad = ModelSpec("broken", config=str(CONFIGS / "no_such_config.py"))
    with pytest.raises(WorkerError, match=r"worker broken failed to start[\s\S]*no_such_config.py not found"):
        ParallelPredictor([bad], workers="thread", options=OPTIONS)


def test_runtime_configs_load_and_bad_fields_are_named(tmp_path):
    for name in ("flowmos_occ_2gpu", "flow_mos_2gpu", "flowmos_occ_1gpu"):
        rc = load_runtime_config(CONFIGS / "runtime" / f"{name}.py")
        assert len(rc.model_sets) == 2
        for m in rc.model_sets:
            assert Path(m.checkpoint or m.config).is_file()
    rc = load_runtime_config(CONFIGS / "runtime" / "flowmos_occ_2gpu.py")
    assert [m.device for m in rc.model_sets] == ["cuda:0", "cuda:1"] and rc.workers == "process"
    cases = {"workers = 'fork'": "workers must be one of", "speed = 3": "unknown key(s) ['speed']",
             "max_in_flight = 0": "max_in_flight", "max_gap_s = -1": "max_gap_s"}
    for line, message in cases.items():
        p = tmp_path / "bad.py"
        p.write_text(f"model_sets = [dict(name='a', config='x.py')]\n{line}\n")
        with pytest.raises(ConfigError, match="bad.py.*" + re.escape(message)):
            load_runtime_config(p)
    p.write_text("model_sets = [dict(config='x.py')]\n")
    with pytest.raises(ConfigError, match=r"model_sets\[0\] needs a name"):
        load_runtime_config(p)


@pytest.mark.slow
def test_two_process_workers_match_and_survive_running_out_of_memory(stream, alone):
    """Spawned workers give the same results; a frame too large for a worker's memory cap (a real allocation
    failure: the worker's address space is capped) is answered FAILED with its id, and the next frame runs."""
    f0, f1, _, f2, f3 = stream
    rng = np.random.default_rng(0)
    n = 3_000_000
    big = Frame(np.c_[rng.uniform(-12, 12, (n, 2)), rng.uniform(-1, 3, n), rng.uniform(0, 1, n)].astype(np.float32),
                f2.timestamp_ns, pose=f2.pose, extrinsic=f2.extrinsic, frame_id="huge/2")
    with ParallelPredictor(specs(), workers="process", group="model", options=OPTIONS, threads=1,
                           host_memory_headroom_mb=400) as pp:
        results = [pp.step(f) for f in stream]
        failed = pp.step(replace(big, timestamp_ns=f3.timestamp_ns + 50_000_000))
        after = pp.step(replace(f0, timestamp_ns=f3.timestamp_ns + 100_000_000, frame_id="after"))
        fused = pp.flush()
    check_against_alone(results, {}, {k: (v[0], []) for k, v in alone.items()}, stream)
    assert failed.status == Status.FAILED and "huge/2" in failed.message and "out of memory" in failed.message
    assert after.status == Status.OK and after.flow.frame_id == f3.frame_id  # the huge sweep left the window
    assert set(fused) == {"flowmos", "occupancy"}


@pytest.mark.slow
def test_a_process_worker_that_dies_is_reported_with_its_name(stream):
    """A worker process killed mid-stream: the next frame raises WorkerError naming it (its pipe's end of file or
    a broken pipe), instead of waiting for the reply timeout."""
    with ParallelPredictor(specs(), workers="process", group="model", options=OPTIONS, threads=1,
                           reply_timeout_s=600) as pp:
        assert pp.step(stream[0]).status == Status.OK
        victim = next(w for w in pp._workers if w.name == "occupancy")
        victim.handle.kill()
        victim.handle.join(10)
        t0 = time.monotonic()
        with pytest.raises(WorkerError, match="occupancy.*died|died.*occupancy"):
            pp.step(stream[1])
        assert time.monotonic() - t0 < 30
