"""Host-side transfers of the runtime: reused staging buffers, the bad-frame count, output selection, and the
process-worker wire (frames in shared-memory slots, outputs in reply arenas), against references."""

from __future__ import annotations

import gc
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from perception4d.core import Frame
from perception4d.core.labels import OCC_FREE
from perception4d.core.se3 import SE3
from perception4d.datasets.sample import INPUT_COLUMNS
from perception4d.errors import ConfigError
from perception4d.models.heads.occupancy import OccupancyPrediction
from perception4d.runtime.arena import HostArena, ReplyArenas, ReplyPool, WireArray
from perception4d.runtime.models import load_model_set
from perception4d.runtime.parallel import ParallelPredictor
from perception4d.runtime.policy import StreamGate, count_non_finite, usable_rows
from perception4d.runtime.predictor import (VELOCITY_FP16_ATOL, VELOCITY_FP16_RTOL, HostCopies, MosOutput,
                                            OccupancyOutput, Predictor, Result, Status, StepHealth, Warmup,
                                            check_outputs)
from perception4d.runtime.sweeps import HostSweep, StagingPool
from perception4d.runtime.workers import (DeviceGroup, FrameSlots, Job, PredictorOptions, SlotViews, WireSweep,
                                          WorkerSpec, serve)

from .helpers import assert_results_equal, small_flow_spec, small_occ_spec, tiny_frames

NO_WARMUP = Warmup(steps=0)


def cloud(n: int, seed: int = 0, columns=("x", "y", "z", "intensity", "ring"), extrinsic: SE3 | None = None,
          frame_id: str = "f") -> Frame:
    rng = np.random.default_rng(seed)
    pts = np.c_[rng.uniform(-40, 40, (n, 3)), rng.uniform(0, 1, (n, len(columns) - 3))].astype(np.float32)
    return Frame(pts, 100_000_000 * (seed + 1), extrinsic=extrinsic or SE3.identity(), columns=columns,
                 frame_id=frame_id)


# -- staging --------------------------------------------------------------------------------------------
EXTRINSICS = {"identity": SE3.identity(), "translation": SE3(np.eye(3), np.array([0.1, -0.2, 1.85])),
              "translation -0": SE3(np.eye(3), np.array([-0.0, 0.0, 1.85])),
              "rotation": SE3.from_yaw(0.7, [1.2, 0.3, 1.7])}


@pytest.mark.parametrize("extrinsic", EXTRINSICS.values(), ids=EXTRINSICS.keys())
def test_staged_sweep_is_bit_identical_to_a_fresh_one_and_the_offline_ego_points(extrinsic):
    pool = StagingPool()
    for seed, columns in enumerate([("x", "y", "z", "intensity", "ring"), ("x", "y", "z", "ring", "intensity"),
                                    ("x", "y", "z")]):
        for bad in (False, True):  # all finite (a translation skips the product) or not
            f = cloud(5_000 + 999 * seed, seed, columns, extrinsic)
            pts = f.points.copy()
            pts[7, :3] = [-0.0, 0.0, -0.0]
            pts[8, :3] = [0.0, -0.0, 0.0]
            if bad:  # a NaN or infinity spreads to the row's other coordinates through the product
                pts[[3, 10, 11], [0, 1, 2]] = [np.nan, np.inf, -np.inf]
            f = replace(f, points=pts)
            with np.errstate(invalid="ignore"):
                staged, fresh = pool.stage(f, non_finite=3), HostSweep.from_frame(f, non_finite=3)
                want = f.xyz.copy() if extrinsic is EXTRINSICS["identity"] else f.xyz_in_ego()
            for got in (staged, fresh):
                np.testing.assert_array_equal(got.ego_xyz.numpy(), want)
                np.testing.assert_array_equal(np.signbit(got.ego_xyz.numpy()), np.signbit(want))
                np.testing.assert_array_equal(got.columns.numpy(), f.select_columns(INPUT_COLUMNS))
                assert got.non_finite == 3 and got.frame_id == f.frame_id
    with pytest.raises(KeyError, match="no point column 'ring'"):
        StagingPool(columns=("x", "y", "z", "ring")).stage(cloud(10, columns=("x", "y", "z", "intensity")))


