"""Moving-object segmentation (MOS) metric in the LiDAR-MOS benchmark convention.

The benchmark score is what semantic-kitti-api's ``evaluate_mos.py`` (numpy
backend, ``config/semantic-kitti-mos.yaml``) prints as ``iou_moving``:

* ground truth: the lower 16 bits of each ``.label`` word are mapped with the
  yaml's ``learning_map``: 0 (unlabeled) and 1 (outlier) -> ignored class,
  251..259 -> moving, every other listed id -> static. Ids the yaml does not
  list fall into the ignored class too (its lookup table is zero-filled; ids
  above 358 overflow it and stop the script); here they raise unless
  ``ignore_unknown_ids=True``.
* points whose ground truth is ignored do not count (the script zeroes the
  ignored class's column of its confusion matrix);
* one confusion matrix over all scans of the split, not a mean of per-scan
  scores;
* ``IoU = TP / (TP + FP + FN + 1e-15)``: with no moving point in ground truth
  or prediction the script reports 0.0, not NaN, and so does ``iou_moving``
  (likewise ``iou_static``, ``miou``, ``accuracy``, which use the same
  epsilon as the script's ``getIoU`` / ``getacc``).

Statistics outside the script (``precision``, ``recall``,
``false_moving_rate`` = FP / (FP + TN) on static points, and every per-scan
value) are NaN where their denominator is zero.

``mos_frame_stats`` returns additive per-scan counts; ``mos_result`` reduces
any list of them, so merging the lists of several workers gives the result of
one pass.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterable

import numpy as np

from perception4d.core.frame import PointLabels
from perception4d.core.labels import MOS_IGNORE, MOS_MOVING, MOS_STATIC, SEMANTICKITTI_NAMES, mos_label

#: added to every IoU / accuracy denominator, as evaluate_mos.py's iouEval does
REFERENCE_EPS = 1e-15

_UNKNOWN = 255
_MOS_OF_ID = np.full(1 << 16, _UNKNOWN, dtype=np.uint8)
_ids = np.fromiter(SEMANTICKITTI_NAMES, dtype=np.int64)
_MOS_OF_ID[_ids] = mos_label(_ids)
_MOS_OF_ID.setflags(write=False)


def _numpy(value, name: str, where: str) -> np.ndarray | None:
    if value is None:
        return None
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu().numpy()
    value = np.asarray(value)
    if value.ndim != 1:
        raise ValueError(f"{where}: {name} must be one-dimensional (one value a point), got shape {value.shape}")
    return value


def _moving_mask(pred: np.ndarray, where: str) -> np.ndarray:
    if pred.dtype == bool:
        return pred
    if pred.dtype.kind not in "iu" or (pred.size and not np.isin(pred, (0, 1)).all()):
        raise ValueError(f"{where}: pred_moving must be boolean (or 0/1), got dtype {pred.dtype}")
    return pred.astype(bool)


def mos_from_semantic(gt_semantic: np.ndarray, *, ignore_unknown_ids: bool = False,
                      where: str = "gt_semantic") -> np.ndarray:
    """uint8 MOS labels (0 ignore, 1 static, 2 moving) of SemanticKITTI ids.

    Only the lower 16 bits are used, so raw ``.label`` words (instance id in
    the upper bits) are accepted. Ids outside the LiDAR-MOS vocabulary raise a
    ``ValueError`` unless ``ignore_unknown_ids``, which maps them to 0 as the
    reference script does.
    """
    gt = np.asarray(gt_semantic)
    if gt.dtype.kind not in "iu":
        raise ValueError(f"{where}: gt_semantic must hold integer class ids, got dtype {gt.dtype}")
    if gt.size and (gt.min() < 0 or gt.max() > 0xFFFFFFFF):
        raise ValueError(f"{where}: gt_semantic must be uint32 label words, got values {gt.min()}..{gt.max()}")
    mos = _MOS_OF_ID[gt.astype(np.int64) & 0xFFFF]
    unknown = mos == _UNKNOWN
    if unknown.any():
        if not ignore_unknown_ids:
            ids = np.unique(gt[unknown].astype(np.int64) & 0xFFFF)
            raise ValueError(f"{where}: {int(unknown.sum())} points carry ids outside the SemanticKITTI / LiDAR-MOS "
                             f"vocabulary ({ids[:8].tolist()}); pass ignore_unknown_ids=True to ignore them as "
                             f"evaluate_mos.py does")
        mos = mos.copy()
        mos[unknown] = MOS_IGNORE
    return mos


@dataclass(frozen=True)
class MosFrameStats:
    """Additive counts of one scan over the points whose ground truth is not ignored.

    tp: moving predicted moving, fp: static predicted moving, fn: moving
    predicted static, tn: static predicted static; n_ignored: points left out
    (ground truth unlabeled / outlier, or unknown ids when those are ignored).
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    n_ignored: int = 0

    def __add__(self, other: "MosFrameStats") -> "MosFrameStats":
        return MosFrameStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def num_evaluated(self) -> int:
        return self.tp + self.fp + self.fn + self.tn


