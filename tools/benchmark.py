"""Benchmarks of perception4d stages, printed as Markdown tables.

    python tools/benchmark.py voxelize [--device cpu|cuda] [--points 100000] [--frames 5] [--repeats 20]
    python tools/benchmark.py flow|mos|occupancy [--device cpu|cuda] [--precision fp16,fp16+fused,fp16+engine]
    python tools/benchmark.py stream [--device cuda] [--networks flow,mos,occupancy] [--frames 200]
    python tools/benchmark.py backbones [--device cpu|cuda] [--tasks flow,mos] [--time-modes window,axis]
    python tools/benchmark.py parallel [--runtime-config configs/runtime/X.py] [--devices cuda:0,cuda:1] [--frames 200]
    python tools/benchmark.py ros-replay [--device cuda:0] [--rate 2] [--frames 200] [--max-gap-s 0.25]
    python tools/benchmark.py score [--backend ray|processes] [--workers 1,2,4] [--task flow|mos] [--data PATH]

Each subcommand is a function registered in ``COMMANDS``; the helpers below
(timing, peak memory, environment line, table) are shared by all of them.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import datetime
import os
import platform
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from perception4d.utils.version import code_version

REPO = Path(__file__).resolve().parents[1]


# -- registry -------------------------------------------------------------------------------------
@dataclass
class Command:
    run: Callable[[argparse.Namespace], None]
    configure: Callable[[argparse.ArgumentParser], None]
    help: str


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Register ``fn(args)`` as the subcommand ``name``; ``configure`` adds its arguments."""

    def deco(fn: Callable[[argparse.Namespace], None]):
        COMMANDS[name] = Command(fn, configure, help)
        return fn

    return deco


# -- shared helpers ---------------------------------------------------------------------------------
@dataclass
class Timing:
    median_s: float
    min_s: float
    runs: int
    first_call_s: float  # the first (warm-up) call: includes compilation or cache loading


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> Timing:
    """Median wall time of ``repeats`` calls after ``warmup`` calls (device synchronized around each)."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return Timing(float(np.median(times)), float(np.min(times)), repeats, first)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_rss_peak() -> bool:
    """Release freed heap pages and reset VmHWM to the current RSS (Linux); False where not possible."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], object], device: torch.device) -> tuple[int, str]:
    """(bytes, method): memory added at the peak of one call of ``fn``.

    CUDA: ``torch.cuda.max_memory_allocated`` above the allocation before the call. CPU: peak resident
    set (VmHWM after resetting it) above the RSS before the call, which covers numba, numpy and torch
    allocations; where VmHWM cannot be reset, tracemalloc's peak (Python and numpy allocations only).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        del out
        return torch.cuda.max_memory_allocated(device) - base, "cuda max_memory_allocated"
    if _reset_rss_peak():
        base = _status_kib("VmRSS")
        out = fn()
        peak = _status_kib("VmHWM")
        del out
        return max(0, peak - base) * 1024, "peak RSS (VmHWM)"
    tracemalloc.start()
    out = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del out
    return peak, "tracemalloc peak"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)}"
    return f"CPU box: {os.cpu_count()} cores, {cpu_model()}"


def environment_line(device: torch.device) -> str:
    return (f"device: {device_name(device)} | torch {torch.__version__} "
            f"(threads {torch.get_num_threads()}) | python {platform.python_version()} | "
            f"code {code_version()} | date {datetime.date.today().isoformat()}")


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"benchmark: --device {name} asked for, but torch sees no CUDA device")
    return device


# -- voxelize -------------------------------------------------------------------------------------
def synthetic_sweeps(points_per_sweep: int, frames: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """LiDAR-like sweeps (x, y, z, intensity) float32 and their time index int32.

    Beams at elevations -25..+3 degrees from a sensor 1.8 m up hit the ground or an obstacle at an
    exponentially distributed range; the ego moves 1 m along x per sweep.
    """
    rng = np.random.default_rng(seed)
    chunks, times = [], []
    height = 1.8
    for t in range(frames):
        n = points_per_sweep
        azimuth = rng.uniform(-np.pi, np.pi, n)
        elevation = np.deg2rad(rng.uniform(-25.0, 3.0, n))
        down = np.maximum(-elevation, 1e-3)
        ground = np.where(elevation < 0, height / np.tan(down), np.inf)
        rng_m = np.minimum(np.minimum(ground, rng.exponential(25.0, n) + 1.5), 120.0) + rng.normal(0, 0.02, n)
        x = rng_m * np.cos(elevation) * np.cos(azimuth) + (t - frames + 1) * 1.0
        y = rng_m * np.cos(elevation) * np.sin(azimuth)
        z = rng_m * np.sin(elevation)
        chunks.append(np.stack([x, y, z, rng.uniform(0, 1, n)], 1).astype(np.float32))
        times.append(np.full(n, t, np.int32))
    return np.concatenate(chunks), np.concatenate(times)


def kitti_sweeps(paths: list[str], frames: int) -> tuple[np.ndarray, np.ndarray]:
    """SemanticKITTI velodyne scans, cycled over the frames, each shifted 1 m along x per frame."""
    chunks, times = [], []
    for t in range(frames):
        pts = np.fromfile(paths[t % len(paths)], dtype=np.float32).reshape(-1, 4).copy()
        pts[:, 0] += (t - frames + 1) * 1.0
        chunks.append(pts)
        times.append(np.full(len(pts), t, np.int32))
    return np.concatenate(chunks), np.concatenate(times)


def numpy_reference(points: np.ndarray, time: np.ndarray,
                    geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The simplest voxelization: np.floor, np.unique(axis=0, return_inverse=True), np.add.at mean."""
    finite = np.isfinite(points).all(1)
    keep = finite & ((points[:, :3] >= geometry.lower) & (points[:, :3] < geometry.upper)).all(1)
    pts = points[keep]
    q = np.floor((pts[:, :3] - geometry.lower) / np.asarray(geometry.voxel_size, np.float32)).astype(np.int64)
    q = np.minimum(q, np.asarray(geometry.grid_shape) - 1)
    vox = np.column_stack([np.zeros(len(pts), np.int64), q, time[keep]])
    coords, inverse, counts = np.unique(vox, axis=0, return_inverse=True, return_counts=True)
    sums = np.zeros((len(coords), points.shape[1]))
    np.add.at(sums, inverse.reshape(-1), pts)
    return coords.astype(np.int32), (sums / counts[:, None]).astype(np.float32), counts