def test_staging_buffers_are_reused_across_frames_and_grow_for_a_larger_one():
    pool = StagingPool()
    first = pool.stage(cloud(10_000, 0))
    ptr = first.columns.data_ptr(), first.ego_xyz.data_ptr()
    held = pool.stage(cloud(10_000, 1))  # the first is still alive: another slot
    assert held.columns.data_ptr() not in ptr and pool.allocations == 2
    del first
    again = pool.stage(cloud(9_000, 2, frame_id="again"))  # the first one's slot, nothing allocated
    assert (again.columns.data_ptr(), again.ego_xyz.data_ptr()) == ptr and pool.allocations == 2
    np.testing.assert_array_equal(held.columns.numpy(), cloud(10_000, 1).select_columns(INPUT_COLUMNS))  # intact
    np.testing.assert_array_equal(again.columns.numpy(), cloud(9_000, 2).select_columns(INPUT_COLUMNS))
    del again
    big = pool.stage(cloud(30_000, 3))  # no free slot fits: a larger one replaces the free one
    assert pool.allocations == 3 and big.slot.rows >= 30_000 and big.columns.data_ptr() not in ptr
    rows, big_ptr = big.slot.rows, big.columns.data_ptr()
    del big
    small = pool.stage(cloud(1_000, 4))  # the larger buffer serves smaller frames from now on (grow-only)
    assert small.columns.data_ptr() == big_ptr and small.slot.rows == rows and pool.allocations == 3
    del small
    pool.trim()  # after running out of memory: the free buffers are let go of
    after = pool.stage(cloud(1_000, 5))
    assert pool.allocations == 4 and after.slot.rows < rows


def test_a_predictor_stages_every_step_in_the_same_few_buffers():
    pred = Predictor(load_model_set(small_flow_spec(channels=(16, 32)), "cpu"), "cpu", warmup=NO_WARMUP)
    frames = tiny_frames(8, azimuth_deg=8.0)
    for f in frames:
        assert pred.step(f).status == Status.OK
    # the ring holds num_frames sweeps, the step stages one more: nothing allocated beyond that
    assert pred.staging.allocations <= pred.geometry.num_frames + 1
    ptrs = {s.host.columns.data_ptr() for s in pred.ring.latest(5)}
    assert len(ptrs) == 5


# -- the bad-frame count --------------------------------------------------------------------------------
def test_non_finite_count_matches_the_row_test():
    f = cloud(20_000, 5)
    cases = {"clean": [], "nan": [(4, 0), (9, 3)], "inf": [(7, 1), (7, 2), (100, 2)], "both": [(1, 0), (2, 1)]}
    values = {"clean": [], "nan": [np.nan, np.nan], "inf": [np.inf, -np.inf, np.inf], "both": [np.inf, -np.inf]}
    for name, cells in cases.items():
        pts = f.points.copy()
        for (r, c), v in zip(cells, values[name]):
            pts[r, c] = v
        pts[50, 4] = np.nan  # not an input column: does not count
        g = replace(f, points=pts)
        want = g.num_points - int(usable_rows(g, INPUT_COLUMNS).sum())
        assert count_non_finite(g, INPUT_COLUMNS) == want, name
    huge = replace(f, points=np.full((4, 5), 3e38, np.float32))  # the column sums overflow: rows still finite
    assert count_non_finite(huge, INPUT_COLUMNS) == 0
    assert count_non_finite(replace(f, points=np.zeros((0, 5), np.float32)), INPUT_COLUMNS) == 0


# -- outputs --------------------------------------------------------------------------------------------
def test_outputs_are_checked_and_name_the_field():
    assert check_outputs(None) == ("flow", "mos", "occupancy", "occupancy_velocity")
    assert check_outputs(["occupancy", "flow"]) == ("flow", "occupancy")
    with pytest.raises(ConfigError, match=r"outputs: unknown \['speed'\]"):
        check_outputs(("flow", "speed"))
    with pytest.raises(ConfigError, match="outputs: 'occupancy_velocity' needs 'occupancy'"):
        check_outputs(("occupancy_velocity",))
    with pytest.raises(ConfigError, match="velocity_dtype"):
        PredictorOptions(velocity_dtype="int8")


