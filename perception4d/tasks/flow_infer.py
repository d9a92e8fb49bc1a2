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
                       device: str = "cpu", pictures: int = 3, metrics: bool = False) -> int:
    from perception4d.inference import flow_windows, load_model, predict_samples
    from perception4d.io import open_dataset
    from perception4d.io.av2_submission import write_av2_submission

    loaded = load_model(checkpoint, config, device)
    out_dir = Path(out)
    readers = open_dataset(data, fmt)
    stats = []
    n_written = 0
    for reader in readers:
        has_labels = hasattr(reader, "has_flow_labels")
        for k, sample in enumerate(flow_windows(reader, loaded.geometry, with_targets=metrics and has_labels)):
            result = predict_samples(loaded, [sample])[0]
            pred = result.flow
            write_av2_submission(out_dir, reader.sequence_id, sample.meta.timestamp_ns, pred.flow, pred.is_dynamic)
            n_written += 1
            if k < pictures:
                flow_picture(sample.source_xyz, pred.flow, pred.ego_flow, sample.meta.dt,
                             out_dir / "pictures" / f"{reader.sequence_id}_{sample.meta.timestamp_ns}_flow.png",
                             f"{reader.sequence_id} {sample.meta.frame_id}")
            if metrics and sample.targets is not None:
                from perception4d.metrics.flow import av2_2023_frame_stats

                stats.append(av2_2023_frame_stats(result.to_flow_sample()))
    print(f"wrote flow for {n_written} sweeps of {len(readers)} sequence(s) to {out_dir}")
    if stats:
        from perception4d.metrics.flow import av2_2023_result

        res = av2_2023_result(stats)
        for k, v in res.to_av2_dict().items():
            print(f"  {k}: {v:.4f}")
    return 0
