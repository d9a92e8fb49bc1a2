"""CPU voxelization kernels (numba).

Each kept point gets a linear int64 key ``(((b*X + x)*Y + y)*Z + z)*T + t``,
whose numeric order is the lexicographic order of ``(b, x, y, z, t)``. The
kept keys are put in order by a stable LSD radix sort (a few linear passes,
no comparison sort), then a pass over the sorted keys yields the unique
voxels, the inverse map, the counts and the means (summed in float64).
Each stage splits its loop into one contiguous chunk per numba thread.

Quantization is done in float32 with the bounds rounded to float32, exactly
as the torch backend does it, so the two give identical voxels.
"""

from __future__ import annotations

import numba
import numpy as np

from perception4d.ops import VoxelArrays

# key codes for dropped points
_OUT_OF_RANGE = -1
_NON_FINITE = -2


def _jit(parallel: bool = False):
    """``njit(cache=True)``, without the cache where no cache folder is writable.

    The GIL stays held: concurrent launches from several Python threads would
    abort under numba's workqueue threading layer.
    """

    def wrap(fn):
        try:
            return numba.njit(cache=True, parallel=parallel)(fn)
        except RuntimeError:  # numba found no writable cache location
            return numba.njit(cache=False, parallel=parallel)(fn)

    return wrap


@_jit(parallel=True)
def _point_keys(points, time, batch, lo, hi, vs, dims, keys):
    """Linear voxel key of each point, or a negative drop code."""
    n, c = points.shape
    nx, ny, nz, nt = dims[0], dims[1], dims[2], dims[3]
    has_batch = batch.shape[0] > 0
    for i in numba.prange(n):
        finite = True
        for j in range(c):
            if not np.isfinite(points[i, j]):
                finite = False
        if not finite:
            keys[i] = _NON_FINITE
        else:
            x = points[i, 0]
            y = points[i, 1]
            z = points[i, 2]
            if x < lo[0] or x >= hi[0] or y < lo[1] or y >= hi[1] or z < lo[2] or z >= hi[2]:
                keys[i] = _OUT_OF_RANGE
            else:
                # float32 arithmetic; rounding can give the upper edge index, clamp it to the grid
                ix = min(np.int64(np.floor((x - lo[0]) / vs[0])), nx - 1)
                iy = min(np.int64(np.floor((y - lo[1]) / vs[1])), ny - 1)
                iz = min(np.int64(np.floor((z - lo[2]) / vs[2])), nz - 1)
                b = np.int64(batch[i]) if has_batch else np.int64(0)
                keys[i] = (((b * nx + ix) * ny + iy) * nz + iz) * nt + np.int64(time[i])


