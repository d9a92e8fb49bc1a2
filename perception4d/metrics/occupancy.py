"""Semantic-occupancy metrics: geometry IoU, semantic mIoU, RayIoU and occupancy-flow error.

Grids are (X, Y, Z) uint8 compact classes (``perception4d.core.labels.OCC_CLASSES``):
0 is free, 1..C-1 occupied classes, ``OCC_IGNORE`` (255) in the ground truth
marks voxels left out of the evaluation.

* **Voxel metrics** (Occ3D / SSC convention): one confusion matrix over the
  evaluated voxels of all frames (ground truth not ``OCC_IGNORE`` and, when a
  visibility mask is given, visible). Geometry IoU scores occupied (class != 0)
  against free. Per-class ``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` for the
  occupied classes; a class absent from ground truth and prediction in every
  evaluated voxel is NaN and left out of ``miou`` (the mean of the others).
* **RayIoU** at 1, 2 and 4 m: see ``perception4d.metrics.rayiou``.
* **Flow error**: mean L2 norm of ``v_pred - v_gt`` (m/s) over the true-positive
  dynamic voxels: evaluated voxels whose ground truth is occupied with speed
  ``|v_gt| > dynamic_threshold`` (0.2 m/s) and that the prediction marks
  occupied (any class). NaN when there is none. This is a voxel-level
  score; the occupancy challenge's velocity error (mAVE) is computed on the
  true-positive rays of RayIoU instead.

``occupancy_frame_stats`` returns additive per-frame counts; ``occupancy_result``
reduces any list of them, so merging the lists of several workers gives the
result of one pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from perception4d.core.geometry import Geometry
from perception4d.core.labels import OCC_CLASSES, OCC_FREE, OCC_IGNORE
from perception4d.metrics.rayiou import DEFAULT_THRESHOLDS, RaySet, RayStats, ray_frame_stats

if TYPE_CHECKING:
    from perception4d.sim.occupancy import OccupancyGT

DYNAMIC_THRESHOLD = 0.2  # m/s: ground-truth speed above which a voxel is dynamic


def _numpy(value) -> np.ndarray | None:
    if value is None:
        return None
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


@dataclass
class OccupancySample:
    """Prediction and ground truth of one frame on ``geometry``.

    ``pred_semantics`` / ``gt_semantics``: (X, Y, Z) class grids; ``visible``:
    optional (X, Y, Z) bool evaluation mask; ``pred_velocity`` /
    ``gt_velocity``: optional (X, Y, Z, 3) m/s (the flow error needs both);
    ``rays``: the rays of RayIoU, or None for the metric's default
    directions cast from ``sensor_origin`` ((3,) or (K, 3) metres in the
    grid frame; None: the metric's default origin).
    """

    pred_semantics: np.ndarray
    gt_semantics: np.ndarray
    geometry: Geometry
    visible: np.ndarray | None = None
    pred_velocity: np.ndarray | None = None
    gt_velocity: np.ndarray | None = None
    rays: RaySet | None = None
    sensor_origin: np.ndarray | None = None
    frame_id: str = ""

    def __post_init__(self):
        where = self.where
        shape = tuple(self.geometry.grid_shape)
        for name in ("pred_semantics", "gt_semantics", "visible", "pred_velocity", "gt_velocity", "sensor_origin"):
            setattr(self, name, _numpy(getattr(self, name)))
        for name in ("pred_semantics", "gt_semantics"):
            a = getattr(self, name)
            if a.shape != shape:
                raise ValueError(f"{where}: {name} has shape {a.shape}, the grid is {shape}")
            if a.dtype.kind not in "iu":
                raise ValueError(f"{where}: {name} must hold integer classes, got dtype {a.dtype}")
        if self.visible is not None and (self.visible.shape != shape or self.visible.dtype != bool):
            raise ValueError(f"{where}: visible must be a bool {shape} mask, got {self.visible.dtype} "
                             f"{self.visible.shape}")
        for name in ("pred_velocity", "gt_velocity"):
            a = getattr(self, name)
            if a is not None and a.shape != shape + (3,):
                raise ValueError(f"{where}: {name} has shape {a.shape}, expected {shape + (3,)}")
        if self.rays is not None and not isinstance(self.rays, RaySet):
            raise ValueError(f"{where}: rays must be a RaySet, got {type(self.rays).__name__}")
        if self.sensor_origin is not None:
            o = self.sensor_origin.astype(np.float64)
            if o.ndim not in (1, 2) or o.shape[-1] != 3 or not np.isfinite(o).all():
                raise ValueError(f"{where}: sensor_origin must be finite (3,) or (K, 3), got {o.shape}")
            self.sensor_origin = o.reshape(-1, 3)

    @classmethod
    def from_gt(cls, pred_semantics: np.ndarray, gt: "OccupancyGT", pred_velocity: np.ndarray | None = None,
                use_visibility: bool = True, rays: RaySet | None = None,
                sensor_origin: np.ndarray | None = None, frame_id: str = "") -> "OccupancySample":
        """Ground truth from an ``OccupancyGT`` (semantics, visible, velocity, geometry)."""
        return cls(pred_semantics, gt.semantics, gt.geometry, visible=gt.visible if use_visibility else None,
                   pred_velocity=pred_velocity, gt_velocity=gt.velocity, rays=rays, sensor_origin=sensor_origin,
                   frame_id=frame_id)

    @property
    def where(self) -> str:
        return self.frame_id or "occupancy sample"


@dataclass(frozen=True, eq=False)
class OccupancyFrameStats:
    """Additive statistics of frames.

    ``confusion``: (C, C) int64, rows ground truth, columns prediction, over
    the evaluated voxels; ``num_ignored``: voxels left out (ignore class or not
    visible); ``ray``: RayIoU counts (None when rays were not cast);
    ``flow_error_sum`` / ``flow_count``: sum of velocity-error norms (m/s) and
    number of true-positive dynamic voxels; ``flow_gt_dynamic``: evaluated
    dynamic ground-truth voxels (with velocities given); ``num_frames``.
    """

    confusion: np.ndarray
    num_ignored: int = 0
    ray: RayStats | None = None
    flow_error_sum: float = 0.0
    flow_count: int = 0
    flow_gt_dynamic: int = 0
    num_frames: int = 1

    @classmethod
    def zeros(cls, num_classes: int) -> "OccupancyFrameStats":
        return cls(np.zeros((num_classes, num_classes), np.int64), num_frames=0)

    def __add__(self, other: "OccupancyFrameStats") -> "OccupancyFrameStats":
        if self.confusion.shape != other.confusion.shape:
            raise ValueError(f"OccupancyFrameStats: cannot add {self.confusion.shape[0]} and "
                             f"{other.confusion.shape[0]} classes")
        ray = other.ray if self.ray is None else (self.ray if other.ray is None else self.ray + other.ray)
        return OccupancyFrameStats(self.confusion + other.confusion, self.num_ignored + other.num_ignored, ray,
                                   self.flow_error_sum + other.flow_error_sum, self.flow_count + other.flow_count,
                                   self.flow_gt_dynamic + other.flow_gt_dynamic,
                                   self.num_frames + other.num_frames)


def _check_classes(a: np.ndarray, num_classes: int, allow_ignore: bool, name: str, where: str) -> None:
    a = a.ravel()
    bad = (a < 0) | (a >= num_classes)
    if allow_ignore:
        bad &= a != OCC_IGNORE
    if bad.any():
        vals = np.unique(a[bad])[:8].tolist()
        extra = f" or {OCC_IGNORE} (ignore)" if allow_ignore else ""
        raise ValueError(f"{where}: {name} has {int(bad.sum())} voxels outside the classes 0..{num_classes - 1}"
                         f"{extra}: {vals}")


def occupancy_frame_stats(sample: OccupancySample, *, num_classes: int = len(OCC_CLASSES),
                          ray_thresholds: Sequence[float] | None = DEFAULT_THRESHOLDS,
                          default_directions: np.ndarray | None = None,
                          default_origin: Sequence[float] | None = None,
                          dynamic_threshold: float = DYNAMIC_THRESHOLD) -> OccupancyFrameStats:
    """Statistics of one frame.

    RayIoU is computed when ``ray_thresholds`` is not None: with ``sample.rays``,
    or else with ``default_directions`` cast from ``sample.sensor_origin`` (or
    ``default_origin``); missing rays then raise.
    """
    where = sample.where
    if num_classes > OCC_IGNORE:
        raise ValueError(f"{where}: num_classes must be at most {OCC_IGNORE}, got {num_classes}")
    pred, gt = sample.pred_semantics, sample.gt_semantics
    _check_classes(pred, num_classes, False, "pred_semantics", where)
    _check_classes(gt, num_classes, True, "gt_semantics", where)
    evaluated = gt != OCC_IGNORE
    if sample.visible is not None:
        evaluated &= sample.visible
    g, p = gt[evaluated].astype(np.int64), pred[evaluated].astype(np.int64)
    confusion = np.bincount(g * num_classes + p, minlength=num_classes * num_classes)
    confusion = confusion.reshape(num_classes, num_classes).astype(np.int64)

    ray = None
    if ray_thresholds is not None:
        rays = sample.rays
        if rays is None:
            origin = sample.sensor_origin if sample.sensor_origin is not None else default_origin
            if origin is None or default_directions is None:
                raise ValueError(f"{where}: RayIoU needs OccupancySample.rays, or a sensor origin (sample or "
                                 f"metric) and default directions")
            rays = RaySet.from_origins(origin, default_directions)
        ray = ray_frame_stats(pred.astype(np.uint8), gt.astype(np.uint8), sample.geometry, rays,
                              ray_thresholds, num_classes)

    err_sum, count, dyn_count = 0.0, 0, 0
    if sample.pred_velocity is not None and sample.gt_velocity is not None:
        vg = sample.gt_velocity[evaluated].astype(np.float64)
        if not np.isfinite(vg).all():
            raise ValueError(f"{where}: gt_velocity has non-finite values in evaluated voxels")
        dynamic = (g != OCC_FREE) & (np.sqrt((vg * vg).sum(axis=1)) > dynamic_threshold)
        tp = dynamic & (p != OCC_FREE)
        vp = sample.pred_velocity[evaluated][tp].astype(np.float64)
        if not np.isfinite(vp).all():
            raise ValueError(f"{where}: pred_velocity has {int((~np.isfinite(vp).all(axis=1)).sum())} "
                             f"non-finite rows among the true-positive dynamic voxels")
        d = vp - vg[tp]
        err_sum, count, dyn_count = float(np.sqrt((d * d).sum(axis=1)).sum()), int(tp.sum()), int(dynamic.sum())
    return OccupancyFrameStats(confusion, num_ignored=int(gt.size - evaluated.sum()), ray=ray,
                               flow_error_sum=err_sum, flow_count=count, flow_gt_dynamic=dyn_count)


def _ratio(num: float, den: float) -> float:
    return float(num) / den if den else float("nan")


def _nanmean(v: np.ndarray) -> float:
    v = np.asarray(v, np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


@dataclass(frozen=True)
class OccupancyResult:
    """Dataset-level occupancy scores (see the module docstring); NaN where undefined.

    ``class_iou`` / ``ray_class_iou`` map the occupied class names to IoU
    (``ray_class_iou``: one value per threshold, in ``ray_thresholds`` order).
    """

    class_names: tuple[str, ...]
    total: OccupancyFrameStats
    geometry_iou: float
    miou: float
    class_iou: dict[str, float]
    ray_thresholds: tuple[float, ...]
    rayiou_per_threshold: tuple[float, ...]
    rayiou: float
    ray_class_iou: dict[str, tuple[float, ...]] = field(default_factory=dict)
    flow_error: float = float("nan")

    def rayiou_at(self, threshold: float) -> float:
        """RayIoU (mean over classes) at one of ``ray_thresholds``."""
        for t, v in zip(self.ray_thresholds, self.rayiou_per_threshold):
            if abs(t - threshold) < 1e-9:
                return v
        raise ValueError(f"no RayIoU at {threshold} m; thresholds are {self.ray_thresholds}")


def occupancy_result(stats: Iterable[OccupancyFrameStats],
                     class_names: Sequence[str] = OCC_CLASSES) -> OccupancyResult:
    """Reduce per-frame statistics to the dataset scores."""
    names = tuple(class_names)
    total = OccupancyFrameStats.zeros(len(names))
    for s in stats:
        total = total + s
    cm = total.confusion.astype(np.float64)
    occ_tp = cm[1:, 1:].sum()
    geometry_iou = _ratio(occ_tp, occ_tp + cm[0, 1:].sum() + cm[1:, 0].sum())
    tp = np.diag(cm)
    den = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(den > 0, tp / np.where(den > 0, den, 1.0), np.nan)[1:]
    class_iou = {n: float(v) for n, v in zip(names[1:], iou)}

    thresholds: tuple[float, ...] = ()
    per_thr: tuple[float, ...] = ()
    rayiou = float("nan")
    ray_class: dict[str, tuple[float, ...]] = {}
    if total.ray is not None:
        ray_iou = total.ray.class_iou()  # (T, C - 1)
        thresholds = total.ray.thresholds
        per_thr = tuple(_nanmean(row) for row in ray_iou)
        rayiou = _nanmean(ray_iou)
        ray_class = {n: tuple(float(v) for v in ray_iou[:, i]) for i, n in enumerate(names[1:])}
    return OccupancyResult(
        class_names=names, total=total, geometry_iou=geometry_iou, miou=_nanmean(iou), class_iou=class_iou,
        ray_thresholds=thresholds, rayiou_per_threshold=per_thr, rayiou=rayiou, ray_class_iou=ray_class,
        flow_error=_ratio(total.flow_error_sum, total.flow_count),
    )
