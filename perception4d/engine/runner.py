"""Build and run an mmengine Runner from a config file (used by tools/train.py, tools/test.py and p4d)."""

from __future__ import annotations

from pathlib import Path

from mmengine.config import Config, DictAction  # noqa: F401  (DictAction re-exported for the tools)

from perception4d.engine.checkpoint import mmengine_checkpoint_globals


def load_config(config: str, work_dir: str | None = None, cfg_options: dict | None = None,
                launcher: str = "none") -> Config:
    from perception4d.core.geometry import Geometry

    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    cfg.work_dir = work_dir or cfg.get("work_dir") or str(Path("work_dirs") / Path(config).stem)
    if "geometry" in cfg:
        Geometry.from_config(cfg.geometry)  # reject a bad declaration before anything is built
    return cfg


def build_runner(cfg: Config):
    import perception4d.datasets  # noqa: F401  registers datasets
    import perception4d.engine  # noqa: F401  registers hooks
    import perception4d.metrics  # noqa: F401  registers metrics
    import perception4d.models  # noqa: F401  registers models
    from mmengine.runner import Runner

    return Runner.from_cfg(cfg)


def train(config: str, work_dir: str | None = None, resume: bool | str = False, cfg_options: dict | None = None,
          launcher: str = "none", amp: bool = False):
    cfg = load_config(config, work_dir, cfg_options, launcher)
    if resume:
        cfg.resume = True
        cfg.load_from = resume if isinstance(resume, str) else None
    if amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    runner = build_runner(cfg)
    with mmengine_checkpoint_globals():
        runner.train()
    return runner


def test(config: str, checkpoint: str, work_dir: str | None = None, cfg_options: dict | None = None,
         launcher: str = "none") -> dict:
    cfg = load_config(config, work_dir, cfg_options, launcher)
    cfg.load_from = checkpoint
    runner = build_runner(cfg)
    with mmengine_checkpoint_globals():
        return runner.test()
