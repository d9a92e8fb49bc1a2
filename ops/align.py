"""Re-align a window's sweeps into the reference frame on the device: one pass over every point.

The streaming window keeps each sweep's points in its sensor frame on the
device; every step maps all of them into the newest sweep's ego frame (a
different rigid transform per sweep) and writes each point's time index.
``align_window`` does that in one Triton kernel over the concatenated points:
each program finds its rows' sweep from the window's row offsets, applies
that sweep's 3x4 transform in float64 (as ``SE3.transform_points`` does) and
rounds to float32; the other columns are copied. The torch reference
(``align_window_torch``: one float64 product per sweep) runs elsewhere and is
what the kernel is tested against. Per-sweep products on the GPU cost one
small float64 GEMM launch per sweep (~0.3 ms each for 130 k points on an
H200, docs/benchmarks.md); the kernel does the window in one launch.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from perception4d.ops.gather_conv import triton_available, triton_launch


def _table(transforms: list[np.ndarray], offsets: np.ndarray) -> torch.Tensor:
    """(n, 13) float64: each sweep's row-major 3x4 transform, then its first row."""
    n = len(transforms)
    table = np.empty((n, 13), np.float64)
    for k, m in enumerate(transforms):
        table[k, :12] = np.asarray(m, np.float64)[:3, :4].reshape(-1)
    table[:, 12] = offsets[:n]
    return torch.from_numpy(table)


def align_window_torch(points: torch.Tensor, transforms: list[np.ndarray], offsets: np.ndarray,
                       time_shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of ``align_window`` (any device): per sweep ``(xyz in float64) @ R.T + t`` rounded to float32."""
    out = points.clone()
    time = torch.empty(points.shape[0], dtype=torch.int32, device=points.device)
    for k, m in enumerate(transforms):
        sl = slice(int(offsets[k]), int(offsets[k + 1]))
        mt = torch.from_numpy(np.asarray(m, np.float64)[:3, :4]).to(points.device)
        out[sl, :3] = (points[sl, :3].double() @ mt[:, :3].T + mt[:, 3]).float()
        time[sl] = time_shift + k
    return out, time


@functools.lru_cache(maxsize=1)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def align(pts_ptr, tab_ptr, out_ptr, time_ptr, n_rows, n_sweeps, shift, C: tl.constexpr, BLOCK: tl.constexpr):
        rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = rows < n_rows
        k = tl.zeros((BLOCK,), dtype=tl.int32)
        for j in range(1, n_sweeps):  # sweep of each row: how many later sweeps start at or before it
            start = tl.load(tab_ptr + j * 13 + 12).to(tl.int64)
            k += (rows >= start).to(tl.int32)
        base = tab_ptr + k.to(tl.int64) * 13
        r64 = rows.to(tl.int64) * C
        x = tl.load(pts_ptr + r64, mask=mask, other=0.0).to(tl.float64)
        y = tl.load(pts_ptr + r64 + 1, mask=mask, other=0.0).to(tl.float64)
        z = tl.load(pts_ptr + r64 + 2, mask=mask, other=0.0).to(tl.float64)
        for i in tl.static_range(3):
            a = tl.load(base + 4 * i, mask=mask, other=0.0)
            b = tl.load(base + 4 * i + 1, mask=mask, other=0.0)
            c = tl.load(base + 4 * i + 2, mask=mask, other=0.0)
            t = tl.load(base + 4 * i + 3, mask=mask, other=0.0)
            v = x * a + y * b + z * c + t
            tl.store(out_ptr + r64 + i, v.to(tl.float32), mask=mask)
        for col in tl.static_range(3, C):
            tl.store(out_ptr + r64 + col, tl.load(pts_ptr + r64 + col, mask=mask, other=0.0), mask=mask)
        tl.store(time_ptr + rows, k + shift, mask=mask)

    return align


def align_window(points: torch.Tensor, transforms: list[np.ndarray], offsets: np.ndarray,
                 time_shift: int, out: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The window's points in the reference frame and their time indices.

    ``points`` (P, C) float32, x, y, z first, every sweep's points in its own frame, sweep ``k`` at rows
    ``offsets[k]:offsets[k + 1]``; ``transforms[k]`` (4x4 or 3x4, float64) maps sweep ``k`` into the
    reference frame. Returns (P, C) float32 (x, y, z mapped, the rest copied) and (P,) int32 time indices
    ``time_shift + k``. One kernel on CUDA with Triton; ``align_window_torch`` elsewhere. ``out``: (points,
    time) tensors of those shapes and dtypes on the points' device to write into (views of larger buffers
    work: the streaming step's CUDA graph reads the window from fixed addresses); they are returned.
    """
    offsets = np.asarray(offsets, np.int64)
    n = len(transforms)
    if offsets.shape != (n + 1,) or offsets[0] != 0 or offsets[-1] != points.shape[0]:
        raise ValueError(f"align_window: {n} sweeps need {n + 1} row offsets from 0 to {points.shape[0]}, got "
                         f"{offsets.tolist()}")
    if points.dim() != 2 or points.shape[1] < 3 or points.dtype != torch.float32:
        raise ValueError(f"align_window: points must be (P, C >= 3) float32, got {tuple(points.shape)} {points.dtype}")
    if out is not None:
        o, t = out
        if (o.shape != points.shape or o.dtype != torch.float32 or not o.is_contiguous() or t.shape != points.shape[:1]
                or t.dtype != torch.int32 or not t.is_contiguous() or o.device != points.device
                or t.device != points.device):
            raise ValueError(f"align_window: out must be contiguous ({tuple(points.shape)}) float32 and "
                             f"({points.shape[0]},) int32 tensors on {points.device}")
    if not (points.is_cuda and triton_available()) or n == 0:
        aligned, time = align_window_torch(points, transforms, offsets, time_shift)
        if out is None:
            return aligned, time
        out[0].copy_(aligned)
        out[1].copy_(time)
        return out
    points = points.contiguous()
    table = _table(transforms, offsets)
    table = table.pin_memory().to(points.device, non_blocking=True)
    if out is None:
        out, time = torch.empty_like(points), torch.empty(points.shape[0], dtype=torch.int32, device=points.device)
    else:
        out, time = out
    if points.shape[0]:
        block = 512
        with triton_launch(points.device):
            _kernel()[(-(-points.shape[0] // block),)](points, table, out, time, points.shape[0], n, int(time_shift),
                                                        C=points.shape[1], BLOCK=block, num_warps=4)
    return out, time
