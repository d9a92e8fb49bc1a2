"""Named stage timers (voxelize / encoder / backbone / head) with a null object when timing is off."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch


class NullTimer:
    """Timing off: ``stage()`` costs nothing and adds no device synchronisation."""

    enabled = False

    @contextmanager
    def stage(self, name: str):
        yield


class StageTimer:
    """Wall time per named stage; synchronises ``device`` around each stage so GPU work is counted."""

    enabled = True

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.times: dict[str, list[float]] = defaultdict(list)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def stage(self, name: str):
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.times[name].append((time.perf_counter() - t0) * 1e3)

    def last(self) -> dict[str, float]:
        """Milliseconds of the latest run of each stage."""
        return {k: v[-1] for k, v in self.times.items() if v}

    def reset(self):
        self.times.clear()
