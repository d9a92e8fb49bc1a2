"""The 4D voxel transformer backbone against plain per-window / per-set references, and with every head."""

import math
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config

from perception4d.core import Geometry, Window
from perception4d.datasets.sample import build_window_sample
from perception4d.errors import ConfigError
from perception4d.models import build_model
from perception4d.models.backbone_dsvt import VoxelTransformer4D
from perception4d.models.dsvt.layers import AttentionPool, SetAttentionLayer, Unpool
from perception4d.models.dsvt.partition import WindowSpec, partition_sets, pool_regions, window_positions
from perception4d.models.spconv_utils import import_spconv
from perception4d.sim import get_preset, simulate

from .helpers import amp_training_step

spconv = import_spconv()
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHAPE = (24, 20, 6, 5)


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are small: on a shared 2-core box torch's thread pool costs more than it gains (5-9x here).

    Per test, after the module fixtures: the simulator's numba-parallel kernels reset the OpenMP thread
    count that torch shares with them.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _coords(n=300, shape=SHAPE, batch=2, seed=0):
    """Unique random voxels of ``batch`` samples, rows in random order."""
    rng = np.random.default_rng(seed)
    c = np.unique(np.c_[rng.integers(0, batch, n), *(rng.integers(0, s, n) for s in shape)], axis=0)
    return torch.from_numpy(c[rng.permutation(len(c))].astype(np.int32))


