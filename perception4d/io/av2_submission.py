"""Argoverse 2 scene-flow files: challenge submissions and evaluation annotations.

A submission is one feather file per scored sweep,
``<out_dir>/<log_id>/<timestamp_ns>.feather``, with the columns ``flow_tx_m``,
``flow_ty_m``, ``flow_tz_m`` (float16) and ``is_dynamic`` (bool), one row per
point of the sweep's evaluation mask, as ``av2.evaluation.scene_flow`` reads
them. Annotation files (the format ``av2 ... make_annotation_files`` writes
and ``evaluate`` reads) let the official evaluation score a validation run.
Files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather

from perception4d.io.atomic import write_atomic

FLOW_COLUMNS = ("flow_tx_m", "flow_ty_m", "flow_tz_m")
SUBMISSION_COLUMNS = FLOW_COLUMNS + ("is_dynamic",)
ANNOTATION_COLUMNS = ("category_indices", "is_close", "is_dynamic", "is_valid") + FLOW_COLUMNS
FLOAT16_MAX = float(np.finfo(np.float16).max)


def _target(out_dir: str | Path, log_id: str, timestamp_ns: int) -> Path:
    if not log_id or log_id in (".", "..") or "/" in log_id or "\\" in log_id:
        raise ValueError(f"log_id {log_id!r} is not a plain folder name")
    if int(timestamp_ns) != timestamp_ns or timestamp_ns < 0:
        raise ValueError(f"timestamp_ns must be a non-negative integer, got {timestamp_ns!r}")
    return Path(out_dir) / log_id / f"{int(timestamp_ns)}.feather"


def _flow_columns(flow: np.ndarray, target: Path) -> dict[str, pa.Array]:
    flow = np.asarray(flow)
    if flow.ndim != 2 or flow.shape[1] != 3:
        raise ValueError(f"{target}: flow must be (N, 3), got {flow.shape}")
    if not np.isfinite(flow).all():
        raise ValueError(f"{target}: flow has {int((~np.isfinite(flow).all(axis=1)).sum())} non-finite rows")
    if flow.size and np.abs(flow).max() > FLOAT16_MAX:
        raise ValueError(f"{target}: flow reaches {np.abs(flow).max():.1f} m, beyond float16 ({FLOAT16_MAX})")
    return {name: pa.array(flow[:, k].astype(np.float16)) for k, name in enumerate(FLOW_COLUMNS)}


def _mask(values: np.ndarray, name: str, n: int, target: Path) -> pa.Array:
    values = np.asarray(values)
    if values.shape != (n,):
        raise ValueError(f"{target}: {name} must be ({n},) like flow, got {values.shape}")
    if values.dtype != bool and not np.isin(values, (0, 1)).all():
        raise ValueError(f"{target}: {name} must be boolean (or 0/1), got dtype {values.dtype}")
    return pa.array(values.astype(bool))


def _write_atomic(table: pa.Table, target: Path) -> Path:
    return write_atomic(target, lambda tmp: feather.write_feather(table, tmp))


def write_av2_submission(out_dir: str | Path, log_id: str, timestamp_ns: int, flow: np.ndarray,
                         is_dynamic: np.ndarray) -> Path:
    """Write one sweep's prediction (rows = evaluation-mask points) and return the file path."""
    target = _target(out_dir, log_id, timestamp_ns)
    columns = _flow_columns(flow, target)
    columns["is_dynamic"] = _mask(is_dynamic, "is_dynamic", len(flow), target)
    return _write_atomic(pa.table(columns), target)


def write_av2_annotation(out_dir: str | Path, log_id: str, timestamp_ns: int, flow: np.ndarray,
                         category: np.ndarray, is_dynamic: np.ndarray, is_valid: np.ndarray,
                         is_close: np.ndarray) -> Path:
    """Write one sweep's ground truth in av2's evaluation annotation format.

    Rows are the sweep's evaluation-mask points, as in the submission.
    """
    target = _target(out_dir, log_id, timestamp_ns)
    n = len(flow)
    category = np.asarray(category)
    if category.shape != (n,) or (n and (category.min() < 0 or category.max() > 255)):
        raise ValueError(f"{target}: category must be ({n},) with values 0..255, got shape {category.shape}")
    columns = {"category_indices": pa.array(category.astype(np.uint8))}
    for name, values in (("is_close", is_close), ("is_dynamic", is_dynamic), ("is_valid", is_valid)):
        columns[name] = _mask(values, name, n, target)
    columns.update(_flow_columns(flow, target))
    return _write_atomic(pa.table(columns), target)
