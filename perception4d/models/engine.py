"""Gather-GEMM inference engine of the fused sparse 4D U-Net.

The fused ``SparseUNet4D`` (``perception4d.models.fuse``) is host-bound on a
GPU: spconv rebuilds rulebooks inside every layer call (hash tables, device
synchronisations) and a frame costs ~500 kernel launches for ~5 ms of GPU
work. This engine runs the *same weights* differently:

1. **Plan** (once per frame, from the coordinates only): the neighbour tables
   of every level (``perception4d.ops.neighbors.build_unet_plan``) — one
   sort, searchsorted queries and a sort-based unique per level.
2. **Execute**: each convolution is one implicit GEMM over its ``(K, N)``
   neighbour table (``perception4d.ops.gather_conv``: a Triton kernel on CUDA
   that gathers the neighbour rows into registers, bias and ReLU folded in;
   ``index_select`` + GEMM elsewhere); the inverse convolution is one GEMM on
   the coarse features to all 8 children followed by one row gather.

A few kernels a layer instead of ~25, and no synchronisation: with the tables
padded to capacities the whole plan + execute is a fixed sequence of
fixed-shape kernels, captured once in a CUDA graph and replayed every frame
(``GraphedUNet``; padding rows read the zero sentinel or other padding rows,
never voxels, and voxels never read them).

Outputs equal the spconv network up to floating-point summation order
(tests/models/test_engine.py compares against the fused and unfused spconv
networks on CPU, and on CUDA in the GPU tests).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from perception4d.models.backbone_spconv import UNetLevels
from perception4d.ops.gather_conv import gather_conv, gather_rows
from perception4d.ops.neighbors import UNetPlan, build_unet_plan

log = logging.getLogger("perception4d.models")

#: one capture at a time in a process (thread workers on several GPUs share the interpreter)
CAPTURE_LOCK = threading.RLock()

SPACE = (3, 3, 3, 1)
TIME = (1, 1, 1, 3)


def _conv_matrix(weight: torch.Tensor) -> torch.Tensor:
    """spconv weight (Cout, *kernel, Cin) -> (K * Cin, Cout), kernel offsets row-major."""
    cout, cin = weight.shape[0], weight.shape[-1]
    return weight.detach().reshape(cout, -1, cin).permute(1, 2, 0).reshape(-1, cout).contiguous()


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous(), requires_grad=False)


def _sentinel_buffer(n: int, c: int, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An (n + 1, c) buffer whose last row (the sentinel) is zero: layers write rows :n in place, no copy."""
    buf = torch.empty(n + 1, c, dtype=dtype, device=like.device)
    buf[n].zero_()
    return buf


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a layer computes in: autocast's on its device when enabled, else the input's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _cast(module: nn.Module, name: str, dtype: torch.dtype) -> torch.Tensor:
    """Parameter ``name`` of ``module`` in ``dtype``, cast once and kept while the parameter is unchanged (autocast
    would cast every weight on every call: a kernel each, ~40 a frame). Keyed on the parameter's storage and
    version counter, so in-place updates (``load_state_dict``) and moves (``.to``) cast again."""
    p = getattr(module, name)
    if p.dtype == dtype:
        return p
    key = (dtype, p.data_ptr(), p._version, p.device)
    cache = module.__dict__.setdefault("_casts", {})
    hit = cache.get(name)
    if hit is None or hit[0] != key:
        hit = cache[name] = (key, p.detach().to(dtype))
    return hit[1]


