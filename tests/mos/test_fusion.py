import numpy as np
import pytest

from perception4d.mos.fusion import RecedingHorizonFusion, logit, sigmoid


def _windows(n_scans, horizon, probs_of):
    """Windows ending at every scan, oldest scan first (shorter at the start)."""
    for k in range(n_scans):
        ids = list(range(max(0, k - horizon + 1), k + 1))
        yield ids, [probs_of(s, k) for s in ids]


def test_each_scan_fused_over_every_window_it_falls_in():
    rng = np.random.default_rng(0)
    horizon, n_scans, n_pts = 4, 9, 50
    table = {(s, k): rng.uniform(0.05, 0.95, n_pts) for k in range(n_scans) for s in range(n_scans)}
    fus = RecedingHorizonFusion(horizon, prior=0.3)
    out = []
    for ids, probs in _windows(n_scans, horizon, lambda s, k: table[(s, k)]):
        out += fus.add_window(ids, probs)
    out += list(fus.flush())
    assert [o.scan_id for o in out] == list(range(n_scans))
    for o in out:
        s = o.scan_id
        ks = [k for k in range(s, min(n_scans, s + horizon))]
        expect = sigmoid(sum(logit(table[(s, k)]) - logit(0.3) for k in ks) + logit(0.3))
        np.testing.assert_allclose(o.fused, expect, rtol=1e-5)
        np.testing.assert_allclose(o.online, table[(s, s)], rtol=1e-6)
        assert o.num_predictions == len(ks)


def test_scans_are_emitted_as_soon_as_they_leave_the_horizon():
    fus = RecedingHorizonFusion(3)
    emitted = []
    for ids, probs in _windows(6, 3, lambda s, k: np.full(2, 0.5)):
        emitted.append([o.scan_id for o in fus.add_window(ids, probs)])
    assert emitted == [[], [], [0], [1], [2], [3]]
    assert [o.scan_id for o in fus.flush()] == [4, 5]


def test_agreeing_evidence_sharpens_and_prior_is_neutral():
    fus = RecedingHorizonFusion(3, prior=0.5)
    out = []
    for ids, probs in _windows(3, 3, lambda s, k: np.array([0.8, 0.2, 0.5])):
        out += fus.add_window(ids, probs)
    assert [o.scan_id for o in out] == [0]  # scan 0 left the horizon with the third window
    first = out[0]
    assert first.num_predictions == 3 and first.fused[0] > 0.95 and first.fused[1] < 0.05
    assert abs(first.fused[2] - 0.5) < 1e-6


def test_bad_arguments():
    with pytest.raises(ValueError, match="horizon"):
        RecedingHorizonFusion(0)
    with pytest.raises(ValueError, match="prior"):
        RecedingHorizonFusion(3, prior=1.0)
    fus = RecedingHorizonFusion(3)
    fus.add_window([0], [np.zeros(4)])
    with pytest.raises(ValueError, match="earlier windows had 4"):
        fus.add_window([0, 1], [np.zeros(5), np.zeros(2)])


def test_a_window_after_a_gap_releases_the_scans_before_it():
    fus = RecedingHorizonFusion(4)
    assert fus.add_window([0], [np.full(3, 0.9)]) == []
    assert fus.add_window([0, 1], [np.full(3, 0.9), np.full(2, 0.1)]) == []
    out = fus.add_window([5], [np.full(1, 0.5)])  # scans 2-4 missing: 0 and 1 can get no more predictions
    assert [o.scan_id for o in out] == [0, 1] and out[0].num_predictions == 2
    assert [o.scan_id for o in fus.flush()] == [5]


def test_rows_without_evidence_keep_the_prior():
    fus = RecedingHorizonFusion(3, prior=0.3)
    for ids in ([0], [0, 1], [0, 1, 2]):
        out = fus.add_window(ids, [np.array([0.5, 0.9])] * len(ids), valid=[np.array([False, True])] * len(ids))
    fused = out[0].fused
    assert abs(fused[0] - 0.3) < 1e-6  # outside every window's grid: the prior, not pushed towards moving
    assert fused[1] > 0.99
