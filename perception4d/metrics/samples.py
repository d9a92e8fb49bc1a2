"""What an mmengine metric's ``process`` accepts: its own sample type, or results that convert themselves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def coerce_samples(data_samples: Sequence[Any], sample_type: type[T], converter: str, metric: str) -> list[T]:
    """``data_samples`` as ``sample_type`` instances, calling ``obj.<converter>()`` on model results.

    Anything else is a ``TypeError`` naming the metric and what it got.
    """
    out = []
    for s in data_samples:
        if not isinstance(s, sample_type) and hasattr(s, converter):
            s = getattr(s, converter)()
        if not isinstance(s, sample_type):
            raise TypeError(f"{metric}.process expects {sample_type.__name__} data samples (or objects with "
                            f"{converter}()), got {type(s).__name__}")
        out.append(s)
    return out
