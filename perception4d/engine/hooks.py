"""Runner hooks: record what produced a run next to its outputs."""

from __future__ import annotations

import json
import platform
from pathlib import Path

from mmengine.hooks import Hook

from perception4d.registry import HOOKS
from perception4d.utils.version import code_version


def run_info() -> dict:
    import torch

    info = {"perception4d": code_version(), "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform()}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    try:
        import spconv

        info["spconv"] = getattr(spconv, "__version__", "unknown")
    except ImportError:
        pass
    return info


@HOOKS.register_module()
class RunInfoHook(Hook):
    """Writes the resolved config and ``run_info.json`` (code version, library versions) into the run folder."""

    priority = "VERY_LOW"

    def before_run(self, runner) -> None:
        if runner.rank != 0:
            return
        log_dir = Path(runner.log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        runner.cfg.dump(str(log_dir / "config.py"))
        (log_dir / "run_info.json").write_text(json.dumps(run_info(), indent=2))