def _configure_voxelize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]; cuda runs the torch backend on the GPU")
    p.add_argument("--points", type=int, default=100_000, help="points per synthetic sweep")
    p.add_argument("--frames", type=int, default=5, help="sweeps per window (time indices)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per backend (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (numba compiles on the first)")
    p.add_argument("--reference-repeats", type=int, default=3, help="timed runs of the slow numpy reference")
    p.add_argument("--voxel-size", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", nargs="+", metavar="PATH", help="SemanticKITTI velodyne .bin scans instead of "
                   "synthetic sweeps (cycled over the frames)")


@command("voxelize", "points -> SparseTensor4D: numba and torch backends against a numpy reference",
         _configure_voxelize)
def bench_voxelize(args: argparse.Namespace) -> None:
    from perception4d.core.geometry import Geometry
    from perception4d.core.voxelize import voxelize

    device = resolve_device(args.device)
    vs = args.voxel_size
    geometry = Geometry((-51.2, -51.2, -3.0, 51.2, 51.2, 3.4), (vs, vs, vs), args.frames)
    if args.data:
        points, time_idx = kitti_sweeps(args.data, args.frames)
        source = f"SemanticKITTI scans {', '.join(Path(p).name for p in args.data)}"
    else:
        points, time_idx = synthetic_sweeps(args.points, args.frames, args.seed)
        source = f"synthetic LiDAR sweeps, {args.points} points each"
    n = len(points)
    cpu = torch.device("cpu")

    def numba_run():
        return voxelize(points, time_idx, geometry, backend="numba")

    pts_dev = torch.from_numpy(points).to(device)
    time_dev = torch.from_numpy(time_idx).to(device)

    def torch_run():
        return voxelize(pts_dev, time_dev, geometry, backend="torch")

    runs = [("numba", cpu, numba_run, args.repeats),
            (f"torch ({device.type})", device, torch_run, args.repeats),
            ("numpy reference", cpu, lambda: numpy_reference(points, time_idx, geometry),
             args.reference_repeats)]
    results = []
    for name, dev, fn, repeats in runs:
        warm = args.warmup if name != "numpy reference" else 1
        timing = time_call(fn, dev, repeats, warmup=warm)
        mem, method = peak_memory(fn, dev)
        results.append((name, dev, timing, mem, method))

    ref_s = results[-1][2].median_s
    rows = [[name, dev.type, f"{t.median_s * 1e3:.1f}", f"{n / t.median_s / 1e6:.1f}", f"{mem / 2**20:.0f}",
             f"{ref_s / t.median_s:.1f}x"] for name, dev, t, mem, _ in results]
    a, b = numba_run(), torch_run()
    ref_coords, _, _ = numpy_reference(points, time_idx, geometry)
    same = (torch.equal(a.coords, b.coords.cpu()) and torch.equal(a.point_to_voxel, b.point_to_voxel.cpu())
            and np.array_equal(a.coords.numpy(), ref_coords))
    print(f"## voxelize: {n} points ({args.frames} frames, {source}), {a.num_voxels} voxels, "
          f"voxel {vs} m over +-51.2 x +-51.2 x [-3, 3.4] m, {points.shape[1]} columns")
    print(environment_line(device))
    print()
    print(markdown_table(["backend", "device", "ms / window", "M points/s", "peak memory (MiB)",
                          "speed-up vs numpy"], rows))
    print()
    print(f"median of {args.repeats} runs after {args.warmup} warm-up runs (numpy reference: "
          f"{args.reference_repeats}); memory: {results[0][4]} on CPU, {results[1][4]} for the torch row; "
          f"first numba call {results[0][2].first_call_s:.2f} s (compilation or cache load); "
          f"backends and reference agree: {'yes' if same else 'NO'}")


def _configure_network(p: argparse.ArgumentParser, config: str, preset: str) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--config", default=str(REPO / "configs" / config))
    p.add_argument("--checkpoint", default=None, help="weights (default: random init; timing does not depend on them)")
    p.add_argument("--preset", default=preset, help="simulated sensor: vlp32c_x2 (AV2, ~100k points a sweep), "
                                                    "hdl64e (KITTI, ~130k)")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--precision", default="fp32,fp16,amp,fp32+fused,fp16+fused,fp16+eager,fp32+engine,fp16+engine,"
                                          "amp+engine",
                   help="comma list: fp32; fp16 (half weights and features); amp (fp32 weights under autocast); "
                        "'+fused': the network fused for inference (perception4d.models.fuse) on spconv's layers; "
                        "'+engine': fused, backbone on the gather-GEMM engine replayed as a CUDA graph "
                        "(perception4d.models.engine); '+eager': the same engine without CUDA graphs; "
                        "fp16/amp on CUDA only")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--profile", metavar="FILE", help="also write a torch.profiler table (top ops, fp32) to FILE")
    p.add_argument("--stream-frames", type=int, default=None,
                   help="also time the streaming predictor (Predictor.step: one new sweep a frame, the past sweeps "
                        "already on the device) on this many frames; default 200 on CUDA, 0 (off) on the CPU")


#: the public Flow4D network on these GPUs (5 sweeps of 100k points), ms per forward in fp32
FLOW4D_REFERENCE_MS = {"H100": 52.3, "H200": 41.8}


def _configure_flow(p: argparse.ArgumentParser) -> None:
    _configure_network(p, "flow_sparseunet_5f_sim.py", "vlp32c_x2")


