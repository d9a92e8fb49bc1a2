"""Training/evaluation plumbing around mmengine's Runner."""

from perception4d.engine.checkpoint import allow_mmengine_checkpoints, load_state_dict
from perception4d.engine.hooks import RunInfoHook, code_version, run_info

__all__ = ["allow_mmengine_checkpoints", "load_state_dict", "RunInfoHook", "code_version", "run_info"]