def mos_frame_stats(pred_moving: np.ndarray, gt_semantic: np.ndarray | None = None,
                    gt_mos: np.ndarray | None = None, *, frame_id: str = "",
                    ignore_unknown_ids: bool = False) -> MosFrameStats:
    """Counts of one scan; ground truth as SemanticKITTI ids or as MOS labels (0/1/2), exactly one of them."""
    where = frame_id or "MOS scan"
    if pred_moving is None:
        raise ValueError(f"{where}: pred_moving is required")
    pred = _moving_mask(_numpy(pred_moving, "pred_moving", where), where)
    if (gt_semantic is None) == (gt_mos is None):
        raise ValueError(f"{where}: give exactly one of gt_semantic and gt_mos")
    if gt_semantic is not None:
        gt = mos_from_semantic(_numpy(gt_semantic, "gt_semantic", where),
                               ignore_unknown_ids=ignore_unknown_ids, where=where)
        name = "gt_semantic"
    else:
        gt = _numpy(gt_mos, "gt_mos", where)
        name = "gt_mos"
        if gt.dtype.kind not in "iu" or (gt.size and not np.isin(gt, (MOS_IGNORE, MOS_STATIC, MOS_MOVING)).all()):
            raise ValueError(f"{where}: gt_mos must hold 0 (ignore), 1 (static) or 2 (moving), "
                             f"got dtype {gt.dtype} with values {np.unique(gt)[:8].tolist()}")
    if gt.shape != pred.shape:
        raise ValueError(f"{where}: {name} has {gt.shape[0]} points but pred_moving has {pred.shape[0]}")
    evaluated = gt != MOS_IGNORE
    outcome = (gt[evaluated] == MOS_MOVING).astype(np.int64) * 2 + pred[evaluated]
    tn, fp, fn, tp = (int(c) for c in np.bincount(outcome, minlength=4))
    return MosFrameStats(tp=tp, fp=fp, fn=fn, tn=tn, n_ignored=int(pred.size - evaluated.sum()))