def _configure_mos(p: argparse.ArgumentParser) -> None:
    _configure_network(p, "mos_sparseunet_11f_sim.py", "hdl64e")


@command("flow", "scene flow end to end: voxelize / encoder / backbone / head, fp32 and fp16", _configure_flow)
def bench_flow(args: argparse.Namespace) -> None:
    bench_network(args, "flow")


@command("mos", "moving-object segmentation end to end (current + 10 past scans at 0.1 m), fp32 and fp16",
         _configure_mos)
def bench_mos(args: argparse.Namespace) -> None:
    bench_network(args, "mos")


def _configure_occupancy(p: argparse.ArgumentParser) -> None:
    _configure_network(p, "occ_sparseunet_5f_sim.py", "hdl64e")


@command("occupancy", "semantic occupancy end to end (5 sweeps -> the head's grid; --config "
         "configs/occssc_sparseunet_5f_sim.py for the SSC grid), fp32 and fp16", _configure_occupancy)
def bench_occupancy(args: argparse.Namespace) -> None:
    bench_network(args, "occupancy")


def bench_network(args: argparse.Namespace, task: str) -> None:
    """One window of ``geometry.num_frames`` simulated sweeps through the network of ``args.config``."""
    from mmengine.config import Config

    from perception4d.core import Geometry, Window
    from perception4d.datasets.sample import build_window_sample
    from perception4d.models import build_model
    from perception4d.models.fuse import fuse_for_inference
    from perception4d.sim import simulate
    from perception4d.utils.timing import StageTimer

    device = resolve_device(args.device)
    cfg = Config.fromfile(args.config)
    geometry = Geometry.from_config(cfg.geometry)
    model = build_model(cfg.model)
    if args.checkpoint:
        from perception4d.engine.checkpoint import load_state_dict

        model.load_state_dict(load_state_dict(args.checkpoint))
    model.to(device).eval()
    seq = simulate(preset=args.preset, num_frames=geometry.num_frames, seed=args.seed, occupancy=None)
    sample = build_window_sample(Window(tuple(seq.frames)), geometry, "bench", with_targets=False, tasks=(task,))
    n_points = len(sample.aligned.points)
    params = sum(p.numel() for p in model.parameters())
    precisions = [p for p in args.precision.split(",") if p.split("+")[0] == "fp32" or device.type == "cuda"]
    fp32_model = model
    rows = []
    nvox = 0
    for prec in precisions:
        base, variant = (prec.split("+") + [""])[:2]
        amp = base == "amp"
        if variant == "fused":
            model = fuse_for_inference(fp32_model, engine="spconv")
        elif variant in ("engine", "eager"):
            model = fuse_for_inference(fp32_model, engine="gather", cuda_graphs=variant == "engine")
        elif variant:
            raise SystemExit(f"unknown precision variant {prec!r}: use +fused, +engine or +eager")
        else:
            model = fp32_model
        model = copy.deepcopy(model).half() if base == "fp16" else model

        def run(timer=None):
            model.timer = timer or model.timer
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                if timer is not None:
                    with timer.stage("voxelize"):
                        data = model.data_preprocessor({"inputs": [sample]})
                else:
                    data = model.data_preprocessor({"inputs": [sample]})
                return model(**data, mode="tensor"), data

        for _ in range(args.warmup):
            run()
        # end to end, no per-stage synchronisation
        from perception4d.utils.timing import NullTimer

        model.timer = NullTimer()
        total = time_call(lambda: run(), device, args.repeats, warmup=1)
        # per stage (synchronised around each stage)
        timer = StageTimer(device)
        for _ in range(args.repeats):
            _, data = run(timer)
        model.timer = NullTimer()
        nvox = data["inputs"].sparse.num_voxels
        stages = {k: float(np.median(v)) for k, v in timer.times.items()}
        mem, _method = peak_memory(lambda: run(), device)
        rows.append([prec, f"{total.median_s * 1e3:.1f}", *(f"{stages.get(k, float('nan')):.1f}" for k in
                     ("voxelize", "encoder", "backbone", "head")), f"{mem / 2**20:.0f}",
                     f"{n_points / total.median_s / 1e6:.1f}"])
    if args.profile:
        _profile_flow(model, sample, device, args.profile, label=precisions[-1])
    ref = None if task != "flow" else next((v for k, v in FLOW4D_REFERENCE_MS.items() if k in device_name(device)),
                                           None)
    head_grid = getattr(fp32_model.heads[task], "grid", None) if task in fp32_model.heads else None
    print(f"## {task}: {geometry.num_frames} sweeps of the simulated {args.preset} sensor ({n_points} points, "
          f"{nvox} voxels), grid {geometry.spatial_shape}, {params} parameters"
          + (f"; output grid {head_grid.grid_shape} at {head_grid.voxel_size[0]} m" if head_grid is not None else ""))
    print(environment_line(device))
    print()
    headers = ["precision", "ms / frame", "voxelize", "encoder", "backbone", "head", "peak memory (MiB)",
               "M points/s"]
    if ref is not None:
        headers.append("vs Flow4D fp32")
        for r in rows:
            r.append(f"{ref / float(r[1]):.1f}x")
    print(markdown_table(headers, rows))
    print()
    print(f"median of {args.repeats} runs after {args.warmup} warm-up runs; stage columns are medians with a "
          f"device synchronisation around each stage; 'ms / frame' is end to end without them"
          + (f"; Flow4D reference: {ref} ms fp32 on this GPU kind (ENVIRONMENT.md)" if ref else ""))
    stream_frames = args.stream_frames if args.stream_frames is not None else (200 if device.type == "cuda" else 0)
    if stream_frames > 0:
        print()
        bench_network_stream(args, fp32_model, task, device, stream_frames)


