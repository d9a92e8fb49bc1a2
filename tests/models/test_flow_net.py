"""The scene-flow network built from its real config: loss, predict, gradients, edge cases."""

from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config

import perception4d.models  # noqa: F401
from perception4d.core import Geometry, Window
from perception4d.datasets.sample import build_window_sample
from perception4d.models import build_model

from .helpers import toy_sequence

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL = dict(point_range=(-12.8, -12.8, -2.2, 12.8, 12.8, 4.2), voxel_size=(0.2, 0.2, 0.2), num_frames=5)


def build_small_model():
    cfg = Config.fromfile(str(CONFIGS / "flow_sparseunet_5f_sim.py"))
    cfg.model.data_preprocessor.geometry = SMALL  # real channel widths, small grid
    torch.manual_seed(0)
    return build_model(cfg.model)


def samples(n=2, frames=4):
    geo = Geometry.from_config(SMALL)
    seq = toy_sequence(n_frames=frames)
    return [build_window_sample(Window(tuple(seq[max(0, e - 4):e + 1])), geo, "toy") for e in range(1, 1 + n)]


def test_loss_backward_and_predict_shapes():
    model = build_small_model()
    data = model.data_preprocessor({"inputs": samples(2)}, training=True)
    losses = model(**data, mode="loss")
    assert set(losses) >= {"loss_flow", "epe_dynamic", "epe_static"}
    losses["loss_flow"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor({"inputs": samples(2)}), mode="predict")
    assert len(results) == 2
    for r, s in zip(results, samples(2)):
        n = len(s.source_xyz)
        assert r.flow.flow.shape == (n, 3) and r.flow.is_dynamic.shape == (n,)
        assert np.isfinite(r.flow.flow).all()


def test_points_outside_grid_get_ego_flow():
    model = build_small_model().eval()
    s = samples(1)[0]
    far = np.abs(s.source_xyz[:, :2]).max(1) > 12.0  # toy extent reaches 12 m; the grid ends at 12.8 m
    # move some source points far out of the grid in the aligned cloud
    sl = s.source_slice
    s.aligned.points[sl.start:sl.start + 10, 0] += 100.0
    s.source_xyz[:10, 0] += 100.0
    with torch.no_grad():
        r = model(**model.data_preprocessor({"inputs": [s]}), mode="predict")[0]
    assert not r.flow.in_grid[:10].any()
    np.testing.assert_allclose(r.flow.flow[:10], s.ego_flow[:10], atol=1e-6)
    assert far.sum() >= 0


def test_window_of_two_sweeps_is_scored_and_time_is_right_aligned():
    s = samples(1)[0]  # ends at frame 1: a window of two sweeps
    assert s.aligned.num_frames == 2
    assert set(np.unique(s.aligned.time)) == {3, 4}
    model = build_small_model().eval()
    with torch.no_grad():
        r = model(**model.data_preprocessor({"inputs": [s]}), mode="predict")[0]
    assert r.flow.flow.shape[0] == len(s.source_xyz)


def test_empty_grid_gives_ego_flow_not_a_crash():
    model = build_small_model().eval()
    s = samples(1)[0]
    s.aligned.points[:, 0] += 500.0  # everything outside the grid
    s.source_xyz[:, 0] += 500.0
    with torch.no_grad():
        r = model(**model.data_preprocessor({"inputs": [s]}), mode="predict")[0]
    assert not r.flow.in_grid.any()
    np.testing.assert_allclose(r.flow.flow, s.ego_flow, atol=1e-6)


def test_training_reduces_loss_on_toy_sequence():
    model = build_small_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = model.data_preprocessor({"inputs": samples(3)}, training=True)
    first = None
    for _ in range(25):
        opt.zero_grad()
        loss = model(**data, mode="loss")["loss_flow"]
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.6 * first


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.py")))
def test_every_config_builds(config):
    cfg = Config.fromfile(str(CONFIGS / config))
    Geometry.from_config(cfg.geometry)
    model = build_model(cfg.model)
    assert sum(p.numel() for p in model.parameters()) > 10_000


def test_a_grid_too_small_for_the_backbone_is_refused():
    from perception4d.errors import ConfigError

    cfg = Config.fromfile(str(CONFIGS / "flow_sparseunet_5f_sim.py"))
    cfg.model.data_preprocessor.geometry = dict(point_range=(0, 0, 0, 8, 8, 0.6), voxel_size=(1, 1, 0.2), num_frames=2)
    with pytest.raises(ConfigError, match="at least 8 cells"):
        build_model(cfg.model)
