"""Small simulated sequences shared by the simulator tests (coarse azimuth, few frames)."""

from __future__ import annotations

import pytest

from perception4d.sim import HDL64E, simulate

# 64 beams every 0.5 deg of azimuth, no range noise: points lie exactly on the primitives.
EXACT = HDL64E.with_overrides(name="hdl64e_coarse_exact", azimuth_resolution_deg=0.5, range_noise_sigma=0.0)


@pytest.fixture(scope="session")
def exact_preset():
    return EXACT


@pytest.fixture(scope="session")
def exact_seq():
    return simulate(EXACT, num_frames=3, seed=7)


@pytest.fixture(scope="session")
def noisy_seq():
    return simulate(HDL64E.with_overrides(azimuth_resolution_deg=1.0), num_frames=2, seed=3, occupancy=None)