def bench_network_stream(args: argparse.Namespace, model, task: str, device: torch.device, frames: int) -> None:
    """The same network in the streaming predictor: per frame, one new sweep joins the window on the device."""
    from perception4d.runtime.measure import stream_frames
    from perception4d.runtime.models import LoadedModelSet
    from perception4d.runtime.policy import FramePolicy
    from perception4d.runtime.predictor import Predictor, Status
    from perception4d.runtime.timing import STAGES

    geometry = model.data_preprocessor.batcher.geometry
    warm = geometry.num_frames + 8
    stream = stream_frames(args.preset, 20, warm + frames, args.seed)
    loaded = LoadedModelSet(task, model, device, Path(args.config), Path(args.checkpoint) if args.checkpoint else None)
    modes = [("fp32", False, None)]
    if device.type == "cuda":  # the default (one CUDA graph a step), then the same without the step graph
        modes = [("fp32", False, None), ("fp16 autocast", True, None), ("fp16 autocast, no step graph", True, False)]
    rows, stage_rows = [], []
    for label, amp, graph in modes:
        pred = Predictor(loaded, device, amp=amp, graph=graph, policy=FramePolicy(max_gap_s=10.0))
        for f in stream[:warm]:
            pred.step(f)
        latency, timings, voxels = [], [], []
        for f in stream[warm:]:
            t0 = time.perf_counter()
            r = pred.step(f)
            latency.append((time.perf_counter() - t0) * 1e3)
            if r.status == Status.OK:
                timings.append(r.timings.as_row())
                voxels.append(r.health.voxels)
        med = np.median(np.asarray(timings), axis=0)
        rows.append([label, f"{np.percentile(latency, 50):.1f}", f"{np.percentile(latency, 99):.1f}",
                     f"{1e3 / np.mean(latency):.1f}", f"{np.median(voxels):.0f}", len(timings)])
        stage_rows.append([label, *(f"{v:.1f}" for v in med)])
        del pred
    n_points = int(np.mean([f.num_points for f in stream]))
    print(f"### {task}, streaming: Predictor.step over {frames} frames ({n_points} points a sweep, "
          f"{geometry.num_frames} sweeps a window)")
    print()
    print(markdown_table(["mode", "ms / frame p50", "p99", "frames/s", "voxels (median)", "frames"], rows))
    print()
    print(markdown_table(["mode", *STAGES, "total"], stage_rows))
    print()
    print("ms / frame: host wall time of Predictor.step, from the new sweep to its outputs on the host, one frame "
          "at a time; stages: medians in ms (CUDA events; 'graph' is voxelize to the heads' outputs replayed as one "
          "CUDA graph, perception4d.runtime.graphed)")


