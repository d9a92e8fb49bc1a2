"""Training/evaluation plumbing around mmengine's Runner."""

from perception4d.engine.checkpoint import load_state_dict, mmengine_checkpoint_globals
from perception4d.engine.hooks import RunInfoHook, code_version, run_info

__all__ = ["mmengine_checkpoint_globals", "load_state_dict", "RunInfoHook", "code_version", "run_info"]
