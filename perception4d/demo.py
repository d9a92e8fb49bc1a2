"""``make demo`` / ``p4d demo``: the package's main job on its embedded default data.

Simulates a short sequence with the built-in LiDAR simulator (a seed never
used in training), voxelizes the 4D window, runs scene flow and moving-object
segmentation with the shipped checkpoints on the CPU, prints the Argoverse 2
flow metrics (next to the pure ego-motion baseline) and the LiDAR-MOS IoU
against the simulator's ground truth, and writes BEV pictures.
"""

from __future__ import annotations

import time
from pathlib import Path


KEYS = ("EPE 3-Way Average", "EPE/Foreground/Dynamic", "EPE/Foreground/Static", "EPE/Background/Static",
        "Dynamic IoU")


def run_demo(out: str = "demo_out", seed: int = 2024, frames: int = 5, preset: str = "hdl64e",
             checkpoint: str | None = None, device: str = "cpu") -> int:
    import torch

    from perception4d.cli import render_window
    from perception4d.core import Window
    from perception4d.datasets.sample import build_window_sample
    from perception4d.inference import load_model
    from perception4d.metrics.flow import FlowSample, av2_2023_frame_stats, av2_2023_result
    from perception4d.sim import OCC3D_GEOMETRY, simulate
    from perception4d.tasks.flow_infer import flow_picture

    torch.set_num_threads(max(1, torch.get_num_threads()))
    out_dir = Path(out)
    t_start = time.perf_counter()
    loaded = load_model(checkpoint, device=device)
    geometry = loaded.geometry
    n_frames = max(frames, 2)
    seq = simulate(preset=preset, num_frames=n_frames, seed=seed, occupancy=OCC3D_GEOMETRY)
    t_sim = time.perf_counter() - t_start
    window = Window(tuple(seq.frames[-geometry.num_frames:]))
    sample = build_window_sample(window, geometry, f"sim_{preset}_{seed}")
    moving = int(sum(f.labels.moving.sum() for f in window.frames))
    print(f"simulated {n_frames} sweeps of the {preset} sensor (seed {seed}, not used in training): "
          f"{len(sample.aligned.points)} points in the {len(window)}-sweep window, {moving} on moving objects "
          f"({t_sim:.1f} s incl. loading the model)")

    t0 = time.perf_counter()
    data = loaded.model.data_preprocessor({"inputs": [sample]})
    with torch.no_grad():
        result = loaded.model(**data, mode="predict")[0]
    t_net = time.perf_counter() - t0
    batch_sparse = data["inputs"].sparse
    print(f"4D sparse tensor (b, x, y, z, t): spatial shape {batch_sparse.spatial_shape}, "
          f"{batch_sparse.num_voxels} voxels, {batch_sparse.dropped.out_of_range} points outside the grid")
    print(f"scene flow for {len(sample.source_xyz)} points of sweep t -> t+1 on {device} in {t_net:.1f} s "
          f"(checkpoint {loaded.checkpoint_path.name})")

    pred = result.to_flow_sample()
    ego = FlowSample(pred_flow=pred.ego_flow, gt_flow=pred.gt_flow, flow_valid=pred.flow_valid,
                     category=pred.category, dynamic=pred.dynamic, ground=pred.ground, xyz=pred.xyz,
                     ego_flow=pred.ego_flow, frame_id=pred.frame_id)
    ours = av2_2023_result([av2_2023_frame_stats(pred)]).to_av2_dict()
    base = av2_2023_result([av2_2023_frame_stats(ego)]).to_av2_dict()
    print("Argoverse 2 (2023) metrics against the simulator ground truth:")
    print(f"  {'metric':<28}{'network':>10}{'ego motion only':>18}")
    for k in KEYS:
        print(f"  {k:<28}{ours[k]:>10.4f}{base[k]:>18.4f}")

    paths = render_window(window, out_dir, prefix="demo_window", extent=50.0)
    paths.append(flow_picture(sample.source_xyz, result.flow.flow, result.flow.ego_flow, sample.meta.dt,
                              out_dir / "demo_flow.png", f"predicted scene flow, sim seed {seed}"))
    gt = sample.targets
    paths.append(flow_picture(sample.source_xyz, gt.flow, result.flow.ego_flow, sample.meta.dt,
                              out_dir / "demo_flow_ground_truth.png", f"ground-truth scene flow, sim seed {seed}"))
    paths.append(_demo_mos(seq.frames, out_dir, device))
    paths += _demo_occupancy(seq, out_dir, device)
    for p in paths:
        print(f"wrote {p}")
    print(f"done in {time.perf_counter() - t_start:.1f} s")
    return 0


def _demo_mos(frames, out_dir: Path, device: str) -> Path:
    """MOS of the newest scan from the simulated sweeps (a window shorter than the model's 11 scans)."""
    from perception4d.core import Window
    from perception4d.datasets.sample import build_window_sample
    from perception4d.inference import DEFAULT_MOS, load_model, predict_samples
    from perception4d.metrics.mos import mos_result
    from perception4d.tasks.mos_infer import mos_picture

    t0 = time.perf_counter()
    loaded = load_model(DEFAULT_MOS, device=device)
    window = Window(tuple(frames[-loaded.geometry.num_frames:]))
    sample = build_window_sample(window, loaded.geometry, "demo", tasks=("mos",))
    result = predict_samples(loaded, [sample])[0]
    res = mos_result([result.to_mos_sample().stats()])
    print(f"moving-object segmentation of the newest scan from a window of {len(window)} scans (the model takes "
          f"up to {loaded.geometry.num_frames}; shorter windows are used as they come) in "
          f"{time.perf_counter() - t0:.1f} s: IoU moving {res.iou_moving:.3f}, precision {res.precision:.3f}, "
          f"recall {res.recall:.3f}, false-moving rate {res.false_moving_rate:.4f}")
    return mos_picture(sample.source_xyz, result.mos.current > 0.5, out_dir / "demo_mos.png",
                       "predicted moving points of the newest scan")


def _demo_occupancy(seq, out_dir: Path, device: str) -> list[Path]:
    """Semantic occupancy of the newest scan (Occ3D-style grid) against the simulator's complete ground truth."""
    from perception4d.core import Window
    from perception4d.datasets.sample import build_window_sample
    from perception4d.inference import DEFAULT_OCCUPANCY, load_model, predict_samples
    from perception4d.metrics.occupancy import occupancy_result
    from perception4d.metrics.occupancy_metric import OccupancyMetric
    from perception4d.viz.occupancy import save_occupancy_pictures

    t0 = time.perf_counter()
    loaded = load_model(DEFAULT_OCCUPANCY, device=device, task="occupancy")
    frames = seq.frames[-loaded.geometry.num_frames:]
    sample = build_window_sample(Window(tuple(frames)), loaded.geometry, "demo", tasks=("occupancy",),
                                 occupancy=seq.occupancy[len(seq.frames) - 1])
    result = predict_samples(loaded, [sample])[0]
    r = occupancy_result([OccupancyMetric().frame_stats(result.to_occupancy_sample())])
    grid = result.occupancy.geometry
    print(f"semantic occupancy of the newest scan on the {'x'.join(map(str, grid.grid_shape))} grid at "
          f"{grid.voxel_size[0]:g} m in {time.perf_counter() - t0:.1f} s: IoU {r.geometry_iou:.3f}, "
          f"mIoU {r.miou:.3f}, RayIoU {r.rayiou:.3f} (visible voxels of the simulator's ground truth)")
    return save_occupancy_pictures(result.occupancy.semantics, grid, out_dir / "demo_occupancy",
                                   "predicted occupancy of the newest scan")