def _profile_flow(model, sample, device: torch.device, path: str, steps: int = 10, label: str = "fp32") -> None:
    """torch.profiler over ``steps`` forwards of ``model`` (the last precision benchmarked, ``label``;
    voxelization included): top ops by device and host time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad(), profile(activities=acts) as prof:
        for _ in range(steps):
            model(**model.data_preprocessor({"inputs": [sample]}), mode="tensor")
        _sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    with open(path, "w") as f:
        f.write(f"# torch.profiler, {steps} forwards ({label}), {device_name(device)}\n\n")
        f.write(prof.key_averages().table(sort_by=sort, row_limit=30) + "\n\n")
        f.write(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25) + "\n")


# -- parallel runtime ---------------------------------------------------------------------------------
def _configure_parallel(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime-config", default=str(REPO / "configs" / "runtime" / "flowmos_occ_2gpu.py"))
    p.add_argument("--devices", help="comma list, one per model set (default: the config's), e.g. cuda:0,cuda:1")
    p.add_argument("--workers", default="thread,process", help="comma list of parallel worker kinds to measure")
    p.add_argument("--frames", type=int, default=200, help="timed frames per run (latency run, then throughput run)")
    p.add_argument("--unique-frames", type=int, default=40, help="simulated sweeps, played forth and back")
    p.add_argument("--warmup-frames", type=int, default=5, help="untimed frames at the start of each run")
    p.add_argument("--in-flight", type=int, default=2, help="frames queued in the throughput run")
    p.add_argument("--preset", default="vlp32c_x2", help="simulated sensor (vlp32c_x2: AV2-size sweeps)")
    p.add_argument("--azimuth-step", type=float, help="override the preset's azimuth resolution (deg; CPU runs)")
    p.add_argument("--threads", type=int, help="torch threads of each process worker")
    p.add_argument("--group", choices=("device", "model"), help="worker per device (the config's default) or per "
                   "model set (e.g. two CPU workers)")
    p.add_argument("--seed", type=int, default=5)


@command("parallel", "two networks on two devices: sequential on one device vs parallel workers vs each alone",
         _configure_parallel)
def bench_parallel(args: argparse.Namespace) -> None:
    from dataclasses import replace as dc_replace

    from perception4d.runtime.config import load_runtime_config
    from perception4d.runtime.measure import HANDOFF_FIELDS, measure, stream_frames
    from perception4d.runtime.timing import STAGES
    from perception4d.sim import get_preset

    rc = load_runtime_config(args.runtime_config)
    names = [m.name for m in rc.model_sets]
    devices = args.devices.split(",") if args.devices else [m.device for m in rc.model_sets]
    if len(devices) != len(names):
        sys.exit(f"benchmark: {len(devices)} devices for {len(names)} model sets {names}")
    preset = get_preset(args.preset)
    if args.azimuth_step:
        preset = preset.with_overrides(azimuth_resolution_deg=args.azimuth_step)
    frames = stream_frames(preset, args.unique_frames, args.frames, args.seed)
    runs = [(f"(c) {n} alone", "inline", [dc_replace(m, device=d)], "device", {})
            for n, m, d in zip(names, rc.model_sets, devices)]
    runs.append(("(a) sequential, one device", "inline", [dc_replace(m, device=devices[0]) for m in rc.model_sets],
                 "device", {}))  # one worker: each sweep uploaded once, the networks back to back
    for kind in args.workers.split(","):
        runs.append((f"(b) parallel, {kind} workers", kind, [dc_replace(m, device=d) for m, d in
                                                             zip(rc.model_sets, devices)], args.group or rc.group,
                     {"threads": args.threads}))
    results, layouts = [], []
    for label, kind, models, group, limits in runs:
        with rc_predictor(rc, models, kind, args.in_flight, limits, group) as pp:
            layouts.append(f"{label}: {pp.describe()}")
            results.append((label, kind, sorted({str(w.device) for w in pp.specs}), measure(
                pp, frames, label, args.warmup_frames)))
    alone = [s for label, _, _, s in results if label.startswith("(c)")]
    seq = next(s for label, _, _, s in results if label.startswith("(a)"))
    slower = max(s.p50 for s in alone)
    rows = [[label, kind, "+".join(devs), len(s.latency_ms), f"{s.p50:.1f}", f"{s.p99:.1f}", f"{s.throughput_fps:.2f}",
             f"{s.throughput_fps / seq.throughput_fps:.2f}x", f"{s.p50 / slower:.2f}x", s.failed]
            for label, kind, devs, s in results]
    n_points = int(np.mean([f.num_points for f in frames]))
    print(f"## parallel runtime: {', '.join(names)}; {args.frames} frames of the simulated {preset.name} sensor "
          f"(~{n_points} points a sweep, {args.unique_frames} unique sweeps played forth and back)")
    print(environment_line(torch.device(devices[0])))
    print()
    print(markdown_table(["configuration", "workers", "devices", "frames", "latency p50 (ms)", "latency p99 (ms)",
                          "throughput (frames/s)", "throughput vs (a)", "latency p50 vs slower alone",
                          "failed"], rows))
    print()
    stage_rows = [[label, model, *(f"{v:.1f}" for v in st.values())] for label, _, _, s in results
                  for model, st in s.stage_ms.items()]
    print(markdown_table(["configuration", "model set", *STAGES, "total"], stage_rows))
    print()
    handoff_rows = [[label, f"{s.submit_ms:.2f}", worker, *(f"{v:.2f}" for v in h.values()),
                     f"{s.p50 - s.submit_ms - sum(h.values()):.2f}"]
                    for label, _, _, s in results for worker, h in s.handoff_ms.items()]
    print("where the latency goes (medians in ms of the latency run): submit (the caller: gate, preparation), "
          "then per worker: to worker, run (its step), encode, to caller, decode; rest: latency p50 "
          "minus these (waiting for the other worker, joining)")
    print()
    print(markdown_table(["configuration", "submit", "worker", *HANDOFF_FIELDS, "rest"], handoff_rows))
    print()
    best = max((s for label, _, _, s in results if label.startswith("(b)")), key=lambda s: s.throughput_fps)
    print(f"best parallel ({best.label}): throughput {best.throughput_fps / seq.throughput_fps:.2f}x of (a) "
          f"(target >= 1.9x), latency p50 {best.p50 / slower:.2f}x of the slower network alone (target <= 1.1x)")
    print("latency: host wall time from submit to the joined result, one frame in flight; a result exists only "
          "after its outputs were copied to the host (that copy waits for the device). throughput: the same frames "
          f"with {args.in_flight} in flight. stage columns: medians in ms of the latency run (CUDA events on each "
          "worker's stream, wall time on the CPU; ingest is host time; 'total' is the host wall time of that model "
          "set's step)")
    print("slowest frames of each latency run (index in the timed stream: ms): " + "; ".join(
        f"{label}: " + ", ".join(f"#{k}: {ms:.1f}" for k, ms in s.slowest) for label, _, _, s in results))
    for line in layouts:
        print("  " + line.replace("\n", "\n  "))


def rc_predictor(rc, models, kind: str, in_flight: int, limits: dict, group: str | None = None):
    """The runtime config's ParallelPredictor for one benchmark configuration (its own models and workers)."""
    from perception4d.runtime.parallel import ParallelPredictor
    from perception4d.runtime.policy import FramePolicy
    from perception4d.runtime.workers import PredictorOptions

    limits = {k: v for k, v in limits.items() if v is not None and kind == "process"}
    return ParallelPredictor(models, workers=kind, group=group or rc.group,
                             options=PredictorOptions(amp=rc.amp, mos_fusion=rc.mos_fusion),
                             policy=FramePolicy(rc.max_gap_s), max_in_flight=in_flight, **limits)


# -- streaming predictor, one network -------------------------------------------------------------------
#: network -> (shipped checkpoint stem, simulated sensor) of the streaming benchmark
STREAM_NETWORKS = {"flow": ("flow_sparseunet_5f_sim", "vlp32c_x2"), "mos": ("mos_sparseunet_11f_sim", "hdl64e"),
                   "occupancy": ("occ_sparseunet_5f_sim", "hdl64e")}


def _configure_stream(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--networks", default="flow,mos,occupancy", help=f"comma list of {sorted(STREAM_NETWORKS)} "
                   "(the shipped checkpoints)")
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--unique-frames", type=int, default=20, help="simulated sweeps, played forth and back")
    p.add_argument("--warmup-frames", type=int, default=12, help="untimed frames first (the window fills)")
    p.add_argument("--azimuth-step", type=float, help="override the preset's azimuth resolution (deg; CPU runs)")
    p.add_argument("--seed", type=int, default=5)


@command("stream", "the streaming predictor (Predictor.step: one new sweep a frame, window kept on the device) "
         "of each shipped network alone: latency, throughput, stages", _configure_stream)
