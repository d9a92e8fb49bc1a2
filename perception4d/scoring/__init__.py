"""Offline batch scoring: the runtime predictor over whole datasets, resumable, in-process, in worker processes, on Ray.

``score(ScoreSettings(...), Execution(...))`` writes every frame's outputs in
the offline drivers' formats, a manifest of finished frames (a rerun resumes),
and a report (metrics per sequence and overall, error profiles, failures).
``p4d score`` is its command line. Design notes: docs/design.md, "Batch scoring".
"""

from perception4d.scoring.driver import ScoreEvent, ScoreRun, score
from perception4d.scoring.settings import Execution, ScoreSettings

__all__ = ["score", "ScoreSettings", "Execution", "ScoreRun", "ScoreEvent"]
