"""Per task: write a frame's output in the task's format and take its metric records and error profile.

The formats, names and values are those of the offline drivers
(``perception4d.tasks.flow_infer`` / ``mos_infer`` / ``occupancy_infer``),
through the same writers, so a scoring run and ``p4d infer`` of the same
model write the same files:

* flow: ``flow/<log_id>/<timestamp_ns>.feather`` (AV2 submission);
* MOS: ``mos/sequences/<seq>/predictions/<scan>.label`` (SemanticKITTI ids
  251 / 9), the fused output by default (``mos_output="online"``: the newest
  window's), optionally refined;
* occupancy: ``occupancy/<seq>/<index:06d>.npz`` (Occ3D style) and, once the
  sequence is complete, ``occupancy/<seq>/occupancy.json`` (written by the driver
  from the manifest, ``occupancy_json``).

Metric records come from each metric's own ``process`` (mmengine
``BaseMetric``): the records it appends for the frame are taken out and
travel with the frame's manifest line; ``perception4d.scoring.report`` hands
them back to a metric of the same class to reduce.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perception4d.scoring.manifest import Status, TaskOutcome
from perception4d.scoring.profiles import flow_profile, mos_profile, occupancy_profile


def metric_records(metric, sample) -> list:
    """The records ``metric.process`` keeps for one sample (taken out again: the metric stays empty)."""
    n = len(metric.results)
    metric.process(None, [sample])
    new = list(metric.results[n:])
    del metric.results[n:]
    return new


def build_metric(task: str):
    """The task's mmengine metric, with the settings the offline drivers and tools/test.py use."""
    if task == "flow":
        from perception4d.metrics.flow_metric import Av2FlowMetric

        return Av2FlowMetric()
    if task == "mos":
        from perception4d.metrics.mos_metric import MosMetric

        return MosMetric()
    from perception4d.metrics.occupancy_metric import OccupancyMetric

    return OccupancyMetric()


@dataclass(frozen=True)
class SequenceNames:
    """A sequence's folder name in each task's output layout (the offline drivers' naming)."""

    flow: str
    mos: str
    occupancy: str

    @classmethod
    def of(cls, reader, index: int) -> "SequenceNames":
        from perception4d.tasks.mos_infer import _sequence_name as mos_name
        from perception4d.tasks.occupancy_infer import _sequence_name as occ_name

        return cls(str(reader.sequence_id), mos_name(reader, index), occ_name(reader, index))


class FlowTask:
    name = "flow"

    def __init__(self, out: Path):
        self.root = Path(out)
        self.metric = build_metric("flow")

    def outcome(self, names: SequenceNames, frame, output) -> TaskOutcome:
        """``output``: the runtime's ``FlowOutput`` of ``frame`` (submission-ready flow)."""
        from perception4d.datasets.sample import flow_targets
        from perception4d.io.av2_submission import write_av2_submission
        from perception4d.metrics.flow import FlowSample

        pred = output.prediction
        path = write_av2_submission(self.root / "flow", names.flow, frame.timestamp_ns, pred.flow, pred.is_dynamic)
        result = TaskOutcome(Status.WRITTEN, str(path.relative_to(self.root)))
        targets = flow_targets(frame)
        if targets is not None:
            xyz = frame.xyz_in_ego().astype(np.float32)
            sample = FlowSample(pred_flow=pred.flow, gt_flow=targets.flow, flow_valid=targets.valid,
                                category=targets.category, dynamic=targets.dynamic, ground=targets.ground, xyz=xyz,
                                ego_flow=pred.ego_flow, pred_dynamic=pred.is_dynamic, frame_id=frame.frame_id)
            result.metric = metric_records(self.metric, sample)
            result.profile = flow_profile(xyz, pred.flow, targets.flow, pred.ego_flow, targets.valid, targets.ground,
                                          output.dt)
        return result


