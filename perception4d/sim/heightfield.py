"""Numba kernels of the terrain height field (``perception4d.sim.terrain``), in world coordinates.

``sc`` is ``Terrain.scalars`` (indices below), ``wv`` is ``Terrain.waves``
(rows kx, ky, amplitude, phase; relief first). Every kernel that calls
another lives in this module: numba's on-disk cache does not notice edits to
a callee in another file, so the ray caster and the occupancy rasterizer call
the entry points here (``march_rays``, ``ground_levels``) from Python.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

# Layout of Terrain.scalars.
RW, WC, HC, SC, C0, SW, SSW, ST, VW, NREL, RSUM, GREL, GROUGH, GPROF, GRAMP, HLO, HHI, CURV = range(18)
NUM_SCALARS = 18
GROUND = -1  # primitive index of a ground hit (as in ``perception4d.sim.raycast``)
_OVERSTEP = 0.005  # m: how far past the bound a march step may go (see ``march``)


@nb.njit(cache=True)
def profile(sc, y):
    """Cross profile at world y: height and d/dy."""
    a = abs(y)
    rw, c0 = sc[RW], sc[C0]
    ac = min(a, rw)
    q = math.sqrt(ac * ac + c0 * c0)
    p = -sc[SC] * (q - c0)
    dp = -sc[SC] * ac / q if a < rw else 0.0
    u = a - rw
    if u > 0.0:
        if u < sc[WC]:
            p += sc[HC] * u / sc[WC]
            dp += sc[HC] / sc[WC]
        else:
            p += sc[HC]
        if u < sc[SW]:
            p += sc[SSW] * u
            dp += sc[SSW]
        else:
            p += sc[SSW] * sc[SW]
            v = u - sc[SW]
            if v < sc[VW]:
                p += sc[ST] * v
                dp += sc[ST]
            else:
                p += sc[ST] * sc[VW]
    return p, (dp if y >= 0.0 else -dp)


@nb.njit(cache=True)
def wave_sum(wv, lo, hi, x, y):
    """Sum of the sinusoids lo..hi-1 at (x, y)."""
    h = 0.0
    for k in range(lo, hi):
        h += wv[k, 2] * math.sin(wv[k, 0] * x + wv[k, 1] * y + wv[k, 3])
    return h


@nb.njit(cache=True)
def surface(sc, wv, x, y):
    """Height and gradient (h, dh/dx, dh/dy) at world (x, y)."""
    h, gy = profile(sc, y)
    gx = 0.0
    for k in range(wv.shape[0]):
        arg = wv[k, 0] * x + wv[k, 1] * y + wv[k, 3]
        h += wv[k, 2] * math.sin(arg)
        c = wv[k, 2] * math.cos(arg)
        gx += c * wv[k, 0]
        gy += c * wv[k, 1]
    return h, gx, gy


@nb.njit(cache=True)
def surface_many(sc, wv, x, y):  # serial: the callers pass tens to thousands of points
    n = x.shape[0]
    h, gx, gy = np.empty(n), np.empty(n), np.empty(n)
    for i in range(n):
        h[i], gx[i], gy[i] = surface(sc, wv, x[i], y[i])
    return h, gx, gy



@nb.njit(cache=True)
def height_at(sc, wv, x, y):
    """Height only (cheaper than ``surface``)."""
    p, _ = profile(sc, y)
    return p + wave_sum(wv, 0, wv.shape[0], x, y)


@nb.njit(cache=True)
def _smooth_gradient(sc, wv, nrel, x, y):
    """Gradient of relief + profile (the shading normal: roughness tilts it by under 3 deg)."""
    _, gy = profile(sc, y)
    gx = 0.0
    for k in range(nrel):
        c = wv[k, 2] * math.cos(wv[k, 0] * x + wv[k, 1] * y + wv[k, 3])
        gx += c * wv[k, 0]
        gy += c * wv[k, 1]
    return gx, gy


@nb.njit(cache=True)
def _ramp_intervals(sc, py, uy):
    """Ray parameter intervals (a1, b1, a2, b2), a1 <= a2, over the two curb faces (inf: none)."""
    rw, wc = sc[RW], sc[WC]
    if abs(uy) < 1e-12:
        if rw <= abs(py) <= rw + wc:
            return -math.inf, math.inf, math.inf, math.inf
        return math.inf, math.inf, math.inf, math.inf
    t1, t2 = (rw - py) / uy, (rw + wc - py) / uy
    t3, t4 = (-rw - py) / uy, (-rw - wc - py) / uy
    lo_p, hi_p, lo_m, hi_m = min(t1, t2), max(t1, t2), min(t3, t4), max(t3, t4)
    if lo_p <= lo_m:
        return lo_p, hi_p, lo_m, hi_m
    return lo_m, hi_m, lo_p, hi_p


@nb.njit(cache=True)
def _refine(sc, wv, px, py, pz, ux, uy, uz, ta, fa, tb, fb):
    """Root of f = z(t) - h(t) in [ta, tb] (f(ta) > 0 >= f(tb); fa = nan: not known yet) to 1e-6 m.

    Illinois variant of regula falsi: superlinear on the smooth surface, safe on the curb's kinks.
    """
    if not fa > 0.0:
        fa = pz + ta * uz - height_at(sc, wv, px + ta * ux, py + ta * uy)
        if fa <= 0.0:
            return ta
    side, tm = 0, tb
    for _ in range(80):
        tm = (fa * tb - fb * ta) / (fa - fb)
        if not ta < tm < tb:
            tm = 0.5 * (ta + tb)
        fm = pz + tm * uz - height_at(sc, wv, px + tm * ux, py + tm * uy)
        if fm > 0.0:
            ta, fa = tm, fm
            if side == 1:
                fb *= 0.5
            side = 1
        else:
            tb, fb = tm, fm
            if side == -1:
                fa *= 0.5
            side = -1
        if abs(fm) < 1e-6 or tb - ta < 1e-6:
            break
    return tm


@nb.njit(cache=True)
def march(sc, wv, px, py, pz, ux, uy, uz, t_end):
    """First ground hit of the ray from world (px, py, pz) along unit (ux, uy, uz) within (0, t_end].

    Returns (t, |cos incidence| against the normal of relief + profile), or (inf, 0.0). Sphere tracing on height
    bounds: the relief + profile surface raised by the roughness bound is an
    upper envelope of the ground; the slope bounds of the parts along this
    ray's horizontal direction (sum of amplitude x |k . u| over the sinusoids;
    the profile's slope x |u_y|, with the curb face's much larger one over the
    parameter intervals where the ray is above a curb face) bound how fast the
    gap between ray and surface can close. Each step closes at most the gap
    plus ``_OVERSTEP`` (5 mm): the march may step over a dip of the ray
    under the ground shallower than that (a grazing touch of a roughness
    crest) but never a deeper one, and it reaches the surface in finitely many
    steps. Near the envelope the true surface and its full bound take over;
    the crossing is refined by regula falsi to 1e-6 m (points are stored as float32).
    """
    nrel, nw = int(sc[NREL]), wv.shape[0]
    t = 0.0
    if uz < 0.0:
        t = max(0.0, (sc[HHI] - pz) / uz)
        t_end = min(t_end, (sc[HLO] - pz) / uz + 1e-6)
    elif pz > sc[HHI]:
        return math.inf, 0.0
    elif uz > 0.0:
        t_end = min(t_end, (sc[HHI] - pz) / uz)
    base, rough_rate, rsum = max(0.0, -uz) + 1e-12, 0.0, sc[RSUM]
    for k in range(nw):
        r = abs(wv[k, 2] * (wv[k, 0] * ux + wv[k, 1] * uy))
        if k < nrel:
            base += r
        else:
            rough_rate += r
    rate_out, rate_in = base + abs(uy) * sc[GPROF], base + abs(uy) * sc[GRAMP]
    a1, b1, a2, b2 = _ramp_intervals(sc, py, uy)
    t_prev, f_prev = t, math.nan
    for _ in range(1_000_000):  # each step advances at least _OVERSTEP / rate; the cap only guards
        if t > t_end:
            break
        x, y, z = px + t * ux, py + t * uy, pz + t * uz
        p, _ = profile(sc, y)
        f_env = z - p - wave_sum(wv, 0, nrel, x, y) - rsum
        if a1 <= t < b1:
            rate, limit = rate_in, b1
        elif a2 <= t < b2:
            rate, limit = rate_in, b2
        else:
            rate, limit = rate_out, (a1 if a1 > t else (a2 if a2 > t else math.inf))
        step = (f_env + _OVERSTEP) / rate
        f = math.nan
        if f_env < 2.0 * rsum + 0.01:
            f = f_env + rsum - wave_sum(wv, nrel, nw, x, y)
            if f <= 0.0:
                if t > t_prev:
                    t = _refine(sc, wv, px, py, pz, ux, uy, uz, t_prev, f_prev, t, f)
                gx, gy = _smooth_gradient(sc, wv, nrel, px + t * ux, py + t * uy)
                return t, abs(uz - gx * ux - gy * uy) / math.sqrt(1.0 + gx * gx + gy * gy)
            step = max(step, (f + _OVERSTEP) / (rate + rough_rate))
        limit = min(limit, t_end)
        if limit > t and t + step > limit:
            step = limit - t
        t_prev, f_prev = t, f
        t += step
    return math.inf, 0.0


@nb.njit(parallel=True, cache=True)
def march_rays(origins, dirs, best, who, cosi, sc, wv, frame, min_range, max_range):
    """Ground pass of the ray caster: march each ray up to its primitive hit (``best``), then gate.

    ``best``, ``who``, ``cosi``: nearest primitive hit per ray (range, index,
    |cos|; inf / -2 / 0 for none), updated in place; afterwards a ray whose
    nearest surface lies outside [min_range, max_range] has none.
    ``frame`` = (x, y, cos yaw, sin yaw) places the casting frame in the world
    (world xy = (x, y) + R(yaw) local xy; z shared).
    """
    c, s = frame[2], frame[3]
    for i in nb.prange(origins.shape[0]):
        ox, oy, oz = origins[i, 0], origins[i, 1], origins[i, 2]
        dx, dy, dz = dirs[i, 0], dirs[i, 1], dirs[i, 2]
        tg, cg = march(sc, wv, frame[0] + c * ox - s * oy, frame[1] + s * ox + c * oy, oz, c * dx - s * dy,
                       s * dx + c * dy, dz, min(best[i], max_range))
        if tg < best[i]:
            best[i], who[i], cosi[i] = tg, GROUND, cg
        if not min_range <= best[i] <= max_range:
            best[i], who[i], cosi[i] = math.inf, -2, 0.0


@nb.njit(parallel=True, cache=True)
def ground_levels(sc, wv, rot, trans, xs, ys, tol):
    """(len(xs), len(ys)) ego z where the ego-vertical line through (xs[i], ys[j]) meets the ground + tol.

    ``rot``, ``trans``: world_T_ego. Along an ego-vertical line z_world - h
    grows monotonically (the tilt is a few degrees, the slopes bounded), so the
    crossing is unique. Newton steps usually settle it in two evaluations;
    otherwise (near a curb's kinks) it is bracketed and refined by regula falsi.
    """
    out = np.empty((xs.shape[0], ys.shape[0]))
    for i in nb.prange(xs.shape[0]):
        for j in range(ys.shape[0]):
            bx = rot[0, 0] * xs[i] + rot[0, 1] * ys[j] + trans[0]
            by = rot[1, 0] * xs[i] + rot[1, 1] * ys[j] + trans[1]
            bz = rot[2, 0] * xs[i] + rot[2, 1] * ys[j] + trans[2]
            zn, done = 0.0, False
            for _ in range(5):  # Newton from the line's point at ego z = 0
                h, gx, gy = surface(sc, wv, bx + rot[0, 2] * zn, by + rot[1, 2] * zn)
                g = bz + rot[2, 2] * zn - h - tol
                zn -= g / (rot[2, 2] - gx * rot[0, 2] - gy * rot[1, 2])
                if abs(g) < 1e-4:  # last step < 1e-4 m: error O(1e-9), 2e-5 m at most across a curb kink
                    done = True
                    break
            if done:
                out[i, j] = zn
                continue
            z0 = (height_at(sc, wv, bx, by) + tol - bz) / rot[2, 2]
            za, zb, width = z0 - 0.01, z0 + 0.01, 0.02
            ga = bz + rot[2, 2] * za - height_at(sc, wv, bx + rot[0, 2] * za, by + rot[1, 2] * za) - tol
            while ga > 0.0:
                width *= 2.0
                za -= width
                ga = bz + rot[2, 2] * za - height_at(sc, wv, bx + rot[0, 2] * za, by + rot[1, 2] * za) - tol
            gb = bz + rot[2, 2] * zb - height_at(sc, wv, bx + rot[0, 2] * zb, by + rot[1, 2] * zb) - tol
            while gb < 0.0:
                width *= 2.0
                zb += width
                gb = bz + rot[2, 2] * zb - height_at(sc, wv, bx + rot[0, 2] * zb, by + rot[1, 2] * zb) - tol
            side, zm = 0, zb
            for _ in range(80):
                zm = (gb * za - ga * zb) / (gb - ga)
                if not za < zm < zb:
                    zm = 0.5 * (za + zb)
                gm = bz + rot[2, 2] * zm - height_at(sc, wv, bx + rot[0, 2] * zm, by + rot[1, 2] * zm) - tol
                if gm < 0.0:
                    za, ga = zm, gm
                    if side == 1:
                        gb *= 0.5
                    side = 1
                else:
                    zb, gb = zm, gm
                    if side == -1:
                        ga *= 0.5
                    side = -1
                if abs(gm) < 1e-10 or zb - za < 1e-9:
                    break
            out[i, j] = zm
    return out
