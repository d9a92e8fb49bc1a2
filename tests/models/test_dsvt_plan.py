"""The voxel transformer's plan: equal to the previous unique-based formulation, one host synchronisation a level.

The reference below is the plan as it was computed before it was restructured (``torch.unique`` for the
pooling regions, ``unique_consecutive`` and a host-side set count per window partition, positions per window
from a host-built size tensor). It is kept here, written out, so the restructured plan can be checked for
exact equality (every tensor, dtype and shape) on random coordinates.

The synchronisation count is taken on CPU by recording, while the plan runs, every operation that makes the
host wait for the device on CUDA: reading a value or a list back (``item``/``int()``/``tolist``), ops whose
output size depends on the data (``unique``, ``nonzero``, boolean-mask indexing, ``masked_select``,
``repeat_interleave`` without ``output_size``) and host data copied to the device (``torch.tensor(...,
device=...)``).
"""

from collections import Counter

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from perception4d.models.backbone_dsvt import VoxelTransformer4D
from perception4d.models.dsvt.partition import (BackbonePlan, PoolMap, SetPartition, WindowSpec, partition_window,
                                                plan_level, pool_regions, window_positions)


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: torch's thread pool costs more than it gains on a shared 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _coords(n, shape, batch, seed):
    """Unique random voxels of ``batch`` samples, rows in random order."""
    rng = np.random.default_rng(seed)
    c = np.unique(np.c_[rng.integers(0, batch, n), *(rng.integers(0, s, n) for s in shape)], axis=0)
    return torch.from_numpy(c[rng.permutation(len(c))].astype(np.int32))


