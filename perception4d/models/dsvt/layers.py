"""Layers of the voxel transformer: set attention, blocks, attention pooling and unpooling.

Every layer takes per-voxel features (N, C) and the index tensors of
``perception4d.models.dsvt.partition``; none of them looks at coordinates or
makes a data-dependent decision, so the same code runs eagerly and inside an
exported graph.

Set attention is pre-norm (``x + Attn(LN(x))``, then ``x + FFN(LN(x))``): the
residual path stays an identity, which keeps a stack of them trainable
without warm-up tricks, and LayerNorm (not BatchNorm) makes a voxel's output
independent of the rest of the batch. The position embedding is added to
queries and keys, not values (as in DETR/DSVT): it steers who attends to whom
without being copied into the features. All sets of all windows go through one
``scaled_dot_product_attention`` call, (n_sets, heads, S, head_dim), with a
boolean key mask for the padding slots; on CUDA this dispatches to the
memory-efficient fused kernel in fp16/bf16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from perception4d.models.dsvt.partition import LevelPlan, PoolMap, SetPartition, WindowSpec

#: SDPA kernels allowed: cuDNN's attention failed at run time ("mha_graph.execute ... is_good()") on the MOS-size
#: window of the backbone benchmark on an H200 (torch 2.11, cu130), so only flash, memory-efficient and math run
_SDPA_BACKENDS = None


def _attention(q, k, v, mask):
    """``scaled_dot_product_attention`` restricted to ``_SDPA_BACKENDS`` on CUDA."""
    global _SDPA_BACKENDS
    if not q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if _SDPA_BACKENDS is None:
        _SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(_SDPA_BACKENDS):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def heads_for(channels: int, head_dim: int) -> int:
    if channels % head_dim:
        raise ValueError(f"channels {channels} must be a multiple of head_dim {head_dim}")
    return channels // head_dim


def set_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, part: SetPartition,
                  heads: int) -> torch.Tensor:
    """Multi-head attention inside every set: (N, C) projected q, k, v -> (N, C), one batched call."""
    n_sets, size = part.index.shape
    c = q.shape[1]
    idx = part.index.reshape(-1)

    def gather(t):
        return t[idx].view(n_sets, size, heads, c // heads).transpose(1, 2)

    mask = part.valid[:, None, None, :]
    out = _attention(gather(q), gather(k), gather(v), mask)
    return out.transpose(1, 2).reshape(n_sets * size, c)[part.inverse]


class PositionEmbedding(nn.Module):
    """(N, 4) window-relative (x, y) and absolute (z, t) positions -> (N, C), a two-layer MLP."""

    def __init__(self, channels: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4, channels), nn.ReLU(inplace=True), nn.Linear(channels, channels))

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return self.mlp(pos.to(self.mlp[0].weight.dtype))


class SetAttentionLayer(nn.Module):
    """One pre-norm transformer layer over the sets of one partition."""

    def __init__(self, channels: int, head_dim: int, ffn_ratio: float = 2.0):
        super().__init__()
        self.heads = heads_for(channels, head_dim)
        self.norm1 = nn.LayerNorm(channels)
        self.qk = nn.Linear(channels, 2 * channels)
        self.v = nn.Linear(channels, channels)
        self.proj = nn.Linear(channels, channels)
        self.norm2 = nn.LayerNorm(channels)
        hidden = int(round(channels * ffn_ratio))
        self.ffn = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor, pos: torch.Tensor, part: SetPartition) -> torch.Tensor:
        h = self.norm1(x)
        q, k = self.qk(h + pos.to(h.dtype)).chunk(2, dim=1)
        v = self.v(h)
        x = x + self.proj(set_attention(q, k, v.to(q.dtype), part, self.heads))
        return x + self.ffn(self.norm2(x))


class SetBlock(nn.Module):
    """Two set-attention layers on one window partition: x-major sets, then y-major sets.

    The pair is DSVT's rotated set partition: a voxel's x-major set and its
    y-major set are different slices of the window, so after the block each voxel
    has seen beyond its own set. Consecutive blocks change the window (size and
    shift, see ``VoxelTransformer4D``) so information also crosses windows.
    """

    axes = ("x", "y")

    def __init__(self, channels: int, head_dim: int, window: WindowSpec, ffn_ratio: float = 2.0):
        super().__init__()
        self.window = window
        self.pos = PositionEmbedding(channels)
        self.layers = nn.ModuleList(SetAttentionLayer(channels, head_dim, ffn_ratio) for _ in self.axes)

    def plan_keys(self) -> list[tuple[WindowSpec, str]]:
        return [(self.window, a) for a in self.axes]

    def forward(self, x: torch.Tensor, level: LevelPlan) -> torch.Tensor:
        pos = self.pos(level.positions[self.window])
        for axis, layer in zip(self.axes, self.layers):
            x = layer(x, pos, level.partitions[(self.window, axis)])
        return x


class AttentionPool(nn.Module):
    """Fine voxels of a region -> one coarse voxel, by attention (DSVT's attention-style pooling).

    Query: the max-pool of the members' normalised features (what the region
    holds most strongly). Keys/values: the members plus a learned embedding of
    their slot in the region (where in the region they lie). The attended
    result is added to the max-pooled query, normalised and projected to the
    coarse level's width.
    """

    def __init__(self, cin: int, cout: int, head_dim: int, region_cells: int):
        super().__init__()
        self.heads = heads_for(cin, head_dim)
        self.norm = nn.LayerNorm(cin)
        self.slot = nn.Embedding(region_cells, cin)
        self.q = nn.Linear(cin, cin)
        self.kv = nn.Linear(cin, 2 * cin)
        self.proj = nn.Linear(cin, cin)
        self.out = nn.Sequential(nn.LayerNorm(cin), nn.Linear(cin, cout))

    def forward(self, x: torch.Tensor, pool: PoolMap) -> torch.Tensor:
        h = self.norm(x)
        p, k = pool.members.shape
        c = h.shape[1]
        members = h[pool.members.reshape(-1)].view(p, k, c)
        valid = pool.valid[:, :, None]
        query = torch.where(valid, members, torch.full_like(members, float("-inf"))).amax(dim=1)  # (P, C)
        kv = self.kv(members + self.slot.weight.to(members.dtype)[None])
        key, value = kv.view(p, k, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # (P, H, K, D) each
        q = self.q(query).view(p, self.heads, 1, c // self.heads)
        att = _attention(q, key, value.to(q.dtype), pool.valid[:, None, None, :])
        y = query + self.proj(att.reshape(p, c))
        return self.out(y)


class Unpool(nn.Module):
    """Coarse voxel -> its fine members (the inverse map of ``AttentionPool``), fused with the skip.

    Each fine voxel gets its region's feature (projected to the fine width) plus
    a learned embedding of its slot in the region, so members of one region are
    told apart; a linear layer fuses that with the normalised skip feature, added
    residually to the skip. Rows come out in the fine level's order, on exactly
    its voxels.
    """

    def __init__(self, cin: int, cout: int, region_cells: int):
        super().__init__()
        self.norm = nn.LayerNorm(cin)
        self.proj = nn.Linear(cin, cout)
        self.slot = nn.Embedding(region_cells, cout)
        self.skip_norm = nn.LayerNorm(cout)
        self.fuse = nn.Linear(2 * cout, cout)

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor, pool: PoolMap) -> torch.Tensor:
        up = self.proj(self.norm(coarse))[pool.parent] + self.slot(pool.slot).to(coarse.dtype)
        fused = self.fuse(torch.cat([self.skip_norm(skip), up.to(skip.dtype)], dim=1))
        return skip + fused
