"""Inference-time fusion of the sparse U-Net: BatchNorm folded into the convolutions, bias and ReLU fused.

At inference a BatchNorm is an affine map per channel, so
``BN(W x) = (s * W) x + (beta - s * mean)`` with ``s = gamma / sqrt(var + eps)``:
every conv / linear followed by a BatchNorm becomes one conv / linear with a
bias. On CUDA spconv applies that bias and the ReLU inside its implicit-GEMM
kernel (``act_type``), so a block's spatial and temporal convolutions are one
kernel each instead of conv + batch_norm + relu. The residual of a
Spatio-Temporal Decomposition Block is folded into its (1,1,1,1) fusion
(``W [x, s, t] + x = (W + [I 0 0]) [x, s, t]``), removing the add.

The network is host-bound on GPUs (hundreds of small kernels per frame), so
fewer launches is the lever; the arithmetic is identical up to rounding
(tests compare against the unfused network on CPU and GPU).

``fuse_for_inference(model)`` returns a fused copy (the original is left as
it is) that cannot be trained.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from perception4d.models.backbone_spconv import Down, SparseUNet4D, STDBlock, Up
from perception4d.models.encoder import PointEncoder
from perception4d.models.heads.occupancy import OccupancyHead
from perception4d.models.spconv_utils import import_spconv

spconv = import_spconv()


def _bn_affine(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of an eval-mode BatchNorm, float64 for exact folding."""
    var = bn.running_var.double()
    scale = bn.weight.double() / torch.sqrt(var + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    return scale, shift


def fold_linear(linear: nn.Linear, bn: nn.BatchNorm1d, residual: int | None = None) -> nn.Linear:
    """``bn(linear(x))`` (+ ``x[:, :residual]`` when given) as one Linear with a bias."""
    scale, shift = _bn_affine(bn)
    w = linear.weight.double() * scale[:, None]
    b = shift + (linear.bias.double() * scale if linear.bias is not None else 0.0)
    if residual is not None:
        if residual != w.shape[0]:
            raise ValueError(f"residual of {residual} channels cannot add to {w.shape[0]} outputs")
        w[:, :residual] += torch.eye(residual, dtype=w.dtype, device=w.device)
    out = nn.Linear(w.shape[1], w.shape[0], bias=True).to(linear.weight.device)
    with torch.no_grad():
        out.weight.copy_(w.to(linear.weight.dtype))
        out.bias.copy_(b.to(linear.weight.dtype))
    return out


def fold_sparse_conv(conv, bn: nn.BatchNorm1d):
    """A copy of the spconv layer ``conv`` with ``bn`` folded into its weights (KRSC: out channels first) and bias."""
    scale, shift = _bn_affine(bn)
    new = copy.deepcopy(conv)
    w = conv.weight.double()
    w = w * scale.view(-1, *([1] * (w.dim() - 1)))
    b = shift + (conv.bias.double() * scale if conv.bias is not None else 0.0)
    with torch.no_grad():
        new.weight.copy_(w.to(conv.weight.dtype))
        new.bias = nn.Parameter(b.to(conv.weight.dtype))
    return new


def fold_dense_conv(conv: nn.Conv3d | nn.ConvTranspose3d, bn: nn.BatchNorm3d) -> nn.Module:
    """``bn(conv(x))`` as one dense 3D (transposed) convolution with a bias (a copy; ``conv`` is untouched)."""
    scale, shift = _bn_affine(bn)
    new = copy.deepcopy(conv)
    w = conv.weight.double()
    # Conv3d weights are (out, in, k, k, k); ConvTranspose3d weights are (in, out / groups, k, k, k)
    axis = 1 if isinstance(conv, nn.ConvTranspose3d) else 0
    if isinstance(conv, nn.ConvTranspose3d) and conv.groups != 1:
        raise ValueError("folding a BatchNorm into a grouped transposed convolution is not supported")
    shape = [1] * w.dim()
    shape[axis] = -1
    w = w * scale.view(shape)
    b = shift + (conv.bias.double() * scale if conv.bias is not None else 0.0)
    with torch.no_grad():
        new.weight.copy_(w.to(conv.weight.dtype))
        new.bias = nn.Parameter(b.to(conv.weight.dtype))
    return new


def _fold_pairs(seq: nn.Sequential, fold) -> nn.Sequential:
    """``seq`` with every (layer, BatchNorm) pair that ``fold(layer, next)`` folds replaced by its result, at
    any depth of nested modules; ``fold`` returns None for pairs it does not fold."""
    mods, out, i = list(seq), [], 0
    while i < len(mods):
        folded = fold(mods[i], mods[i + 1]) if i + 1 < len(mods) else None
        if folded is not None:
            out.append(folded)
            i += 2
        else:
            out.append(_fold_children(mods[i], fold))
            i += 1
    return nn.Sequential(*out)


def _fold_children(module: nn.Module, fold) -> nn.Module:
    if isinstance(module, nn.Sequential):
        return _fold_pairs(module, fold)
    for name, child in list(module.named_children()):
        setattr(module, name, _fold_children(child, fold))
    return module


def _linear_bn(m: nn.Module, nxt: nn.Module) -> nn.Module | None:
    return fold_linear(m, nxt) if isinstance(m, nn.Linear) and isinstance(nxt, nn.BatchNorm1d) else None


def _dense_conv_bn(m: nn.Module, nxt: nn.Module) -> nn.Module | None:
    if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)) and isinstance(nxt, nn.BatchNorm3d):
        return fold_dense_conv(m, nxt)
    return None


