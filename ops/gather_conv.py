"""Sparse convolution over a neighbour table: ``relu(sum_k x[table[:, k]] @ W_k + b)``.

Two implementations of one operation:

* ``gather_conv_torch``: ``index_select`` of all ``K`` neighbour rows into an
  ``(N, K * Cin)`` matrix, then one GEMM (any device; the reference).
* ``gather_conv_triton`` (CUDA, when Triton is installed): an implicit GEMM —
  each program loads a block of output rows' neighbour indices, gathers the
  ``Cin`` features of each offset into registers and accumulates
  ``x_k @ W_k`` with tensor-core dots, then adds the bias and applies the ReLU.
  Nothing of size ``N * K * Cin`` is written to memory (the materialised
  gather of the reference costs ~10x the GPU time on an H200, see
  docs/benchmarks.md).

``xs`` carries a zero *sentinel* row after its voxels; tables point missing
neighbours at it. The reference gathers it like any row; the kernels skip the
load (most of a sparse kernel's offsets are missing, and thousands of lanes
reading one row serialise on one cache line).
"""

from __future__ import annotations

import contextlib
import functools
import threading

import torch


def gather_conv_torch(xs: torch.Tensor, table: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      relu: bool = True) -> torch.Tensor:
    """Reference: ``xs`` (N_in + 1, Cin) with the sentinel row, ``table`` (K, N) rows of ``xs``, ``weight``
    (K * Cin, Cout)."""
    k, n = table.shape
    g = xs.index_select(0, table.reshape(-1)).view(k, n, -1).transpose(0, 1).reshape(n, -1)
    out = torch.addmm(bias, g, weight) if bias is not None else g @ weight
    return torch.relu_(out) if relu else out


#: Triton compiles and loads a kernel lazily at its first launch on a device, without a lock of its own: two
#: threads launching it first at once can see a half-loaded kernel (worker threads of the parallel runtime)
_LAUNCH_LOCK = threading.RLock()


@contextlib.contextmanager
def triton_launch(device: torch.device):
    """Context of every Triton launch: one launch at a time in the process, on ``device`` (Triton launches on
    the current device)."""
    with _LAUNCH_LOCK, torch.cuda.device(device):
        yield


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return True


