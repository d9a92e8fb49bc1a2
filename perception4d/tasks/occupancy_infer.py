"""``p4d infer --task occupancy``: semantic occupancy and occupancy flow of every scan.

Each scan k is predicted from the window of scans k-T+1 .. k (shorter at the
start of a sequence or after a missing sweep), on the grid of the model's
occupancy head, in scan k's ego frame. Output per scan:
``DIR/<sequence>/<scan>.npz`` in the Occ3D style — ``semantics`` (X, Y, Z)
uint8 compact classes (``OCC_CLASSES``, 0 free), ``mask_lidar`` (X, Y, Z)
uint8, the voxels the current scan observed (rays from the sensor through its
returns, as Occ3D's LiDAR mask), ``flow`` (X, Y, Z, 3) float32 m/s (0 where
free) — with ``DIR/<sequence>/occupancy.json`` describing the grid, plus BEV
and height-slice PNGs for the first scans. Files are written atomically.

With ``gt`` (a folder of ground truth in the same layout, written by
``p4d simulate`` or ``p4d occupancy-gt``: ``GT/occupancy.json`` or
``GT/<sequence>/occupancy.json`` beside ``<index:06d>.npz``) the occupancy
metrics (geometry IoU, mIoU, RayIoU at 1/2/4 m, flow error) are computed
against it, restricted to its visibility mask.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from perception4d.core.geometry import Geometry
from perception4d.errors import ConfigError, DataFormatError

log = logging.getLogger("perception4d.infer")


@dataclass
class OccupancyRun:
    written: list[Path] = field(default_factory=list)
    pictures: list[Path] = field(default_factory=list)
    stats: list = field(default_factory=list)  # OccupancyFrameStats of scans with ground truth
    short_windows: int = 0
    missing_gt: int = 0  # scans without a ground-truth file while --gt was given


def save_occupancy_prediction(path: str | Path, semantics: np.ndarray, mask_lidar: np.ndarray,
                              flow: np.ndarray) -> Path:
    """One Occ3D-style ``.npz`` (semantics uint8, mask_lidar uint8, flow float32 m/s), written atomically."""
    from perception4d.io.atomic import write_atomic

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy would append ".npz" to a path
            np.savez_compressed(f, semantics=np.asarray(semantics, np.uint8),
                                mask_lidar=np.asarray(mask_lidar).astype(np.uint8),
                                flow=np.asarray(flow, np.float32))

    return write_atomic(path, write)


def observed_mask(frame, geometry: Geometry, origin: np.ndarray) -> np.ndarray:
    """(X, Y, Z) bool: voxels crossed by the frame's rays from ``origin`` (ego frame) to its returns."""
    from perception4d.occupancy.visibility import lidar_visibility

    xyz = frame.xyz_in_ego()
    if len(xyz) == 0:
        return np.zeros(geometry.grid_shape, dtype=bool)
    return lidar_visibility(geometry, np.asarray(origin, np.float64), xyz)


