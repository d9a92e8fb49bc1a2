"""Property tests of voxelize(): voxel bounds, uniqueness and order, inverse map, counts, means, drops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from perception4d.core.geometry import Geometry
from perception4d.core.voxelize import voxelize

SETTINGS = settings(max_examples=50, deadline=None)
BACKENDS = pytest.mark.parametrize("backend", ["numba", "torch"])


@st.composite
def scenes(draw):
    """A geometry and points around it: random, on voxel faces, at the bounds, and non-finite."""
    cells = [draw(st.integers(1, 12)) for _ in range(3)]
    vs = [draw(st.sampled_from([0.05, 0.1, 0.2, 0.25, 0.3, 1.0])) for _ in range(3)]
    lo = [draw(st.integers(-40, 10)) * 0.1 for _ in range(3)]
    geom = Geometry(tuple(lo) + tuple(lo[i] + cells[i] * vs[i] for i in range(3)), tuple(vs),
                    draw(st.integers(1, 4)))
    n = draw(st.integers(0, 120))
    c = draw(st.integers(3, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    glo, ghi = geom.lower.astype(np.float64), geom.upper.astype(np.float64)
    span = ghi - glo
    pts = np.empty((n, c), np.float32)
    pts[:, :3] = rng.uniform(glo - 0.2 * span, ghi + 0.2 * span, size=(n, 3))
    pts[:, 3:] = rng.normal(scale=10.0, size=(n, c - 3))
    # special values on random cells: 0 bound min, 1 bound max, 2 a voxel face, 3 NaN/Inf
    for i, j in zip(rng.integers(0, max(n, 1), size=n // 3), rng.integers(0, 3, size=n // 3)):
        kind = rng.integers(0, 4)
        if kind == 0:
            pts[i, j] = geom.lower[j]
        elif kind == 1:
            pts[i, j] = geom.upper[j]
        elif kind == 2:
            face = rng.integers(0, geom.grid_shape[j] + 1)
            pts[i, j] = np.float32(geom.lower[j] + face * geom.voxel_size[j])
        else:
            pts[i, rng.integers(0, c)] = rng.choice([np.nan, np.inf, -np.inf])
    nb = draw(st.integers(1, 3))
    time = rng.integers(0, geom.num_frames, size=n)
    batch = rng.integers(0, nb, size=n)
    return geom, pts, time, batch


def _kept_mask(geom: Geometry, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    finite = np.isfinite(pts).all(1)
    with np.errstate(invalid="ignore"):
        inside = ((pts[:, :3] >= geom.lower) & (pts[:, :3] < geom.upper)).all(1)
    return finite, finite & inside


@BACKENDS
@SETTINGS
@given(scenes())
def test_voxel_structure_and_drop_counts(backend, scene):
    geom, pts, time, batch = scene
    out = voxelize(pts, time, geom, batch=batch, backend=backend)
    out.validate()
    coords = out.coords.numpy().astype(np.int64)
    p2v = out.point_to_voxel.numpy()
    finite, kept = _kept_mask(geom, pts)

    # drops: counted exactly by reason, and only those points lack a voxel
    assert out.dropped.non_finite == int((~finite).sum())
    assert out.dropped.out_of_range == int((finite & ~kept).sum())
    assert np.array_equal(p2v >= 0, kept)

    # unique rows in lexicographic (b, x, y, z, t) order
    if len(coords) > 1:
        assert np.all(np.diff(coords[np.lexsort(coords.T[::-1])], axis=0).any(1))
        assert np.array_equal(np.lexsort(coords.T[::-1]), np.arange(len(coords)))

    # every kept point lies in its voxel (float32 rounding tolerance) at its own batch and time
    vc = coords[p2v[kept]]
    assert np.array_equal(vc[:, 0], batch[kept]) and np.array_equal(vc[:, 4], time[kept])
    vs = np.asarray(geom.voxel_size)
    lo = np.asarray(geom.point_range[:3])
    tol = 1e-6 * (1.0 + np.abs(np.asarray(geom.point_range)).max())
    xyz = pts[kept, :3].astype(np.float64)
    assert np.all(xyz >= lo + vc[:, 1:4] * vs - tol) and np.all(xyz < lo + (vc[:, 1:4] + 1) * vs + tol)

    # the inverse map round-trips to each point's own quantized (b, x, y, z, t)
    q = np.floor((pts[kept, :3] - geom.lower) / np.asarray(geom.voxel_size, np.float32)).astype(np.int64)
    q = np.minimum(q, np.asarray(geom.grid_shape) - 1)
    assert np.array_equal(vc, np.column_stack([batch[kept], q, time[kept]]))

    # counts are the bincount of the inverse map; features the brute-force per-voxel mean
    assert np.array_equal(out.counts.numpy(), np.bincount(p2v[kept], minlength=len(coords)))
    assert out.features.shape == (len(coords), pts.shape[1])
    ref = np.zeros((len(coords), pts.shape[1]))
    for v in range(len(coords)):
        ref[v] = pts[p2v == v].astype(np.float64).mean(0)
    np.testing.assert_allclose(out.features.numpy(), ref, rtol=1e-6, atol=1e-6)


@BACKENDS
@SETTINGS
@given(scenes(), st.integers(0, 2**32 - 1))
def test_permuting_points_permutes_the_inverse_map_only(backend, scene, seed):
    geom, pts, time, batch = scene
    perm = np.random.default_rng(seed).permutation(len(pts))
    a = voxelize(pts, time, geom, batch=batch, backend=backend)
    b = voxelize(torch.from_numpy(pts[perm]), torch.from_numpy(time[perm]), geom,
                 batch=torch.from_numpy(batch[perm]), backend=backend)
    assert torch.equal(a.coords, b.coords) and torch.equal(a.counts, b.counts)
    assert torch.equal(b.point_to_voxel, a.point_to_voxel[torch.from_numpy(perm)])
    torch.testing.assert_close(a.features, b.features, rtol=1e-6, atol=1e-6)
    assert a.dropped == b.dropped and a.batch_size == b.batch_size