def bench_stream(args: argparse.Namespace) -> None:
    from perception4d.inference import CHECKPOINT_DIR
    from perception4d.runtime.measure import measure, stream_frames
    from perception4d.runtime.models import ModelSpec
    from perception4d.runtime.parallel import ParallelPredictor
    from perception4d.runtime.policy import FramePolicy
    from perception4d.sim import get_preset

    device = resolve_device(args.device)
    rows, stage_rows = [], []
    for name in args.networks.split(","):
        stem, preset_name = STREAM_NETWORKS[name]
        preset = get_preset(preset_name)
        if args.azimuth_step:
            preset = preset.with_overrides(azimuth_resolution_deg=args.azimuth_step)
        frames = stream_frames(preset, args.unique_frames, args.frames, args.seed)
        spec = ModelSpec(name=name, checkpoint=str(CHECKPOINT_DIR / f"{stem}.pth"), device=str(device))
        with ParallelPredictor([spec], workers="inline", policy=FramePolicy(max_gap_s=10.0),
                               max_in_flight=2) as pp:
            layout = pp.describe()
            s = measure(pp, frames, name, args.warmup_frames)
        st = s.stage_ms.get(name, {})
        n_points = int(np.mean([f.num_points for f in frames]))
        rows.append([name, preset.name, n_points, len(s.latency_ms), f"{s.p50:.1f}", f"{s.p99:.1f}",
                     f"{s.throughput_fps:.1f}", s.failed])
        stage_rows.append([name, *(f"{v:.1f}" for v in st.values())])
        print(f"  {layout}", file=sys.stderr)
    print(f"## streaming predictor, one network at a time ({args.frames} frames)")
    print(environment_line(device))
    print()
    print(markdown_table(["network", "sensor", "points / sweep", "frames", "latency p50 (ms)", "latency p99 (ms)",
                          "throughput (frames/s)", "failed"], rows))
    print()
    from perception4d.runtime.timing import STAGES

    print(markdown_table(["network", *STAGES, "total"], stage_rows))
    print()
    print("latency: host wall time of Predictor.step from the new sweep to per-point outputs on the host (one "
          "frame in flight); stages: medians in ms (CUDA events on the device, host time for ingest)")


# -- backbones --------------------------------------------------------------------------------------
#: task -> (sparse-conv config, voxel transformer config, simulated sensor) sharing one geometry
BACKBONE_PAIRS = {"flow": ("flow_sparseunet_5f_sim.py", "flow_dsvt_5f_sim.py", "vlp32c_x2"),
                  "mos": ("mos_sparseunet_11f_sim.py", "mos_dsvt_11f_sim.py", "hdl64e")}


def _configure_backbones(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--tasks", default="flow,mos", help="comma list of geometries: flow (5 sweeps at 0.2 m), "
                                                       "mos (11 scans at 0.1 m)")
    p.add_argument("--precision", default="fp32,fp16", help="comma list: fp32, fp16 (half weights and features), "
                                                            "amp (autocast); fp16/amp on CUDA only")
    p.add_argument("--time-modes", default="window,axis", help="VoxelTransformer4D time_mode values to run")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=11)


@command("backbones", "sparse-conv U-Net vs voxel transformer backbone on the same simulated window (flow, MOS "
         "geometries): ms / frame, peak memory, parameters", _configure_backbones)
def bench_backbones(args: argparse.Namespace) -> None:
    """Both backbones of a task on one window's encoder features (the same input tensor), batch 1."""
    from mmengine.config import Config

    from perception4d.core import Geometry, Window
    from perception4d.datasets.sample import build_window_sample
    from perception4d.models import build_model
    from perception4d.models.spconv_utils import set_spconv_algo
    from perception4d.sim import simulate

    device = resolve_device(args.device)
    precisions = [p for p in args.precision.split(",") if p == "fp32" or device.type == "cuda"]
    print(environment_line(device))
    for task in args.tasks.split(","):
        sparse_cfg, dsvt_cfg, preset = BACKBONE_PAIRS[task]
        cfg = Config.fromfile(str(REPO / "configs" / sparse_cfg))
        geometry = Geometry.from_config(cfg.geometry)
        torch.manual_seed(0)
        model = build_model(cfg.model).to(device).eval()
        seq = simulate(preset=preset, num_frames=geometry.num_frames, seed=args.seed, occupancy=None)
        sample = build_window_sample(Window(tuple(seq.frames)), geometry, "bench", with_targets=False,
                                     tasks=(task,))
        with torch.no_grad():
            batch = model.data_preprocessor({"inputs": [sample]})["inputs"]
            feats, _ = model.encoder(batch.points, batch.time, batch.sparse)
        x = batch.sparse.to_spconv(feats)
        from perception4d.models.fuse import fuse_backbone
        from perception4d.models.spconv_utils import guard_spconv_dtypes

        from perception4d.models.engine import GatherUNet

        fused = fuse_backbone(copy.deepcopy(model.backbone).eval())
        guard_spconv_dtypes(fused)
        candidates = [("SparseUNet4D", model.backbone, None), ("SparseUNet4D (fused)", fused, None),
                      ("SparseUNet4D (fused, gather-GEMM engine, CUDA graph)", GatherUNet(fused), None)]
        for mode in args.time_modes.split(","):
            bcfg = Config.fromfile(str(REPO / "configs" / dsvt_cfg)).model.backbone
            bcfg.update(time_mode=mode, in_channels=model.encoder.out_channels)
            candidates.append((f"VoxelTransformer4D ({mode})", build_model(bcfg).to(device).eval(), mode))
        rows = []
        for name, backbone, mode in candidates:
            params = sum(p.numel() for p in backbone.parameters())
            plan_ms = "-"
            if mode is not None:
                plan = time_call(lambda: backbone.plan(x.indices, x.spatial_shape), device, args.repeats,
                                 warmup=args.warmup)
                plan_ms = f"{plan.median_s * 1e3:.1f}"
            for prec in precisions:
                net = copy.deepcopy(backbone).half() if prec == "fp16" else backbone
                set_spconv_algo(net, device)
                xin = x.replace_feature(x.features.half()) if prec == "fp16" else x

                def run(net=net, xin=xin, amp=prec == "amp"):
                    with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                        return net(xin).features

                timing = time_call(run, device, args.repeats, warmup=args.warmup)
                mem, method = peak_memory(run, device)
                rows.append([name, prec, f"{timing.median_s * 1e3:.1f}", plan_ms if prec == precisions[0] else "",
                             f"{mem / 2**20:.0f}", f"{params / 1e6:.3f} M", f"{timing.first_call_s * 1e3:.0f}"])
        print()
        print(f"## backbones, {task}: {geometry.num_frames} sweeps of the simulated {preset} sensor, "
              f"{batch.sparse.num_voxels} voxels, grid {geometry.spatial_shape}, {feats.shape[1]} input channels")
        print()
        print(markdown_table(["backbone", "precision", "ms / frame", "of which plan (ms)", "peak memory (MiB)",
                              "parameters", "first call (ms)"], rows))
        print()
        print(f"median of {args.repeats} runs after {args.warmup} warm-up runs, batch 1, the backbone alone on the "
              f"same encoder features; memory: {method}; 'plan' = the transformer's windows/sets/pooling tables")


