"""Runtime configs (``configs/runtime/*.py``): which model sets run, on which device, with which workers.

A runtime config is an mmengine config file with these keys (only
``model_sets`` is required)::

    model_sets = [dict(name="flowmos", config=..., checkpoint=None, device="cuda:0"),
                  dict(name="occupancy", config=..., checkpoint=None, device="cuda:1")]
    workers = "auto"          # auto | inline | thread | process (auto: process on 2+ CUDA devices, else inline)
    group = "device"          # device: one worker per device; model: one worker per model set
    amp = None                # None: fp16 autocast on CUDA
    mos_fusion = False        # also the receding-horizon fused MOS
    max_gap_s = 0.25          # the frame policy's gap (perception4d.runtime.policy)
    max_in_flight = 2         # frames a ParallelPredictor lets the workers hold

Paths may use mmengine's ``{{ fileDirname }}`` (the runtime config's folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from perception4d.datasets.sample import DEFAULT_MAX_GAP_S
from perception4d.errors import ConfigError
from perception4d.runtime.models import ModelSpec
from perception4d.runtime.parallel import GROUPINGS, ParallelPredictor
from perception4d.runtime.policy import FramePolicy
from perception4d.runtime.workers import WORKER_CHOICES, PredictorOptions

KEYS = ("model_sets", "workers", "group", "amp", "mos_fusion", "max_gap_s", "max_in_flight")
MODEL_KEYS = ("name", "config", "checkpoint", "device", "cfg_options", "init_seed")


@dataclass
class RuntimeConfig:
    model_sets: tuple[ModelSpec, ...]
    workers: str = "auto"
    group: str = "device"
    amp: bool | None = None
    mos_fusion: bool = False
    max_gap_s: float = DEFAULT_MAX_GAP_S
    max_in_flight: int = 2
    path: Path | None = None

    def build(self, workers: str | None = None, devices: list[str] | None = None, **kw) -> ParallelPredictor:
        """A ParallelPredictor of this config; ``workers`` / ``devices`` (one per model set) override it."""
        models = list(self.model_sets)
        if devices is not None:
            if len(devices) != len(models):
                raise ConfigError(f"{len(devices)} devices given for {len(models)} model sets "
                                  f"({[m.name for m in models]})")
            models = [ModelSpec(m.name, m.config, m.checkpoint, d, m.cfg_options, m.init_seed)
                      for m, d in zip(models, devices)]
        options = kw.pop("options", PredictorOptions(amp=self.amp, mos_fusion=self.mos_fusion))
        return ParallelPredictor(models, workers=workers or self.workers, group=kw.pop("group", self.group),
                                 options=options, policy=FramePolicy(self.max_gap_s),
                                 max_in_flight=kw.pop("max_in_flight", self.max_in_flight), **kw)


def load_runtime_config(path: str | Path) -> RuntimeConfig:
    """Read and check a runtime config; ``ConfigError`` names the file and the field."""
    from mmengine.config import Config

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"runtime config {path} not found")
    cfg = Config.fromfile(str(path))
    unknown = sorted(k for k in cfg.keys() if k not in KEYS and not k.startswith("_"))  # _name: helper variables
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; a runtime config has {list(KEYS)}")
    sets = cfg.get("model_sets")
    if not sets or not isinstance(sets, (list, tuple)):
        raise ConfigError(f"{path}: model_sets must be a non-empty list of dict(name=..., config=..., ...)")
    specs = []
    for i, m in enumerate(sets):
        if not isinstance(m, dict):
            raise ConfigError(f"{path}: model_sets[{i}] must be a dict, got {type(m).__name__}")
        bad = sorted(set(m) - set(MODEL_KEYS))
        if bad:
            raise ConfigError(f"{path}: model_sets[{i}] has unknown key(s) {bad}; allowed: {list(MODEL_KEYS)}")
        if "name" not in m:
            raise ConfigError(f"{path}: model_sets[{i}] needs a name")
        specs.append(ModelSpec(name=m["name"], config=m.get("config"), checkpoint=m.get("checkpoint"),
                               device=str(m.get("device", "cpu")), cfg_options=dict(m.get("cfg_options") or {}),
                               init_seed=int(m.get("init_seed", 0))))
    workers = cfg.get("workers", "auto")
    if workers not in WORKER_CHOICES:
        raise ConfigError(f"{path}: workers must be one of {WORKER_CHOICES}, got {workers!r}")
    group = cfg.get("group", "device")
    if group not in GROUPINGS:
        raise ConfigError(f"{path}: group must be one of {GROUPINGS}, got {group!r}")
    amp = cfg.get("amp", None)
    if amp is not None and not isinstance(amp, bool):
        raise ConfigError(f"{path}: amp must be True, False or None, got {amp!r}")
    in_flight = cfg.get("max_in_flight", 2)
    if not isinstance(in_flight, int) or in_flight < 1:
        raise ConfigError(f"{path}: max_in_flight must be an integer >= 1, got {in_flight!r}")
    try:
        max_gap = FramePolicy(cfg.get("max_gap_s", DEFAULT_MAX_GAP_S)).max_gap_s
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return RuntimeConfig(tuple(specs), workers, group, amp, bool(cfg.get("mos_fusion", False)), max_gap,
                         in_flight, path)
