"""spconv helpers: algorithm per device and a lazy import with an actionable message."""

from __future__ import annotations

import warnings

import torch
from torch import nn


def import_spconv():
    try:
        with warnings.catch_warnings():  # spconv uses torch.cuda.amp decorators deprecated by torch
            warnings.simplefilter("ignore", FutureWarning)
            import spconv.pytorch as spconv
    except ImportError as exc:  # pragma: no cover - exercised only on broken installs
        raise ImportError("perception4d's sparse backbones need spconv: pip install spconv-cu120==2.3.6 "
                          "(Python < 3.12) or spconv-cu126==2.3.8 (Python >= 3.12)") from exc
    return spconv


def set_spconv_algo(module: nn.Module, device: torch.device | str) -> None:
    """Pick every spconv layer's algorithm for ``device``.

    spconv's CPU path only supports ``ConvAlgo.Native``; on CUDA the default
    implicit-GEMM algorithm is used. Weight layout is the same for both
    (spconv stores KRSC weights for every algorithm), so switching is safe.
    """
    import_spconv()
    from spconv.core import ConvAlgo
    from spconv.pytorch.conv import SparseConvolution

    algo = ConvAlgo.MaskImplicitGemm if torch.device(device).type == "cuda" else ConvAlgo.Native
    for m in module.modules():
        if isinstance(m, SparseConvolution):
            m.algo = algo


def _match_weight_dtype(module, args):
    """Forward pre-hook: hand spconv features in its weight's dtype.

    spconv's inference path calls its GEMM directly (no autocast casting), so under
    ``torch.autocast`` fp16 features from a preceding Linear would meet fp32 weights
    and no kernel matches ("can't find suitable algorithm"). Training goes through
    spconv's autograd Function, which casts both to fp16 itself.
    """
    x = args[0]
    w = module.weight
    if not module.training and x.features.dtype != w.dtype:
        return (x.replace_feature(x.features.to(w.dtype)),) + tuple(args[1:])
    return None


def guard_spconv_dtypes(module: nn.Module) -> None:
    """Install ``_match_weight_dtype`` on every spconv layer of ``module`` (once)."""
    import_spconv()
    from spconv.pytorch.conv import SparseConvolution

    for m in module.modules():
        if isinstance(m, SparseConvolution) and not getattr(m, "_p4d_dtype_guard", False):
            m.register_forward_pre_hook(_match_weight_dtype)
            m._p4d_dtype_guard = True