# -- the previous formulation ------------------------------------------------------------------------------
def ref_window_index(coords, spatial_shape, spec):
    c = coords.long()
    b, x, y, t = c[:, 0], c[:, 1], c[:, 2], c[:, 4]
    nx, ny, _, nt = (int(s) for s in spatial_shape)
    (wx, wy, wt), (sx, sy, st) = spec.resolved(nt)
    xs, ys, ts = x + sx, y + sy, t + st
    n_wx, n_wy, n_wt = (nx + sx + wx - 1) // wx, (ny + sy + wy - 1) // wy, (nt + st + wt - 1) // wt
    wid = ((b * n_wx + xs // wx) * n_wy + ys // wy) * n_wt + ts // wt
    return wid, torch.stack([xs % wx, ys % wy, ts % wt], dim=1), (wx, wy, wt)


def ref_positions(coords, spatial_shape, spec):
    _, local, (wx, wy, _) = ref_window_index(coords, spatial_shape, spec)
    nz, nt = int(spatial_shape[2]), int(spatial_shape[3])
    c = coords.float()
    size = torch.tensor([wx, wy, nz, nt], device=coords.device, dtype=torch.float32)
    raw = torch.stack([local[:, 0].float(), local[:, 1].float(), c[:, 3], c[:, 4]], dim=1)
    return (raw + 0.5) / size * 2.0 - 1.0


def ref_partition(coords, spatial_shape, spec, set_size, axes):
    n = int(coords.shape[0])
    wid, local, (wx, wy, wt) = ref_window_index(coords, spatial_shape, spec)
    nz = int(spatial_shape[2])
    z = coords[:, 3].long()
    w_order = torch.argsort(wid)
    _, counts = torch.unique_consecutive(wid[w_order], return_counts=True)
    sets_per_window = (counts + set_size - 1) // set_size
    win = torch.repeat_interleave(torch.arange(counts.numel()), counts, output_size=n)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[win]
    n_w, s_w = counts[win], sets_per_window[win]
    local_set = rank * s_w // n_w
    pos = rank - (local_set * n_w + s_w - 1) // s_w
    set_offsets = torch.cumsum(sets_per_window, 0) - sets_per_window
    flat = (set_offsets[win] + local_set) * set_size + pos
    n_sets = int(sets_per_window.sum()) if n else 0
    out = {}
    for axis in axes:
        first, second, w_second = (local[:, 0], local[:, 1], wy) if axis == "x" else (local[:, 1], local[:, 0], wx)
        key = wid * (wx * wy * nz * wt) + ((first * w_second + second) * nz + z) * wt + local[:, 2]
        order = torch.argsort(key)
        index = torch.full((n_sets * set_size,), -1, dtype=torch.long)
        index[flat] = order
        index = index.view(n_sets, set_size)
        valid = index >= 0
        index = torch.where(valid, index, index[:, :1])
        inverse = torch.empty(n, dtype=torch.long)
        inverse[order] = flat
        out[axis] = SetPartition(index=index, valid=valid, inverse=inverse)
    return out


def ref_pool(coords, spatial_shape, stride):
    sx, sy, sz = stride
    nx, ny, nz, nt = (int(s) for s in spatial_shape)
    px, py, pz = (nx + sx - 1) // sx, (ny + sy - 1) // sy, (nz + sz - 1) // sz
    c = coords.long()
    st = torch.tensor([sx, sy, sz], device=coords.device)
    cell, off = c[:, 1:4] // st, c[:, 1:4] % st
    slot = (off[:, 0] * sy + off[:, 1]) * sz + off[:, 2]
    key = (((c[:, 0] * px + cell[:, 0]) * py + cell[:, 1]) * pz + cell[:, 2]) * nt + c[:, 4]
    uniq, parent = torch.unique(key, sorted=True, return_inverse=True)
    k = sx * sy * sz
    n, p = int(c.shape[0]), int(uniq.shape[0])
    rows = torch.arange(n)
    members = torch.full((p * k,), -1, dtype=torch.long)
    members[parent * k + slot] = rows
    members = members.view(p, k)
    valid = members >= 0
    any_member = torch.full((p,), n, dtype=torch.long).scatter_reduce(0, parent, rows, reduce="amin")
    members = torch.where(valid, members, any_member[:, None])
    t, rest = uniq % nt, uniq // nt
    z, rest = rest % pz, rest // pz
    y, rest = rest % py, rest // py
    x, b = rest % px, rest // px
    return PoolMap(members=members, valid=valid, parent=parent, slot=slot,
                   coords=torch.stack([b, x, y, z, t], dim=1).to(torch.int32), spatial_shape=(px, py, pz, nt))


def ref_plan(net: VoxelTransformer4D, coords, spatial_shape):
    """(partitions, positions) per level and the pooling maps, the previous way."""
    levels, pools = [], []
    shape = tuple(int(s) for s in spatial_shape)
    for lvl in range(len(net.channels)):
        keys = net.plan_keys(lvl)
        windows = list(dict.fromkeys(w for w, _ in keys))
        by_window = {w: ref_partition(coords, shape, w, net.set_size, tuple(a for v, a in keys if v == w))
                     for w in windows}
        levels.append(({(w, a): by_window[w][a] for w, a in keys}, {w: ref_positions(coords, shape, w)
                                                                    for w in windows}, coords, shape))
        if lvl < len(net.channels) - 1:
            pool = ref_pool(coords, shape, net.pool_stride)
            pools.append(pool)
            coords, shape = pool.coords, pool.spatial_shape
    return levels, pools


def assert_same(a, b, where=""):
    """Exact equality of tensors (dtype, shape, values), dataclasses, dicts (with key order) and sequences."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif hasattr(a, "__dataclass_fields__"):
        assert type(a) is type(b), where
        for f in a.__dataclass_fields__:
            assert_same(getattr(a, f), getattr(b, f), f"{where}.{f}")
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            assert_same(u, v, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def assert_plan_equals_reference(plan: BackbonePlan, ref):
    ref_levels, ref_pools = ref
    assert len(plan.levels) == len(ref_levels) and len(plan.pools) == len(ref_pools)
    for lvl, (level, (parts, positions, coords, shape)) in enumerate(zip(plan.levels, ref_levels)):
        assert_same(level.partitions, parts, f"level {lvl} partitions")
        assert_same(level.positions, positions, f"level {lvl} positions")
        assert_same(level.coords, coords, f"level {lvl} coords")
        assert level.spatial_shape == shape
    assert_same(plan.pools, ref_pools, "pools")


# -- equality -----------------------------------------------------------------------------------------------
CASES = [  # (grid, batch, voxels, backbone settings)
    ((24, 20, 6, 5), 2, 600, dict(channels=(16, 32, 32), depths=(1, 1, 2), window_shapes=((4, 4), (6, 6)),
                                  set_size=8, time_mode="window")),
    ((24, 20, 6, 5), 3, 900, dict(channels=(16, 32, 32), depths=(2, 1, 2), window_shapes=((4, 4), (6, 5)),
                                  set_size=7, time_mode="axis", time_window=2)),
    ((33, 17, 9, 11), 1, 2500, dict(channels=(16, 32, 32, 32), depths=(1, 2, 1, 2), window_shapes=((5, 7), (8, 8)),
                                    set_size=32, time_mode="axis", time_window=3, pool_stride=(2, 3, 1))),
    ((40, 40, 4, 3), 2, 3000, dict(channels=(16, 16), depths=(3, 1), window_shapes=((3, 3), (16, 16), (4, 9)),
                                   set_size=5, time_mode="window")),
    ((6, 5, 3, 2), 4, 60, dict(channels=(16, 16, 16), depths=(1, 1, 1), window_shapes=((8, 8),), set_size=3,
                               time_mode="axis", time_window=1)),
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("seed", [0, 1])
def test_the_plan_equals_the_previous_formulation_on_random_coordinates(case, seed):
    shape, batch, n, settings = CASES[case]
    net = VoxelTransformer4D(in_channels=8, **settings)
    coords = _coords(n, shape, batch, seed=10 * case + seed)
    assert_plan_equals_reference(net.plan(coords, shape), ref_plan(net, coords, shape))


def test_the_level_functions_equal_the_previous_formulation():
    shape = (24, 20, 6, 5)
    coords = _coords(700, shape, 2, seed=7)
    for spec in (WindowSpec((4, 4, 0), (0, 0, 0)), WindowSpec((6, 5, 2), (3, 2, 1)), WindowSpec((5, 5, 3), (2, 2, 1))):
        for axes in (("x", "y"), ("y",), ("x",)):
            assert_same(partition_window(coords, shape, spec, 6, axes), ref_partition(coords, shape, spec, 6, axes))
        assert_same(window_positions(coords, shape, spec), ref_positions(coords, shape, spec))
    for stride in ((2, 2, 2), (3, 1, 2), (1, 1, 1)):
        assert_same(pool_regions(coords, shape, stride), ref_pool(coords, shape, stride))


def test_an_empty_level_gives_empty_tables():
    shape = (8, 8, 4, 3)
    coords = torch.zeros((0, 5), dtype=torch.int32)
    w = WindowSpec((4, 4, 0), (2, 2, 0))
    level, pool = plan_level(coords, shape, [(w, "x"), (w, "y")], 6, (2, 2, 2))
    assert_same(level.partitions, {(w, a): p for a, p in ref_partition(coords, shape, w, 6, ("x", "y")).items()})
    assert level.partitions[(w, "x")].index.shape == (0, 6) and level.positions[w].shape == (0, 4)
    assert_same(pool, ref_pool(coords, shape, (2, 2, 2)))
    assert pool.members.shape == (0, 8) and pool.coords.shape == (0, 5)


def test_bad_input_names_the_field():
    shape = (8, 8, 4, 3)
    w = WindowSpec((4, 4, 0), (0, 0, 0))
    with pytest.raises(ValueError, match="coords"):
        plan_level(torch.zeros((3, 4), dtype=torch.int32), shape, [(w, "x")], 6)
    with pytest.raises(ValueError, match="spatial_shape"):
        plan_level(torch.zeros((3, 5), dtype=torch.int32), shape[:3], [(w, "x")], 6)
    with pytest.raises(ValueError, match="set axes"):
        plan_level(torch.zeros((3, 5), dtype=torch.int32), shape, [(w, "z")], 6)
    with pytest.raises(ValueError, match="set_size"):
        plan_level(torch.zeros((3, 5), dtype=torch.int32), shape, [(w, "x")], 0)


# -- host synchronisations -----------------------------------------------------------------------------------
_aten = torch.ops.aten
_DATA_SIZED = {_aten.nonzero.default, _aten._unique2.default, _aten.unique_dim.default,
               _aten.unique_consecutive.default, _aten.unique_dim_consecutive.default, _aten.masked_select.default,
               _aten._local_scalar_dense.default, _aten.equal.default, _aten.is_nonzero.default}
_INDEX_OPS = {_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default, _aten._index_put_impl_.default}


class _DispatchSyncs(TorchDispatchMode):
    def __init__(self, counts: Counter):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _DATA_SIZED:
            self.counts[func.overloadpacket.__name__] += 1
        elif func in (_aten.repeat_interleave.Tensor, _aten.repeat_interleave.self_Tensor) \
                and kwargs.get("output_size") is None:
            self.counts["repeat_interleave without output_size"] += 1
        elif func in _INDEX_OPS and any(i is not None and i.dtype == torch.bool for i in args[1]):
            self.counts["boolean index"] += 1
        return func(*args, **kwargs)


class _FunctionSyncs(TorchFunctionMode):
    def __init__(self, counts: Counter):
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("tolist", "numpy", "cpu"):  # item/int()/bool() reach the dispatcher as _local_scalar_dense
            self.counts[f"Tensor.{name}"] += 1
        elif name in ("tensor", "as_tensor") and kwargs.get("device") is not None:
            self.counts["host data to the device"] += 1
        return func(*args, **kwargs)


class SyncCounter:
    """Counts the host synchronisation points of the torch code run inside it (see the module docstring)."""

    def __enter__(self):
        self.counts = Counter()
        self._modes = [_FunctionSyncs(self.counts), _DispatchSyncs(self.counts)]
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc):
        for m in reversed(self._modes):
            m.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def test_the_counter_sees_each_kind_of_synchronisation():
    x = torch.tensor([3, 1, 3, 2])
    with SyncCounter() as sc:
        x.unique()
        x.nonzero()
        x[x > 1]
        int(x.sum())
        x.tolist()
        torch.repeat_interleave(x)
        torch.tensor([1, 2], device=x.device)
        torch.sort(x)  # not a synchronisation
    assert sc.counts == {"_unique2": 1, "nonzero": 1, "boolean index": 1, "_local_scalar_dense": 1, "Tensor.tolist": 1,
                         "repeat_interleave without output_size": 1, "host data to the device": 1}
    net = VoxelTransformer4D(in_channels=8, channels=(16, 32), depths=(1, 1))
    with SyncCounter() as sc:
        ref_plan(net, _coords(300, (16, 16, 4, 5), 1, 0), (16, 16, 4, 5))
    # the previous formulation: 3 window partitions (two on level 0, one on level 1) and one pooling
    assert sc.counts == {"unique_consecutive": 3, "_local_scalar_dense": 3, "host data to the device": 4, "_unique2": 1}


@pytest.mark.parametrize("time_mode", ["window", "axis"])
def test_one_host_synchronisation_per_level(time_mode):
    shape = (33, 17, 9, 11)
    net = VoxelTransformer4D(in_channels=8, channels=(16, 32, 32, 32), depths=(1, 2, 1, 2), time_mode=time_mode,
                             window_shapes=((5, 7), (8, 8)), set_size=16, time_window=3)
    coords = _coords(2500, shape, 2, seed=3)
    with SyncCounter() as sc:
        plan = net.plan(coords, shape)
    assert sc.counts == {"Tensor.tolist": len(plan.levels)}, sc.counts


def test_shift_and_mask_division_equals_floor_division():
    from perception4d.models.dsvt.partition import _floor_div, _floor_div_mod

    x = torch.arange(-70, 70)
    for d in (1, 2, 4, 8, 32, 3, 12, 24):
        q, r = _floor_div_mod(x, d)
        assert torch.equal(q, x // d) and torch.equal(r, x % d) and torch.equal(_floor_div(x, d), x // d), d
