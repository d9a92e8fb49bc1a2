"""The ``p4d`` console script. Each subcommand imports what it needs inside its own function."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def command(name: str, add_args: Callable[[argparse.ArgumentParser], None]):
    def deco(fn: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (add_args, fn)
        fn.__cli_name__ = name
        return fn
    return deco


# --- simulate ----------------------------------------------------------------------------------

def _simulate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (semantickitti/, av2/, occupancy/ inside)")
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--preset", default="hdl64e", help="hdl64e (KITTI), hdl32e (nuScenes), vlp32c_x2 (AV2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-occupancy", action="store_true", help="skip the ground-truth occupancy grids")
    p.add_argument("--terrain", default="flat", choices=("flat", "urban"),
                   help="ground: flat plane, or urban terrain (relief, cambered road, curbs, roughness)")
    p.add_argument("--dropout", type=float, default=0.0, help="probability that a LiDAR return is lost")


@command("simulate", _simulate_args)
def cmd_simulate(args: argparse.Namespace) -> int:
    """Simulate a LiDAR sequence with ground truth and write it in SemanticKITTI and AV2 layouts."""
    import time

    from perception4d.sim import get_preset, simulate, write_dataset

    t0 = time.perf_counter()
    kw = {"occupancy": None} if args.no_occupancy else {}
    preset = get_preset(args.preset)
    if args.dropout:
        preset = preset.with_overrides(dropout_prob=args.dropout)
    seq = simulate(preset=preset, num_frames=args.frames, seed=args.seed, terrain=args.terrain, **kw)
    paths = write_dataset(seq, args.out)
    n = sum(f.num_points for f in seq.frames)
    print(f"simulated {len(seq.frames)} frames ({n} points, preset {args.preset}, seed {args.seed}) "
          f"in {time.perf_counter() - t0:.1f} s -> {args.out}")
    for name in ("semantickitti", "av2", "occupancy", "metadata"):
        if getattr(paths, name) is not None:
            print(f"  {name}: {getattr(paths, name)}")
    return 0


# --- render ------------------------------------------------------------------------------------

def _render_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="a dataset root, sequence folder or AV2 log")
    p.add_argument("--format", default=None, help="semantickitti, av2 or nuscenes (default: detected)")
    p.add_argument("--sequence", type=int, default=0, help="which sequence/log found under --data")
    p.add_argument("--end", type=int, default=-1, help="index of the window's newest frame (default: last)")
    p.add_argument("--frames", type=_positive_int, default=5, help="window length")
    p.add_argument("--out", required=True)
    p.add_argument("--extent", type=float, default=50.0, help="half-width of the picture in metres")


@command("render", _render_args)
def cmd_render(args: argparse.Namespace) -> int:
    """BEV pictures of a window (by time, semantic class, moving flag) and an open3d view if possible."""
    from perception4d.io import open_dataset

    from perception4d.errors import ConfigError

    readers = open_dataset(args.data, args.format)
    if not 0 <= args.sequence < len(readers):
        raise ConfigError(f"--sequence {args.sequence}: {args.data} holds {len(readers)} sequence(s)")
    reader = readers[args.sequence]
    if len(reader) == 0:
        raise ConfigError(f"{reader.format} sequence {reader.sequence_id} has no frames")
    end = args.end % len(reader)
    window = reader.window(end, args.frames)
    for p in render_window(window, args.out, prefix=f"{reader.sequence_id.replace('/', '_')}_{end:06d}",
                           extent=args.extent):
        print(p)
    return 0


def render_window(window, out_dir, prefix: str, extent: float = 50.0):
    """Write the BEV PNGs (and an open3d screenshot when a renderer exists) of a Window."""
    import numpy as np

    from perception4d.viz.bev import render_open3d, render_window_bev, time_colours

    aligned = window.align()
    labels = [f.labels for f in window.frames]
    semantic = moving = None
    if all(lb is not None and lb.semantic is not None for lb in labels):
        semantic = np.concatenate([lb.semantic for lb in labels])
    if all(lb is not None and lb.moving is not None for lb in labels):
        moving = np.concatenate([lb.moving for lb in labels])
    paths = render_window_bev(aligned, out_dir, prefix, semantic=semantic, moving=moving, extent=extent)
    shot = render_open3d(aligned.points[:, :3], time_colours(aligned.time, aligned.num_frames),
                         f"{out_dir}/{prefix}_open3d.png")
    if shot is not None:
        paths.append(shot)
    return paths


# --- train / eval ------------------------------------------------------------------------------

def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config")
    p.add_argument("--work-dir")
    p.add_argument("--resume", nargs="?", const=True, default=False)
    p.add_argument("--amp", action="store_true")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")


@command("train", _train_args)
def cmd_train(args: argparse.Namespace) -> int:
    """Train from a config (mmengine Runner; same as tools/train.py)."""
    from perception4d.engine.runner import train

    train(args.config, args.work_dir, args.resume, None, args.launcher, args.amp)
    return 0


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--work-dir")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")


@command("eval", _eval_args)
def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint on a config's test split (same as tools/test.py)."""
    import json

    from perception4d.engine.runner import test

    print(json.dumps(test(args.config, args.checkpoint, args.work_dir, None, args.launcher), indent=2,
                     default=float))
    return 0