def test_host_copies_on_the_cpu_copy_nothing():
    copies = HostCopies("cpu")
    t = torch.arange(6, dtype=torch.float32)
    view = copies.put("a", t)
    copies.wait()
    a = copies.take(view)
    assert a.ctypes.data == t.data_ptr() and not copies.buffers
    assert copies.take(view, np.float16).dtype == np.float16


@pytest.fixture(scope="module")
def occ_frames():
    return tiny_frames(3, azimuth_deg=8.0)


@pytest.fixture(scope="module")
def occ_loaded():
    return load_model_set(small_occ_spec(channels=(16, 32)), "cpu")


def test_selected_outputs_and_fp16_velocities_within_the_documented_tolerance(occ_loaded, occ_frames):
    full = Predictor(occ_loaded, "cpu", warmup=NO_WARMUP)
    classes = Predictor(occ_loaded, "cpu", warmup=NO_WARMUP, outputs=("flow", "occupancy"))
    half = Predictor(occ_loaded, "cpu", warmup=NO_WARMUP, velocity_dtype="float16")
    for f in occ_frames:
        a, b, c = full.step(f), classes.step(f), half.step(f)
        pa, pb, pc = a.occupancy.prediction, b.occupancy.prediction, c.occupancy.prediction
        np.testing.assert_array_equal(pb.semantics, pa.semantics)
        np.testing.assert_array_equal(pc.semantics, pa.semantics)
        assert pb.velocity is None and pc.velocity.dtype == np.float32
        assert np.array_equal(pc.velocity, pa.velocity.astype(np.float16).astype(np.float32))
        np.testing.assert_allclose(pc.velocity, pa.velocity, rtol=VELOCITY_FP16_RTOL, atol=VELOCITY_FP16_ATOL)
        assert np.abs(pa.velocity).max() > 0 and not np.array_equal(pc.velocity, pa.velocity)  # rounding happened
    mos_only = Predictor(load_model_set(small_flow_spec(channels=(16, 32)), "cpu"), "cpu", warmup=NO_WARMUP,
                         outputs=("mos",), mos_fusion=True)
    results = [mos_only.step(f) for f in occ_frames]
    assert all(r.flow is None and r.mos is not None and r.occupancy is None for r in results)
    assert results[-1].message == ""  # no note about flow, which was not asked for


# -- the process-worker wire ----------------------------------------------------------------------------
def test_frame_slots_stage_each_frame_once_and_are_free_when_every_worker_let_go():
    slots, views, other = FrameSlots(), SlotViews(), SlotViews()
    pool = StagingPool()
    a = cloud(3_000, 0, extrinsic=EXTRINSICS["rotation"])
    wire = WireSweep.stage(a, slots, ["w0", "w1"], non_finite=0)
    sent = replace(wire, points=replace(wire.points, buffer=slots.buffers[wire.points.slot]))  # first job
    host, expected = sent.to_host(views), pool.stage(a)
    # exactly what a worker would have staged itself (columns in the networks' order, ego points)
    assert torch.equal(host.columns, expected.columns) and torch.equal(host.ego_xyz, expected.ego_xyz)
    assert (host.frame_id, host.timestamp_ns, host.non_finite) == (a.frame_id, a.timestamp_ns, 0)
    np.testing.assert_array_equal(host.origin, expected.origin)
    ptr = slots.buffers[wire.points.slot].data_ptr()
    host_other = sent.to_host(other)
    # the slot is busy until both workers' rings let go of the sweep
    b = cloud(2_000, 1)
    second = WireSweep.stage(b, slots, ["w0", "w1"], non_finite=0)
    assert second.points.slot != wire.points.slot and len(slots) == 2
    del host
    gc.collect()
    released = views.take_released()
    assert released == [(wire.points.slot, 1)] and views.take_released() == []
    slots.release("w0", released)
    assert wire.points.slot not in slots._free
    del host_other
    gc.collect()
    slots.release("w1", other.take_released())
    # free again: the same slot and buffer, nothing to send again
    again = WireSweep.stage(b, slots, ["w0", "w1"], non_finite=0)
    assert (again.points.slot, again.points.generation) == (wire.points.slot, 1)
    assert slots.buffers[again.points.slot].data_ptr() == ptr
    assert torch.equal(again.to_host(views).columns, pool.stage(b).columns)
    # a larger frame in a free slot: a new buffer, a new generation that a worker must be sent
    slots.release("w0", [(again.points.slot, 1)])
    slots.release("w1", [(again.points.slot, 1)])
    c = cloud(50_000, 2)
    grown = WireSweep.stage(c, slots, ["w0", "w1"], non_finite=0)
    assert grown.points.slot == wire.points.slot and grown.points.generation == 2
    with pytest.raises(RuntimeError, match="generation 2 expected"):
        grown.to_host(views)  # the worker still holds generation 1
    host = replace(grown, points=replace(grown.points, buffer=slots.buffers[grown.points.slot])).to_host(views)
    assert torch.equal(host.ego_xyz, pool.stage(c).ego_xyz)
    slots.release("w0", [(wire.points.slot, 1)])  # a stale generation's release changes nothing
    assert slots.holders[wire.points.slot] == {"w0", "w1"}