@functools.lru_cache(maxsize=1)
def _kernel():
    import triton
    import triton.language as tl

    configs = [triton.Config({"BLOCK_N": bn}, num_warps=nw, num_stages=ns)
               for bn, nw, ns in ((64, 4, 2), (128, 4, 3), (128, 8, 3), (256, 8, 2))]

    @triton.autotune(configs=configs, key=["K", "CIN", "COUT", "BLOCK_CO"])
    @triton.jit
    def gather_gemm(x_ptr, tab_ptr, w_ptr, b_ptr, out_ptr, n_rows, K, sentinel, out_stride,
                    CIN: tl.constexpr, COUT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_CO: tl.constexpr,
                    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, IEEE: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_c = tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < n_rows
        co = pid_c * BLOCK_CO + tl.arange(0, BLOCK_CO)
        ci = tl.arange(0, CIN)
        acc = tl.zeros((BLOCK_N, BLOCK_CO), dtype=tl.float32)
        rows64 = rows.to(tl.int64)
        for k in range(K):
            idx = tl.load(tab_ptr + k * n_rows + rows64, mask=rmask, other=0).to(tl.int64)
            # missing neighbours read nothing: thousands of lanes loading the one sentinel row would all queue
            # on the same L2 line
            hit = rmask & (idx != sentinel)
            x = tl.load(x_ptr + idx[:, None] * CIN + ci[None, :], mask=hit[:, None], other=0.0)
            w = tl.load(w_ptr + (k * CIN + ci[:, None]) * COUT + co[None, :])
            if IEEE:
                acc += tl.dot(x, w, input_precision="ieee")
            else:
                acc += tl.dot(x, w)
        if HAS_BIAS:
            acc += tl.load(b_ptr + co)[None, :].to(tl.float32)
        if RELU:
            acc = tl.maximum(acc, 0.0)
        tl.store(out_ptr + rows64[:, None] * out_stride + co[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=rmask[:, None])

    return gather_gemm


def triton_supports(xs: torch.Tensor, weight: torch.Tensor) -> bool:
    """Shapes and dtypes the kernel handles: CUDA, fp16/bf16/fp32, channel counts multiples of 16 (tensor cores)."""
    cin, cout = xs.shape[1], weight.shape[1]
    return (xs.is_cuda and triton_available() and xs.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and weight.dtype == xs.dtype and cin % 16 == 0 and cout % 16 == 0 and cin <= 128 and cout <= 256
            and xs.is_contiguous())


def _check_out(out: torch.Tensor | None, n: int, c: int, dtype: torch.dtype, device) -> torch.Tensor:
    """``out`` (or a new tensor): (n, c) of ``dtype`` on ``device`` with unit column stride (a column slice of a
    wider buffer works: the kernels write rows at ``out.stride(0)``)."""
    if out is None:
        return torch.empty(n, c, dtype=dtype, device=device)
    if tuple(out.shape) != (n, c) or out.dtype != dtype or out.device != torch.device(device) or (
            c > 1 and out.stride(1) != 1):
        raise ValueError(f"out must be ({n}, {c}) {dtype} on {device} with unit column stride, got "
                         f"{tuple(out.shape)} {out.dtype} on {out.device}, strides {out.stride()}")
    return out


def gather_conv_triton(xs: torch.Tensor, table: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       relu: bool = True, out: torch.Tensor | None = None) -> torch.Tensor:
    k, n = table.shape
    cin, cout = xs.shape[1], weight.shape[1]
    if weight.shape[0] != k * cin:
        raise ValueError(f"weight {tuple(weight.shape)} does not match {k} offsets x {cin} input channels")
    out = _check_out(out, n, cout, xs.dtype, xs.device)
    if n == 0:
        return out
    block_co = min(cout, 64)

    def grid(meta):
        return (-(-n // meta["BLOCK_N"]), cout // block_co)

    b = bias if bias is not None else weight  # unused pointer when there is no bias
    # tiles and pipelining picked per (offsets, channels) by Triton's autotuner at the first call (warm-up);
    with triton_launch(xs.device):
        _kernel()[grid](xs, table.contiguous(), weight.contiguous(), b, out, n, k, xs.shape[0] - 1, out.stride(0),
                        CIN=cin, COUT=cout, BLOCK_CO=block_co, HAS_BIAS=bias is not None, RELU=relu,
                        IEEE=xs.dtype == torch.float32)
    return out


@functools.lru_cache(maxsize=1)
def _rows_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def gather_rows(src_ptr, idx_ptr, b_ptr, out_ptr, n_rows, sentinel, out_stride, C: tl.constexpr,
                    BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < n_rows
        c = tl.arange(0, C)
        idx = tl.load(idx_ptr + rows, mask=rmask, other=0).to(tl.int64)
        hit = rmask & (idx != sentinel)
        x = tl.load(src_ptr + idx[:, None] * C + c[None, :], mask=hit[:, None], other=0.0).to(tl.float32)
        if HAS_BIAS:
            x += tl.load(b_ptr + c)[None, :].to(tl.float32)
        if RELU:
            x = tl.maximum(x, 0.0)
        tl.store(out_ptr + rows.to(tl.int64)[:, None] * out_stride + c[None, :], x.to(out_ptr.dtype.element_ty),
                 mask=rmask[:, None])

    return gather_rows


def gather_rows(src: torch.Tensor, idx: torch.Tensor, bias: torch.Tensor | None = None,
                relu: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
    """``relu(src[idx] + bias)`` (each part optional): one Triton pass on CUDA, index_select elsewhere.
    ``out``: where to write it (see ``_check_out``)."""
    c = src.shape[1]
    out = _check_out(out, idx.shape[0], c, src.dtype, src.device)
    if src.is_cuda and triton_available() and c & (c - 1) == 0 and c <= 256 and src.is_contiguous() and (
            bias is None or bias.dtype == src.dtype):
        if idx.shape[0]:
            block = max(16, min(256, 4096 // c))
            with triton_launch(src.device):
                _rows_kernel()[(-(-idx.shape[0] // block),)](
                    src, idx.contiguous(), bias if bias is not None else src, out, idx.shape[0], src.shape[0] - 1,
                    out.stride(0), C=c, BLOCK_N=block, HAS_BIAS=bias is not None, RELU=relu, num_warps=4)
        return out
    res = src.index_select(0, idx)
    if bias is not None:
        res = res + bias
    return out.copy_(torch.relu_(res) if relu else res)


@functools.lru_cache(maxsize=1)
def _take_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def take_rows(src_ptr, idx_ptr, out_ptr, n_rows, C: tl.constexpr, C_PAD: tl.constexpr, BLOCK_N: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < n_rows
        c = tl.arange(0, C_PAD)
        cmask = c < C
        idx = tl.load(idx_ptr + rows, mask=rmask, other=-1).to(tl.int64)
        hit = rmask & (idx >= 0)
        x = tl.load(src_ptr + idx[:, None] * C + c[None, :], mask=hit[:, None] & cmask[None, :], other=0)
        tl.store(out_ptr + rows.to(tl.int64)[:, None] * C + c[None, :], x, mask=rmask[:, None] & cmask[None, :])

    return take_rows


#: dtypes ``take_rows`` gathers with its kernel
_TAKE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int32, torch.int64, torch.bool,
                torch.uint8)


def take_rows(src: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``src[idx]`` along the first dimension, zero (False) rows where ``idx < 0``.

    ``src`` (V,) or (V, C); ``idx`` (N,) integer, every value in [-1, V) (not checked). On CUDA, outside
    autograd, one Triton pass: torch's row gathers (``src[idx]``, ``index_select``) run ~30x slower on rows
    of a few to a few dozen values (an H200: 0.88 vs 0.03 ms for 1.4 M rows of 16 halves; docs/benchmarks.md).
    """
    if src.dim() not in (1, 2) or idx.dim() != 1:
        raise ValueError(f"take_rows: src (V,) or (V, C) and idx (N,), got {tuple(src.shape)} and {tuple(idx.shape)}")
    c = 1 if src.dim() == 1 else src.shape[1]
    differentiable = src.requires_grad and torch.is_grad_enabled()  # the kernel has no backward: torch's gather
    if src.is_cuda and not differentiable and triton_available() and src.dtype in _TAKE_DTYPES and 0 < c <= 256:
        src_c = src.contiguous()
        if src.dtype == torch.bool:
            src_c = src_c.view(torch.uint8)
        out = torch.empty((idx.shape[0], *src.shape[1:]), dtype=src_c.dtype, device=src.device)
        if idx.shape[0] and src.shape[0]:
            c_pad = 1 << (c - 1).bit_length()
            block = max(16, min(1024, 4096 // c_pad))
            with triton_launch(src.device):
                _take_kernel()[(-(-idx.shape[0] // block),)](src_c, idx.contiguous(), out, idx.shape[0], C=c,
                                                             C_PAD=c_pad, BLOCK_N=block, num_warps=4)
        elif idx.shape[0]:
            out.zero_()
        return out.view(torch.bool) if src.dtype == torch.bool else out
    if src.shape[0] == 0:
        return src.new_zeros((idx.shape[0], *src.shape[1:]))
    out = src.index_select(0, idx.clamp(min=0))
    keep = (idx >= 0).view(-1, *([1] * (src.dim() - 1)))
    return torch.where(keep, out, torch.zeros((), dtype=out.dtype, device=out.device))


def gather_conv(xs: torch.Tensor, table: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                relu: bool = True, out: torch.Tensor | None = None) -> torch.Tensor:
    """The Triton kernel where it applies (CUDA, supported shapes, no autocast mixing), the reference otherwise.
    ``out``: where to write the (N, Cout) result (see ``_check_out``; e.g. a column slice of a concatenation)."""
    if torch.is_autocast_enabled(xs.device.type):  # autocast: run in its compute dtype like addmm would
        dtype = torch.get_autocast_dtype(xs.device.type)
        xs, weight = xs.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    if triton_supports(xs, weight):
        return gather_conv_triton(xs, table, weight, bias, relu, out)
    res = gather_conv_torch(xs, table, weight, bias, relu)
    if out is None:
        return res
    return _check_out(out, res.shape[0], res.shape[1], res.dtype, res.device).copy_(res)