# --- infer -------------------------------------------------------------------------------------

def _infer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=["flow", "mos", "occupancy"], default="flow")
    p.add_argument("--data", required=True, help="dataset root, sequence folder or AV2 log")
    p.add_argument("--format", default=None, help="semantickitti, av2 or nuscenes (default: detected)")
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint", default=None, help="default: the task's checkpoint shipped with the package")
    p.add_argument("--config", default=None, help="default: the .py beside the checkpoint")
    p.add_argument("--device", default="cpu")
    p.add_argument("--pictures", type=int, default=3, help="BEV pictures for the first N outputs of each log")
    p.add_argument("--metrics", action="store_true", help="also print the task's metrics where labels exist")
    p.add_argument("--max-gap-s", type=float, default=None,
                   help="largest time between consecutive sweeps before one counts as missing (default 0.25 s)")
    p.add_argument("--online", action="store_true", help="mos: write the newest-window prediction, not the fused one")
    p.add_argument("--refine", action="store_true", help="mos: instance-aware refinement of the written output")
    p.add_argument("--gt", default=None, help="occupancy: ground-truth folder (p4d simulate / occupancy-gt layout) "
                                              "to score against")
    p.add_argument("--amp", action="store_true", help="occupancy: fp16 autocast on CUDA")


@command("infer", _infer_args)
def cmd_infer(args: argparse.Namespace) -> int:
    """Scene flow (AV2 submission feathers), MOS (SemanticKITTI .label) or occupancy (Occ3D .npz) + pictures.

    Bad input (a malformed file, timestamps that do not increase, a bad option, a checkpoint without
    the task's head) ends the run with one message on stderr and status 2 (see ``main``).
    """
    if args.task == "occupancy":
        from perception4d.tasks.occupancy_infer import print_occupancy_run, run_occupancy_inference

        run = run_occupancy_inference(args.data, args.format, args.out, args.checkpoint, args.config, args.device,
                                      args.pictures, args.gt, args.max_gap_s, amp=args.amp)
        print_occupancy_run(run, args.out)
        return 0
    if args.task == "mos":
        from perception4d.tasks.mos_infer import print_mos_run, run_mos_inference

        run = run_mos_inference(args.data, args.format, args.out, args.checkpoint, args.config, args.device,
                                args.online, args.refine, args.pictures, args.metrics, args.max_gap_s)
        print_mos_run(run, args.out)
        return 0
    from perception4d.tasks.flow_infer import run_flow_inference

    return run_flow_inference(args.data, args.format, args.out, args.checkpoint, args.config, args.device,
                              args.pictures, args.metrics, args.max_gap_s)


# --- score -------------------------------------------------------------------------------------

