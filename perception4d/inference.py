"""Offline inference over readers: load a model (config + checkpoint) and run it window by window.

Bad input policy of the scene-flow path:

* timestamps that do not increase: ``WindowError`` naming both frames, raised
  by ``plan_flow_windows`` before any window is read;
* a missing sweep (consecutive sweeps more than ``max_gap_s`` apart): a window
  never spans the gap, its context starts after it (the model predicts from the
  shorter window); a source -> reference pair that spans the gap itself is
  skipped with a logged warning and listed in ``FlowWindowPlan.skipped`` (no
  output for that sweep);
* sweeps with zero points: valid (an empty source gives an empty prediction);
* points with a non-finite value: dropped by the voxelizer, so they get the
  ego-motion flow; rows whose position is not finite get the zero vector and
  ``is_dynamic = False`` in ``submission_flow`` (the convention of invalid rows
  in AV2 flow labels), counted and logged, so every sweep keeps one row per point.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from perception4d.core.geometry import Geometry
from perception4d.core.window import Window
from perception4d.datasets.sample import DEFAULT_MAX_GAP_S, WindowSample, build_window_sample, check_max_gap
from perception4d.errors import WindowError
from perception4d.io.base import SequenceReader

log = logging.getLogger("perception4d.inference")

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
DEFAULT_FLOW = CHECKPOINT_DIR / "flow_sparseunet_5f_sim.pth"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    geometry: Geometry
    device: torch.device
    config_path: Path
    checkpoint_path: Path


def load_model(checkpoint: str | Path | None = None, config: str | Path | None = None,
               device: str | torch.device = "cpu") -> LoadedModel:
    """Build the model of ``config`` (default: the ``.py`` beside the checkpoint) and load its weights."""
    from mmengine.config import Config

    from perception4d.engine.checkpoint import load_state_dict
    from perception4d.models import build_model

    ckpt = Path(checkpoint) if checkpoint else DEFAULT_FLOW
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} not found")
    cfg_path = Path(config) if config else ckpt.with_suffix(".py")
    if not cfg_path.is_file():
        raise FileNotFoundError(f"config {cfg_path} not found (pass --config, or keep the run's config beside "
                                f"the checkpoint with the same stem)")
    cfg = Config.fromfile(str(cfg_path))
    model = build_model(cfg.model)
    state = load_state_dict(str(ckpt))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{ckpt} does not match {cfg_path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    device = torch.device(device)
    model.to(device).eval()
    return LoadedModel(model, Geometry.from_config(cfg.geometry), device, cfg_path, ckpt)


@dataclass(frozen=True)
class SkippedPair:
    """A source sweep without a prediction: its next sweep comes ``gap_s`` seconds later."""

    source_index: int
    reference_index: int
    source_timestamp_ns: int
    gap_s: float


@dataclass
class FlowWindowPlan:
    """Which frames make each flow window of one sequence; decided from the timestamps alone."""

    sequence_id: str
    num_frames: int  # frames in the sequence
    max_gap_s: float
    spans: list[tuple[int, int]] = field(default_factory=list)  # (first, reference) frame index, inclusive
    skipped: list[SkippedPair] = field(default_factory=list)


def plan_flow_windows(reader: SequenceReader, window_frames: int,
                      max_gap_s: float = DEFAULT_MAX_GAP_S) -> FlowWindowPlan:
    """Windows of up to ``window_frames`` sweeps, one per sweep with a next sweep, cut at missing sweeps.

    Raises ``WindowError`` when timestamps do not increase; see the module docstring for the gap policy.
    """
    max_gap_s = check_max_gap(max_gap_s)
    sid = reader.sequence_id
    ts = [int(reader.timestamp_ns(i)) for i in range(len(reader))]
    plan = FlowWindowPlan(sid, len(ts), max_gap_s)
    gap_before = [False] * len(ts)  # gap_before[k]: frames k-1 and k are more than max_gap_s apart
    for k in range(1, len(ts)):
        if ts[k] <= ts[k - 1]:
            raise WindowError(f"{reader.format or 'sequence'} {sid}: timestamps must increase, frame {k - 1} at "
                              f"{ts[k - 1]} ns is followed by frame {k} at {ts[k]} ns")
        gap_before[k] = (ts[k] - ts[k - 1]) * 1e-9 > max_gap_s
    for ref in range(1, len(ts)):
        if gap_before[ref]:
            gap = (ts[ref] - ts[ref - 1]) * 1e-9
            plan.skipped.append(SkippedPair(ref - 1, ref, ts[ref - 1], gap))
            log.warning("%s: no flow for frame %d (%d ns): the next sweep comes %.3f s later (max_gap_s %g s, "
                        "missing sweep)", sid, ref - 1, ts[ref - 1], gap, max_gap_s)
            continue
        first = max(0, ref - window_frames + 1)
        for k in range(ref - 1, first, -1):
            if gap_before[k]:
                first = k
                break
        plan.spans.append((first, ref))
    return plan


def flow_windows(reader: SequenceReader, geometry: Geometry, with_targets: bool = False,
                 max_gap_s: float = DEFAULT_MAX_GAP_S, plan: FlowWindowPlan | None = None) -> Iterator[WindowSample]:
    """One flow sample per sweep that has a next sweep (the last sweep of a log has none).

    ``plan`` (default: ``plan_flow_windows(reader, geometry.num_frames, max_gap_s)``)
    decides the windows; pairs spanning a missing sweep yield nothing.
    """
    if plan is None:
        plan = plan_flow_windows(reader, geometry.num_frames, max_gap_s)
    cache: dict[int, object] = {}  # frames of the current window, each read once
    for first, ref in plan.spans:
        for k in [k for k in cache if k < first]:
            del cache[k]
        for k in range(first, ref + 1):
            if k not in cache:
                cache[k] = reader[k]
        window = Window(tuple(cache[k] for k in range(first, ref + 1)))
        yield build_window_sample(window, geometry, reader.sequence_id, with_targets=with_targets,
                                  max_gap_s=plan.max_gap_s)


@dataclass
class SubmissionFlow:
    """A flow prediction ready for ``write_av2_submission``: finite, one row per point of the sweep."""

    flow: np.ndarray  # (N, 3) float32
    is_dynamic: np.ndarray  # (N,) bool
    non_finite: int  # rows without a finite prediction (point position not finite): zero flow, not dynamic


def submission_flow(prediction, frame_id: str = "") -> SubmissionFlow:
    """Finite flow and dynamic flags of a ``FlowPrediction``; non-finite rows are zeroed, counted and logged."""
    flow = np.asarray(prediction.flow, np.float32)
    dynamic = np.asarray(prediction.is_dynamic, bool)
    bad = ~np.isfinite(flow).all(axis=1)
    n_bad = int(bad.sum())
    if n_bad:
        flow = flow.copy()
        flow[bad] = 0.0
        dynamic = dynamic & ~bad
        log.warning("%s: %d of %d points have no finite position; they get zero flow and is_dynamic=False",
                    frame_id or "sweep", n_bad, len(flow))
    return SubmissionFlow(flow=flow, is_dynamic=dynamic, non_finite=n_bad)


@torch.no_grad()
def predict_samples(loaded: LoadedModel, samples: list[WindowSample], amp: bool = False):
    model = loaded.model
    data = model.data_preprocessor({"inputs": samples})
    with torch.autocast(loaded.device.type, dtype=torch.float16, enabled=amp and loaded.device.type == "cuda"):
        return model(**data, mode="predict")