class GroundTruthFolder:
    """Occupancy ground truth of the sequences under a folder (one sequence, or one per sub-folder)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConfigError(f"--gt {self.root}: not a folder")
        self._single = (self.root / "occupancy.json").is_file()
        if not self._single and not any(self.root.glob("*/occupancy.json")):
            raise DataFormatError(self.root, "no occupancy.json in it or in its sub-folders (write ground truth "
                                             "with `p4d simulate` or `p4d occupancy-gt`)")

    def sequence_dir(self, sequence: str) -> Path | None:
        if self._single:
            return self.root
        d = self.root / sequence
        return d if (d / "occupancy.json").is_file() else None

    def load(self, sequence: str, index: int, grid: Geometry):
        """The ``OccupancyGT`` of frame ``index`` or None when the file is missing; a grid mismatch raises."""
        from perception4d.sim.occupancy import load_occupancy, load_occupancy_geometry

        d = self.sequence_dir(sequence)
        if d is None:
            return None
        g = load_occupancy_geometry(d / "occupancy.json")
        if g.point_range != grid.point_range or g.voxel_size != grid.voxel_size:
            raise ConfigError(f"{d / 'occupancy.json'}: ground truth on {g.point_range} at {g.voxel_size} m, the "
                              f"model predicts {grid.point_range} at {grid.voxel_size} m")
        path = d / f"{index:06d}.npz"
        return load_occupancy(path, g) if path.is_file() else None


def _sequence_name(reader, index: int) -> str:
    sid = str(reader.sequence_id).replace("/", "_")
    return sid or f"{index:02d}"


def run_occupancy_inference(data: str, fmt: str | None, out: str, checkpoint: str | None = None,
                            config: str | None = None, device: str = "cpu", pictures: int = 3,
                            gt: str | None = None, max_gap_s: float | None = None,
                            amp: bool = False) -> OccupancyRun:
    from perception4d.datasets.sample import DEFAULT_MAX_GAP_S, sensor_origin
    from perception4d.datasets.windows import iter_windows, plan_windows
    from perception4d.inference import DEFAULT_OCCUPANCY, load_model, predict_samples
    from perception4d.io import open_dataset
    from perception4d.metrics.occupancy import OccupancySample
    from perception4d.metrics.occupancy_metric import OccupancyMetric
    from perception4d.models.heads.occupancy import DEFAULT_SENSOR_ORIGIN
    from perception4d.sim.occupancy import occupancy_meta
    from perception4d.viz.occupancy import save_occupancy_pictures

    gap = DEFAULT_MAX_GAP_S if max_gap_s is None else max_gap_s
    gt_folder = GroundTruthFolder(gt) if gt else None
    metric = OccupancyMetric()  # the definitions of tools/test.py (RayIoU rays from the sensor origin)
    readers = open_dataset(data, fmt)
    loaded = load_model(checkpoint or DEFAULT_OCCUPANCY, config, device, task="occupancy")
    grid = loaded.model.heads["occupancy"].grid
    horizon = loaded.geometry.num_frames
    run = OccupancyRun()
    for r_i, reader in enumerate(readers):
        seq = _sequence_name(reader, r_i)
        seq_dir = Path(out) / seq
        seq_dir.mkdir(parents=True, exist_ok=True)
        meta = occupancy_meta(grid)
        meta.update(frames=[], flow_key="flow", mask_lidar="voxels observed by the current scan")
        plan = plan_windows(reader, horizon, gap, task="occupancy")
        frames: dict[int, object] = {}
        for (first, last), sample in zip(plan.spans, iter_windows(reader, loaded.geometry, plan=plan,
                                                                  tasks=("occupancy",), cache=frames)):
            if last - first + 1 < horizon:
                run.short_windows += 1
            pred = predict_samples(loaded, [sample], amp=amp)[0].occupancy
            frame = frames[last]
            origin = sensor_origin(frame)
            origin = np.asarray(DEFAULT_SENSOR_ORIGIN) if origin is None else origin
            mask = observed_mask(frame, grid, origin)
            path = save_occupancy_prediction(seq_dir / f"{last:06d}.npz", pred.semantics, mask, pred.velocity)
            run.written.append(path)
            meta["frames"].append({"index": last, "timestamp_ns": int(frame.timestamp_ns),
                                   "frame_id": frame.frame_id, "window": [first, last]})
            if len(meta["frames"]) <= pictures:  # the first scans of each sequence
                run.pictures += save_occupancy_pictures(
                    pred.semantics, grid, Path(out) / "pictures" / f"{seq}_{last:06d}_occupancy",
                    f"{reader.sequence_id} scan {last}: predicted occupancy", mask=mask)
            if gt_folder is not None:
                truth = gt_folder.load(seq, last, grid)
                if truth is None:
                    run.missing_gt += 1
                    continue
                s = OccupancySample.from_gt(pred.semantics, truth, pred_velocity=pred.velocity,
                                            sensor_origin=origin, frame_id=frame.frame_id)
                run.stats.append(metric.frame_stats(s))
        (seq_dir / "occupancy.json").write_text(json.dumps(meta, indent=1) + "\n")
        log.info("%s: occupancy of %d scans in %s", reader.sequence_id, len(meta["frames"]), seq_dir)
    if gt_folder is not None and run.missing_gt:
        log.warning("%d predicted scans have no ground-truth file under %s; they are not scored", run.missing_gt, gt)
    return run


def print_occupancy_run(run: OccupancyRun, out: str) -> None:
    from perception4d.metrics.occupancy import occupancy_result

    print(f"wrote occupancy of {len(run.written)} scans to {out} ({len(run.pictures)} pictures)"
          + (f"; {run.short_windows} predicted from a shortened window (start of a sequence or after a missing "
             f"sweep)" if run.short_windows else ""))
    if run.stats:
        r = occupancy_result(run.stats)
        rays = "  ".join(f"RayIoU@{t:g}m {v:.4f}" for t, v in zip(r.ray_thresholds, r.rayiou_per_threshold))
        print(f"  {len(run.stats)} scans scored: IoU {r.geometry_iou:.4f}  mIoU {r.miou:.4f}  RayIoU {r.rayiou:.4f}"
              f"  ({rays})  flow error {r.flow_error:.4f} m/s")