# -- ROS node load test ---------------------------------------------------------------------------------
def _configure_ros_replay(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", action="append", default=None,
                   help="model set checkpoint(s) (repeat; default: the shipped flow checkpoint)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="hdl32e", help="simulated sensor (its frame rate is the sensor rate)")
    p.add_argument("--azimuth-step", type=float, default=None, help="override the preset's azimuth resolution (deg)")
    p.add_argument("--frames", type=int, default=200, help="sweeps in the bag of the real-time run")
    p.add_argument("--ordered-frames", type=int, default=20, help="sweeps of the every-frame run (the bag's first)")
    p.add_argument("--rate", type=float, default=2.0, help="playback speed: multiple of the sensor rate")
    p.add_argument("--storage", choices=("sqlite3", "mcap"), default="mcap")
    p.add_argument("--max-gap-s", type=float, default=0.25, help="the frame policy's gap: processed sweeps further "
                   "apart start a new window (no flow for the sweep before); raise it when the node skips sweeps")
    p.add_argument("--seed", type=int, default=3)


@command("ros-replay", "ROS node load test: a simulated bag replayed at N x the sensor rate through the node's "
         "logic (keep-newest mailbox): latency and drop rate", _configure_ros_replay)
def bench_ros_replay(args: argparse.Namespace) -> None:
    import tempfile

    from perception4d.ros.bags import BagLayout, write_frames
    from perception4d.ros.core import build_predictor
    from perception4d.ros.params import NodeParams
    from perception4d.ros.replay import replay_bag
    from perception4d.runtime import Warmup
    from perception4d.sim import get_preset, simulate

    preset = get_preset(args.preset)
    if args.azimuth_step:
        preset = preset.with_overrides(azimuth_resolution_deg=args.azimuth_step)
    frames = simulate(preset, num_frames=args.frames, seed=args.seed, occupancy=None).frames
    n_points = int(np.mean([f.num_points for f in frames]))
    params = NodeParams(checkpoints=args.checkpoint or ["flow_sparseunet_5f_sim.pth"], devices=[args.device],
                        tf_timeout_s=0.5, diagnostics_period_s=1.0, max_gap_s=args.max_gap_s)
    sensor_hz = 1e9 / preset.frame_period_ns
    rows, stage_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        layout = BagLayout(storage=args.storage)
        bags = {0.0: write_frames(Path(tmp) / "ordered", frames[:args.ordered_frames], layout),
                args.rate: write_frames(Path(tmp) / "realtime", frames, layout)}
        for rate, bag in bags.items():  # every frame (per-frame latency), then N x real time (drops)
            predictor = build_predictor(params, warmup=Warmup(steps=2, points=n_points))
            try:
                report, core = replay_bag(bag, Path(tmp) / f"out{rate:g}", params, predictor, rate=rate,
                                          storage=args.storage, copy="none")
            finally:
                close = getattr(predictor, "close", None)
                if close is not None:
                    close()
            c, g = core.counters, core.gate_counters
            dropped = c.superseded + c.malformed + c.no_pose + g.dropped
            e2e = np.asarray(core.latency.end_to_end)
            label = "every frame, in order" if rate == 0 else f"{rate:g}x sensor rate ({rate * sensor_hz:.0f} Hz)"
            rows.append([label, c.received, c.stepped, c.superseded, f"{dropped / max(c.received, 1):.1%}",
                         f"{c.stepped / report.wall_s:.2f}", f"{np.percentile(e2e, 50):.0f}",
                         f"{np.percentile(e2e, 95):.0f}", f"{e2e.max():.0f}", f"{np.mean(core.latency.waited):.0f}",
                         c.published_clouds])
            for name in core.model_tasks:
                st = np.median(np.asarray(core.latency.stages.get(name, [[np.nan] * 8])), axis=0)
                stage_rows.append([label, name, *(f"{v:.1f}" for v in st)])
    print(f"## ROS node load test: simulated {preset.name} sweeps (~{n_points} points, sensor "
          f"{sensor_hz:g} Hz), model sets {[s.name for s in params.model_specs()]} on {args.device}, "
          f"max_gap_s {args.max_gap_s:g}")
    print(environment_line(torch.device(args.device)))
    print()
    print(markdown_table(["replay", "clouds", "processed", "superseded", "drop rate", "processed / s",
                          "latency p50 (ms)", "p95 (ms)", "max (ms)", "queue wait mean (ms)", "clouds published"],
                         rows))
    print()
    print(markdown_table(["replay", "model set", "ingest", "align", "voxelize", "encoder", "backbone", "head",
                          "outputs", "total"], stage_rows))
    print()
    print("latency: host wall time from a cloud's arrival at the node (the bag clock hands it over) to its outputs "
          "being built (decode, pose, predictor step, messages); the annotated cloud of a sweep goes out with the "
          "next sweep's step (flow needs the successor), one sensor period later. superseded: clouds replaced in "
          "the node's one-message mailbox before the worker took them (keep last 1). stage columns: medians in ms "
          "over the steps that ran the network (not the first sweep of a window).")


# -- batch scoring (Ray or one process per GPU) ---------------------------------------------------------
def _configure_score(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", default="1,2", help="comma list of worker counts (one GPU each when the machine "
                                                    "has GPUs, else CPU workers)")
    p.add_argument("--backend", choices=("ray", "processes"), default=None,
                   help="ray: Ray actors (a local cluster); processes: worker processes of this machine, no Ray "
                        "(default: ray when it is installed, else processes)")
    p.add_argument("--task", choices=("flow", "mos"), default="flow", help="which shipped checkpoint scores")
    p.add_argument("--config", help="model config (default: the task's shipped checkpoint's)")
    p.add_argument("--checkpoint", help="weights (default: the task's shipped checkpoint)")
    p.add_argument("--data", help="dataset to score (default: simulated sequences in a temporary folder)")
    p.add_argument("--sequences", type=int, default=8, help="simulated sequences (one seed each)")
    p.add_argument("--frames", type=int, default=50, help="frames per simulated sequence")
    p.add_argument("--preset", default="vlp32c_x2", help="simulated sensor (vlp32c_x2: AV2-size sweeps)")
    p.add_argument("--azimuth-step", type=float, help="override the preset's azimuth resolution (deg; CPU runs)")
    p.add_argument("--cpus-per-worker", type=int, help="CPUs (and torch threads) per worker (default: the "
                                                       "machine's CPUs over the largest worker count, at most 8)")
    p.add_argument("--segment-frames", type=int, default=0, help="frames per work unit (0: whole sequences)")
    p.add_argument("--chunk-frames", type=int, default=16)
    p.add_argument("--out", help="keep the runs' outputs here (default: a temporary folder, removed)")


@command("score", "batch scoring (Ray or worker processes): frames/s with 1, 2 (4) workers and the parallel "
                  "efficiency", _configure_score)
def bench_score(args: argparse.Namespace) -> None:
    """The same dataset scored with each worker count into a fresh folder; efficiency = fps_n / (n * fps_1)."""
    import contextlib
    import importlib.util
    import json
    import shutil
    import tempfile

    from perception4d.inference import DEFAULT_FLOW, DEFAULT_MOS
    from perception4d.scoring import Execution, ScoreSettings, score
    from perception4d.sim import get_preset, simulate, write_av2, write_semantickitti

    counts = [int(n) for n in args.workers.split(",")]
    backend = args.backend or ("ray" if importlib.util.find_spec("ray") else "processes")
    with contextlib.ExitStack() as stack:
        if backend == "ray":
            import ray

            ray.init(include_dashboard=False, log_to_driver=False)
            stack.callback(ray.shutdown)
            res = ray.cluster_resources()
            gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
        else:  # what the processes backend sees (perception4d.scoring.backends.ProcessBackend)
            gpus, cpus = torch.cuda.device_count(), len(os.sched_getaffinity(0))
        if gpus and max(counts) > gpus:
            print(f"(worker counts above the {gpus} GPUs are left out: {[n for n in counts if n > gpus]})")
            counts = [n for n in counts if n <= gpus]
        per_worker = args.cpus_per_worker or max(1, min(8, cpus // max(counts)))
        root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="p4d_bench_score_"))
        checkpoint = args.checkpoint or str(DEFAULT_FLOW if args.task == "flow" else DEFAULT_MOS)
        config = args.config or str(Path(checkpoint).with_suffix(".py"))
        data = args.data
        if data is None:
            preset = get_preset(args.preset)
            if args.azimuth_step:
                preset = preset.with_overrides(azimuth_resolution_deg=args.azimuth_step)
            t0 = time.perf_counter()
            for seed in range(args.sequences):
                seq = simulate(preset, num_frames=args.frames, seed=seed, occupancy=None)
                if args.task == "flow":
                    write_av2(seq, root / "data", overwrite=True)
                else:
                    write_semantickitti(seq, root / "data", sequence=f"{seed:02d}", overwrite=True)
            data = str(root / "data")
            print(f"simulated {args.sequences} x {args.frames} frames of {preset.name} in "
                  f"{time.perf_counter() - t0:.0f} s")
        rows, runs = [], []
        for n in counts:
            out = root / f"workers_{n}"
            shutil.rmtree(out, ignore_errors=True)
            run = score(ScoreSettings(config, checkpoint, data, str(out)),
                        Execution(backend=backend, workers=n, cpus_per_worker=per_worker,
                                  segment_frames=args.segment_frames, chunk_frames=args.chunk_frames,
                                  progress=False))
            runs.append(run)
            st, first = run.stats, runs[0].stats
            per_worker_fps = first.frames_per_s / counts[0]
            devices = ", ".join(sorted({w.device for w in st.workers}))
            rows.append([n, devices, st.frames_scored, f"{st.startup_s:.1f}", f"{st.scoring_s:.1f}",
                         f"{st.frames_per_s:.2f}", f"{st.frames_per_s / first.frames_per_s:.2f}x",
                         f"{st.frames_per_s / (n * per_worker_fps):.2f}"])
        same = all(json.dumps(r.report["metrics"]) == json.dumps(runs[0].report["metrics"]) for r in runs)
        print(f"## batch scoring, {backend} backend: {args.task}, {runs[0].report['frames']['total']} frames in "
              f"{len(runs[0].sequences)} sequences, {per_worker} CPU(s) per worker")
        print(environment_line(torch.device("cuda" if gpus else "cpu")))
        print(runs[0].report["model"])
        print()
        print(markdown_table(["workers", "devices", "frames", "start-up (s)", "scoring (s)", "frames/s",
                              f"speed-up vs {counts[0]}", "parallel efficiency"], rows))
        print()
        print(f"frames/s: frames over the scoring time (from every worker ready to the last chunk: start-up, i.e. "
              f"model load and warm-up, excluded); efficiency = frames/s / (workers x frames/s of {counts[0]} "
              f"worker(s) per worker), target >= 0.9; metrics identical across runs: {'yes' if same else 'NO'}")
        if not args.out:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="benchmark", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cmd in COMMANDS.items():
        cmd.configure(sub.add_parser(name, help=cmd.help, description=cmd.help))
    args = parser.parse_args(argv)
    COMMANDS[args.command].run(args)


if __name__ == "__main__":
    main()
