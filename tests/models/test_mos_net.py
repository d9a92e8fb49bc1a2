"""MOS and flow+MOS networks built from their real configs: loss, predict, metric glue."""

from pathlib import Path

import numpy as np
import torch
from mmengine.config import Config

from perception4d.core import Geometry, Window
from perception4d.datasets.sample import build_window_sample
from perception4d.metrics.mos import mos_frame_stats, mos_result
from perception4d.models import build_model

from .helpers import toy_sequence

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL_MOS = dict(point_range=(-12.8, -12.8, -2.4, 12.8, 12.8, 4.0), voxel_size=(0.2, 0.2, 0.2), num_frames=11)


def _model(config, geometry):
    cfg = Config.fromfile(str(CONFIGS / config))
    cfg.model.data_preprocessor.geometry = geometry
    torch.manual_seed(0)
    return build_model(cfg.model)


def _mos_samples(n_frames=4):
    geo = Geometry.from_config(SMALL_MOS)
    seq = toy_sequence(n_frames=n_frames)
    return [build_window_sample(Window(tuple(seq[:k + 1])), geo, "toy", tasks=("mos",)) for k in range(n_frames)]


def test_mos_samples_cover_every_point_and_start_short():
    samples = _mos_samples(3)
    assert [s.aligned.num_frames for s in samples] == [1, 2, 3]
    for s in samples:
        assert s.mos_labels.shape == (len(s.aligned.points),) and set(np.unique(s.mos_labels)) <= {1, 2}
        assert s.source_index == s.aligned.num_frames - 1  # the current scan
        assert s.aligned.time.max() == 10  # right-aligned: the current scan has index T-1


def test_mos_training_reduces_loss_and_predicts_every_point():
    model = _model("mos_sparseunet_11f_sim.py", SMALL_MOS)
    samples = _mos_samples(3)
    data = model.data_preprocessor({"inputs": samples}, training=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(20):
        opt.zero_grad()
        losses = model(**data, mode="loss")
        losses["loss_mos"].backward()
        opt.step()
        first = losses["loss_mos"].item() if first is None else first
    assert losses["loss_mos"].item() < 0.5 * first
    # batch-norm statistics of 20 steps are not settled: predict with the batch statistics
    with torch.no_grad():
        results = model(**model.data_preprocessor({"inputs": samples}), mode="predict")
    for r, s in zip(results, samples):
        assert r.flow is None and r.mos.prob.shape == (len(s.aligned.points),)
        assert len(r.mos.current) == len(s.source_xyz)
        ms = r.to_mos_sample()
        stats = ms.stats()
        assert stats.tp + stats.fn > 0  # the moving box is in every scan
    res = mos_result([r.to_mos_sample().stats() for r in results])
    assert res.iou_moving > 0.5


def test_unlabelled_points_are_ignored_in_the_loss():
    model = _model("mos_sparseunet_11f_sim.py", SMALL_MOS)
    samples = _mos_samples(2)
    data = model.data_preprocessor({"inputs": samples}, training=True)
    base = float(model(**data, mode="loss")["loss_mos"])
    for s in samples:
        s.mos_labels[: len(s.mos_labels) // 2] = 0
    data = model.data_preprocessor({"inputs": samples}, training=True)
    assert float(model(**data, mode="loss")["loss_mos"]) != base
    for s in samples:
        s.mos_labels[:] = 0
    data = model.data_preprocessor({"inputs": samples}, training=True)
    assert float(model(**data, mode="loss")["loss_mos"]) == 0.0


def test_flow_and_mos_heads_share_one_backbone():
    small = dict(point_range=(-12.8, -12.8, -2.2, 12.8, 12.8, 4.2), voxel_size=(0.2, 0.2, 0.2), num_frames=5)
    model = _model("flowmos_sparseunet_5f_sim.py", small)
    assert set(model.heads) == {"flow", "mos"}
    geo = Geometry.from_config(small)
    seq = toy_sequence(n_frames=4)
    samples = [build_window_sample(Window(tuple(seq[:4])), geo, "toy", tasks=("flow", "mos"))]
    data = model.data_preprocessor({"inputs": samples}, training=True)
    losses = model(**data, mode="loss")
    assert {"loss_flow", "loss_mos"} <= set(losses)
    (losses["loss_flow"] + losses["loss_mos"]).backward()
    assert model.backbone.stem[0].weight.grad is not None
    model.eval()
    with torch.no_grad():
        r = model(**model.data_preprocessor({"inputs": samples}), mode="predict")[0]
    assert r.flow.flow.shape == (len(samples[0].source_xyz), 3)
    assert r.mos.prob.shape == (len(samples[0].aligned.points),)
    r.to_flow_sample()
    mos_frame_stats(r.mos.current > 0.5, gt_mos=samples[0].mos_labels[samples[0].aligned.offsets[-2]:])
