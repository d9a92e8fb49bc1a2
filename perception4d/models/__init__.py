"""Networks: point encoder, sparse 4D backbones, task heads, and the mmengine model wrapping them."""

from perception4d.models.net import Perception4DNet, SampleResult
from perception4d.models.preprocessor import BatchedWindows, WindowBatcher, WindowDataPreprocessor

__all__ = ["build_model", "Perception4DNet", "SampleResult", "BatchedWindows", "WindowBatcher",
           "WindowDataPreprocessor"]


def build_model(cfg: dict):
    """Build a model config (``cfg.model``) in the package's registry scope, outside a Runner too."""
    from mmengine.registry import DefaultScope

    from perception4d.registry import MODELS

    with DefaultScope.overwrite_default_scope("perception4d"):
        return MODELS.build(cfg)