def fuse_dense_convs(module: nn.Module) -> nn.Module:
    """In place: every (Conv3d | ConvTranspose3d, BatchNorm3d) pair inside an ``nn.Sequential`` of ``module``
    folded into one convolution; dense convolution weights in ``channels_last_3d`` (cuDNN's native layout in
    fp16: no layout transposes around every convolution)."""
    _fold_children(module, _dense_conv_bn)
    for m in module.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)
    return module


def _conv_relu(conv, x):
    """conv + bias + ReLU: fused inside spconv's kernel on CUDA; spconv's CPU path supports neither a fused
    bias nor an activation, so there the bias and ReLU follow the convolution."""
    from cumm import tensorview as tv

    if x.features.is_cuda:
        conv.act_type = tv.gemm.Activation.ReLU
        return conv(x)
    none = tv.gemm.Activation.None_
    y = conv._conv_forward(conv.training, x, conv.weight, None, None, name=conv.name,
                           sparse_unique_name=conv._sparse_unique_name, act_type=none, act_alpha=0.0, act_beta=0.0)
    return y.replace_feature(torch.relu(y.features + conv.bias))


class FusedSTDBlock(nn.Module):
    def __init__(self, block: STDBlock):
        super().__init__()
        c = block.bn_fuse.num_features
        self.space = fold_sparse_conv(block.space, block.bn_space)
        self.time = fold_sparse_conv(block.time, block.bn_time)
        self.fuse = fold_linear(block.fuse, block.bn_fuse, residual=c)

    def forward(self, x):
        xs = _conv_relu(self.space, x)
        xt = _conv_relu(self.time, xs.replace_feature(x.features))
        f = self.fuse(torch.cat([x.features, xs.features, xt.features], dim=1))
        return xt.replace_feature(torch.relu_(f))


class FusedDown(nn.Module):
    def __init__(self, down: Down):
        super().__init__()
        self.conv = fold_sparse_conv(down.conv, down.bn)

    def forward(self, x):
        return _conv_relu(self.conv, x)


class FusedUp(nn.Module):
    def __init__(self, up: Up):
        super().__init__()
        self.conv = fold_sparse_conv(up.conv, up.bn)
        self.fuse = fold_linear(up.fuse, up.bn_fuse)

    def forward(self, x, skip):
        x = _conv_relu(self.conv, x)
        return x.replace_feature(torch.relu_(self.fuse(torch.cat([x.features, skip.features], 1))))


def _fuse_mlp(seq: nn.Sequential) -> nn.Sequential:
    """Linear/BN/ReLU runs of an ``nn.Sequential`` -> Linear(+bias)/ReLU."""
    return _fold_pairs(seq, _linear_bn)


def fuse_backbone(backbone: SparseUNet4D) -> SparseUNet4D:
    """In place: every block of ``backbone`` replaced by its fused form."""
    backbone.stem = _fuse_mlp(backbone.stem)
    backbone.enc = nn.ModuleList(nn.Sequential(*[FusedSTDBlock(b) for b in seq]) for seq in backbone.enc)
    backbone.dec = nn.ModuleList(FusedSTDBlock(b) for b in backbone.dec)
    backbone.down = nn.ModuleList(FusedDown(d) for d in backbone.down)
    backbone.up = nn.ModuleList(FusedUp(u) for u in backbone.up)
    return backbone


def _no_train(self, mode: bool = True):
    if mode:
        raise RuntimeError("a network fused for inference cannot be trained: fuse a copy of the trained network")
    return nn.Module.train(self, False)


#: backbone executors of a fused network: spconv's layers, or the gather-GEMM engine (perception4d.models.engine)
ENGINES = ("auto", "spconv", "gather")


def fuse_for_inference(model: nn.Module, engine: str = "auto", cuda_graphs: bool = True) -> nn.Module:
    """A fused, eval-mode copy of a ``Perception4DNet`` (its encoder MLP and a ``SparseUNet4D`` backbone).

    ``engine``: ``"spconv"`` keeps spconv's layers (bias and ReLU inside its kernels on CUDA); ``"gather"``
    runs the backbone on ``perception4d.models.engine.GatherUNet`` (per-frame neighbour plan, gather + GEMM);
    ``"auto"``: gather when the model's parameters are on a CUDA device, spconv otherwise (spconv's CPU path
    is faster there; see docs/benchmarks.md). The dense occupancy head's BatchNorms are folded into its 3D
    convolutions (``fuse_dense_convs``); other backbones and heads are copied unchanged. ``cuda_graphs``: on a
    GPU, the gather engine's plan + execute run as one CUDA-graph replay a frame. The copy refuses ``.train()``.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: use one of {ENGINES}")
    from perception4d.models.spconv_utils import guard_spconv_dtypes

    fused = copy.deepcopy(model).eval()
    if isinstance(fused.encoder, PointEncoder):
        fused.encoder.mlp = _fuse_mlp(fused.encoder.mlp)
    for head in fused.heads.values():
        if isinstance(head, OccupancyHead):
            fuse_dense_convs(head)
    if isinstance(fused.backbone, SparseUNet4D):
        fuse_backbone(fused.backbone)
        on_cuda = next(fused.backbone.parameters()).is_cuda
        if engine == "gather" or (engine == "auto" and on_cuda):
            from perception4d.models.engine import GatherUNet

            fused.backbone = GatherUNet(fused.backbone, cuda_graphs=cuda_graphs)
    guard_spconv_dtypes(fused)
    fused._algo_device = None  # re-select spconv algorithms for the new layers on the next forward
    fused.train = _no_train.__get__(fused)
    return fused
