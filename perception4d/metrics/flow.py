"""Scene-flow metrics: the sample type, per-point errors, Argoverse 2 2023.

Every metric family has ``*_frame_stats(sample)``, which returns additive
per-frame statistics (float64 sums, int64 counts), and ``*_result(stats)``,
which reduces any list of them; merging the lists of several workers gives
the same numbers as one pass.

Flows follow the Argoverse 2 convention: position at t+1 in ego(t+1) minus
position at t in ego(t), metres per sweep interval (0.1 s), ego motion
included. ``xyz`` is the point in the ego frame of sweep t.

Argoverse 2 2023 (``av2.evaluation.scene_flow.eval`` in av2 0.3.6):

* evaluated points: flow valid, not ground, ``|x| <= 50`` and ``|y| <= 50``;
* subsets: Background (category 0) / Foreground (1..30) x Dynamic / Static
  (ground-truth label, ``|gt - ego flow| >= 0.05``) x Close (``|x| <= 35`` and
  ``|y| <= 35``) / Far;
* per point: EPE ``|pred - gt|``; Accuracy Strict / Relax: EPE < t or
  EPE / (``|gt|`` + 1e-10) < t with t = 0.05 / 0.1; Angle Error: angle between
  ``(pred, 0.1)`` and ``(gt, 0.1)``;
* a subset's value is the mean over its points of all frames (what the
  official count-weighted average of per-frame means computes); NaN when empty;
* Dynamic IoU = TP / (TP + FP + FN) of the predicted dynamic flag over all
  evaluated points; EPE 3-Way Average = mean EPE of Foreground/Dynamic,
  Foreground/Static and Background/Static.

The KITTI metrics are in ``perception4d.metrics.flow_kitti``, the Argoverse 2
2024 Bucket Normalized EPE in ``perception4d.metrics.flow_bucketed``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum
from typing import Iterable, NamedTuple

import numpy as np

from perception4d.core.frame import PointLabels

SWEEP_INTERVAL_S = 0.1
AV2_DYNAMIC_THRESHOLD = 0.05  # metres per sweep interval
AV2_EVAL_BOX_M = 50.0  # |x| <= 50 and |y| <= 50
AV2_CLOSE_BOX_M = 35.0  # |x| <= 35 and |y| <= 35
AV2_ACCURACY_EPS = 1e-10

# Argoverse 2 scene-flow category index -> name (index 0: no object, i.e. background).
AV2_CATEGORIES = (
    "NONE", "ANIMAL", "ARTICULATED_BUS", "BICYCLE", "BICYCLIST", "BOLLARD", "BOX_TRUCK", "BUS",
    "CONSTRUCTION_BARREL", "CONSTRUCTION_CONE", "DOG", "LARGE_VEHICLE", "MESSAGE_BOARD_TRAILER",
    "MOBILE_PEDESTRIAN_CROSSING_SIGN", "MOTORCYCLE", "MOTORCYCLIST", "OFFICIAL_SIGNALER", "PEDESTRIAN",
    "RAILED_VEHICLE", "REGULAR_VEHICLE", "SCHOOL_BUS", "SIGN", "STOP_SIGN", "STROLLER",
    "TRAFFIC_LIGHT_TRAILER", "TRUCK", "TRUCK_CAB", "VEHICULAR_TRAILER", "WHEELCHAIR", "WHEELED_DEVICE",
    "WHEELED_RIDER",
)


def _as_array(value, name: str, where: str) -> np.ndarray | None:
    if value is None:
        return None
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{where}: {name} must be a numpy array or tensor, got {type(value).__name__}")
    return value


@dataclass
class FlowSample:
    """Per-point flow prediction and ground truth of one sweep pair t -> t+1.

    pred_flow, gt_flow: (N, 3) metres (AV2 convention); flow_valid: (N,) bool.
    Optional (N,) arrays: category (AV2 index 0..30), dynamic (ground truth),
    ground, pred_dynamic; optional (N, 3): xyz (ego frame of sweep t) and
    ego_flow (flow a static point would have). The AV2 metrics need xyz,
    ground and category; dynamic / pred_dynamic default to
    ``|flow - ego_flow| >= 0.05`` when ego_flow is given.
    """

    pred_flow: np.ndarray
    gt_flow: np.ndarray
    flow_valid: np.ndarray
    category: np.ndarray | None = None
    dynamic: np.ndarray | None = None
    ground: np.ndarray | None = None
    xyz: np.ndarray | None = None
    ego_flow: np.ndarray | None = None
    pred_dynamic: np.ndarray | None = None
    frame_id: str = ""

    _VECTORS = ("pred_flow", "gt_flow", "xyz", "ego_flow")
    _MASKS = ("flow_valid", "dynamic", "ground", "pred_dynamic")

    def __post_init__(self):
        where = self.where
        for f in fields(self):
            if f.name != "frame_id":
                setattr(self, f.name, _as_array(getattr(self, f.name), f.name, where))
        n = self.pred_flow.shape[0]
        for name in self._VECTORS:
            a = getattr(self, name)
            if a is not None and (a.ndim != 2 or a.shape != (n, 3)):
                raise ValueError(f"{where}: {name} must be ({n}, 3) like pred_flow, got {a.shape}")
        for name in self._MASKS + ("category",):
            a = getattr(self, name)
            if a is not None and a.shape != (n,):
                raise ValueError(f"{where}: {name} must be ({n},) like pred_flow, got {a.shape}")
        for name in self._MASKS:
            a = getattr(self, name)
            if a is not None and a.dtype != bool:
                setattr(self, name, a.astype(bool))
        cat = self.category
        if cat is not None and n and (cat.min() < 0 or cat.max() >= len(AV2_CATEGORIES)):
            raise ValueError(f"{where}: category holds {self.category.min()}..{self.category.max()}, "
                             f"outside the AV2 indices 0..{len(AV2_CATEGORIES) - 1}")

    @classmethod
    def from_labels(cls, pred_flow: np.ndarray, labels: PointLabels, xyz: np.ndarray,
                    ego_flow: np.ndarray | None = None, pred_dynamic: np.ndarray | None = None,
                    frame_id: str = "") -> "FlowSample":
        """Ground truth from a frame's ``PointLabels`` (flow, flow_valid, flow_category, moving, ground)."""
        if labels.flow is None or labels.flow_valid is None:
            raise ValueError(f"{frame_id or 'flow sample'}: the labels carry no flow / flow_valid")
        return cls(pred_flow, labels.flow, labels.flow_valid, category=labels.flow_category,
                   dynamic=labels.moving, ground=labels.ground, xyz=xyz, ego_flow=ego_flow,
                   pred_dynamic=pred_dynamic, frame_id=frame_id)

    @property
    def where(self) -> str:
        return self.frame_id or "flow sample"

    def __len__(self) -> int:
        return self.pred_flow.shape[0]

    def require(self, name: str, metric: str) -> np.ndarray:
        a = getattr(self, name)
        if a is None:
            raise ValueError(f"{self.where}: the {metric} metric needs FlowSample.{name}")
        return a

    def gt_dynamic(self, metric: str) -> np.ndarray:
        if self.dynamic is not None:
            return self.dynamic
        return av2_dynamic_mask(self.gt_flow, self.require("ego_flow", f"{metric} (no dynamic labels)"))

    def predicted_dynamic(self, metric: str) -> np.ndarray:
        if self.pred_dynamic is not None:
            return self.pred_dynamic
        return av2_dynamic_mask(self.pred_flow, self.require("ego_flow", f"{metric} (no pred_dynamic)"))


