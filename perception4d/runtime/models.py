"""Model sets of the runtime: a network (config + checkpoint, or config only) and its device assignment.

A ``ModelSpec`` is plain data, so a spawned worker process can build the same
network from it. Without a checkpoint the network gets a random initialisation
from ``init_seed`` (drawn on the CPU, so every process and device gets the same
weights): usable to time a network that has no trained weights yet, never for
its outputs, and said so by ``LoadedModelSet.describe()`` and a warning.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from perception4d.core.geometry import Geometry
from perception4d.errors import ConfigError

log = logging.getLogger("perception4d.runtime")
#: the seeded random init draws from torch's global generator: one build at a time across threads
_INIT_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelSpec:
    """One network of the runtime.

    config: the model config (``.py``); None: the one beside the checkpoint (same stem).
    checkpoint: trained weights; None: random init (benchmarks of untrained networks only).
    device: the device a runtime config assigns (``Predictor`` takes its device explicitly).
    cfg_options: dotted config overrides (``Config.merge_from_dict``), e.g. a smaller grid for tests.
    """

    name: str
    config: str | None = None
    checkpoint: str | None = None
    device: str = "cpu"
    cfg_options: dict = field(default_factory=dict)
    init_seed: int = 0

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise ConfigError(f"model set name must be a non-empty string, got {self.name!r}")
        if self.config is None and self.checkpoint is None:
            raise ConfigError(f"model set {self.name!r}: give a config, a checkpoint, or both")


@dataclass
class LoadedModelSet:
    """A built network in eval mode on its device."""

    name: str
    model: torch.nn.Module  # Perception4DNet
    device: torch.device
    config_path: Path
    checkpoint_path: Path | None  # None: random init

    @property
    def geometry(self) -> Geometry:
        """The grid the network was built for (its preprocessor's geometry: what it voxelizes with)."""
        return self.model.data_preprocessor.batcher.geometry

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.model.heads.keys())

    @property
    def random_init(self) -> bool:
        return self.checkpoint_path is None

    def describe(self) -> str:
        g = self.geometry
        weights = ("RANDOM INIT (no checkpoint: timing only, outputs meaningless)" if self.random_init
                   else f"weights {self.checkpoint_path.name}")
        return (f"{self.name}: {'+'.join(self.tasks)} from {self.config_path.name}, {g.num_frames} sweeps at "
                f"{g.voxel_size[0]:g} m, {weights}, on {self.device}")


def resolve_config(spec: ModelSpec) -> Path:
    path = Path(spec.config) if spec.config else Path(spec.checkpoint).with_suffix(".py")
    if not path.is_file():
        raise ConfigError(f"model set {spec.name!r}: config {path} not found"
                          + ("" if spec.config else " (the checkpoint's config is expected beside it, same stem)"))
    return path


def load_model_set(spec: ModelSpec, device: torch.device | str) -> LoadedModelSet:
    """Build ``spec``'s network, load its weights (or initialise it from ``init_seed``), move it to ``device``."""
    from mmengine.config import Config

    from perception4d.inference import load_weights
    from perception4d.models import build_model

    device = torch.device(device)
    cfg_path = resolve_config(spec)
    ckpt = None if spec.checkpoint is None else Path(spec.checkpoint)
    if ckpt is not None and not ckpt.is_file():
        raise ConfigError(f"model set {spec.name!r}: checkpoint {ckpt} not found")
    cfg = Config.fromfile(str(cfg_path))
    if spec.cfg_options:
        cfg.merge_from_dict(dict(spec.cfg_options))
    if "model" not in cfg:
        raise ConfigError(f"model set {spec.name!r}: {cfg_path} has no 'model' section")
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(spec.init_seed))
        model = build_model(cfg.model)
    if ckpt is not None:
        load_weights(model, ckpt, cfg_path)
    else:
        log.warning("model set %r: no checkpoint, RANDOM INIT from %s (seed %d): timing only, outputs are "
                    "meaningless", spec.name, cfg_path.name, spec.init_seed)
    model.to(device).eval()
    loaded = LoadedModelSet(spec.name, model, device, cfg_path, ckpt)
    if "geometry" in cfg:
        declared = Geometry.from_config(cfg.geometry)
        if declared != loaded.geometry:
            raise ConfigError(f"{cfg_path}: geometry {declared} differs from the model's preprocessor geometry "
                              f"{loaded.geometry}; the runtime voxelizes with the model's")
    return loaded
