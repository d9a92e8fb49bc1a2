"""The streaming step as one CUDA graph: voxelization, encoder, sparse backbone, heads and output reductions.

A streaming step of the engine-fused network is host-bound on a GPU: the
device works ~3-7 ms of a 12-14 ms step, the rest is Python launching a few
hundred small kernels (the voxelizer, the encoder, the heads, the output
reductions; the backbone alone is already a graph, ``GraphedUNet``). Every
one of those kernels has a size set by the window's point and voxel counts,
which change every step, so none of them could be captured.

``StepGraph`` pads the window to capacities instead:

* points: the window's aligned points are written (by the align kernel,
  outside the graph) into a buffer of ``points`` rows whose rest is NaN: the
  voxelizer drops those rows as non-finite (their count is subtracted);
* voxels: ``voxelize_static`` fills ``voxels[0]`` rows (padding rows carry
  batch index 1, outside the window, and zero features) and leaves the true
  count on the device; the backbone's plan takes it as its ``count`` and the
  coarser levels have capacities of their own (``build_unet_plan``);
* one sweep's rows (``sweep``): the source sweep of scene flow and, for MOS without fusion, the newest
  sweep (the only rows whose moving probability is handed out: the MOS head runs on them alone); padding
  rows read point 0.

So from the voxelizer to the outputs every kernel has a fixed shape and the
step is: align (one kernel), one graph replay, the device-to-host copies of
the outputs and of a status vector (voxel count, drop counts, overflow flag,
level sizes), and the step's one synchronisation. The status is read after
it (``settle``): a window that outgrew a capacity gave wrong outputs, the
graph is captured again at the exact sizes (+ margin) and the window runs
again (as ``GraphedUNet`` does).

Only the engine-fused network (``GatherUNet`` backbone) with the heads of
``DEVICE_HEADS`` is graphed (``unsupported`` says why not otherwise). The
arithmetic is the eager step's own (the same modules, the same reductions,
``device_outputs``); tests compare the two on the CPU, where the padded step
runs without capture, and on CUDA in the GPU tests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import torch

from perception4d.core.geometry import Geometry
from perception4d.core.labels import OCC_FREE
from perception4d.core.sparse import SparseTensor4D
from perception4d.core.voxelize import voxelize
from perception4d.models.engine import CAPTURE_LOCK, GatherUNet, capture_graph, round_up
from perception4d.models.heads.flow import DYNAMIC_SPEED, FlowHead
from perception4d.models.heads.mos import MosHead
from perception4d.models.heads.occupancy import OccupancyHead, OccupancyOutput as RawOccupancy
from perception4d.models.preprocessor import BatchedWindows
from perception4d.ops.align import align_window
from perception4d.ops.gather_conv import take_rows
from perception4d.ops.voxelize_torch import voxelize_static
from perception4d.utils.device import device_constant

log = logging.getLogger("perception4d.runtime")

#: heads whose outputs ``device_outputs`` reduces on the device (others fall back to their own ``predict``)
DEVICE_HEADS = {"flow": FlowHead, "mos": MosHead, "occupancy": OccupancyHead}


def device_outputs(heads, raw: dict, batch: BatchedWindows, outputs: tuple[str, ...],
                   velocity_dtype: str = "float32") -> tuple[dict[str, torch.Tensor], dict]:
    """The arithmetic of the heads' ``predict`` on the device, for the ``outputs`` asked for.

    Returns (device tensors by name, {task: head.predict(...)[0]} for heads of other kinds). Names: ``flow``,
    ``flow_dynamic``, ``flow_ego``, ``flow_in_grid`` (source rows); ``mos_prob``, ``mos_in_grid`` (every
    window point: a vectorised sigmoid may round a point differently at another position in the array, so it
    runs over the whole window as the head's ``predict`` does); ``occupancy_semantics`` (uint8 grid),
    ``occupancy_velocity`` (X, Y, Z, 3), zero on free cells, float16 with ``velocity_dtype="float16"``.
    """
    out: dict[str, torch.Tensor] = {}
    host: dict = {}
    for task, head in heads.items():
        if task not in outputs:
            continue
        value = raw[task]
        if task == "flow" and type(head) is FlowHead:
            flow = value.detach().float()
            speed = torch.linalg.vector_norm(flow - batch.ego_flow, dim=1) / batch.dt
            out.update(flow=flow, flow_dynamic=speed >= DYNAMIC_SPEED, flow_ego=batch.ego_flow,
                       flow_in_grid=batch.source_in_grid)
        elif task == "mos" and type(head) is MosHead:
            out.update(mos_prob=torch.sigmoid(value.detach().float()), mos_in_grid=batch.sparse.point_to_voxel >= 0)
        elif task == "occupancy" and type(head) is OccupancyHead and isinstance(value, RawOccupancy):
            sem = value.logits.detach().argmax(dim=1)[0]
            out["occupancy_semantics"] = sem.to(torch.uint8)
            if "occupancy_velocity" in outputs:
                vel = value.velocity.detach().float()[0].permute(1, 2, 3, 0) * (sem != OCC_FREE)[..., None]
                out["occupancy_velocity"] = vel.half() if velocity_dtype == "float16" else vel
        else:
            host[task] = head.predict(value, batch)[0]
    return out, host


def unsupported(model) -> str | None:
    """Why ``model`` cannot run as a ``StepGraph`` (None: it can)."""
    if not isinstance(model.backbone, GatherUNet):
        return f"the backbone is {type(model.backbone).__name__}, not the gather-GEMM engine (GatherUNet)"
    for task, head in model.heads.items():
        if type(head) is not DEVICE_HEADS.get(task):
            return f"head {task!r} is {type(head).__name__}: its outputs are not reduced on the device"
    return None


@dataclass(frozen=True)
class Capacities:
    points: int  # window rows (the rest of the buffer NaN)
    sweep: int  # rows of one sweep (the flow source's, the newest's)
    voxels: tuple[int, ...]  # voxels per backbone level, finest first


class _Static:
    """One padded step at fixed capacities: its input buffers, its outputs and (on CUDA) its captured graph."""

    def __init__(self, model, geometry: Geometry, caps: Capacities, columns: int, device: torch.device, amp: bool,
                 outputs: tuple[str, ...], velocity_dtype: str, capture: bool, mos_newest: bool):
        self.model, self.geometry, self.caps, self.mos_newest = model, geometry, caps, mos_newest
        self.device, self.amp = device, amp
        self.outputs, self.velocity_dtype = outputs, velocity_dtype
        self.points = torch.full((caps.points, columns), float("nan"), dtype=torch.float32, device=device)
        self.time = torch.zeros(caps.points, dtype=torch.int32, device=device)
        self.source_rows = torch.zeros(caps.sweep, dtype=torch.int64, device=device)
        self.source_xyz = torch.zeros((caps.sweep, 3), dtype=torch.float32, device=device)
        self.newest_rows = torch.zeros(caps.sweep, dtype=torch.int64, device=device)
        self.dt = torch.ones(1, dtype=torch.float32, device=device)
        self.graph = None
        self.out: dict[str, torch.Tensor] = {}
        self.status: torch.Tensor | None = None
        if capture and device.type == "cuda":
            self._capture()

    @torch.no_grad()
    def run(self) -> None:
        """The padded forward (eagerly: on the CPU, or without capture); sets ``out`` and ``status``."""
        g, caps, dev = self.geometry, self.caps, self.device
        dims = (1, *g.spatial_shape)
        bounds = [device_constant(v, dev, torch.float32) for v in (g.lower, g.upper, g.voxel_size)]
        va, num_voxels, drops = voxelize_static(self.points, self.time, *bounds, dims, caps.voxels[0])
        sparse = SparseTensor4D(va.coords, va.features, g.spatial_shape, 1, g, va.point_to_voxel, va.counts)
        model = self.model
        with torch.autocast(dev.type, dtype=torch.float16, enabled=self.amp, cache_enabled=False):
            voxel_feats, point_feats = model.encoder(self.points, self.time, sparse)
            count = torch.clamp(num_voxels[0], max=caps.voxels[0])
            plan = model.backbone.plan(sparse.coords, g.spatial_shape, 1, count=count, capacities=caps.voxels[1:])
            x = model.backbone.execute(voxel_feats, plan)
            ego_flow = take_rows(self.points, self.source_rows)[:, :3] - self.source_xyz
            batch = BatchedWindows(sparse=sparse, points=self.points, time=self.time, source_rows=self.source_rows,
                                   source_batch=torch.zeros_like(self.source_rows), ego_flow=ego_flow,
                                   dt=self.dt.expand(caps.sweep), source_counts=[caps.sweep], samples=[])
            inputs = {task: (point_feats, batch) for task in model.heads}
            if self.mos_newest and "mos" in inputs:  # the newest sweep's points alone
                rows = self.newest_rows
                inputs["mos"] = (take_rows(point_feats, rows), replace(batch, sparse=replace(
                    sparse, point_to_voxel=take_rows(sparse.point_to_voxel, rows))))
            raw = {task: head(x, *inputs[task]) for task, head in model.heads.items()}
        self.out = {}
        for task, head in model.heads.items():  # each head's reductions on the batch it ran on
            out, host = device_outputs({task: head}, raw, inputs[task][1], self.outputs, self.velocity_dtype)
            if host:  # ``unsupported`` keeps such heads out
                raise RuntimeError(f"StepGraph: head {task!r} has no device outputs")
            self.out.update(out)
        overflow = (plan.overflow | (num_voxels[0] > caps.voxels[0])).view(1).to(torch.int64)
        self.status = torch.cat([num_voxels, drops, overflow, plan.counts[1:]])

    def _capture(self) -> None:
        with CAPTURE_LOCK, torch.cuda.device(self.device):
            self.graph, _ = capture_graph(self.run, self.device)

    def replay(self) -> None:
        if self.graph is None:
            self.run()
        else:
            self.graph.replay()


@dataclass
class GraphedWindow:
    """A launched padded step: the window's layout and its outputs' views (valid until the next launch)."""

    layout: object  # sweeps.WindowLayout
    out: dict[str, torch.Tensor]  # capacity-sized device outputs
    status: torch.Tensor  # see StepGraph.read_status
    num_points: int
    padding: int  # NaN rows after the window's points (counted by the voxelizer as non-finite)
    mos_newest: bool  # the MOS outputs cover the newest sweep's rows only (else the whole window)


class StepGraph:
    """The streaming step of one engine-fused model on one device at padded capacities (module docstring).

    ``launch(layout, timer)`` aligns the window into the static buffers and replays; ``read_status`` reads the
    status copied to the host after the step's synchronisation and says whether a capacity was exceeded (then
    ``grow`` captures again at the window's sizes: run the window again); capacities also shrink (see there).
    ``capture=False`` runs the padded step eagerly (the CPU always does): the same arithmetic, for tests and
    for devices without graphs.
    """

    def __init__(self, model, geometry: Geometry, device: torch.device, amp: bool, outputs: tuple[str, ...],
                 velocity_dtype: str = "float32", capture: bool = True, margin: float = 1.06, quantum: int = 8192,
                 shrink_after: int = 8, mos_window: bool = False):
        reason = unsupported(model)
        if reason is not None:
            raise ValueError(f"StepGraph: {reason}")
        self.model, self.geometry, self.device, self.amp = model, geometry, torch.device(device), amp
        self.outputs, self.velocity_dtype, self.mos_window = outputs, velocity_dtype, mos_window
        self.capture = capture and self.device.type == "cuda"
        self.margin, self.quantum, self.shrink_after = margin, quantum, shrink_after
        self.levels = len(model.backbone.channels)
        self._small: list[tuple[int, int, list[int]]] = []  # sizes of recent windows far below the capacities
        self.static: _Static | None = None
        self.captures_made = 0

    # capacities ----------------------------------------------------------------------------------------
    def _grown(self, points: int, sweep: int, voxels: list[int] | None, keep: bool = True) -> Capacities:
        """Capacities for these sizes (+ margin, rounded up), and at least the current ones with ``keep``."""
        old = self.static.caps if self.static is not None and keep else None
        q, qc = self.quantum, max(self.quantum // 8, 64)
        p = round_up(points * self.margin, q)
        s = round_up(sweep * self.margin, q)
        v = None if voxels is None else tuple(round_up(c * self.margin, q if i == 0 else qc)
                                              for i, c in enumerate(voxels))
        if old is not None:
            p, s = max(p, old.points), max(s, old.sweep)
            v = old.voxels if v is None else tuple(max(a, b) for a, b in zip(v, old.voxels))
        return Capacities(p, s, v)

    def exact_sizes(self, points: torch.Tensor, time: torch.Tensor) -> list[int]:
        """Voxels per backbone level of a window, measured eagerly (synchronises; only to size a capture)."""
        sparse = voxelize(points, time, self.geometry, batch_size=1)
        if sparse.num_voxels == 0:
            return [1] * self.levels
        plan = self.model.backbone.plan(sparse.coords, self.geometry.spatial_shape, 1)
        return [max(int(c), 1) for c in plan.counts.tolist()]

    def _rebuild(self, caps: Capacities, columns: int) -> None:
        if self.device.type == "cuda":  # a step launched earlier may still run on the old graph
            torch.cuda.current_stream(self.device).synchronize()
        self.static = None  # the old graph's memory first
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.static = _Static(self.model, self.geometry, caps, columns, self.device, self.amp, self.outputs,
                              self.velocity_dtype, self.capture,
                              not self.mos_window and "mos" in self.model.heads and "mos" in self.outputs)
        self.captures_made += 1
        log.info("StepGraph on %s: %s at capacities %s", self.device, "captured" if self.capture else "built",
                 caps)

    # the step ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def launch(self, layout, timer) -> GraphedWindow:
        """Align ``layout``'s window into the buffers and run the padded step (nothing waits for the device)."""
        n_pts = layout.num_points
        src = layout.sweeps[layout.source_index]
        ns, nn = src.num_points, layout.sweeps[-1].num_points
        columns = layout.sweeps[-1].points.shape[1]
        st = self.static
        if st is None or n_pts > st.caps.points or max(ns, nn) > st.caps.sweep or st.points.shape[1] != columns:
            with timer.stage("align"):
                raw = layout.raw_points()
                aligned, time = align_window(raw, layout.transforms(), layout.offsets, layout.shift)
            voxels = self.exact_sizes(aligned, time) if st is None else None
            self._rebuild(self._grown(n_pts, max(ns, nn), voxels), columns)
            st = self.static
        with timer.stage("align"):
            align_window(layout.raw_points(), layout.transforms(), layout.offsets, layout.shift,
                         out=(st.points[:n_pts], st.time[:n_pts]))
            st.points[n_pts:].fill_(float("nan"))
            if "flow" in self.model.heads:
                start = int(layout.offsets[layout.source_index])
                torch.arange(start, start + ns, out=st.source_rows[:ns])
                st.source_rows[ns:].zero_()
                st.source_xyz[:ns].copy_(src.ego_xyz, non_blocking=True)
                st.dt.fill_(float(layout.meta.dt))
            if st.mos_newest:
                start = int(layout.offsets[-2])
                torch.arange(start, start + nn, out=st.newest_rows[:nn])
                st.newest_rows[nn:].zero_()
        with timer.stage("graph"):
            st.replay()
        return GraphedWindow(layout, st.out, st.status, n_pts, st.caps.points - n_pts, st.mos_newest)

    def read_status(self, window: GraphedWindow, status: np.ndarray) -> tuple[bool, int, int, int]:
        """(fits, voxels, out_of_range, non_finite) from the host copy of ``window.status``.

        A window that fitted is also tracked: after ``shrink_after`` windows in a row that would fit in less than
        half of some capacity (the warm-up's denser synthetic sweeps, a change of scene), the graph is captured
        again at the largest sizes among them (+ margin), since the padded rows cost as much as real ones.
        """
        voxels, oor, nf, overflow = (int(v) for v in status[:4])
        if not overflow:
            sweeps = window.layout.sweeps
            self._track(window.num_points, max(sweeps[window.layout.source_index].num_points,
                                               sweeps[-1].num_points), [voxels, *(int(v) for v in status[4:])])
        return not overflow, voxels, oor, nf - window.padding

    def _track(self, points: int, sweep: int, voxels: list[int]) -> None:
        st = self.static
        need = self._grown(points, sweep, voxels, keep=False)
        have = (st.caps.points, st.caps.sweep, *st.caps.voxels)
        if not any(c > 2 * m for c, m in zip(have, (need.points, need.sweep, *need.voxels))):
            self._small.clear()
            return
        self._small.append((points, sweep, voxels))
        if len(self._small) >= self.shrink_after:
            largest = [max(col) for col in zip(*((p, s, *v) for p, s, v in self._small))]
            self._small.clear()
            self._rebuild(self._grown(largest[0], largest[1], largest[2:], keep=False), st.points.shape[1])

    def grow(self, window: GraphedWindow) -> None:
        """After an overflow: capture again at the window's exact sizes (+ margin)."""
        st = self.static
        self._small.clear()
        voxels = self.exact_sizes(st.points[:window.num_points], st.time[:window.num_points])
        self._rebuild(self._grown(window.num_points, st.caps.sweep, voxels), st.points.shape[1])
