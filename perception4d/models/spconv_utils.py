"""spconv helpers: algorithm per device and a lazy import with an actionable message."""

from __future__ import annotations

import torch
from torch import nn


def import_spconv():
    try:
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