# -- plain references -------------------------------------------------------------------------------
def naive_sets(coords, shape, window: WindowSpec, axis: str, set_size: int) -> list[list[int]]:
    """The documented rule written out: group by window, sort by the axis-major key, cut rank r into floor(r n / N)."""
    (wx, wy, wt), (sx, sy, st) = window.resolved(shape[3])
    groups = defaultdict(list)
    for row, (b, x, y, z, t) in enumerate(coords.tolist()):
        lx, ly, lt = (x + sx) % wx, (y + sy) % wy, (t + st) % wt
        key = (lx, ly, z, lt) if axis == "x" else (ly, lx, z, lt)
        groups[(b, (x + sx) // wx, (y + sy) // wy, (t + st) // wt)].append((key, row))
    sets = []
    for members in groups.values():
        members.sort()
        n_vox = len(members)
        n_sets = math.ceil(n_vox / set_size)
        for j in range(n_sets):
            sets.append([row for r, (_, row) in enumerate(members) if r * n_sets // n_vox == j])
    return sets


def naive_layer(layer: SetAttentionLayer, x, pos, sets):
    """One set-attention layer with a loop over sets and heads, no padding anywhere."""
    h = layer.norm1(x)
    q, k = layer.qk(h + pos).chunk(2, dim=1)
    v = layer.v(h)
    d = x.shape[1] // layer.heads
    att = torch.zeros_like(x)
    for rows in sets:
        r = torch.tensor(rows)
        for head in range(layer.heads):
            sl = slice(head * d, (head + 1) * d)
            w = torch.softmax(q[r, sl] @ k[r, sl].T / math.sqrt(d), dim=1)
            att[r, sl] = w @ v[r, sl]
    y = x + layer.proj(att)
    return y + layer.ffn(layer.norm2(y))


# -- partition -----------------------------------------------------------------------------------
@pytest.mark.parametrize("window", [WindowSpec((4, 4, 0), (0, 0, 0)), WindowSpec((6, 5, 0), (3, 2, 0)),
                                    WindowSpec((4, 4, 2), (2, 2, 1))])
@pytest.mark.parametrize("axis", ["x", "y"])
def test_sets_follow_the_documented_rule(window, axis):
    coords = _coords()
    part = partition_sets(coords, SHAPE, window, axis, set_size=5)
    got = [sorted(row for row, ok in zip(idx.tolist(), valid.tolist()) if ok)
           for idx, valid in zip(part.index, part.valid)]
    assert sorted(got) == sorted(sorted(s) for s in naive_sets(coords, SHAPE, window, axis, 5))
    assert part.valid[:, 0].all() and (part.valid.sum(1) <= 5).all()
    # every voxel exactly once, and inverse points at its slot
    flat_index, flat_valid = part.index.reshape(-1), part.valid.reshape(-1)
    assert torch.equal(torch.sort(flat_index[flat_valid]).values, torch.arange(len(coords)))
    assert torch.equal(flat_index[part.inverse], torch.arange(len(coords)))
    assert flat_valid[part.inverse].all()


def test_x_and_y_major_sets_are_different_slices_of_one_window():
    coords = _coords(n=400)
    w = WindowSpec((8, 8, 0), (0, 0, 0))
    sx = partition_sets(coords, SHAPE, w, "x", 6)
    sy = partition_sets(coords, SHAPE, w, "y", 6)
    assert sx.num_sets == sy.num_sets  # same windows, same counts
    set_x = sx.inverse // 6
    set_y = sy.inverse // 6
    assert not torch.equal(set_x, set_y)
    # sets are slabs along their axis: consecutive sets of one window do not interleave along it
    c = coords.long()
    window = c[:, 0] * 100 + (c[:, 1] // 8) * 10 + c[:, 2] // 8
    for part, col in ((sx, 1), (sy, 2)):
        for s in range(part.num_sets - 1):
            a, b = part.index[s][part.valid[s]], part.index[s + 1][part.valid[s + 1]]
            if window[a[0]] == window[b[0]]:
                assert c[a, col].max() <= c[b, col].min()


def test_positions_are_window_relative_in_x_y_and_absolute_in_z_t():
    coords = torch.tensor([[0, 0, 0, 0, 0], [0, 7, 3, 5, 4], [0, 8, 11, 2, 1]], dtype=torch.int32)
    pos = window_positions(coords, (16, 16, 6, 5), WindowSpec((8, 8, 0), (0, 0, 0)))
    assert pos.abs().max() < 1.0
    torch.testing.assert_close(pos[0], pos.new_tensor([-7 / 8, -7 / 8, -5 / 6, -4 / 5]))
    torch.testing.assert_close(pos[2, :2], pos.new_tensor([-7 / 8, -1 / 8]))  # x = 8, y = 11: next window
    torch.testing.assert_close(pos[1, 2:], pos.new_tensor([(5.5 / 6) * 2 - 1, (4.5 / 5) * 2 - 1]))


# -- attention -----------------------------------------------------------------------------------
@pytest.mark.parametrize("window", [WindowSpec((6, 6, 0), (0, 0, 0)), WindowSpec((5, 4, 2), (2, 2, 1))])
def test_batched_masked_attention_equals_a_loop_over_sets(window):
    torch.manual_seed(0)
    coords = _coords(n=250, seed=1)
    layer = SetAttentionLayer(16, head_dim=8).double()
    x = torch.randn(len(coords), 16, dtype=torch.float64)
    pos = torch.randn(len(coords), 16, dtype=torch.float64)
    for axis in ("x", "y"):
        part = partition_sets(coords, SHAPE, window, axis, set_size=7)
        assert not part.valid.all()  # there is padding to mask
        ref = naive_layer(layer, x, pos, naive_sets(coords, SHAPE, window, axis, 7))
        torch.testing.assert_close(layer(x, pos, part), ref, rtol=1e-10, atol=1e-10)
        # what the padding slots point at makes no difference
        scrambled = replace(part, index=torch.where(part.valid, part.index,
                                                    torch.randint(0, len(coords), part.index.shape)))
        torch.testing.assert_close(layer(x, pos, scrambled), ref, rtol=1e-10, atol=1e-10)


# -- pooling ---------------------------------------------------------------------------------------
def _slot_offsets(slot, stride):
    sx, sy, sz = stride
    return torch.stack([slot // (sy * sz), (slot // sz) % sy, slot % sz], dim=1)


def test_pooling_regions_and_unpooling_restore_the_coordinates():
    coords = _coords(n=500, seed=2)
    shape, c = SHAPE, coords
    chain = []
    for _ in range(3):
        pool = pool_regions(c, shape, (2, 2, 2))
        parent = pool.coords[pool.parent].long()
        restored = parent[:, 1:4] * 2 + _slot_offsets(pool.slot, (2, 2, 2))
        assert torch.equal(restored, c[:, 1:4].long())  # region + slot = the fine voxel
        assert torch.equal(parent[:, [0, 4]], c[:, [0, 4]].long())  # batch and time kept
        assert torch.unique(pool.coords, dim=0).shape[0] == pool.coords.shape[0]
        assert (pool.coords[:, 1:4].long() < torch.tensor(pool.spatial_shape[:3])).all()
        # the member table holds every fine voxel once, at its slot
        m = pool.members[pool.valid]
        assert torch.equal(torch.sort(m).values, torch.arange(len(c)))
        assert torch.equal(pool.members[pool.parent, pool.slot], torch.arange(len(c)))
        chain.append(pool)
        c, shape = pool.coords, pool.spatial_shape
    assert shape == (3, 3, 1, 5)
    # unpooling back down the chain: each level's rows come back in that level's order
    rows = torch.arange(len(chain[-1].coords))
    for pool in reversed(chain):
        rows = rows[pool.parent]  # coarsest row of every voxel of the next finer level
    assert torch.equal(chain[-1].coords[rows][:, 1:4].long(), coords[:, 1:4].long() // 8)

    torch.manual_seed(0)
    skip = torch.randn(len(coords), 16, dtype=torch.float64)
    coarse = torch.randn(len(chain[0].coords), 32, dtype=torch.float64)
    unpool = Unpool(32, 16, 8).double()
    out = unpool(coarse, skip, chain[0])
    assert out.shape == skip.shape
    up = unpool.proj(unpool.norm(coarse))[chain[0].parent] + unpool.slot.weight[chain[0].slot]
    torch.testing.assert_close(out, skip + unpool.fuse(torch.cat([unpool.skip_norm(skip), up], 1)))


def test_attention_pooling_equals_a_loop_over_regions():
    torch.manual_seed(0)
    coords = _coords(n=250, seed=3)
    pool = pool_regions(coords, SHAPE, (2, 2, 2))
    assert (pool.valid.sum(1) > 1).any() and not pool.valid.all()
    layer = AttentionPool(16, 32, head_dim=8, region_cells=8).double()
    x = torch.randn(len(coords), 16, dtype=torch.float64)
    out = layer(x, pool)
    h = layer.norm(x)
    d = 8
    for p in range(len(pool.coords)):
        rows = (pool.parent == p).nonzero()[:, 0]
        query = h[rows].max(dim=0).values
        kv = layer.kv(h[rows] + layer.slot.weight[pool.slot[rows]])
        key, value = kv[:, :16], kv[:, 16:]
        q = layer.q(query)
        att = torch.cat([torch.softmax(key[:, i * d:(i + 1) * d] @ q[i * d:(i + 1) * d] / math.sqrt(d), 0)
                         @ value[:, i * d:(i + 1) * d] for i in range(2)])
        torch.testing.assert_close(out[p], layer.out(query + layer.proj(att)), rtol=1e-10, atol=1e-10)


# -- the backbone --------------------------------------------------------------------------------------
def _backbone(**kw):
    torch.manual_seed(0)
    return VoxelTransformer4D(in_channels=8, **{"channels": (16, 32, 32), "depths": (1, 1, 2),
                                                "window_shapes": ((4, 4), (6, 6)), "set_size": 8, **kw})


@pytest.mark.parametrize("time_mode", ["window", "axis"])
def test_permuting_the_input_rows_permutes_the_output(time_mode):
    net = _backbone(time_mode=time_mode).double()
    coords = _coords(n=600, seed=4)
    feats = torch.randn(len(coords), 8, dtype=torch.float64)
    out = net(spconv.SparseConvTensor(feats, coords, list(SHAPE), 2))
    assert torch.equal(out.indices, coords) and list(out.spatial_shape) == list(SHAPE)
    assert out.features.shape == (len(coords), 16)
    perm = torch.randperm(len(coords))
    out_p = net(spconv.SparseConvTensor(feats[perm], coords[perm], list(SHAPE), 2))
    torch.testing.assert_close(out_p.features, out.features[perm], rtol=1e-12, atol=1e-12)


def test_time_modes_differ_and_gradients_reach_every_parameter():
    coords = _coords(n=500, seed=5)
    feats = torch.randn(len(coords), 8)
    outs = {}
    for mode in ("window", "axis"):
        net = _backbone(time_mode=mode)
        out = net(spconv.SparseConvTensor(feats, coords, list(SHAPE), 2)).features
        out.pow(2).mean().backward()
        missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing
        outs[mode] = out.detach()
    assert not torch.allclose(outs["window"], outs["axis"])
    keys = _backbone(time_mode="axis").plan_keys(0)
    assert {w.shape for w, _ in keys} == {(4, 4, 2), (6, 6, 2)} and {w.shift for w, _ in keys} == {(0, 0, 0), (3, 3, 1)}


def test_bad_settings_are_refused_with_the_field_named():
    with pytest.raises(ConfigError, match="time_mode"):
        VoxelTransformer4D(time_mode="frames")
    with pytest.raises(ConfigError, match="head_dim"):
        VoxelTransformer4D(channels=(16, 24), depths=(1, 1), head_dim=16)
    with pytest.raises(ConfigError, match="depths"):
        VoxelTransformer4D(channels=(16, 32), depths=(1,))
    with pytest.raises(ConfigError, match="window_shapes"):
        VoxelTransformer4D(window_shapes=((8, 8, 2),))


def test_default_configs_match_the_sparse_unet_in_width_and_size():
    for task, ref in (("flow_dsvt_5f_sim.py", "flow_sparseunet_5f_sim.py"),
                      ("mos_dsvt_11f_sim.py", "mos_sparseunet_11f_sim.py"),
                      ("occ_dsvt_5f_sim.py", "occ_sparseunet_5f_sim.py")):
        cfg, ref_cfg = Config.fromfile(str(CONFIGS / task)), Config.fromfile(str(CONFIGS / ref))
        assert cfg.geometry == ref_cfg.geometry and cfg.model.heads == ref_cfg.model.heads
        assert cfg.train_dataloader == ref_cfg.train_dataloader and cfg.val_dataloader == ref_cfg.val_dataloader
        net = build_model(cfg.model).backbone
        ref_net = build_model(ref_cfg.model).backbone
        assert isinstance(net, VoxelTransformer4D) and net.channels == ref_net.channels
        n, n_ref = (sum(p.numel() for p in m.parameters()) for m in (net, ref_net))
        assert 0.9 < n / n_ref < 1.15  # 638,832 vs 610,016


# -- every head trains on it --------------------------------------------------------------------------------
BACKBONE_GEO = dict(point_range=(-12.8, -12.8, -2.2, 12.8, 12.8, 4.2), voxel_size=(0.4, 0.4, 0.4), num_frames=5)
MOS_GEO = {**BACKBONE_GEO, "num_frames": 11}
OCC_GRID = dict(point_range=(-12.8, -12.8, -1.0, 12.8, 12.8, 5.4), voxel_size=(0.8, 0.8, 0.8))
PRESET = replace(get_preset("hdl32e"), azimuth_resolution_deg=3.0)
SMALL_BACKBONE = dict(channels=(16, 32), depths=(1, 1), window_shapes=((6, 6), (8, 8)), set_size=32)


@pytest.fixture(scope="module")
def seq():
    return simulate(preset=PRESET, num_frames=4, seed=3, occupancy=Geometry.from_config(OCC_GRID))


def _small_model(config, geometry, **heads):
    cfg = Config.fromfile(str(CONFIGS / config))
    cfg.model.data_preprocessor.geometry = geometry
    cfg.model.backbone.update(SMALL_BACKBONE)
    for name, over in heads.items():
        cfg.model.heads[name].update(over)
    torch.manual_seed(0)
    return build_model(cfg.model)


def _train(model, samples, key, steps, lr=3e-3):
    data = model.data_preprocessor({"inputs": samples}, training=True)
    assert data["inputs"].sparse.num_voxels > 3000
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        opt.zero_grad()
        losses = model(**data, mode="loss")
        loss = sum(v for k, v in losses.items() if k.startswith(key))
        loss.backward()
        opt.step()
        history.append(loss.item())
    return history


@pytest.mark.parametrize("task", ["flow", "mos", "occupancy"])
def test_every_head_trains_on_a_simulated_sequence(seq, task):
    if task == "flow":
        model = _small_model("flow_dsvt_5f_sim.py", BACKBONE_GEO)
        geo, steps, lr, key, drop = BACKBONE_GEO, 12, 3e-3, "loss_flow", 0.75  # measured 0.41 -> 0.28
    elif task == "mos":
        model = _small_model("mos_dsvt_11f_sim.py", MOS_GEO)
        geo, steps, lr, key, drop = MOS_GEO, 12, 3e-3, "loss_mos", 0.6  # measured 1.39 -> 0.53
    else:
        model = _small_model("occ_dsvt_5f_sim.py", BACKBONE_GEO, occupancy=dict(grid=OCC_GRID, channels=(16, 32)))
        geo, steps, lr, key, drop = BACKBONE_GEO, 20, 1e-2, "loss_occ", 0.75  # measured 6.57 -> 4.00
    g = Geometry.from_config(geo)
    samples = [build_window_sample(Window(tuple(seq.frames)), g, "sim", tasks=(task,), occupancy=seq.occupancy[-1])]
    history = _train(model, samples, key, steps, lr)
    assert np.isfinite(history).all()
    assert min(history[-3:]) < drop * history[0], history
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor({"inputs": samples}), mode="predict")
    assert len(results) == len(samples) and all(getattr(r, task) is not None for r in results)


# -- GPU -------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_autocast_forward_matches_fp32():
    net = _backbone().cuda().eval()
    coords = _coords(n=3000, shape=(48, 48, 8, 5), seed=6).cuda()
    feats = torch.randn(len(coords), 8, device="cuda")
    x = spconv.SparseConvTensor(feats, coords, [48, 48, 8, 5], 2)
    with torch.no_grad():
        ref = net(x).features
        with torch.autocast("cuda", dtype=torch.float16):
            amp = net(x).features
        half = net.half()(x.replace_feature(feats.half())).features
    assert torch.isfinite(amp).all() and torch.isfinite(half).all()
    assert (amp.float() - ref).abs().max() < 5e-2 and (half.float() - ref).abs().max() < 5e-2
    cpu = _backbone().eval()(spconv.SparseConvTensor(feats.cpu(), coords.cpu(), [48, 48, 8, 5], 2)).features
    torch.testing.assert_close(ref.cpu(), cpu.detach(), rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_autocast_training_step_of_the_flow_network(seq):
    model = _small_model("flow_dsvt_5f_sim.py", BACKBONE_GEO).cuda().train()
    sample = build_window_sample(Window(tuple(seq.frames)), Geometry.from_config(BACKBONE_GEO), "sim")
    amp_training_step(model, [sample])