# ---------------------------------------------------------------- per point
def end_point_error(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N,) float64 Euclidean distance between predicted and true flow vectors."""
    d = pred.astype(np.float64) - gt.astype(np.float64)
    return np.sqrt((d * d).sum(axis=1))


def flow_norm(flow: np.ndarray) -> np.ndarray:
    f = flow.astype(np.float64)
    return np.sqrt((f * f).sum(axis=1))


def inliers(epe: np.ndarray, gt_norm: np.ndarray, threshold: float, eps: float) -> np.ndarray:
    """Absolute error below ``threshold`` or relative error ``epe / (|gt| + eps)`` below it."""
    return (epe < threshold) | (epe / (gt_norm + eps) < threshold)


def space_time_angle(pred: np.ndarray, gt: np.ndarray, dt: float = SWEEP_INTERVAL_S) -> np.ndarray:
    """(N,) angle in radians between the 4-vectors (pred, dt) and (gt, dt).

    Computed as ``2 atan2(|u - v|, |u + v|)`` of the unit vectors u, v, which
    stays accurate for small angles (equal vectors give exactly 0).
    """
    col = np.full((len(pred), 1), dt)
    u = np.hstack([pred.astype(np.float64), col])
    v = np.hstack([gt.astype(np.float64), col])
    u /= np.sqrt((u * u).sum(axis=1, keepdims=True))
    v /= np.sqrt((v * v).sum(axis=1, keepdims=True))
    return 2.0 * np.arctan2(np.sqrt(((u - v) ** 2).sum(axis=1)), np.sqrt(((u + v) ** 2).sum(axis=1)))


def av2_dynamic_mask(flow: np.ndarray, ego_flow: np.ndarray,
                     threshold: float = AV2_DYNAMIC_THRESHOLD) -> np.ndarray:
    """Points whose flow differs from the ego-motion flow by at least ``threshold`` metres."""
    return end_point_error(flow, ego_flow) >= threshold


def av2_eval_mask(xyz: np.ndarray, ground: np.ndarray, box: float = AV2_EVAL_BOX_M) -> np.ndarray:
    """Points the AV2 evaluation scores: inside the ``|x|, |y| <= box`` square and not ground."""
    return (np.abs(xyz[:, 0]) <= box) & (np.abs(xyz[:, 1]) <= box) & ~ground


def av2_close_mask(xyz: np.ndarray, box: float = AV2_CLOSE_BOX_M) -> np.ndarray:
    return (np.abs(xyz[:, 0]) <= box) & (np.abs(xyz[:, 1]) <= box)


def check_finite(sample: FlowSample, keep: np.ndarray) -> None:
    """Raise when a predicted or true flow row among the ``keep`` points is not finite."""
    for name in ("pred_flow", "gt_flow"):
        bad = ~np.isfinite(getattr(sample, name)[keep]).all(axis=1)
        if bad.any():
            raise ValueError(f"{sample.where}: {name} has {int(bad.sum())} non-finite rows "
                             f"among the evaluated points")


# ---------------------------------------------------------------- Argoverse 2 2023
class Av2Class(str, Enum):
    BACKGROUND = "Background"
    FOREGROUND = "Foreground"


class Motion(str, Enum):
    DYNAMIC = "Dynamic"
    STATIC = "Static"


class Distance(str, Enum):
    CLOSE = "Close"
    FAR = "Far"


class Av2Subset(NamedTuple):
    cls: Av2Class
    motion: Motion
    distance: Distance | None  # None: Close and Far together


# Flow statistics in the order of Av2FrameStats.sums and their names in av2's results_to_dict.
AV2_FLOW_STATS = ("epe", "accuracy_strict", "accuracy_relax", "angle_error")
AV2_OFFICIAL_NAMES = {"epe": "EPE", "accuracy_strict": "Accuracy Strict",
                      "accuracy_relax": "Accuracy Relax", "angle_error": "Angle Error"}


@dataclass(frozen=True, eq=False)
class Av2FrameStats:
    """Additive statistics of one frame over axes (class, motion, distance).

    Axis order: class (Background, Foreground), motion (Dynamic, Static),
    distance (Close, Far). count: (2, 2, 2) int64; sums: (2, 2, 2, 4) float64
    in ``AV2_FLOW_STATS`` order; confusion: (2, 2, 2, 4) int64 TP, FP, TN, FN
    of the predicted dynamic flag.
    """

    count: np.ndarray
    sums: np.ndarray
    confusion: np.ndarray

    @classmethod
    def zeros(cls) -> "Av2FrameStats":
        return cls(np.zeros((2, 2, 2), np.int64), np.zeros((2, 2, 2, 4)), np.zeros((2, 2, 2, 4), np.int64))

    def __add__(self, other: "Av2FrameStats") -> "Av2FrameStats":
        return Av2FrameStats(self.count + other.count, self.sums + other.sums,
                             self.confusion + other.confusion)

    def mean(self, cls: Av2Class, motion: Motion, distance: Distance) -> np.ndarray:
        """(4,) per-point means of one cell, NaN when it is empty."""
        i = _cell_index(cls, motion, distance)
        c = self.count[i]
        return self.sums[i] / c if c else np.full(4, np.nan)


def _cell_index(cls: Av2Class, motion: Motion, distance: Distance) -> tuple[int, int, int]:
    return (list(Av2Class).index(cls), list(Motion).index(motion), list(Distance).index(distance))


def av2_2023_frame_stats(sample: FlowSample) -> Av2FrameStats:
    """Per-frame sums and counts of the official Argoverse 2 (2023) scene-flow metrics."""
    metric = "Argoverse 2 (2023)"
    xyz = sample.require("xyz", metric)
    keep = sample.flow_valid & av2_eval_mask(xyz, sample.require("ground", metric))
    category = sample.require("category", metric)[keep]
    dynamic = sample.gt_dynamic(metric)[keep]
    pred_dynamic = sample.predicted_dynamic(metric)[keep]
    check_finite(sample, keep)
    pred, gt = sample.pred_flow[keep], sample.gt_flow[keep]

    cell = (category != 0) * 4 + (~dynamic) * 2 + (~av2_close_mask(xyz[keep]))
    epe = end_point_error(pred, gt)
    gt_norm = flow_norm(gt)
    per_point = (epe, inliers(epe, gt_norm, 0.05, AV2_ACCURACY_EPS),
                 inliers(epe, gt_norm, 0.1, AV2_ACCURACY_EPS), space_time_angle(pred, gt))
    sums = np.stack([np.bincount(cell, weights=v.astype(np.float64), minlength=8) for v in per_point], axis=1)
    outcome = np.where(pred_dynamic, np.where(dynamic, 0, 1), np.where(dynamic, 3, 2))  # TP, FP, TN, FN
    confusion = np.bincount(cell * 4 + outcome, minlength=32).reshape(2, 2, 2, 4)
    return Av2FrameStats(
        count=np.bincount(cell, minlength=8).reshape(2, 2, 2).astype(np.int64),
        sums=sums.reshape(2, 2, 2, 4),
        confusion=confusion.astype(np.int64),
    )


@dataclass(frozen=True)
class FlowErrors:
    count: int
    epe: float
    accuracy_strict: float
    accuracy_relax: float
    angle_error: float


@dataclass(frozen=True)
class Av2Result:
    """Dataset-level Argoverse 2 (2023) metrics."""

    subsets: dict[Av2Subset, FlowErrors]
    true_positives: int
    false_positives: int
    true_negatives: int
    false_negatives: int

    def errors(self, cls: Av2Class, motion: Motion, distance: Distance | None = None) -> FlowErrors:
        return self.subsets[Av2Subset(cls, motion, distance)]

    @property
    def dynamic_iou(self) -> float:
        denom = self.true_positives + self.false_positives + self.false_negatives
        return self.true_positives / denom if denom else float("nan")

    @property
    def epe_foreground_dynamic(self) -> float:
        return self.errors(Av2Class.FOREGROUND, Motion.DYNAMIC).epe

    @property
    def epe_foreground_static(self) -> float:
        return self.errors(Av2Class.FOREGROUND, Motion.STATIC).epe

    @property
    def epe_background_static(self) -> float:
        return self.errors(Av2Class.BACKGROUND, Motion.STATIC).epe

    @property
    def epe_3way(self) -> float:
        return (self.epe_foreground_dynamic + self.epe_foreground_static + self.epe_background_static) / 3

    def to_av2_dict(self) -> dict[str, float]:
        """The metrics under the names of ``av2.evaluation.scene_flow.eval.results_to_dict``."""
        out: dict[str, float] = {}
        for key, err in self.subsets.items():
            if (key.cls, key.motion) == (Av2Class.BACKGROUND, Motion.DYNAMIC):
                continue  # not reported by av2
            path = "/".join(k.value for k in key if k is not None)
            for stat in AV2_FLOW_STATS:
                out[f"{AV2_OFFICIAL_NAMES[stat]}/{path}"] = getattr(err, stat)
        out["Dynamic IoU"] = self.dynamic_iou
        out["EPE 3-Way Average"] = self.epe_3way
        return out


def _errors(count: int, sums: np.ndarray) -> FlowErrors:
    means = sums / count if count else np.full(4, np.nan)
    return FlowErrors(int(count), *(float(v) for v in means))


def av2_2023_result(stats: Iterable[Av2FrameStats]) -> Av2Result:
    total = Av2FrameStats.zeros()
    for s in stats:
        total = total + s
    subsets: dict[Av2Subset, FlowErrors] = {}
    for ci, cls in enumerate(Av2Class):
        for mi, motion in enumerate(Motion):
            for di, distance in enumerate(Distance):
                subsets[Av2Subset(cls, motion, distance)] = _errors(total.count[ci, mi, di],
                                                                    total.sums[ci, mi, di])
            subsets[Av2Subset(cls, motion, None)] = _errors(total.count[ci, mi].sum(),
                                                            total.sums[ci, mi].sum(axis=0))
    tp, fp, tn, fn = (int(v) for v in total.confusion.sum(axis=(0, 1, 2)))
    return Av2Result(subsets, true_positives=tp, false_positives=fp, true_negatives=tn, false_negatives=fn)