def _score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="the model config (.py)")
    p.add_argument("checkpoint", help="the trained weights (.pth)")
    p.add_argument("--data", required=True, help="dataset root, sequence folder or log: every sequence found is scored")
    p.add_argument("--format", default=None, help="semantickitti, av2 or nuscenes (default: detected)")
    p.add_argument("--out", required=True, help="output folder; rerunning into it resumes the run")
    p.add_argument("--tasks", default=None, help="comma list of flow, mos, occupancy (default: every head)")
    p.add_argument("--mos-output", choices=["fused", "online"], default="fused",
                   help="mos: the receding-horizon fused output (as p4d infer) or the newest window's")
    p.add_argument("--refine", action="store_true", help="mos: instance-aware refinement of the written output")
    p.add_argument("--occupancy-gt", default=None, help="occupancy: ground-truth folder to score against")
    p.add_argument("--max-gap-s", type=float, default=None,
                   help="largest time between consecutive sweeps before one counts as missing (default 0.25 s)")
    p.add_argument("--device", default=None, help="in-process run: cpu or cuda[:N] (default: cuda if available)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="fp16 autocast (default: on CUDA only)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch threads of an in-process CPU run")
    p.add_argument("--backend", choices=["local", "processes", "ray"], default=None,
                   help="where the work units run: local (this process, the default), processes (one worker "
                        "process per GPU of this machine, no Ray needed) or ray (a Ray cluster's workers)")
    p.add_argument("--ray", action="store_true", help="spread the sequences over Ray workers (as --backend ray)")
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster (e.g. auto, ray://host:10001)")
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="processes / Ray workers (default: one per GPU, or CPUs / --cpus-per-worker without GPUs)")
    p.add_argument("--cpus-per-worker", type=_positive_int, default=None,
                   help="CPUs and torch threads of a processes / Ray worker (default: 1 on CPU workers, "
                        "min(8, CPUs / GPUs))")
    p.add_argument("--retries", type=int, default=2, help="re-runs of a work unit whose worker died")
    p.add_argument("--segment-frames", type=int, default=400, help="frames per work unit (0: whole sequences)")
    p.add_argument("--chunk-frames", type=_positive_int, default=16,
                   help="frames a worker scores between two manifest updates")
    p.add_argument("--restart", action="store_true", help="discard an earlier run in --out instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bar and no summary table")


@command("score", _score_args)
def cmd_score(args: argparse.Namespace) -> int:
    """Score a model over whole datasets: per-frame outputs, metrics and a report; resumable, on several GPUs.

    ``--backend processes`` spreads the work over one process per GPU of this machine, ``--backend ray``
    (``--ray``) over a Ray cluster.

    Exit status 0 when every frame is finished (corrupt inputs are recorded as failed in the report),
    1 when work remains (a unit failed, e.g. its worker died too often: rerun the same command to resume)
    or when no sequence could be opened.
    """
    from perception4d.datasets.sample import DEFAULT_MAX_GAP_S
    from perception4d.errors import ConfigError
    from perception4d.scoring import Execution, ScoreSettings, score

    ray = args.ray or args.ray_address is not None
    if ray and args.backend not in (None, "ray"):
        raise ConfigError(f"--backend {args.backend} does not go with --ray / --ray-address (those mean --backend "
                          f"ray)")
    backend = args.backend or ("ray" if ray else "local")

    settings = ScoreSettings(config=args.config, checkpoint=args.checkpoint, data=args.data, out=args.out,
                             format=args.format, tasks=tuple(args.tasks.split(",")) if args.tasks else None,
                             mos_output=args.mos_output, refine=args.refine, occupancy_gt=args.occupancy_gt,
                             max_gap_s=DEFAULT_MAX_GAP_S if args.max_gap_s is None else args.max_gap_s,
                             amp=args.amp)
    execution = Execution(backend=backend, device=args.device,
                          threads=args.threads,
                          ray_address=args.ray_address, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                          retries=args.retries, segment_frames=args.segment_frames, chunk_frames=args.chunk_frames,
                          progress=not args.no_progress,
                          restart=args.restart)
    run = score(settings, execution)
    return 0 if run.complete and any(not s.error for s in run.sequences) else 1


# --- occupancy ground truth ------------------------------------------------------------------

def _occupancy_gt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="labelled sequences (SemanticKITTI root or sequence folder)")
    p.add_argument("--format", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--grid", default="occ3d", help="occ3d (0.4 m, 200x200x16) or ssc (0.2 m, 256x256x32 ahead)")
    p.add_argument("--context", type=int, default=2, help="labelled scans aggregated before and after each scan")


@command("occupancy-gt", _occupancy_gt_args)
def cmd_occupancy_gt(args: argparse.Namespace) -> int:
    """Occ3D-style occupancy ground truth (.npz) by aggregating labelled scans, with ray-cast visibility."""
    from perception4d.tasks.occupancy_gt import write_occupancy_gt

    paths = write_occupancy_gt(args.data, args.format, args.out, args.grid, args.context)
    print(f"wrote occupancy ground truth of {len(paths)} scans to {args.out}")
    return 0


# --- demo --------------------------------------------------------------------------------------

def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--preset", default="hdl64e")
    p.add_argument("--checkpoint", default=None, help="default: the checkpoint shipped with the package")
    p.add_argument("--device", default="cpu")


@command("demo", _demo_args)
def cmd_demo(args: argparse.Namespace) -> int:
    """The embedded default job: simulate a sequence, run scene flow on it, print metrics, write pictures."""
    from perception4d.demo import run_demo

    return run_demo(out=args.out, seed=args.seed, frames=args.frames, preset=args.preset,
                    checkpoint=args.checkpoint, device=args.device)


# --- ros-replay --------------------------------------------------------------------------------

def _ros_replay_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("in_bag", metavar="IN_BAG", help="rosbag2 folder (or .mcap / .db3 file) with PointCloud2 + tf "
                                                    "or odometry")
    p.add_argument("out_bag", metavar="OUT_BAG", help="rosbag2 folder to create with the node's output topics")
    p.add_argument("--params", default=None, help="the node's ROS 2 parameter YAML (ros_nodes/config/"
                                                  "perception4d.yaml); the options below override it")
    p.add_argument("--checkpoint", action="append", default=None,
                   help="a model set's checkpoint (repeat for several; default: the shipped flow and MOS ones)")
    p.add_argument("--config", action="append", default=None, help="its config (repeat; default: beside it)")
    p.add_argument("--device", action="append", default=None, help="cpu, cuda:0, ... (one, or one per checkpoint)")
    p.add_argument("--runtime-config", default=None, help="configs/runtime/*.py instead of --checkpoint")
    p.add_argument("--tasks", default=None, help="comma list of outputs: flow,mos,occupancy (default: all the "
                                                 "models have)")
    p.add_argument("--cloud-topic", default=None)
    p.add_argument("--pose-source", choices=("tf", "odometry"), default=None)
    p.add_argument("--fixed-frame", default=None)
    p.add_argument("--base-frame", default=None)
    p.add_argument("--odom-topic", default=None)
    p.add_argument("--rate", type=float, default=0.0,
                   help="0: every cloud, in order (default); R > 0: play at R x real time, dropping clouds that "
                        "arrive while the network is busy (the live node's behaviour)")
    p.add_argument("--storage", choices=("sqlite3", "mcap"), default=None, help="output storage (default: input's)")
    p.add_argument("--bag-version", type=int, choices=(8, 9), default=8,
                   help="rosbag2 metadata version (8: Humble and later read it; 9: Jazzy)")
    p.add_argument("--copy", choices=("tf", "all", "none"), default="tf",
                   help="input topics copied to the output bag (tf: /tf and /tf_static)")


@command("ros-replay", _ros_replay_args)
def cmd_ros_replay(args: argparse.Namespace) -> int:
    """Run the ROS 2 perception node's logic on a rosbag2 and write its output topics to a new bag (no ROS)."""
    from perception4d.ros.replay import print_replay, replay_from_args

    print_replay(*replay_from_args(args))
    return 0


# --- entry point -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p4d", description="perception4d: LiDAR 4D perception")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, fn) in COMMANDS.items():
        sp = sub.add_parser(name, help=(fn.__doc__ or "").strip().splitlines()[0])
        add_args(sp)
        sp.set_defaults(_fn=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; the package's own errors (bad input or options) print one line and return 2."""
    from perception4d.errors import Perception4DError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    # a deprecation notice torch prints once when spconv's modules are first traced
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    try:
        return int(args._fn(args) or 0)
    except Perception4DError as e:
        print(f"p4d {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
