"""``p4d occupancy-gt``: Occ3D-style occupancy ground truth from labelled sequences.

For every scan of every sequence found, the labelled scans within ``--context``
frames before and after it are aggregated into its ego frame
(``perception4d.occupancy.aggregate_occupancy``; moving objects from the
reference scan only, visibility by ray casting) and written as
``OUT/<sequence>/<frame:06d>.npz`` (semantics, mask_lidar, velocity) with
``OUT/<sequence>/occupancy.json`` describing the grid and classes — the layout
the simulator writes (docs/data_formats.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from perception4d.core.geometry import Geometry

log = logging.getLogger("perception4d.occupancy")

#: Occ3D-style grid (0.4 m, [-40, 40] x [-40, 40] x [-1, 5.4] m, 200 x 200 x 16) in the ground-level ego frame
OCC3D_GRID = Geometry((-40.0, -40.0, -1.0, 40.0, 40.0, 5.4), (0.4, 0.4, 0.4))
#: SemanticKITTI-SSC-style grid (0.2 m, 256 x 256 x 32 in front of the car) in the ground-level ego frame
SSC_GRID = Geometry((0.0, -25.6, -2.0, 51.2, 25.6, 4.4), (0.2, 0.2, 0.2))
GRIDS = {"occ3d": OCC3D_GRID, "ssc": SSC_GRID}


def write_occupancy_gt(data: str, fmt: str | None, out: str, grid: str = "occ3d", context: int = 2,
                       frames: slice | None = None) -> list[Path]:
    """Write the ground truth of every scan (or ``frames`` of each sequence); returns the written files."""
    from perception4d.errors import ConfigError
    from perception4d.io import open_dataset
    from perception4d.occupancy import aggregate_occupancy
    from perception4d.sim.occupancy import occupancy_meta, save_occupancy

    if grid not in GRIDS:
        raise ConfigError(f"--grid must be one of {sorted(GRIDS)}, got {grid!r}")
    if context < 0:
        raise ConfigError(f"--context must be >= 0, got {context}")
    geometry = GRIDS[grid]
    written = []
    for reader in open_dataset(data, fmt):
        seq_dir = Path(out) / str(reader.sequence_id).replace("/", "_")
        seq_dir.mkdir(parents=True, exist_ok=True)
        indices = range(len(reader))[frames] if frames is not None else range(len(reader))
        meta = occupancy_meta(geometry)
        meta["frames"] = []
        for ref in indices:
            lo, hi = max(0, ref - context), min(len(reader), ref + context + 1)
            window = [reader[k] for k in range(lo, hi)]
            occ = aggregate_occupancy(window, ref - lo, geometry)
            path = seq_dir / f"{ref:06d}.npz"
            save_occupancy(occ, path)
            written.append(path)
            meta["frames"].append({"index": ref, "timestamp_ns": window[ref - lo].timestamp_ns,
                                   "frame_id": window[ref - lo].frame_id, "context": [lo, hi - 1]})
        (seq_dir / "occupancy.json").write_text(json.dumps(meta, indent=1) + "\n")
        log.info("%s: occupancy ground truth of %d scans in %s", reader.sequence_id, len(indices), seq_dir)
    return written
