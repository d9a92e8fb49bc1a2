"""``p4d infer --task flow``: scene flow for every sweep that has a next sweep, written per sweep."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("perception4d.infer")


def flow_picture(xyz: np.ndarray, flow: np.ndarray, ego_flow: np.ndarray, dt: float, path: Path,
                 title: str, extent: float = 50.0) -> Path:
    """BEV of the sweep with arrows of the motion relative to the scene (flow - ego flow), coloured by speed."""
    import matplotlib

    from perception4d.viz.bev import bev_figure, save_figure

    motion = flow - ego_flow
    speed = np.linalg.norm(motion, axis=1) / dt
    grey = np.full((len(xyz), 3), 0.6, np.float32)
    moving = speed >= 0.5
    sel = np.flatnonzero(moving)[::max(1, int(moving.sum()) // 400)]  # at most ~400 arrows
    cmap = matplotlib.colormaps["plasma"]
    colours = cmap(np.clip(speed[sel] / 15.0, 0, 1))
    fig = bev_figure(xyz, grey, title + f" (arrows: motion x5, colour = speed 0..15 m/s; {int(moving.sum())} "
                                       f"moving points)", extent, arrows=(xyz[sel], motion[sel] * 5.0),
                     arrow_colours=colours)
    return save_figure(fig, path)


def run_flow_inference(data: str, fmt: str | None, out: str, checkpoint: str | None, config: str | None,
                       device: str = "cpu", pictures: int = 3, metrics: bool = False,
                       max_gap_s: float | None = None) -> int:
    """Write ``<out>/<log_id>/<timestamp_ns>.feather`` per sweep with a next sweep.

    Bad input (a malformed file, timestamps that do not increase, a bad option)
    raises a ``Perception4DError`` before anything is written; missing sweeps skip
    the pairs that span them (see ``perception4d.datasets.windows``).
    """
    from dataclasses import replace

    from perception4d.datasets.sample import DEFAULT_MAX_GAP_S
    from perception4d.datasets.windows import iter_windows, plan_windows
    from perception4d.inference import load_model, predict_samples, submission_flow
    from perception4d.io import open_dataset
    from perception4d.io.av2_submission import write_av2_submission

    out_dir = Path(out)
    readers = open_dataset(data, fmt)
    loaded = load_model(checkpoint, config, device, task="flow")
    gap = DEFAULT_MAX_GAP_S if max_gap_s is None else max_gap_s
    plans = [plan_windows(r, loaded.geometry.num_frames, gap) for r in readers]  # checks all timestamps first
    stats = []
    n_written = n_non_finite = 0
    for reader, plan in zip(readers, plans):
        if len(reader) < 2:
            print(f"{reader.format} sequence {reader.sequence_id} has {len(reader)} sweep: scene flow needs a sweep "
                  f"and the next one, nothing written for it")
        for pair in plan.skipped:
            print(f"{reader.sequence_id}: skipped frame {pair.source_index} ({pair.source_timestamp_ns} ns): the "
                  f"next sweep comes {pair.gap_s:.3f} s later (max gap {plan.max_gap_s:g} s), a sweep is missing")
        has_labels = hasattr(reader, "has_flow_labels")
        windows = iter_windows(reader, loaded.geometry, with_targets=metrics and has_labels, plan=plan)
        for k, sample in enumerate(windows):
            result = predict_samples(loaded, [sample])[0]
            sub = submission_flow(result.flow, sample.meta.frame_id)
            n_non_finite += sub.non_finite
            result.flow = replace(result.flow, flow=sub.flow, is_dynamic=sub.is_dynamic)
            write_av2_submission(out_dir, reader.sequence_id, sample.meta.timestamp_ns, sub.flow, sub.is_dynamic)
            n_written += 1
            if k < pictures:
                flow_picture(sample.source_xyz, sub.flow, result.flow.ego_flow, sample.meta.dt,
                             out_dir / "pictures" / f"{reader.sequence_id}_{sample.meta.timestamp_ns}_flow.png",
                             f"{reader.sequence_id} {sample.meta.frame_id}")
            if metrics and sample.targets is not None:
                from perception4d.metrics.flow import av2_2023_frame_stats

                stats.append(av2_2023_frame_stats(result.to_flow_sample()))
    n_skipped = sum(len(p.skipped) for p in plans)
    print(f"wrote flow for {n_written} sweeps of {len(readers)} sequence(s) to {out_dir}"
          + (f"; skipped {n_skipped} sweep(s) before a missing sweep" if n_skipped else "")
          + (f"; {n_non_finite} point(s) without a finite position got zero flow" if n_non_finite else ""))
    if stats:
        from perception4d.metrics.flow import av2_2023_result

        res = av2_2023_result(stats)
        for k, v in res.to_av2_dict().items():
            print(f"  {k}: {v:.4f}")
    return 0
