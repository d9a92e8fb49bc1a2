"""The 4D sparse U-Net against dense references, and its coordinate bookkeeping."""

import numpy as np
import pytest
import torch

from perception4d.models.backbone_spconv import STDBlock, SparseUNet4D, conv1x1x1x3, conv3x3x3x1
from perception4d.models.spconv_utils import import_spconv, set_spconv_algo

spconv = import_spconv()


def _random_sites(shape=(6, 5, 4, 3), n=60, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    cells = np.stack(np.meshgrid(*[np.arange(s) for s in (batch, *shape)], indexing="ij"), -1).reshape(-1, 5)
    pick = rng.choice(len(cells), size=n, replace=False)
    return torch.from_numpy(cells[pick].astype(np.int32)), shape, batch


def _dense(coords, feats, shape, batch):
    d = torch.zeros(batch, feats.shape[1], *shape, dtype=feats.dtype)
    b, x, y, z, t = coords.long().unbind(1)
    d[b, :, x, y, z, t] = feats
    return d


def _dense_conv4d_space(dense, weight):
    """(3,3,3,1) kernel: a 3D conv applied to every time slice. weight: spconv KRSC (Cout, 3,3,3,1, Cin)."""
    w = weight[..., 0, :].permute(0, 4, 1, 2, 3)  # (Cout, Cin, 3, 3, 3)
    b, c, X, Y, Z, T = dense.shape
    slices = dense.permute(0, 5, 1, 2, 3, 4).reshape(b * T, c, X, Y, Z)
    out = torch.nn.functional.conv3d(slices, w, padding=1)
    return out.reshape(b, T, -1, X, Y, Z).permute(0, 2, 3, 4, 5, 1)


def _dense_conv4d_time(dense, weight):
    """(1,1,1,3) kernel: a 1D conv along t at every (x, y, z). weight: (Cout, 1,1,1,3, Cin)."""
    w = weight[:, 0, 0, 0].permute(0, 2, 1)  # (Cout, Cin, 3)
    b, c, X, Y, Z, T = dense.shape
    seqs = dense.permute(0, 2, 3, 4, 1, 5).reshape(-1, c, T)
    out = torch.nn.functional.conv1d(seqs, w, padding=1)
    return out.reshape(b, X, Y, Z, -1, T).permute(0, 4, 1, 2, 3, 5)


@pytest.mark.parametrize("kind", ["space", "time"])
def test_factored_submconv_matches_dense_reference(kind):
    torch.manual_seed(0)
    coords, shape, batch = _random_sites()
    feats = torch.randn(len(coords), 8, dtype=torch.float64)
    conv = (conv3x3x3x1 if kind == "space" else conv1x1x1x3)(8, 8, "k").double()
    set_spconv_algo(conv, "cpu")
    x = spconv.SparseConvTensor(feats.clone().requires_grad_(True), coords, list(shape), batch)
    out = conv(x)
    dense_in = _dense(coords, feats, shape, batch).requires_grad_(True)
    ref_fn = _dense_conv4d_space if kind == "space" else _dense_conv4d_time
    ref_dense = ref_fn(dense_in, conv.weight)
    b, xx, y, z, t = out.indices.long().unbind(1)
    ref = ref_dense[b, :, xx, y, z, t]
    torch.testing.assert_close(out.features, ref, rtol=1e-9, atol=1e-9)
    # gradients w.r.t. the weight agree too
    g = torch.randn_like(ref)
    gw_sparse, = torch.autograd.grad((out.features * g).sum(), conv.weight)
    gw_dense, = torch.autograd.grad((ref * g).sum(), conv.weight)
    torch.testing.assert_close(gw_sparse, gw_dense, rtol=1e-8, atol=1e-8)


def test_time_conv_does_not_mix_space_and_space_conv_does_not_mix_time():
    coords = torch.tensor([[0, 1, 1, 1, 0], [0, 2, 1, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.int32)
    feats = torch.eye(3, dtype=torch.float64)
    x = spconv.SparseConvTensor(feats, coords, [4, 4, 4, 2], 1)
    tconv = conv1x1x1x3(3, 3, "t").double()
    sconv = conv3x3x3x1(3, 3, "s").double()
    set_spconv_algo(torch.nn.ModuleList([tconv, sconv]), "cpu")
    with torch.no_grad():
        tconv.weight.fill_(1.0)
        sconv.weight.fill_(1.0)
    t_out, s_out = tconv(x).features, sconv(x).features
    # site 1 (x=2, t=0) has no temporal neighbour: time conv sees only itself
    assert torch.allclose(t_out[1], torch.full((3,), 1.0, dtype=torch.float64))
    # site 2 (t=1) has no spatial neighbour in its time slice
    assert torch.allclose(s_out[2], torch.full((3,), 1.0, dtype=torch.float64))


def test_unet_output_has_exactly_the_input_voxels_and_trains():
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    n = 400
    coords = np.unique(np.c_[rng.integers(0, 2, n), rng.integers(0, 32, (n, 3)), rng.integers(0, 5, n)], axis=0)
    coords = torch.from_numpy(coords.astype(np.int32))
    net = SparseUNet4D(in_channels=8, channels=(8, 16, 16, 24))
    set_spconv_algo(net, "cpu")
    feats = torch.randn(len(coords), 8)
    x = spconv.SparseConvTensor(feats, coords, [32, 32, 32, 5], 2)
    out = net(x)
    assert net.out_channels == 8
    assert torch.equal(out.indices, coords)
    assert out.features.shape == (len(coords), 8)
    # every rulebook is keyed by level: subm per level for space and time, one per downsampling
    keys = set(out.indice_dict)
    assert {"subm0s", "subm0t", "subm3s", "down0", "down2"} <= keys
    loss = out.features.pow(2).mean()
    loss.backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_stdb_is_residual_and_keeps_sites():
    coords, shape, batch = _random_sites(n=40, seed=3)
    blk = STDBlock(8, level=0)
    set_spconv_algo(blk, "cpu")
    x = spconv.SparseConvTensor(torch.randn(len(coords), 8), coords, list(shape), batch)
    y = blk(x)
    assert torch.equal(y.indices, coords) and y.features.shape == (40, 8)
    assert (y.features >= 0).all()
