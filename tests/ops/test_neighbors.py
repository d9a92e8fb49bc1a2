"""Neighbour tables of 4D sparse voxels against brute-force references and against spconv's own convolutions."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from perception4d.ops.neighbors import KeyCodec, build_unet_plan, kernel_offsets, strided_shape


def _random_coords(seed: int, n: int, shape, batch: int = 2) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    c = np.c_[rng.integers(0, batch, n), *(rng.integers(0, s, n) for s in shape)]
    return torch.from_numpy(np.unique(c, axis=0)[rng.permutation(len(np.unique(c, axis=0)))]).to(torch.int32)


def _brute_subm(coords: torch.Tensor, kernel) -> np.ndarray:
    rows = {tuple(c): i for i, c in enumerate(coords.tolist())}
    n = len(rows)
    offs = kernel_offsets(kernel).tolist()
    return np.array([[rows.get((c[0], *(a + d for a, d in zip(c[1:], o))), n) for o in offs]
                     for c in coords.tolist()], dtype=np.int64).reshape(n, len(offs))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 300), shape=st.tuples(*[st.integers(2, 9)] * 3, st.integers(1, 4)))
def test_submanifold_tables_equal_a_dictionary_lookup(seed, n, shape):
    coords = _random_coords(seed, n, shape)
    plan = build_unet_plan(coords, shape, 2, 1)
    for kernel in ((3, 3, 3, 1), (1, 1, 1, 3)):
        np.testing.assert_array_equal(plan.levels[0].subm[kernel].numpy().T, _brute_subm(coords, kernel))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 300), shape=st.tuples(*[st.integers(2, 9)] * 3, st.integers(1, 3)))
@example(seed=1, n=1, shape=(2, 2, 3, 1))  # the only voxel lies beyond the coarse grid: an empty coarse level
def test_down_and_up_tables_follow_p_div_2(seed, n, shape):
    coords = _random_coords(seed, n, shape)
    plan = build_unet_plan(coords, shape, 2, 2)
    fine, coarse = plan.levels
    assert coarse.spatial_shape == strided_shape(shape)
    parents = {}
    for i, c in enumerate(coords.tolist()):
        p = (c[0], c[1] // 2, c[2] // 2, c[3] // 2, c[4])
        if all(p[a + 1] < coarse.spatial_shape[a] for a in range(3)):  # spconv drops sites beyond the coarse grid
            parents.setdefault(p, {})[(c[1] % 2) * 4 + (c[2] % 2) * 2 + (c[3] % 2)] = i
    n_coarse = int(coarse.count)  # a level with no voxels keeps one padding row (capacity >= 1)
    got = {tuple(c): r for r, c in enumerate(coarse.coords[:n_coarse].tolist())}
    assert set(got) == set(parents) and n_coarse == len(parents) and coarse.n == max(n_coarse, 1)
    down = fine.down.numpy().T
    for p, children in parents.items():
        expect = [children.get(k, fine.n) for k in range(8)]
        assert list(down[got[p]]) == expect
    up = fine.up.numpy()
    for p, children in parents.items():
        for k, i in children.items():
            assert up[i] == got[p] * 8 + k
    orphans = [i for i in range(fine.n) if i not in {i for ch in parents.values() for i in ch.values()}]
    assert all(up[i] == coarse.n * 8 for i in orphans)
    assert fine.down.shape == (8, coarse.n) and fine.down.dtype == torch.int32


def test_padded_plan_with_capacities_equals_the_exact_plan_and_flags_overflow():
    shape = (40, 40, 8, 3)
    coords = _random_coords(3, 4000, shape)
    exact = build_unet_plan(coords, shape, 2, 3)
    counts = exact.counts.tolist()
    junk = torch.randint(0, 5, (500, 5), dtype=torch.int32)  # padding rows: arbitrary, must be ignored
    caps = (counts[1] + 37, counts[2] + 11)
    padded = build_unet_plan(torch.cat([coords, junk]), shape, 2, 3, count=len(coords), capacities=caps)
    assert padded.counts.tolist() == counts and not bool(padded.overflow)
    assert padded.capacities == (len(coords) + 500, *caps)
    for e, p in zip(exact.levels, padded.levels):
        n = e.n
        for k in e.subm:
            t = p.subm[k][:, :n]
            np.testing.assert_array_equal(torch.where(t == p.n, n, t).numpy(), e.subm[k].numpy())
            assert bool((p.subm[k][:, n:] >= n).all()), "padding rows read padding or the sentinel, never voxels"
        np.testing.assert_array_equal(p.coords[:n].numpy(), e.coords.numpy())
        if e.down is not None:
            nn_ = e.down.shape[1]
            d = p.down[:, :nn_]
            np.testing.assert_array_equal(torch.where(d == p.n, n, d).numpy(), e.down.numpy())
            assert bool((p.down[:, nn_:] == p.n).all())
            u = p.up[:n]
            np.testing.assert_array_equal(torch.where(u == caps[e is exact.levels[1]] * 8, nn_ * 8, u).numpy(),
                                          e.up.numpy())
    tight = build_unet_plan(torch.cat([coords, junk]), shape, 2, 3, count=len(coords),
                            capacities=(counts[1] - 1, counts[2]))
    assert bool(tight.overflow)


def test_key_codec_round_trips_and_neighbour_offsets_never_wrap():
    codec = KeyCodec((5, 4, 3, 2), 3)
    coords = torch.tensor(list(itertools.product(range(3), range(5), range(4), range(3), range(2))), dtype=torch.int32)
    keys = codec.encode(coords)
    assert len(torch.unique(keys)) == len(coords)
    np.testing.assert_array_equal(codec.decode(keys).numpy(), coords.numpy())
    # a neighbour query past any border never lands on another voxel's key
    deltas = codec.delta(kernel_offsets((3, 3, 3, 3)))
    q = keys[:, None] + deltas[None]
    inside = np.isin(q.numpy(), keys.numpy())
    shifted = coords[:, None, 1:] + kernel_offsets((3, 3, 3, 3))[None]
    valid = ((shifted >= 0) & (shifted < torch.tensor([5, 4, 3, 2]))).all(-1)
    np.testing.assert_array_equal(inside, valid.numpy())
    with pytest.raises(ValueError, match="odd"):
        kernel_offsets((2, 3, 3, 1))
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        build_unet_plan(torch.zeros(4, 4, dtype=torch.int32), (4, 4, 4, 1), 1, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("cin,cout,k", [(16, 16, 27), (16, 32, 8), (64, 64, 3), (32, 64, 27)])
def test_triton_gather_conv_equals_the_gather_then_gemm_reference(dtype, cin, cout, k):
    from perception4d.ops.gather_conv import gather_conv_torch, gather_conv_triton, triton_available

    if not triton_available():
        pytest.skip("Triton is not installed")
    torch.manual_seed(0)
    n_in, n = 5000, 7001
    xs = torch.cat([torch.randn(n_in, cin), torch.zeros(1, cin)]).to("cuda", dtype)
    table = torch.randint(0, n_in + 1, (k, n), device="cuda", dtype=torch.int32)
    table[::2, ::3] = n_in  # many missing neighbours (the sentinel row)
    w = (torch.randn(k * cin, cout) * 0.1).to("cuda", dtype)
    b = torch.randn(cout).to("cuda", dtype)
    ref = gather_conv_torch(xs.float(), table, w.float(), b.float())
    out = gather_conv_triton(xs, table, w, b)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("c", [16, 64])
def test_triton_row_gather_with_bias_and_relu_equals_index_select(dtype, c):
    from perception4d.ops.gather_conv import gather_rows, triton_available

    if not triton_available():
        pytest.skip("Triton is not installed")
    torch.manual_seed(0)
    src = torch.randn(3001, c, device="cuda", dtype=dtype)
    src[-1] = 0  # the sentinel row (never read by the kernel)
    idx = torch.randint(0, 3001, (10007,), device="cuda", dtype=torch.int32)
    b = torch.randn(c, device="cuda", dtype=dtype)
    torch.testing.assert_close(gather_rows(src, idx, b, relu=True), torch.relu(src[idx.long()] + b))
    torch.testing.assert_close(gather_rows(src, idx), src[idx.long()])