class _Conv(nn.Module):
    """A gathered convolution: ``relu(gather(x, table) @ W + b)``."""

    def __init__(self, conv):
        super().__init__()
        if conv.bias is None:
            raise ValueError("the engine runs fused convolutions (BatchNorm folded into a bias)")
        self.weight = _param(_conv_matrix(conv.weight))
        self.bias = _param(conv.bias)

    def forward(self, xs: torch.Tensor, table: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """xs: (N_in + 1, Cin) features with the sentinel row; table: (K, N_out) rows of ``xs``; ``out``: where to
        write the (N_out, Cout) result (a view of a larger buffer works)."""
        dtype = _compute_dtype(xs)
        return gather_conv(xs.to(dtype), table, _cast(self, "weight", dtype), _cast(self, "bias", dtype), relu=True,
                           out=out)


class _Linear(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = _param(linear.weight.t())
        self.bias = _param(linear.bias)

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        dtype = _compute_dtype(x)
        w, b = _cast(self, "weight", dtype), _cast(self, "bias", dtype)
        return torch.relu_(torch.addmm(b, x.to(dtype), w, out=out))

    def sentinel(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` into rows :N of an (N + 1, Cout) buffer with a zero last row."""
        buf = _sentinel_buffer(x.shape[0], self.weight.shape[1], x, _compute_dtype(x))
        self(x, out=buf[:-1])
        return buf


class _Block(nn.Module):
    """A fused Spatio-Temporal Decomposition Block (residual folded into the fusion)."""

    def __init__(self, block):
        super().__init__()
        self.space = _Conv(block.space)
        self.time = _Conv(block.time)
        self.fuse = _Linear(block.fuse)

    def forward(self, xs: torch.Tensor, tables: dict) -> torch.Tensor:
        """The fusion of [x, space(x), time(x)]: the convolutions write their column blocks of one buffer."""
        n, c = tables[SPACE].shape[1], xs.shape[1]
        dtype = _compute_dtype(xs)
        cs, ct = self.space.weight.shape[1], self.time.weight.shape[1]
        cat = torch.empty(n, c + cs + ct, dtype=dtype, device=xs.device)
        cat[:, :c].copy_(xs[:n])
        self.space(xs, tables[SPACE], out=cat[:, c:c + cs])
        self.time(xs, tables[TIME], out=cat[:, c + cs:])
        return self.fuse.sentinel(cat)


class _Up(nn.Module):
    """Inverse kernel-2 convolution + fusion with the skip: ``relu(fuse([relu(W_k x_parent + b), skip]))``."""

    def __init__(self, up):
        super().__init__()
        w = up.conv.weight.detach()  # (Cout, 2, 2, 2, 1, Cin)
        cout, cin = w.shape[0], w.shape[-1]
        self.cout = cout
        self.weight = _param(w.reshape(cout, 8, cin).permute(2, 1, 0).reshape(cin, 8 * cout))
        self.bias = _param(up.conv.bias)
        self.fuse = _Linear(up.fuse)

    def forward(self, coarse: torch.Tensor, up_rows: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """coarse: (N_next + 1, Cin) with sentinel; up_rows: (N,) flat rows; skip: (N + 1, Cout) with sentinel."""
        n_next = coarse.shape[0] - 1
        dtype = _compute_dtype(coarse)
        children = _sentinel_buffer(n_next * 8, self.cout, coarse, dtype)  # every child row, then the sentinel
        torch.mm(coarse[:n_next].to(dtype), _cast(self, "weight", dtype), out=children[:-1].view(n_next, 8 * self.cout))
        n, cs = up_rows.shape[0], skip.shape[1]
        cat = torch.empty(n, self.cout + cs, dtype=dtype, device=coarse.device)
        gather_rows(children, up_rows, _cast(self, "bias", dtype), relu=True, out=cat[:, :self.cout])
        cat[:, self.cout:].copy_(skip[:-1])
        return self.fuse.sentinel(cat)


class GatherUNet(UNetLevels, nn.Module):
    """The fused ``SparseUNet4D`` executed as gathers and GEMMs over a per-frame neighbour plan.

    ``forward`` takes and returns spconv tensors like the network it replaces (only ``features``,
    ``indices``, ``spatial_shape`` and ``batch_size`` are read), so it is a drop-in backbone for
    ``Perception4DNet`` at inference. Build it with ``GatherUNet.from_fused(fused_backbone)``.
    """

    def __init__(self, fused, cuda_graphs: bool = True):
        super().__init__()
        from perception4d.models.fuse import FusedSTDBlock

        if not all(isinstance(b, FusedSTDBlock) for seq in fused.enc for b in seq):
            raise TypeError("GatherUNet takes a backbone fused by perception4d.models.fuse.fuse_backbone")
        self.channels = tuple(fused.channels)
        self.stem = _Linear(fused.stem[0])
        self.enc = nn.ModuleList(nn.ModuleList(_Block(b) for b in seq) for seq in fused.enc)
        self.down = nn.ModuleList(_Conv(d.conv) for d in fused.down)
        self.up = nn.ModuleList(_Up(u) for u in fused.up)
        self.dec = nn.ModuleList(_Block(b) for b in fused.dec)
        self.cuda_graphs = cuda_graphs
        self._graphs: dict = {}  # device -> GraphedUNet
        self._defer_checks = False

    def plan(self, coords: torch.Tensor, spatial_shape, batch_size: int, count=None, capacities=None) -> UNetPlan:
        """Neighbour tables of every level (see ``build_unet_plan`` for ``count`` / ``capacities``)."""
        return build_unet_plan(coords, spatial_shape, batch_size, len(self.channels), kernels=(SPACE, TIME),
                               count=count, capacities=capacities)

    def execute(self, features: torch.Tensor, plan: UNetPlan) -> torch.Tensor:
        """(N0, C_in) voxel features -> (N0, out_channels) on the plan's level-0 rows (padding rows: junk)."""
        lv = plan.levels
        if not torch.is_autocast_enabled(features.device.type):
            features = features.to(self.stem.weight.dtype)
        x = self.stem.sentinel(features)
        skips = []
        for lvl, blocks in enumerate(self.enc):
            for block in blocks:
                x = block(x, lv[lvl].subm)
            if lvl < len(self.down):
                skips.append(x)
                down = self.down[lvl]
                n_next = lv[lvl].down.shape[1]
                buf = _sentinel_buffer(n_next, down.weight.shape[1], x, _compute_dtype(x))
                down(x, lv[lvl].down, out=buf[:-1])
                x = buf
        for lvl in reversed(range(len(self.up))):
            x = self.dec[lvl](self.up[lvl](x, lv[lvl].up, skips[lvl]), lv[lvl].subm)
        return x[:-1]

    def forward(self, x):
        if x.features.is_cuda and self.cuda_graphs:
            runner = self._graphs.get(x.features.device)
            if runner is None:
                runner = self._graphs[x.features.device] = GraphedUNet(self)
                runner.defer_checks = self._defer_checks
            return x.replace_feature(runner(x.features, x.indices, x.spatial_shape, x.batch_size))
        plan = self.plan(x.indices, x.spatial_shape, x.batch_size)
        return x.replace_feature(self.execute(x.features, plan))

    @property
    def defer_checks(self) -> bool:
        """CUDA-graph replays leave their capacity check to ``settle()`` (see ``GraphedUNet``)."""
        return self._defer_checks

    @defer_checks.setter
    def defer_checks(self, value: bool) -> None:
        self._defer_checks = bool(value)
        for runner in self._graphs.values():
            runner.defer_checks = self._defer_checks

    def settle(self) -> bool:
        """Check every replay deferred since the last call (``GraphedUNet.settle``); False: run the frame again."""
        return all([runner.settle() for runner in self._graphs.values()])

    def __getstate__(self):  # copies (deepcopy, pickling) capture their own graphs
        state = self.__dict__.copy()
        state["_graphs"] = {}
        return state

    def _apply(self, fn, recurse=True):
        self._graphs = {}  # captured graphs hold the old parameters: capture again after .to() / .half()
        return super()._apply(fn, recurse)




def round_up(n: int, quantum: int) -> int:
    """``n`` rounded up to a multiple of ``quantum`` (at least one quantum): a capacity."""
    return max(quantum, -(-int(n) // quantum) * quantum)


def capture_graph(run: Callable[[], object], device: torch.device, warmup: int = 2):
    """``run()`` warmed up ``warmup`` times on a side stream (library handles, Triton's autotuning, constants,
    the allocator), then captured in a CUDA graph; returns (graph, what the captured call returned). Callers
    hold ``CAPTURE_LOCK``."""
    prev = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(prev)
    with torch.cuda.stream(side):
        for _ in range(warmup):
            run()
    prev.wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        # an explicit capture stream on this device: torch's default capture stream is created once, on
        # whichever device captured first, and a capture on another device through it fails
        capture = torch.cuda.Stream(device)
        with torch.cuda.graph(graph, stream=capture, capture_error_mode="thread_local"):
            result = run()
    finally:
        # a failed capture can leave the capture stream current: give the caller its stream back
        if torch.cuda.current_stream(device) != prev:
            torch.cuda.set_stream(prev)
    return graph, result


class _Capture:
    """One captured plan + execute at fixed capacities, with its static input and output buffers."""

    def __init__(self, engine: GatherUNet, spatial_shape, batch_size: int, capacities: tuple[int, ...],
                 in_channels: int, dtype: torch.dtype, device: torch.device, amp: bool):
        self.capacities = capacities
        self.coords = torch.zeros(capacities[0], 5, dtype=torch.int32, device=device)
        self.features = torch.zeros(capacities[0], in_channels, dtype=dtype, device=device)
        self.count = torch.zeros((), dtype=torch.int64, device=device)

        def run():
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                plan = engine.plan(self.coords, spatial_shape, batch_size, count=self.count,
                                   capacities=capacities[1:])
                out = engine.execute(self.features, plan)
            return out, torch.cat([plan.overflow.view(1).to(torch.int64), plan.counts])  # read back in one copy

        self.graph, (self.out, self.status) = capture_graph(run, device)

    def replay(self, features: torch.Tensor, coords: torch.Tensor) -> None:
        n = coords.shape[0]
        self.coords[:n].copy_(coords, non_blocking=True)
        self.features[:n].copy_(features, non_blocking=True)
        self.count.fill_(n)
        self.graph.replay()


@dataclass
class _Pending:
    """A replay whose status was not read yet, with what growing its capture needs."""

    key: tuple
    cap: _Capture
    features: torch.Tensor
    coords: torch.Tensor
    spatial_shape: tuple
    batch_size: int
    amp: bool


class GraphedUNet:
    """Runs a ``GatherUNet`` on CUDA as one CUDA-graph replay per frame (plan and execute).

    Tensors are allocated at capacities: level 0 rounded up from the frame's voxels, coarser levels from
    the sizes seen so far, each with ``margin``. A frame that does not fit (more voxels, or a coarser level
    overflowing, reported by the plan itself) grows the capacities and is captured again; one capture is
    kept per (grid, batch, dtype, autocast). Each frame costs one small read-back (the overflow flag and the
    level sizes), right after the replay, or, with ``defer_checks``, at ``settle()`` (the streaming predictor
    settles after the step's one synchronisation, when the read-back no longer waits: a replay that
    overflowed returns False there, its output is wrong and the frame has to run again, on the grown
    capture). Capacities also shrink: after ``shrink_after`` frames in a row that would fit
    in less than half of some level's capacity (a warm-up on a denser synthetic cloud, a change of scene),
    the graph is captured again at the largest sizes of those frames. If capturing fails, the engine runs
    eagerly (logged once).
    """

    def __init__(self, engine: GatherUNet, margin: float = 1.15, quantum: int = 8192, shrink_after: int = 8):
        self.engine = engine
        self.margin = margin
        self.quantum = quantum
        self.shrink_after = shrink_after
        self._captures: dict = {}
        self._small: dict = {}  # key -> level sizes of the recent frames that would fit in half the capacities
        self.captures_made = 0
        self.disabled_reason: str | None = None
        self.defer_checks = False
        self.pending: _Pending | None = None  # the last replay, unchecked (``defer_checks``)

    def _capacities(self, counts: list[int], old: tuple[int, ...] | None) -> tuple[int, ...]:
        caps = tuple(round_up(c * self.margin, self.quantum if i == 0 else max(self.quantum // 8, 64))
                     for i, c in enumerate(counts))
        return caps if old is None else tuple(max(a, b) for a, b in zip(caps, old))

    def _capture(self, key, features, spatial_shape, batch_size, counts, amp, grow_only=True) -> _Capture:
        old = self._captures.pop(key, None)  # free the old graph's memory before capturing a new one
        self._small.pop(key, None)
        caps = self._capacities(counts, old.capacities if old is not None and grow_only else None)
        del old
        with CAPTURE_LOCK:  # warm-up (Triton's autotuning) and capture of one graph at a time
            cap = _Capture(self.engine, spatial_shape, batch_size, caps, features.shape[1], features.dtype,
                           features.device, amp)
        self._captures[key] = cap
        self.captures_made += 1
        return cap

    def _track_small(self, key, cap, counts, features, spatial_shape, batch_size, amp) -> None:
        """Count frames that would fit in half the capacities; capture smaller after ``shrink_after`` of them."""
        need = self._capacities(counts, None)
        if not any(c > 2 * m for c, m in zip(cap.capacities, need)):
            self._small.pop(key, None)
            return
        seen = self._small.setdefault(key, [])
        seen.append(counts)
        if len(seen) >= self.shrink_after:
            largest = [max(col) for col in zip(*seen)]
            self._capture(key, features, spatial_shape, batch_size, largest, amp, grow_only=False)

    def _eager(self, features, coords, spatial_shape, batch_size) -> torch.Tensor:
        return self.engine.execute(features, self.engine.plan(coords, spatial_shape, batch_size))

    def _check(self, p: _Pending) -> bool:
        """Read the replay's status: True if it fitted; else the capture grows to this frame's exact sizes."""
        with torch.cuda.device(p.features.device):
            overflow, *counts = p.cap.status.tolist()
            if overflow:  # a coarser level outgrew its capacity
                counts = self.engine.plan(p.coords, p.spatial_shape, p.batch_size).counts.tolist()
                self._capture(p.key, p.features, p.spatial_shape, p.batch_size, counts, p.amp)
                return False
            self._track_small(p.key, p.cap, counts, p.features, p.spatial_shape, p.batch_size, p.amp)
            return True

    def settle(self) -> bool:
        """Check the last replay left unchecked by ``defer_checks``: False if it overflowed (its output is wrong;
        the capture has grown, so running the same frame again fits). True when nothing is pending."""
        p, self.pending = self.pending, None
        return True if p is None else self._check(p)

    def __call__(self, features: torch.Tensor, coords: torch.Tensor, spatial_shape, batch_size: int) -> torch.Tensor:
        if self.pending is not None and not self.settle():  # a caller deferred and did not settle
            log.warning("GraphedUNet: an unsettled replay had overflowed its capacities; its output was wrong")
        if self.disabled_reason is not None:
            return self._eager(features, coords, spatial_shape, batch_size)
        amp = torch.is_autocast_enabled("cuda")
        key = (tuple(int(s) for s in spatial_shape), int(batch_size), features.dtype, amp, features.device)
        n = coords.shape[0]
        try:
            with torch.cuda.device(features.device):
                cap = self._captures.get(key)
                if cap is None or n > cap.capacities[0]:
                    counts = self.engine.plan(coords, spatial_shape, batch_size).counts.tolist()
                    cap = self._capture(key, features, spatial_shape, batch_size, counts, amp)
                cap.replay(features, coords)
                pending = _Pending(key, cap, features, coords, spatial_shape, batch_size, amp)
                if self.defer_checks:
                    self.pending = pending
                elif not self._check(pending):  # grown to this frame's exact sizes: replay once more
                    cap = self._captures[key]
                    cap.replay(features, coords)
                return cap.out[:n].clone()
        except RuntimeError as exc:  # capture not supported here: stay correct, run eagerly
            self.disabled_reason = f"{type(exc).__name__}: {exc}"
            self._captures.clear()
            log.warning(
                "CUDA graph capture of the sparse U-Net failed (%s); running it eagerly", self.disabled_reason)
            return self._eager(features, coords, spatial_shape, batch_size)
