"""CUDA-graph replay of a fixed-shape inference step (e.g. the dense occupancy decoder).

A module whose inputs always have the same shapes (a dense grid) spends most of
its time on a GPU launching kernels: dozens of convolutions, normalisations and
copies of a few microseconds each. ``GraphedCall`` captures ``fn`` once per
input signature (shapes, dtypes, device, autocast) and afterwards copies the
inputs into the captured buffers and replays the graph: one launch.

Replayed outputs live in the graph's buffers and are overwritten by the next
replay, so they are returned as clones. Graphs hold the parameters they were
captured with: ``reset()`` after moving or casting the module (the owners do
it in ``_apply``). If capturing fails (an op that cannot be captured, a driver
without support) the call runs eagerly from then on (logged once).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import torch

log = logging.getLogger("perception4d.models")

#: one capture at a time in a process (thread workers on several GPUs share the interpreter)
CAPTURE_LOCK = threading.RLock()


class _Graph:
    def __init__(self, fn: Callable, inputs: tuple[torch.Tensor, ...], amp: bool, warmup: int):
        device = inputs[0].device
        self.inputs = tuple(torch.empty_like(t) for t in inputs)
        for s, t in zip(self.inputs, inputs):
            s.copy_(t)
        self.graph = torch.cuda.CUDAGraph()

        def run():
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                return fn(*self.inputs)

        prev = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(prev)
        with torch.cuda.stream(side):  # warm-up outside the capture (cuDNN plans, library handles, allocator)
            for _ in range(warmup):
                run()
        prev.wait_stream(side)
        try:
            capture = torch.cuda.Stream(device)  # on this device (torch's default capture stream may not be)
            with torch.cuda.graph(self.graph, stream=capture, capture_error_mode="thread_local"):
                out = run()
        finally:
            if torch.cuda.current_stream(device) != prev:
                torch.cuda.set_stream(prev)
        self.single = isinstance(out, torch.Tensor)
        self.outputs = (out,) if self.single else tuple(out)

    def replay(self, inputs: tuple[torch.Tensor, ...]):
        for s, t in zip(self.inputs, inputs):
            s.copy_(t, non_blocking=True)
        self.graph.replay()
        outs = tuple(o.clone() for o in self.outputs)
        return outs[0] if self.single else outs


class GraphedCall:
    """``fn(*tensors)`` (tensor or tuple of tensors out) as a CUDA-graph replay per input signature.

    Runs ``fn`` directly on CPU tensors, with autograd enabled, or after a failed capture. ``max_graphs``
    signatures are kept (least recently captured dropped first).
    """

    def __init__(self, fn: Callable, name: str, warmup: int = 2, max_graphs: int = 4):
        self.fn = fn
        self.name = name
        self.warmup = warmup
        self.max_graphs = max_graphs
        self._graphs: dict = {}
        self.captures_made = 0
        self.disabled_reason: str | None = None

    def reset(self) -> None:
        self._graphs = {}

    def __getstate__(self):  # copies (deepcopy, pickling) capture their own graphs
        state = self.__dict__.copy()
        state["_graphs"] = {}
        return state

    def __call__(self, *inputs: torch.Tensor):
        if self.disabled_reason is not None or not inputs[0].is_cuda or torch.is_grad_enabled():
            return self.fn(*inputs)
        device = inputs[0].device
        amp = torch.is_autocast_enabled("cuda")
        key = (tuple((tuple(t.shape), t.dtype, t.device) for t in inputs), amp)
        try:
            with torch.cuda.device(device):
                graph = self._graphs.get(key)
                if graph is None:
                    while len(self._graphs) >= self.max_graphs:
                        self._graphs.pop(next(iter(self._graphs)))
                    with CAPTURE_LOCK:
                        graph = self._graphs[key] = _Graph(self.fn, inputs, amp, self.warmup)
                    self.captures_made += 1
                return graph.replay(inputs)
        except RuntimeError as exc:
            self.disabled_reason = f"{type(exc).__name__}: {exc}"
            self._graphs = {}
            log.warning("CUDA graph capture of %s failed (%s); running it eagerly", self.name, self.disabled_reason)
            return self.fn(*inputs)
