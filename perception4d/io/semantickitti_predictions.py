"""SemanticKITTI moving-object-segmentation prediction files (LiDAR-MOS submission layout).

One file a scan, ``<out_dir>/sequences/<seq>/predictions/<scan>.label``, with
the sequence written as two digits (``08``) and the scan as six (``000123``),
the names semantic-kitti-api's ``evaluate_mos.py`` and ``validate_submission.py``
look up. Each file holds one uint32 a point, in scan order: 251 (moving) or
9 (static), the ids the LiDAR-MOS ``learning_map_inv`` gives its two classes.
Files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from perception4d.core.labels import is_moving, is_valid_semantic
from perception4d.errors import DataFormatError
from perception4d.io.atomic import write_atomic

MOS_PREDICTION_MOVING_ID = 251
MOS_PREDICTION_STATIC_ID = 9
LABEL_RECORD_BYTES = 4  # uint32


def _number(value: str | int, name: str, digits: int) -> str:
    text = str(value)
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{name} must be a non-negative integer or a string of digits, got {value!r}")
    return f"{int(text):0{digits}d}"


def mos_prediction_path(out_dir: str | Path, sequence: str | int, scan: str | int) -> Path:
    """``out_dir/sequences/<seq:02d>/predictions/<scan:06d>.label``."""
    return (Path(out_dir) / "sequences" / _number(sequence, "sequence", 2) / "predictions"
            / f"{_number(scan, 'scan', 6)}.label")


def write_mos_predictions(out_dir: str | Path, sequence: str | int, scan: str | int,
                          moving: np.ndarray) -> Path:
    """Write one scan's predicted moving mask (N,) as 251 / 9 uint32 labels; returns the file path."""
    target = mos_prediction_path(out_dir, sequence, scan)
    if hasattr(moving, "detach"):  # torch.Tensor
        moving = moving.detach().cpu().numpy()
    moving = np.asarray(moving)
    if moving.ndim != 1:
        raise ValueError(f"{target}: moving must be (N,), one flag a point, got shape {moving.shape}")
    if moving.dtype != bool and (moving.dtype.kind not in "iu" or not np.isin(moving, (0, 1)).all()):
        raise ValueError(f"{target}: moving must be boolean (or 0/1), got dtype {moving.dtype}")
    labels = np.where(moving.astype(bool), MOS_PREDICTION_MOVING_ID, MOS_PREDICTION_STATIC_ID).astype("<u4")

    return write_atomic(target, labels.tofile)


def read_mos_predictions(path: str | Path, expected_count: int | None = None) -> np.ndarray:
    """(N,) bool moving mask of one prediction ``.label`` file.

    Like the evaluation, only the lower 16 bits count and ids 251..259 are
    moving. Raises ``DataFormatError`` when the size is not whole uint32
    records, when ``expected_count`` (the scan's point count) differs, or when
    an id is outside the SemanticKITTI / LiDAR-MOS vocabulary.
    """
    path = Path(path)
    size = path.stat().st_size
    if size % LABEL_RECORD_BYTES:
        raise DataFormatError(path, f"size {size} bytes is not a multiple of the {LABEL_RECORD_BYTES}-byte "
                                    f"uint32 label record")
    count = size // LABEL_RECORD_BYTES
    if expected_count is not None and count != expected_count:
        raise DataFormatError(path, f"{count} predicted labels but the scan has {expected_count} points")
    ids = np.fromfile(path, dtype="<u4") & 0xFFFF
    valid = is_valid_semantic(ids)
    if not valid.all():
        bad = np.unique(ids[~valid])[:8].tolist()
        raise DataFormatError(path, f"{int((~valid).sum())} labels carry ids outside the SemanticKITTI / "
                                    f"LiDAR-MOS vocabulary: {bad}")
    return is_moving(ids)