@_jit(parallel=True)
def _radix_sort(keys, nbits, digit_bits, nchunk):
    """Stable LSD radix sort of the non-negative keys; returns (sorted keys, their point index, drop counts).

    Work is split into ``nchunk`` contiguous chunks with one histogram each, so
    every chunk scatters independently and the result stays stable. ``keys``
    is overwritten (it serves as a buffer once the first pass has read it).
    """
    n = keys.shape[0]
    radix = 1 << digit_bits
    mask = radix - 1
    npass = max(1, (nbits + digit_bits - 1) // digit_bits)
    bounds = np.empty(nchunk + 1, np.int64)
    for t in range(nchunk + 1):
        bounds[t] = n * t // nchunk
    hist = np.zeros((nchunk, radix), np.int64)
    tally = np.zeros((nchunk, 3), np.int64)  # kept, out of range, non-finite
    for t in numba.prange(nchunk):
        for i in range(bounds[t], bounds[t + 1]):
            k = keys[i]
            if k >= 0:
                tally[t, 0] += 1
                hist[t, k & mask] += 1
            elif k == _OUT_OF_RANGE:
                tally[t, 1] += 1
            else:
                tally[t, 2] += 1
    kept = 0
    for t in range(nchunk):
        kept += tally[t, 0]
    a_key = keys[:kept]  # the input keys are consumed by pass 0, so their memory is reused
    a_idx = np.empty(kept, np.int32)
    b_key = np.empty(kept, np.int64)
    b_idx = np.empty(kept, np.int32)
    kb = np.empty(nchunk + 1, np.int64)  # chunks of the compacted array
    for t in range(nchunk + 1):
        kb[t] = kept * t // nchunk
    start = np.empty((nchunk, radix), np.int64)
    for p in range(npass):
        shift = p * digit_bits
        if p > 0:
            for t in numba.prange(nchunk):
                hist[t, :] = 0
                for j in range(kb[t], kb[t + 1]):
                    hist[t, (a_key[j] >> shift) & mask] += 1
        acc = 0
        for d in range(radix):
            for t in range(nchunk):
                start[t, d] = acc
                acc += hist[t, d]
        if p == 0:  # the first pass also drops the negative codes
            for t in numba.prange(nchunk):
                for i in range(bounds[t], bounds[t + 1]):
                    k = keys[i]
                    if k >= 0:
                        d = k & mask
                        pos = start[t, d]
                        start[t, d] = pos + 1
                        b_key[pos] = k
                        b_idx[pos] = i
        else:
            for t in numba.prange(nchunk):
                for j in range(kb[t], kb[t + 1]):
                    k = a_key[j]
                    d = (k >> shift) & mask
                    pos = start[t, d]
                    start[t, d] = pos + 1
                    b_key[pos] = k
                    b_idx[pos] = a_idx[j]
        a_key, b_key = b_key, a_key
        a_idx, b_idx = b_idx, a_idx
    return a_key, a_idx, tally[:, 1].sum(), tally[:, 2].sum()


@_jit(parallel=True)
def _reduce_sorted(points, s_key, s_idx, dims, nchunk):
    """Unique voxels of sorted keys: coords, mean features, counts and the point -> voxel map."""
    n, c = points.shape
    kept = s_key.shape[0]
    # chunk bounds moved forward to voxel boundaries, so no voxel spans two chunks
    vb = np.empty(nchunk + 1, np.int64)
    vb[0] = 0
    for t in range(1, nchunk + 1):
        s = max(kept * t // nchunk, vb[t - 1])
        while 0 < s < kept and s_key[s] == s_key[s - 1]:
            s += 1
        vb[t] = s
    first = np.zeros(nchunk + 1, np.int64)  # first voxel row of each chunk (prefix sums)
    for t in numba.prange(nchunk):
        m = 0
        for j in range(vb[t], vb[t + 1]):
            if j == vb[t] or s_key[j] != s_key[j - 1]:
                m += 1
        first[t + 1] = m
    for t in range(nchunk):
        first[t + 1] += first[t]
    nvox = first[nchunk]

    counts = np.empty(nvox, np.int32)
    feats = np.empty((nvox, c), np.float32)
    coords = np.empty((nvox, 5), np.int32)
    p2v = np.full(n, -1, np.int64)
    nx, ny, nz, nt = dims[0], dims[1], dims[2], dims[3]
    for t in numba.prange(nchunk):
        acc = np.empty(c, np.float64)  # float64 sums of the current voxel
        v = first[t]
        j = vb[t]
        while j < vb[t + 1]:
            k = s_key[j]
            for q in range(c):
                acc[q] = 0.0
            m = 0
            while j < vb[t + 1] and s_key[j] == k:
                i = s_idx[j]
                p2v[i] = v
                for q in range(c):
                    acc[q] += points[i, q]
                m += 1
                j += 1
            counts[v] = m
            for q in range(c):
                feats[v, q] = acc[q] / m
            coords[v, 4] = k % nt
            k //= nt
            coords[v, 3] = k % nz
            k //= nz
            coords[v, 2] = k % ny
            k //= ny
            coords[v, 1] = k % nx
            coords[v, 0] = k // nx
            v += 1
    return coords, feats, counts, p2v


def digit_bits_for(nbits: int) -> int:
    """Radix digit width: the fewest passes with digits of at most 16 bits, split evenly."""
    npass = max(1, -(-nbits // 16))
    return max(1, -(-nbits // npass))


def voxelize_numba(points: np.ndarray, time: np.ndarray, batch: np.ndarray | None,
                   lower: np.ndarray, upper: np.ndarray, voxel_size: np.ndarray,
                   dims: tuple[int, int, int, int, int]) -> VoxelArrays:
    """Voxelize validated CPU arrays.

    points (P, C) float32 C-contiguous; time (P,) int32 already checked to lie in [0, T);
    batch (P,) int32 in [0, B) or None; lower/upper/voxel_size float32 (3,);
    dims (B, X, Y, Z, T) with B*X*Y*Z*T < 2**63.
    """
    if points.shape[0] >= 2**31:
        raise ValueError(f"voxelize_numba: {points.shape[0]} points exceed the int32 point index")
    nb, nx, ny, nz, nt = (int(d) for d in dims)
    keys = np.empty(points.shape[0], np.int64)
    time = time.astype(np.int32, copy=False)
    batch_arr = np.zeros(0, np.int32) if batch is None else batch.astype(np.int32, copy=False)
    grid = np.array([nx, ny, nz, nt], np.int64)
    _point_keys(points, time, batch_arr, lower, upper, voxel_size, grid, keys)
    nbits = max(1, int(nb * nx * ny * nz * nt - 1).bit_length())
    nchunk = max(1, min(numba.get_num_threads(), points.shape[0] // 4096))
    s_key, s_idx, n_oor, n_nf = _radix_sort(keys, nbits, digit_bits_for(nbits), nchunk)
    coords, feats, counts, p2v = _reduce_sorted(points, s_key, s_idx, grid, nchunk)
    return VoxelArrays(coords, feats, counts, p2v, int(n_oor), int(n_nf))
