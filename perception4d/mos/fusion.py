"""Receding-horizon binary Bayes filter over per-scan moving probabilities.

A window of T scans ending at scan k predicts every point of scans k-T+1 .. k,
so each scan is predicted in T windows (fewer at the start and end of a
sequence). A scan's points are the same rows in every window (the windows only
express them in different ego frames, through the frames' poses), so the
predictions associate point to point by row. They are fused in log-odds:

    l(x) = sum_i [logit(p_i(x)) - logit(prior)] + logit(prior)

The *online* output of scan k is the newest window's prediction of k (available
at once); the *fused* output waits until scan k has left the horizon (T - 1
scans later) or the sequence ends.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass

import numpy as np

_EPS = 1e-6


def logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1.0 - _EPS)
    return np.log(p / (1.0 - p))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class FusedScan:
    scan_id: Hashable
    fused: np.ndarray  # (N,) float32 fused moving probability
    online: np.ndarray  # (N,) float32 the first (newest-window) prediction of this scan
    num_predictions: int  # windows that contributed


class RecedingHorizonFusion:
    """Accumulate window predictions scan by scan; emit scans once they leave the horizon.

    ``horizon`` is the window length T: after a window ending at scan k was
    added, scan k - T + 1 can receive no more predictions and is emitted.
    """

    def __init__(self, horizon: int, prior: float = 0.5):
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if not 0.0 < prior < 1.0:
            raise ValueError(f"prior must be in (0, 1), got {prior}")
        self.horizon = int(horizon)
        self.prior = float(prior)
        self._l0 = float(logit(prior))
        self._acc: OrderedDict[Hashable, list] = OrderedDict()  # scan -> [log-odds sum, online, count]

    def add_window(self, scan_ids: list[Hashable], probs: list[np.ndarray],
                   valid: list[np.ndarray] | None = None) -> list[FusedScan]:
        """Add one window's predictions (oldest scan first, the newest last); return scans now final.

        ``valid`` (per scan, bool per point) marks the rows the window has evidence for (points
        inside its grid); other rows add nothing to the fused log-odds. Held scans that this window
        does not contain can get no more predictions (windows only move forward; after a missing
        sweep a window starts fresh) and are emitted first.
        """
        if len(scan_ids) != len(probs) or (valid is not None and len(valid) != len(probs)):
            raise ValueError(f"{len(scan_ids)} scan ids for {len(probs)} prediction arrays"
                             + ("" if valid is None else f" and {len(valid)} validity masks"))
        done = [self._emit(sid) for sid in [s for s in self._acc if s not in set(scan_ids)]]
        for j, (sid, p) in enumerate(zip(scan_ids, probs)):
            p = np.asarray(p, np.float64)
            evidence = logit(p) - self._l0
            if valid is not None:
                evidence = np.where(np.asarray(valid[j], bool), evidence, 0.0)
            entry = self._acc.get(sid)
            if entry is None:
                self._acc[sid] = [evidence, p.astype(np.float32), 1]
            else:
                if entry[0].shape != p.shape:
                    raise ValueError(f"scan {sid!r}: {p.shape[0]} predictions, earlier windows had "
                                     f"{entry[0].shape[0]}")
                entry[0] += evidence
                entry[2] += 1
        while len(self._acc) > self.horizon - 1 and self._acc:
            done.append(self._emit(next(iter(self._acc))))
        return done

    def _emit(self, sid: Hashable) -> FusedScan:
        acc, online, count = self._acc.pop(sid)
        return FusedScan(sid, sigmoid(acc + self._l0).astype(np.float32), online, count)

    def flush(self) -> Iterator[FusedScan]:
        """Emit every scan still held (end of the sequence), oldest first."""
        while self._acc:
            yield self._emit(next(iter(self._acc)))
