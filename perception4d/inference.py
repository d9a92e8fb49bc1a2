"""Offline inference over readers: load a model (config + checkpoint) and run it window by window."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from perception4d.core.geometry import Geometry
from perception4d.datasets.sample import WindowSample, build_window_sample
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


def flow_windows(reader: SequenceReader, geometry: Geometry, with_targets: bool = False) -> Iterator[WindowSample]:
    """One flow sample per sweep that has a next sweep (the last sweep of a log has none)."""
    for ref in range(1, len(reader)):
        yield build_window_sample(reader.window(ref, geometry.num_frames), geometry, reader.sequence_id,
                                  with_targets=with_targets)


@torch.no_grad()
def predict_samples(loaded: LoadedModel, samples: list[WindowSample], amp: bool = False):
    model = loaded.model
    data = model.data_preprocessor({"inputs": samples})
    with torch.autocast(loaded.device.type, dtype=torch.float16, enabled=amp and loaded.device.type == "cuda"):
        return model(**data, mode="predict")