@dataclass
class MosSample:
    """Per-point MOS prediction and ground truth of one scan.

    Prediction: ``pred_moving`` (N,) bool, or ``pred_prob`` (N,) probability of
    moving, thresholded as ``pred_prob > threshold`` (ties are static).
    Ground truth: ``gt_semantic`` (N,) SemanticKITTI ids or ``.label`` words,
    or ``gt_mos`` (N,) labels 0 ignore / 1 static / 2 moving.
    """

    pred_moving: np.ndarray | None = None
    pred_prob: np.ndarray | None = None
    threshold: float = 0.5
    gt_semantic: np.ndarray | None = None
    gt_mos: np.ndarray | None = None
    frame_id: str = ""

    def __post_init__(self):
        where = self.where
        for name in ("pred_moving", "pred_prob", "gt_semantic", "gt_mos"):
            setattr(self, name, _numpy(getattr(self, name), name, where))
        if (self.pred_moving is None) == (self.pred_prob is None):
            raise ValueError(f"{where}: give exactly one of pred_moving and pred_prob")
        if (self.gt_semantic is None) == (self.gt_mos is None):
            raise ValueError(f"{where}: give exactly one of gt_semantic and gt_mos")
        if self.pred_prob is not None:
            if self.pred_prob.dtype.kind != "f" or not np.isfinite(self.pred_prob).all():
                raise ValueError(f"{where}: pred_prob must be finite floats, got dtype {self.pred_prob.dtype}"
                                 + ("" if self.pred_prob.dtype.kind != "f" else
                                    f" with {int((~np.isfinite(self.pred_prob)).sum())} non-finite values"))
            if not np.isfinite(self.threshold):
                raise ValueError(f"{where}: threshold must be finite, got {self.threshold}")

    @classmethod
    def from_labels(cls, labels: PointLabels, pred_moving: np.ndarray | None = None,
                    pred_prob: np.ndarray | None = None, threshold: float = 0.5,
                    frame_id: str = "") -> "MosSample":
        """Ground truth from a frame's ``PointLabels.semantic``."""
        if labels.semantic is None:
            raise ValueError(f"{frame_id or 'MOS sample'}: the labels carry no semantic ids")
        return cls(pred_moving=pred_moving, pred_prob=pred_prob, threshold=threshold,
                   gt_semantic=labels.semantic, frame_id=frame_id)

    @property
    def where(self) -> str:
        return self.frame_id or "MOS sample"

    def moving(self) -> np.ndarray:
        """(N,) bool predicted moving mask."""
        if self.pred_moving is not None:
            return _moving_mask(self.pred_moving, self.where)
        return self.pred_prob > self.threshold

    def stats(self, ignore_unknown_ids: bool = False) -> MosFrameStats:
        return mos_frame_stats(self.moving(), gt_semantic=self.gt_semantic, gt_mos=self.gt_mos,
                               frame_id=self.frame_id, ignore_unknown_ids=ignore_unknown_ids)


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def _reference_ratio(num: int, den: int) -> float:
    return num / (float(den) + REFERENCE_EPS)


@dataclass(frozen=True)
class MosScanScore:
    """Scores of one scan; NaN where the denominator is zero."""

    iou: float
    precision: float
    recall: float
    false_moving_rate: float

    @classmethod
    def of(cls, s: MosFrameStats) -> "MosScanScore":
        return cls(iou=_ratio(s.tp, s.tp + s.fp + s.fn), precision=_ratio(s.tp, s.tp + s.fp),
                   recall=_ratio(s.tp, s.tp + s.fn), false_moving_rate=_ratio(s.fp, s.fp + s.tn))


@dataclass(frozen=True)
class MosResult:
    """Dataset-level MOS scores (see the module docstring for the edge cases)."""

    total: MosFrameStats
    iou_moving: float
    iou_static: float
    miou: float
    accuracy: float
    precision: float
    recall: float
    false_moving_rate: float
    per_scan: tuple[MosScanScore, ...]

    @property
    def num_scans(self) -> int:
        return len(self.per_scan)

    def scan_values(self, name: str) -> np.ndarray:
        """(num_scans,) float64 of one ``MosScanScore`` field, e.g. ``"iou"``."""
        if name not in {f.name for f in fields(MosScanScore)}:
            raise ValueError(f"unknown per-scan score {name!r}; one of {[f.name for f in fields(MosScanScore)]}")
        return np.array([getattr(s, name) for s in self.per_scan], dtype=np.float64)

    @property
    def mean_scan_iou(self) -> float:
        """Mean of the defined per-scan IoUs (not the benchmark score); NaN when none is defined."""
        v = self.scan_values("iou")
        v = v[~np.isnan(v)]
        return float(v.mean()) if v.size else float("nan")


def mos_result(stats: Iterable[MosFrameStats]) -> MosResult:
    """Reduce per-scan counts (in scan order) to the dataset scores."""
    per_scan = []
    total = MosFrameStats()
    for s in stats:
        total = total + s
        per_scan.append(MosScanScore.of(s))
    tp, fp, fn, tn = total.tp, total.fp, total.fn, total.tn
    iou_moving = _reference_ratio(tp, tp + fp + fn)
    iou_static = _reference_ratio(tn, tn + fn + fp)
    return MosResult(
        total=total,
        iou_moving=iou_moving,
        iou_static=iou_static,
        miou=(iou_static + iou_moving) / 2,
        accuracy=_reference_ratio(tp + tn, tp + tn + fp + fn),
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        false_moving_rate=_ratio(fp, fp + tn),
        per_scan=tuple(per_scan),
    )
