"""The inference runtime: a streaming predictor per model set and the parallel multi-network path.

``Predictor.step(frame) -> Result`` (perception4d.runtime.predictor) runs one
model set on one device; ``ParallelPredictor`` (perception4d.runtime.parallel)
runs several, each on its device, and joins their results per frame; runtime
configs (``configs/runtime/*.py``) say which and where. Design notes:
docs/design.md, "Inference runtime".
"""

from perception4d.runtime.config import RuntimeConfig, load_runtime_config
from perception4d.runtime.models import ModelSpec
from perception4d.runtime.parallel import FrameResult, ParallelPredictor, WorkerError
from perception4d.runtime.policy import FramePolicy
from perception4d.runtime.predictor import Predictor, Result, Status, Warmup
from perception4d.runtime.workers import PredictorOptions

__all__ = ["Predictor", "Result", "Status", "Warmup", "ParallelPredictor", "FrameResult", "WorkerError", "ModelSpec",
           "FramePolicy", "PredictorOptions", "RuntimeConfig", "load_runtime_config"]
