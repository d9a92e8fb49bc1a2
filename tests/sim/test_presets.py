from __future__ import annotations

import numpy as np
import pytest

from perception4d.errors import ConfigError
from perception4d.sim import PRESETS, get_preset, simulate


def test_registry_and_lookup():
    assert set(PRESETS) == {"hdl64e", "hdl32e", "vlp32c_x2"}
    assert get_preset("hdl32e") is PRESETS["hdl32e"]
    with pytest.raises(ConfigError, match="unknown LiDAR preset 'vlp16'"):
        get_preset("vlp16")
    with pytest.raises(ConfigError, match="min_range < max_range"):
        PRESETS["hdl64e"].with_overrides(min_range=200.0)


@pytest.mark.parametrize("name, beams, top, bottom, rate", [
    ("hdl64e", 64, 2.0, -24.9, 10.0), ("hdl32e", 32, 10.67, -30.67, 20.0),
    ("vlp32c_x2", 64, 15.0, -25.0, 10.0)])
def test_beam_layout(name, beams, top, bottom, rate):
    p = PRESETS[name]
    origins, dirs, laser = p.rays()
    assert p.num_beams == beams and len(np.unique(laser)) == beams
    assert len(dirs) == beams * p.num_azimuths
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0, atol=1e-12)
    elev = np.rad2deg(np.arcsin(dirs[:, 2]))
    assert elev.max() == pytest.approx(top, abs=1e-6) and elev.min() == pytest.approx(bottom, abs=1e-6)
    assert p.rotation_rate_hz == rate
    if name == "vlp32c_x2":  # two units 0.3 m apart, 32 distinct non-uniform elevations each
        assert sorted(np.unique(origins[:, 2])) == [-0.3, 0.0]
        upper = laser < 32
        assert len(np.unique(np.round(elev[upper], 6))) == 32
        assert np.ptp(np.diff(np.unique(np.round(elev[upper], 6)))) > 1.0
    else:
        assert len(np.unique(np.round(elev, 6))) == beams


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_simulated_beams_and_ranges(name):
    p = PRESETS[name].with_overrides(azimuth_resolution_deg=2.0, range_noise_sigma=0.0)
    seq = simulate(p, num_frames=1, seed=11, occupancy=None)
    f = seq.frames[0]
    ring = f.column("ring").astype(int)
    assert len(np.unique(ring)) == p.num_beams  # every beam returns somewhere
    origins, dirs, laser = p.rays()
    unit_z = np.zeros(p.num_beams)
    unit_z[laser] = origins[:, 2]
    rel = f.xyz - np.c_[np.zeros((len(ring), 2)), unit_z[ring]]
    rng = np.linalg.norm(rel, axis=1)
    assert rng.min() >= p.min_range - 1e-4 and rng.max() <= p.max_range + 1e-4
    # each point's elevation from its own unit is its laser's elevation
    elev_of_laser = np.zeros(p.num_beams)
    elev_of_laser[laser] = np.rad2deg(np.arcsin(dirs[:, 2]))
    np.testing.assert_allclose(np.rad2deg(np.arcsin(rel[:, 2] / rng)), elev_of_laser[ring], atol=1e-3)
    np.testing.assert_allclose(f.extrinsic.translation, [0.0, 0.0, p.mount_height])
    assert f.timestamp_ns == 0 and p.frame_period_ns == round(1e9 / p.rotation_rate_hz)