def _occupancy_result(sem: np.ndarray, vel: np.ndarray) -> Result:
    pred = OccupancyPrediction(semantics=sem, velocity=vel, geometry=None)
    return Result("occ", "f", 1, Status.OK, occupancy=OccupancyOutput("f", 1, pred))


def _grid(occupied: float, seed: int = 0, shape=(64, 64, 8)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sem = np.where(rng.uniform(0, 1, shape) < occupied, rng.integers(1, 17, shape), OCC_FREE).astype(np.uint8)
    vel = (rng.standard_normal((*shape, 3)) * (sem != OCC_FREE)[..., None]).astype(np.float32)
    return sem, vel


def test_host_arena_allocates_aligned_views_and_reports_what_did_not_fit():
    arena = HostArena(4096, shared=False)
    a = arena.alloc(torch.float32, (10, 3))
    b = arena.alloc(torch.uint8, (5,))
    assert a.shape == (10, 3) and a.dtype == torch.float32 and b.dtype == torch.uint8
    assert arena.offset_of(a.numpy()) == 0 and arena.offset_of(b.numpy()) == 256  # ALIGN
    assert arena.offset_of(np.zeros(3)) is None and arena.offset_of(a.numpy()[:, 0]) is None  # outside, strided
    assert arena.alloc(torch.float32, (2000,)) is None  # 8000 bytes: does not fit, counted as needed
    assert arena.needed == 512 + 8000 and arena.used == 256 + 5
    arena.reset()
    assert (arena.used, arena.needed) == (0, 0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([torch.uint8, torch.bool, torch.float16, torch.float32, torch.int64]),
                          st.integers(0, 700)), max_size=12), st.integers(0, 6000))