class MosTask:
    name = "mos"

    def __init__(self, out: Path, refine: bool):
        self.root = Path(out)
        self.refine = bool(refine)
        self.metric = build_metric("mos")

    def outcome(self, names: SequenceNames, index: int, frame, prob: np.ndarray) -> TaskOutcome:
        """``prob``: the scan's moving probability (fused or online, as the run asked)."""
        from perception4d.datasets.sample import mos_targets
        from perception4d.io.semantickitti_predictions import write_mos_predictions
        from perception4d.metrics.mos import MosSample
        from perception4d.tasks.mos_infer import REFINE_AGREEMENT, _scan_name

        xyz = frame.xyz_in_ego()
        if self.refine:
            from perception4d.mos import refine_moving

            prob = refine_moving(xyz, prob, agreement=REFINE_AGREEMENT).prob
        moving = prob > 0.5
        path = write_mos_predictions(self.root / "mos", names.mos, _scan_name(frame.frame_id, index), moving)
        result = TaskOutcome(Status.WRITTEN, str(path.relative_to(self.root)))
        if frame.labels is not None:
            gt = mos_targets(frame)
            result.metric = metric_records(self.metric, MosSample(pred_moving=moving, gt_mos=gt,
                                                                  frame_id=frame.frame_id))
            result.profile = mos_profile(xyz, moving, gt)
        return result


class OccupancyTask:
    name = "occupancy"

    def __init__(self, out: Path, grid, gt_folder: str | None):
        from perception4d.tasks.occupancy_infer import GroundTruthFolder

        self.root = Path(out)
        self.grid = grid
        self.gt = GroundTruthFolder(gt_folder) if gt_folder else None
        self.metric = build_metric("occupancy")

    def outcome(self, names: SequenceNames, index: int, frame, prediction, window: tuple[int, int]) -> TaskOutcome:
        """``prediction``: the runtime's ``OccupancyPrediction`` of ``frame``; ``window``: its first/last index."""
        from perception4d.datasets.sample import sensor_origin
        from perception4d.metrics.occupancy import OccupancySample
        from perception4d.models.heads.occupancy import DEFAULT_SENSOR_ORIGIN
        from perception4d.tasks.occupancy_infer import observed_mask, save_occupancy_prediction

        origin = sensor_origin(frame)
        origin = np.asarray(DEFAULT_SENSOR_ORIGIN) if origin is None else origin
        mask = observed_mask(frame, self.grid, origin)
        path = save_occupancy_prediction(self.root / "occupancy" / names.occupancy / f"{index:06d}.npz",
                                         prediction.semantics, mask, prediction.velocity)
        result = TaskOutcome(Status.WRITTEN, str(path.relative_to(self.root)), window=tuple(window))
        if self.gt is not None:
            truth = self.gt.load(names.occupancy, index, self.grid)
            if truth is None:
                result.reason = "no ground-truth file: not scored"
            else:
                sample = OccupancySample.from_gt(prediction.semantics, truth, pred_velocity=prediction.velocity,
                                                 sensor_origin=origin, frame_id=frame.frame_id)
                result.metric = metric_records(self.metric, sample)
                result.profile = occupancy_profile(prediction.semantics, prediction.velocity, truth)
        return result


def occupancy_json(out: Path, folder: str, grid, records) -> Path:
    """``occupancy/<seq>/occupancy.json`` of a complete sequence, as ``p4d infer --task occupancy`` writes it."""
    from perception4d.io.atomic import write_atomic
    from perception4d.sim.occupancy import occupancy_meta

    meta = occupancy_meta(grid)
    meta.update(frames=[], flow_key="flow", mask_lidar="voxels observed by the current scan")
    for r in sorted(records, key=lambda r: r.index):
        o = r.tasks.get("occupancy")
        if o is not None and o.status == Status.WRITTEN:
            meta["frames"].append({"index": r.index, "timestamp_ns": int(r.timestamp_ns), "frame_id": r.frame_id,
                                   "window": list(o.window)})
    text = json.dumps(meta, indent=1) + "\n"
    return write_atomic(Path(out) / "occupancy" / folder / "occupancy.json", lambda tmp: Path(tmp).write_text(text))
