"""mmengine registries for what configs swap: models, datasets, metrics, hooks.

Children of mmengine's root registries, scoped ``perception4d`` with
``locations`` so that a Runner built with ``default_scope='perception4d'``
imports the modules that register into them.
"""

from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry("model", parent=MMENGINE_MODELS, scope="perception4d", locations=["perception4d.models"])
DATASETS = Registry("dataset", parent=MMENGINE_DATASETS, scope="perception4d", locations=["perception4d.datasets"])
METRICS = Registry("metric", parent=MMENGINE_METRICS, scope="perception4d", locations=["perception4d.metrics"])
HOOKS = Registry("hook", parent=MMENGINE_HOOKS, scope="perception4d", locations=["perception4d.engine"])
