"""The node's outputs from the predictor's results: the annotated input cloud and the occupied voxels.

Annotated cloud. The input records, byte for byte, with four float32 fields
appended: ``flow_x, flow_y, flow_z`` (the point's displacement to the next
sweep in the Argoverse 2 convention the flow network is trained in: its
position at t+1 in ego(t+1) minus its position at t in ego(t), ego motion
included, metres) and ``moving_prob`` (online moving-object probability).
Values are the predictor's outputs unchanged; NaN where the task did not run
for that cloud (no flow for the last sweep before a gap or the end of the
stream, no MOS network configured, a failed step).

Flow needs the successor sweep, so the predictor answers a sweep's flow one
step later (docs/design.md, "Inference runtime"). ``CloudAssembler`` holds
each cloud until every configured task has answered or can no longer answer,
and publishes it then, under the cloud's own stamp and frame: one sweep of
latency with flow configured, none without. A sweep's flow can only come with
the first step after it in which a flow network ran (an OK result); if that
result carries no flow for it (a gap reset the window), it never will. At
most ``limit`` clouds wait; beyond, the oldest is published as it is.

Occupied voxels. A PointCloud2 in the ego frame (``base_frame``) with one
point per occupied voxel: ``x, y, z`` (voxel centre), ``rgb`` (the class
colour of ``perception4d.viz.occupancy.OCC_COLOURS``, packed the PCL way),
``label`` (uint8 class) and ``vel_x, vel_y, vel_z`` (m/s); optionally a
MarkerArray with one CUBE_LIST per class (voxel-sized cubes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from perception4d.core.labels import OCC_CLASSES, OCC_FREE, OCC_IGNORE
from perception4d.ros.messages import CubeList
from perception4d.ros.pointcloud2 import FLOAT32, UINT8, CloudPayload, DecodedCloud, append_float_fields, \
    pack_fields, pack_rgb
from perception4d.runtime.predictor import Result, Status

log = logging.getLogger("perception4d.ros")

OUTPUT_FIELDS = ("flow_x", "flow_y", "flow_z", "moving_prob")


@dataclass
class PendingCloud:
    """An admitted cloud waiting for its outputs."""

    seq: int
    frame_id: str  # the runtime's frame id
    stamp_ns: int
    header_frame: str
    log_ns: int  # when it arrived (bag time in a replay): the time its outputs are written at
    cloud: DecodedCloud
    flow: np.ndarray | None = None  # (N, 3) float32
    moving_prob: np.ndarray | None = None  # (N,) float32
    flow_open: bool = False  # its flow may still come
    mos_open: bool = False

    @property
    def has_output(self) -> bool:
        return self.flow is not None or self.moving_prob is not None

    def payload(self) -> CloudPayload:
        n = self.cloud.num_points
        flow = self.flow if self.flow is not None else np.full((n, 3), np.nan, np.float32)
        prob = self.moving_prob if self.moving_prob is not None else np.full(n, np.nan, np.float32)
        return append_float_fields(self.cloud, [("flow_x", flow[:, 0]), ("flow_y", flow[:, 1]),
                                                ("flow_z", flow[:, 2]), ("moving_prob", prob)])


class CloudAssembler:
    """Joins each cloud with its flow (one step later) and moving probability (see the module docstring)."""

    def __init__(self, want_flow: bool, want_mos: bool, flow_models: set[str], limit: int = 3):
        self.want_flow, self.want_mos = want_flow, want_mos
        self.flow_models = set(flow_models)
        self.limit = int(limit)
        self._pending: list[PendingCloud] = []
        self.incomplete = 0  # clouds published with a configured task missing

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, entry: PendingCloud, status: Status, results: dict[str, Result]) -> list[PendingCloud]:
        """The step of ``entry``'s frame; returns the clouds complete now, oldest first."""
        if status == Status.DROPPED:
            return []
        entry.flow_open, entry.mos_open = self.want_flow, self.want_mos
        by_id = {p.frame_id: p for p in self._pending}
        by_id[entry.frame_id] = entry
        flow_ran = False
        for name, r in results.items():
            if r.flow is not None and self.want_flow:
                target = by_id.get(r.flow.frame_id)
                if target is not None:
                    target.flow, target.flow_open = r.flow.prediction.flow, False
            if r.mos is not None and self.want_mos and r.mos.frame_id == entry.frame_id:
                entry.moving_prob = r.mos.prob
            if name in self.flow_models and r.status == Status.OK:
                flow_ran = True
        entry.mos_open = False  # the online MOS of a frame comes with its own step or never
        if flow_ran:  # older clouds without flow now: theirs will not come (the window restarted or they failed)
            for p in self._pending:
                p.flow_open = False
        self._pending.append(entry)
        return self._ready()

    def flush(self) -> list[PendingCloud]:
        """End of the stream: everything held, as it is."""
        for p in self._pending:
            p.flow_open = p.mos_open = False
        return self._ready()

    def _ready(self) -> list[PendingCloud]:
        out = []
        while self._pending and (not (self._pending[0].flow_open or self._pending[0].mos_open)
                                 or len(self._pending) > self.limit):
            p = self._pending.pop(0)
            if p.flow_open or p.mos_open:
                log.warning("%s: published before its flow arrived (%d clouds waiting, pending_limit %d)",
                            p.frame_id, len(self._pending) + 1, self.limit)
            if not p.has_output:
                continue
            if (self.want_flow and p.flow is None) or (self.want_mos and p.moving_prob is None):
                self.incomplete += 1
            out.append(p)
        return out


def occupied_voxels(prediction) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K, 3) float32 centres (ego frame), (K,) uint8 classes and (K, 3) float32 velocities of the occupied
    voxels (not free, not ignore) of an ``OccupancyPrediction``."""
    sem = np.asarray(prediction.semantics)
    idx = np.argwhere((sem != OCC_FREE) & (sem != OCC_IGNORE))
    g = prediction.geometry
    lo, vs = np.asarray(g.point_range[:3]), np.asarray(g.voxel_size)
    centres = (lo + (idx + 0.5) * vs).astype(np.float32)
    classes = sem[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.uint8)
    vel = np.asarray(prediction.velocity)[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.float32)
    return centres, classes, vel


def occupancy_payload(prediction) -> CloudPayload:
    from perception4d.viz.occupancy import occupancy_rgb

    centres, classes, vel = occupied_voxels(prediction)
    return pack_fields([("x", centres[:, 0], FLOAT32), ("y", centres[:, 1], FLOAT32), ("z", centres[:, 2], FLOAT32),
                        ("rgb", pack_rgb(occupancy_rgb(classes)), FLOAT32), ("label", classes, UINT8),
                        ("vel_x", vel[:, 0], FLOAT32), ("vel_y", vel[:, 1], FLOAT32), ("vel_z", vel[:, 2], FLOAT32)])


def occupancy_cubes(prediction) -> list[CubeList]:
    """One CUBE_LIST per occupied class, coloured with ``OCC_COLOURS``; the marker id is the class index."""
    from perception4d.viz.occupancy import OCC_COLOURS

    centres, classes, _ = occupied_voxels(prediction)
    size = tuple(float(v) for v in prediction.geometry.voxel_size)
    return [CubeList(OCC_CLASSES[c], int(c), centres[classes == c], tuple(float(v) for v in OCC_COLOURS[c]), size)
            for c in np.unique(classes) if c < len(OCC_COLOURS)]
