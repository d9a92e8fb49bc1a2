"""Offline inference over readers: load a model (config + checkpoint) and run it window by window.

Bad input policy of the scene-flow path:

* timestamps that do not increase: ``WindowError`` naming both frames, raised
  by ``plan_windows`` before any window is read;
* a missing sweep (consecutive sweeps more than ``max_gap_s`` apart): a window
  never spans the gap, its context starts after it (the model predicts from the
  shorter window); a source -> reference pair that spans the gap itself is
  skipped with a logged warning and listed in ``WindowPlan.skipped`` (no
  output for that sweep);
* sweeps with zero points: valid (an empty source gives an empty prediction);
* points with a non-finite value: dropped by the voxelizer, so they get the
  ego-motion flow; rows whose position is not finite get the zero vector and
  ``is_dynamic = False`` in ``submission_flow`` (the convention of invalid rows
  in AV2 flow labels), counted and logged, so every sweep keeps one row per point.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from perception4d.core.geometry import Geometry
from perception4d.datasets.sample import WindowSample
from perception4d.errors import ConfigError

log = logging.getLogger("perception4d.inference")

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
DEFAULT_FLOW = CHECKPOINT_DIR / "flow_sparseunet_5f_sim.pth"
DEFAULT_MOS = CHECKPOINT_DIR / "mos_sparseunet_11f_sim.pth"
DEFAULT_OCCUPANCY = CHECKPOINT_DIR / "occ_sparseunet_5f_sim.pth"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    geometry: Geometry
    device: torch.device
    config_path: Path
    checkpoint_path: Path


def load_weights(model: torch.nn.Module, checkpoint: Path, config_path: Path) -> None:
    """Load a checkpoint's weights into ``model`` built from ``config_path``; a mismatch raises ``ConfigError``."""
    from perception4d.engine.checkpoint import load_state_dict

    missing, unexpected = model.load_state_dict(load_state_dict(str(checkpoint)), strict=False)
    if missing or unexpected:
        raise ConfigError(f"{checkpoint} does not match {config_path}: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")


def load_model(checkpoint: str | Path | None = None, config: str | Path | None = None,
               device: str | torch.device = "cpu", task: str | None = None) -> LoadedModel:
    """Build the model of ``config`` (default: the ``.py`` beside the checkpoint) and load its weights.

    With ``task`` the model must have that head. A missing file, a model without the task and
    weights that do not match the config raise ``ConfigError`` naming the files.
    """
    from mmengine.config import Config

    from perception4d.models import build_model

    ckpt = Path(checkpoint) if checkpoint else DEFAULT_FLOW
    if not ckpt.is_file():
        raise ConfigError(f"checkpoint {ckpt} not found")
    cfg_path = Path(config) if config else ckpt.with_suffix(".py")
    if not cfg_path.is_file():
        raise ConfigError(f"config {cfg_path} not found (pass --config, or keep the run's config beside "
                          f"the checkpoint with the same stem)")
    cfg = Config.fromfile(str(cfg_path))
    if task is not None and task not in cfg.model.get("heads", {}):
        raise ConfigError(f"{cfg_path} ({ckpt.name}) has no {task!r} head, only {sorted(cfg.model.heads)}: "
                          f"pass a checkpoint trained for {task}")
    model = build_model(cfg.model)
    load_weights(model, ckpt, cfg_path)
    device = torch.device(device)
    model.to(device).eval()
    return LoadedModel(model, Geometry.from_config(cfg.geometry), device, cfg_path, ckpt)


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
    if np.isfinite(flow).all():  # the usual case, over the flat array (a row-wise all() costs ~10x more)
        return SubmissionFlow(flow=flow, is_dynamic=dynamic, non_finite=0)
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