def test_host_arena_views_are_aligned_disjoint_and_found_again(requests, capacity):
    arena = HostArena(capacity, shared=False)
    placed, demand = [], 0
    for dtype, n in requests:
        view = arena.alloc(dtype, (n,))
        demand = -(-demand // 256) * 256 + n * dtype.itemsize
        if view is None or n == 0:  # (an empty view's data pointer is not its place: nothing to find)
            continue
        a = view.numpy()
        offset = arena.offset_of(a)
        assert offset is not None and offset % 256 == 0 and offset + a.nbytes <= arena.capacity
        placed.append((offset, offset + a.nbytes))
    assert arena.needed == demand and arena.used <= arena.capacity
    placed.sort()
    assert all(end <= start for (_, end), (start, _) in zip(placed, placed[1:]))  # no two views overlap


def _frame_through(arenas: ReplyArenas, pool: ReplyPool, sem: np.ndarray, vel: np.ndarray, small: np.ndarray):
    """One frame the way a process worker sends it: the outputs put into the bound arena, encoded, decoded."""
    rid = pool.acquire()
    copies = HostCopies("cpu")
    copies.arena = arenas.bind(rid)
    s, v = copies.put("occupancy_semantics", torch.from_numpy(sem)), copies.put("occupancy_velocity",
                                                                                torch.from_numpy(vel))
    result = _occupancy_result(copies.take(s), copies.take(v))
    result.health = StepHealth(points=len(small), non_finite=0)
    result.mos = MosOutput("f", 1, small, small > 0.5, 1)  # below INLINE_MAX_BYTES: travels with the message
    encoded, buffers = arenas.encode([result], rid)
    return rid, encoded[0], buffers, pool.decode(encoded, rid, buffers)[0]


def test_reply_arenas_are_viewed_in_place_and_freed_with_the_last_array():
    arenas, pool = ReplyArenas("cpu", frame_bytes=4096), ReplyPool(max_leased=2)
    sem, vel = _grid(0.3)
    small = np.linspace(0, 1, 100, dtype=np.float32)
    # the first frame does not fit the arena: its arrays are spilled (copied once) and the arena grows
    rid, wire, buffers, got = _frame_through(arenas, pool, sem, vel, small)
    assert isinstance(wire.occupancy.prediction.velocity, WireArray) and sorted(buffers) == ["arena", "spill"]
    assert wire.occupancy.prediction.velocity.buffer == "spill" and isinstance(wire.mos.prob, np.ndarray)
    np.testing.assert_array_equal(got.occupancy.prediction.velocity, vel)
    del got
    gc.collect()
    assert pool.leased == 0
    # the same id again: a grown arena (sent once more), the device's copies land in it and are read in place
    rid2, wire, buffers, got = _frame_through(arenas, pool, sem, vel * 2, small)
    assert rid2 == rid and list(buffers) == ["arena"] and wire.occupancy.prediction.velocity.buffer == "arena"
    pred = got.occupancy.prediction
    np.testing.assert_array_equal(pred.semantics, sem)
    np.testing.assert_array_equal(pred.velocity, vel * 2)
    np.testing.assert_array_equal(got.mos.prob, small)
    assert np.shares_memory(pred.velocity, buffers["arena"].numpy()) and pred.velocity.flags.writeable
    assert pool.leased == 1
    # while it is held, the next frame gets another id; the held arrays keep their values
    view = pred.velocity[3:5]  # a view of the view holds the lease too
    rid3, _, buffers3, got3 = _frame_through(arenas, pool, sem, -vel, small)
    assert rid3 != rid and list(buffers3) == ["arena"] and pool.leased == 2
    np.testing.assert_array_equal(got3.occupancy.prediction.velocity, -vel)
    np.testing.assert_array_equal(pred.velocity, vel * 2)
    # max_leased (2) held: the next reply is copied out and its id is free at once
    rid4, _, _, got4 = _frame_through(arenas, pool, sem, vel * 3, small)
    assert pool.copied == 1 and pool.leased == 2
    assert not np.shares_memory(got4.occupancy.prediction.velocity, arenas.arenas[rid4].buffer.numpy())
    np.testing.assert_array_equal(got4.occupancy.prediction.velocity, vel * 3)
    del got, pred, got3
    gc.collect()
    assert pool.leased == 1  # ``view`` still holds the first id
    np.testing.assert_array_equal(view, vel[3:5] * 2)
    del view
    gc.collect()
    assert pool.leased == 0 and sorted(pool._free) == sorted({rid, rid3, rid4})


class _QueuedChannel:
    """A process worker's channel, in process: the jobs are all waiting from the start."""

    def __init__(self, jobs):
        self.jobs, self.sent = list(jobs), []

    def get(self):
        return self.jobs.pop(0)

    def poll(self) -> bool:
        return bool(self.jobs)

    def put(self, msg) -> None:
        self.sent.append(msg)


def test_a_worker_launches_the_waiting_frame_before_finishing_the_one_in_flight():
    """With the next job waiting, a process worker's loop launches it before it finishes the frame in flight
    (each frame has its own reply arena, step timer and completion event); the answers come in order and equal
    one-at-a-time runs of the same network."""
    spec = WorkerSpec("w", "cpu", (small_flow_spec("flowmos", channels=(16, 32)),),
                      PredictorOptions(warmup=Warmup(steps=0)))
    frames = tiny_frames(5, azimuth_deg=4.0)
    group, reference = DeviceGroup(spec), DeviceGroup(spec)
    slots, gate = FrameSlots(), StreamGate()
    pools, jobs, expected = ReplyPool(max_leased=8), [], []
    for seq, f in enumerate(frames):
        admission = gate.admit(f)
        wire = WireSweep.stage(f, slots, ["w"], admission.non_finite)
        wire = replace(wire, points=replace(wire.points, buffer=slots.buffers[wire.points.slot]))
        jobs.append(Job(seq, admission, host=wire, reply=pools.acquire()))
        expected.append(reference.run(admission, frame=f))
    group.host_bytes = lambda: 4 << 20  # the reply arenas' first size (on a GPU: the warm-up's output buffers)
    order = []
    launch, finish = group.launch, group.finish
    group.launch = lambda *a, **k: order.append("launch") or launch(*a, **k)
    group.finish = lambda flight: order.append("finish") or finish(flight)
    channel = _QueuedChannel(jobs + [None])
    serve(group, "w", channel, channel, wire=True)
    assert order == ["launch", "launch", "finish", "launch", "finish", "launch", "finish", "launch", "finish",
                     "finish"], order
    assert [m.seq for m in channel.sent] == list(range(len(frames)))
    for msg, want in zip(channel.sent, expected):
        got = pools.decode(msg.results, msg.reply, msg.buffers)
        for a, b in zip(got, want):
            assert_results_equal(a, b)


WIRE_OPTIONS = PredictorOptions(warmup=Warmup(steps=1, points=300), mos_fusion=True, velocity_dtype="float16",
                                outputs=("flow", "mos", "occupancy", "occupancy_velocity"))


@pytest.mark.slow
def test_process_workers_return_the_inline_results_through_shared_memory():
    """Process workers (frames through shared slots, outputs in reply arenas, fp16 velocities) against inline
    workers with the same options: identical (the fp16 rounding against fp32: the Predictor test above)."""
    specs = [small_flow_spec("flowmos", channels=(16, 32)), small_occ_spec("occupancy", channels=(16, 32))]
    frames = tiny_frames(4, azimuth_deg=4.0)
    big = replace(frames[3], points=np.concatenate([frames[3].points] * 3), labels=None)  # grows the slots
    after = replace(frames[0], timestamp_ns=frames[3].timestamp_ns + 50_000_000, frame_id="after")
    stream = frames[:3] + [big, after]
    runs = {}
    for kind in ("inline", "process"):
        with ParallelPredictor(specs, workers=kind, group="model", options=WIRE_OPTIONS, threads=1) as pp:
            runs[kind] = [pp.step(f) for f in stream]
            runs[kind + " fused"] = pp.flush()
            if kind == "process":  # a slot is held while a ring holds its sweep: occupancy's 3, flowmos's 5
                assert len(pp.frame_slots) == len(stream)
                assert pp.frame_slots.holders[0] == pp.frame_slots.holders[1] == {"flowmos"}
                # the results held here are arena views up to max_leased, copies after
                pools = pp.reply_pools.values()
                assert all(p.leased == p.max_leased for p in pools)
                assert all(len(p) <= p.max_leased + pp.max_in_flight for p in pools)  # ids stay bounded
                assert pp.reply_pools["occupancy"].copied == len(stream) - pp.reply_pools["occupancy"].max_leased
    for a, b in zip(runs["process"], runs["inline"]):
        assert a.status == b.status == Status.OK
        for name in a.results:
            assert_results_equal(a.results[name], b.results[name])
            assert [f.frame_id for f in a.results[name].mos_fused] == [f.frame_id for f in b.results[name].mos_fused]
            for x, y in zip(a.results[name].mos_fused, b.results[name].mos_fused):
                np.testing.assert_array_equal(x.prob, y.prob)
        if a.mos is not None:
            np.testing.assert_array_equal(a.mos.in_grid, b.mos.in_grid)
        if a.flow is not None:
            np.testing.assert_array_equal(a.flow.prediction.ego_flow, b.flow.prediction.ego_flow)
            np.testing.assert_array_equal(a.flow.prediction.in_grid, b.flow.prediction.in_grid)
    assert [f.frame_id for f in runs["process fused"]["flowmos"]] == [f.frame_id for f in
                                                                      runs["inline fused"]["flowmos"]]
