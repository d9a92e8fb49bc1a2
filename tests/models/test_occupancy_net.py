"""The occupancy head on the shared 4D backbone, built from its real config: loss, training, predict, metric glue."""

from dataclasses import replace
from itertools import pairwise, permutations
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config

from perception4d.core import Geometry, Window
from perception4d.core.labels import OCC_CLASSES, OCC_FREE, OCC_IGNORE
from perception4d.datasets.sample import build_window_sample
from perception4d.datasets.window_dataset import SimWindowDataset
from perception4d.errors import ConfigError, WindowError
from perception4d.metrics.occupancy_metric import OccupancyMetric
from perception4d.models import build_model
from perception4d.models.heads.occupancy import DEFAULT_SENSOR_ORIGIN, OccupancyHead, OccupancyOutput, lovasz_softmax
from perception4d.sim import OCC3D_GEOMETRY, get_preset, simulate

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
BACKBONE = dict(point_range=(-12.8, -12.8, -2.2, 12.8, 12.8, 4.2), voxel_size=(0.4, 0.4, 0.4), num_frames=5)
GRID = dict(point_range=(-12.8, -12.8, -1.0, 12.8, 12.8, 5.4), voxel_size=(0.8, 0.8, 0.8))
PRESET = replace(get_preset("hdl32e"), azimuth_resolution_deg=1.0)


def _cfg(config="occ_sparseunet_5f_sim.py"):
    cfg = Config.fromfile(str(CONFIGS / config))
    cfg.model.data_preprocessor.geometry = BACKBONE
    cfg.model.backbone.channels = (16, 32, 32)
    return cfg


def _model(cfg=None, channels=(16, 32)):
    cfg = _cfg() if cfg is None else cfg
    cfg.model.heads.occupancy.grid = GRID
    cfg.model.heads.occupancy.channels = channels
    torch.manual_seed(0)
    return build_model(cfg.model)


@pytest.fixture(scope="module")
def seq():
    return simulate(preset=PRESET, num_frames=4, seed=3, occupancy=Geometry.from_config(GRID))


def _samples(seq, ends=(2, 3), tasks=("occupancy",)):
    geo = Geometry.from_config(BACKBONE)
    return [build_window_sample(Window(tuple(seq.frames[:k + 1])), geo, "sim", tasks=tasks,
                                occupancy=seq.occupancy[k]) for k in ends]


def _total(losses):
    return sum(v for k, v in losses.items() if k.startswith("loss"))


def test_config_grids_share_the_ego_frame():
    cfg = Config.fromfile(str(CONFIGS / "occ_sparseunet_5f_sim.py"))
    grid = Geometry.from_config(cfg.occupancy_grid)
    backbone = Geometry.from_config(cfg.geometry)
    assert grid.point_range == OCC3D_GEOMETRY.point_range and grid.voxel_size == OCC3D_GEOMETRY.voxel_size
    assert grid.grid_shape == (200, 200, 16) and backbone.spatial_shape == (512, 512, 32, 5)
    # ground (z = 0 in the ego frame) inside both; every backbone voxel lies in one coarse (0.8 m) cell
    assert grid.point_range[2] < 0 < grid.point_range[5] and backbone.point_range[2] < 0 < backbone.point_range[5]
    offset = (np.asarray(grid.point_range[:3]) - backbone.point_range[:3]) / backbone.voxel_size
    np.testing.assert_allclose(offset, np.round(offset), atol=1e-9)
    assert cfg.val_evaluator.type == "OccupancyMetric"
    assert cfg.model.heads.occupancy.grid == cfg.train_dataloader.dataset.occupancy_grid


def test_samples_carry_the_reference_frames_ground_truth_in_its_ego_frame(seq):
    samples = _samples(seq)
    for s, k in zip(samples, (2, 3)):
        assert s.occupancy is seq.occupancy[k] and s.frame_ids[-1] == seq.frames[k].frame_id
        np.testing.assert_allclose(s.sensor_origin, (0.0, 0.0, PRESET.mount_height))
        ref = s.aligned.points[s.aligned.offsets[-2]:, :3]
        idx, inside = s.occupancy.voxel_index(ref)
        sem = s.occupancy.semantics[tuple(idx[inside].T)]
        assert inside.sum() > 1000 and (sem != OCC_FREE).mean() > 0.9  # returns lie in occupied voxels
        assert s.occupancy.visible[tuple(idx[inside].T)].all()
    with pytest.raises(WindowError, match="no occupancy ground truth"):
        build_window_sample(Window(tuple(seq.frames[:2])), Geometry.from_config(BACKBONE), tasks=("occupancy",))


def test_frames_without_a_sensor_extrinsic_get_the_default_origin(seq):
    from .helpers import toy_sequence

    toy = toy_sequence(n_frames=2)  # identity extrinsic: points already in the ego frame
    s = build_window_sample(Window(tuple(toy)), Geometry.from_config(BACKBONE), "toy", tasks=("occupancy",),
                            occupancy=seq.occupancy[0])
    assert s.sensor_origin is None
    model = _model()
    model.eval()
    with torch.no_grad():
        r = model(**model.data_preprocessor({"inputs": [s]}), mode="predict")[0]
    np.testing.assert_allclose(r.to_occupancy_sample().sensor_origin, [DEFAULT_SENSOR_ORIGIN])


def test_sim_dataset_attaches_each_scans_occupancy():
    ds = SimWindowDataset(BACKBONE, seeds=(3,), frames_per_sequence=3, preset="hdl32e",
                          preset_overrides=dict(azimuth_resolution_deg=1.0), tasks=("occupancy",),
                          occupancy_grid=GRID)
    assert len(ds) == 3  # one window per scan
    ref = simulate(preset=PRESET, num_frames=3, seed=3, occupancy=Geometry.from_config(GRID))
    for i in range(3):
        s = ds[i]["inputs"]
        assert s.aligned.num_frames == i + 1
        np.testing.assert_array_equal(s.occupancy.semantics, ref.occupancy[i].semantics)
        np.testing.assert_array_equal(s.occupancy.visible, ref.occupancy[i].visible)
    with pytest.raises(ConfigError, match="occupancy_grid"):
        SimWindowDataset(BACKBONE, frames_per_sequence=2, preset="hdl32e", tasks=("occupancy",),
                         preset_overrides=dict(azimuth_resolution_deg=2.0))
    photometric = dict(rotate=False, scale=(1.0, 1.0), z_shift=0.0, intensity_gain=(0.8, 1.2))
    assert len(SimWindowDataset(BACKBONE, frames_per_sequence=2, preset="hdl32e", tasks=("occupancy",),
                                preset_overrides=dict(azimuth_resolution_deg=2.0), occupancy_grid=GRID,
                                augment=photometric)) == 2
    with pytest.raises(ConfigError, match="photometric"):
        SimWindowDataset(BACKBONE, frames_per_sequence=2, preset="hdl32e", tasks=("occupancy",),
                         preset_overrides=dict(azimuth_resolution_deg=2.0), occupancy_grid=GRID,
                         augment=dict(rotate=True))


def test_head_arguments_are_checked():
    with pytest.raises(ConfigError, match="coarse_factor"):
        OccupancyHead(16, grid=dict(point_range=(0, 0, 0, 2.4, 2.4, 2.4), voxel_size=(0.8, 0.8, 0.8)))
    with pytest.raises(ConfigError, match="multiple of voxel_size"):
        OccupancyHead(16, grid=dict(point_range=(0, 0, 0, 2.5, 2.4, 2.4), voxel_size=(0.8, 0.8, 0.8)))
    with pytest.raises(ConfigError, match="class_weights"):
        OccupancyHead(16, grid=GRID, class_weights=[1.0, 2.0])


def test_loss_reaches_every_head_parameter_and_the_batch_is_dense(seq):
    model = _model()
    data = model.data_preprocessor({"inputs": _samples(seq)}, training=True)
    occ = data["inputs"].occupancy
    assert occ.semantics.shape == (2, 32, 32, 8) and occ.semantics.dtype == torch.int64
    assert occ.visible.dtype == torch.bool and occ.velocity.shape == (2, 32, 32, 8, 3)
    assert int(occ.semantics.max()) < len(OCC_CLASSES)
    out = model(**data, mode="tensor")["occupancy"]
    assert out.logits.shape == (2, len(OCC_CLASSES), 32, 32, 8) and out.velocity.shape == (2, 3, 32, 32, 8)
    losses = model(**data, mode="loss")
    assert {"loss_occ_ce", "loss_occ_lovasz", "loss_occ_velocity", "iou_occupied"} <= set(losses)
    _total(losses).backward()
    missing = [n for n, p in model.heads.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    assert model.backbone.stem[0].weight.grad.abs().sum() > 0


def test_training_on_a_simulated_sequence_raises_geometry_iou(seq):
    model = _model()
    samples = _samples(seq)
    data = model.data_preprocessor({"inputs": samples}, training=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(50):
        opt.zero_grad()
        loss = _total(model(**data, mode="loss"))
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.4 * first  # measured 6.8 -> 1.7
    # batch-norm statistics of 50 steps are not settled: predict with the batch statistics
    with torch.no_grad():
        results = model(**model.data_preprocessor({"inputs": samples}), mode="predict")
    metric = OccupancyMetric()  # RayIoU cast from each sample's sensor origin
    metric.process({}, results)
    scores = metric.compute_metrics(metric.results)
    assert scores["geometry_iou"] > 0.6  # measured 0.73 (untrained: 0.23)
    assert scores["rayiou"] > 0.15  # measured 0.29 (untrained: 0.0)
    assert scores["flow_error"] < 6.0  # m/s on the moving voxels (measured 2.6; untrained: 11)


def test_predict_shapes_and_metric_sample(seq):
    model = _model()
    samples = _samples(seq)
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor({"inputs": samples}), mode="predict")
    for r, s in zip(results, samples):
        p = r.occupancy
        assert r.flow is None and r.mos is None
        assert p.semantics.shape == (32, 32, 8) and p.semantics.dtype == np.uint8
        assert p.velocity.shape == (32, 32, 8, 3) and p.velocity.dtype == np.float32
        assert p.semantics.max() < len(OCC_CLASSES) and not p.velocity[p.semantics == OCC_FREE].any()
        assert p.geometry.grid_shape == (32, 32, 8)
        ms = r.to_occupancy_sample()
        assert ms.gt_semantics is s.occupancy.semantics and ms.visible is s.occupancy.visible
        np.testing.assert_allclose(ms.sensor_origin, [[0.0, 0.0, PRESET.mount_height]])
        assert ms.frame_id == s.frame_ids[-1]
    metric = OccupancyMetric()  # RayIoU from the sample's sensor origin
    metric.process({}, results)
    scores = metric.compute_metrics(metric.results)
    assert 0.0 <= scores["rayiou"] <= 1.0 and 0.0 <= scores["geometry_iou"] <= 1.0


def _head_and_batch(seq):
    model = _model()
    data = model.data_preprocessor({"inputs": _samples(seq)}, training=True)
    head = model.heads["occupancy"]
    torch.manual_seed(1)
    b = data["inputs"]
    shape = b.occupancy.semantics.shape
    out = OccupancyOutput(logits=torch.randn(shape[0], len(OCC_CLASSES), *shape[1:]),
                          velocity=torch.randn(shape[0], 3, *shape[1:]))
    return head, b, out


def _changed(out, mask, seed=2):
    g = torch.Generator().manual_seed(seed)
    logits, vel = out.logits.clone(), out.velocity.clone()
    m = mask[:, None].expand_as(logits)
    logits[m] = torch.randn(int(m.sum()), generator=g) * 5
    mv = mask[:, None].expand_as(vel)
    vel[mv] = torch.randn(int(mv.sum()), generator=g) * 5
    return OccupancyOutput(logits=logits, velocity=vel)


def _values(losses):
    return {k: float(v) for k, v in losses.items() if k.startswith("loss")}


def test_free_space_outside_the_visible_region_is_not_supervised(seq):
    head, b, out = _head_and_batch(seq)
    sem, vis = b.occupancy.semantics, b.occupancy.visible
    hidden_free = (sem == OCC_FREE) & ~vis
    assert hidden_free.sum() > 100
    base = _values(head.loss(out, b))
    assert _values(head.loss(_changed(out, hidden_free), b)) == base
    seen_free = (sem == OCC_FREE) & vis
    changed = _values(head.loss(_changed(out, seen_free), b))
    assert changed["loss_occ_ce"] != base["loss_occ_ce"] and changed["loss_occ_velocity"] == base["loss_occ_velocity"]
    hidden_occupied = (sem != OCC_FREE) & (sem != OCC_IGNORE) & ~vis
    assert hidden_occupied.sum() > 100  # occupied voxels are supervised whether seen or not
    changed = _values(head.loss(_changed(out, hidden_occupied), b))
    assert all(changed[k] != base[k] for k in base)


def test_ignore_voxels_are_ignored(seq):
    head, b, out = _head_and_batch(seq)
    sem = b.occupancy.semantics
    ignored = (sem != OCC_FREE) & (torch.rand(sem.shape, generator=torch.Generator().manual_seed(0)) < 0.5)
    sem[ignored] = OCC_IGNORE
    base = _values(head.loss(out, b))
    assert _values(head.loss(_changed(out, ignored), b)) == base
    sem[:] = OCC_IGNORE
    losses = head.loss(out, b)
    assert all(v == 0.0 for v in _values(losses).values())


def _jaccard_loss(mispredicted: set, foreground: set) -> float:
    union = foreground | mispredicted
    return len(mispredicted) / len(union) if union else 0.0


def _brute_force_lovasz(prob: np.ndarray, labels: np.ndarray) -> float:
    """Lovasz extension of the Jaccard loss, by its definition: sum over thresholds of the set function."""
    out = []
    for c in np.unique(labels):
        fg = set(np.flatnonzero(labels == c).tolist())
        err = np.abs((labels == c).astype(float) - prob[:, c])
        levels = np.r_[np.unique(err)[::-1], 0.0]
        value = 0.0
        for hi, lo in pairwise(levels):  # on (lo, hi] the thresholded set is {err >= hi}
            value += (hi - lo) * _jaccard_loss(set(np.flatnonzero(err >= hi).tolist()), fg)
        out.append(value)
    return float(np.mean(out))


def test_lovasz_softmax_equals_its_definition_and_one_minus_iou_on_hard_predictions():
    rng = np.random.default_rng(0)
    for n, k in ((6, 3), (9, 4), (5, 2)):
        prob = rng.dirichlet(np.ones(k), size=n)
        labels = rng.integers(0, k, n)
        got = float(lovasz_softmax(torch.tensor(prob), torch.tensor(labels)))
        assert got == pytest.approx(_brute_force_lovasz(prob, labels), abs=1e-12)
        assert 0.0 <= got <= 1.0
    labels = np.array([0, 0, 1, 1, 2, 1, 0])
    pred = np.array([0, 1, 1, 1, 0, 2, 0])
    prob = np.eye(3)[pred]
    ious = [((pred == c) & (labels == c)).sum() / ((pred == c) | (labels == c)).sum() for c in range(3)]
    got = float(lovasz_softmax(torch.tensor(prob), torch.tensor(labels)))
    assert got == pytest.approx(1.0 - np.mean(ious), abs=1e-12)


def test_lovasz_grad_is_the_set_function_increment_for_every_order():
    from perception4d.models.heads.occupancy import lovasz_grad

    fg = np.array([1, 0, 1, 1, 0])
    fg_set = set(np.flatnonzero(fg).tolist())
    for order in permutations(range(5)):
        g = lovasz_grad(torch.tensor(fg[list(order)], dtype=torch.float64)).numpy()
        prefix = [_jaccard_loss(set(order[:i]), fg_set) for i in range(6)]
        np.testing.assert_allclose(g, np.diff(prefix), atol=1e-12)


def test_flow_and_occupancy_heads_share_one_backbone(seq):
    cfg = _cfg("flow_sparseunet_5f_sim.py")
    occ = Config.fromfile(str(CONFIGS / "occ_sparseunet_5f_sim.py")).model.heads.occupancy
    cfg.model.heads.occupancy = occ
    model = _model(cfg)
    assert set(model.heads) == {"flow", "occupancy"}
    samples = _samples(seq, ends=(3,), tasks=("flow", "occupancy"))
    assert samples[0].source_index == 2 and samples[0].targets is not None and samples[0].occupancy is not None
    data = model.data_preprocessor({"inputs": samples}, training=True)
    losses = model(**data, mode="loss")
    assert {"loss_flow", "loss_occ_ce", "loss_occ_lovasz", "loss_occ_velocity"} <= set(losses)
    _total(losses).backward()
    assert model.backbone.stem[0].weight.grad is not None
    assert model.heads["flow"].mlp[0].weight.grad is not None and model.heads["occupancy"].out.weight.grad is not None
    model.eval()
    with torch.no_grad():
        r = model(**model.data_preprocessor({"inputs": samples}), mode="predict")[0]
    assert r.flow.flow.shape == (len(samples[0].source_xyz), 3) and r.occupancy.semantics.shape == (32, 32, 8)
    r.to_flow_sample()
    assert r.to_occupancy_sample().frame_id == seq.frames[3].frame_id


def test_empty_grid_still_predicts_and_mismatched_ground_truth_is_refused(seq):
    model = _model()
    s = _samples(seq, ends=(1,))[0]
    s.aligned.points[:, :3] += 1000.0  # every point outside the backbone grid
    data = model.data_preprocessor({"inputs": [s]}, training=True)
    assert data["inputs"].sparse.num_voxels == 0
    losses = model(**data, mode="loss")
    assert np.isfinite(float(_total(losses)))
    head = model.heads["occupancy"]
    b = data["inputs"]
    b.occupancy.geometry = Geometry(point_range=(0, 0, 0, 25.6, 25.6, 6.4), voxel_size=(0.8, 0.8, 0.8))
    with pytest.raises(ValueError, match="head predicts"):
        head.loss(model(**data, mode="tensor")["occupancy"], b)


def test_class_weights_follow_the_inverse_log_frequency_rule():
    labels = torch.tensor([0] * 6 + [5] * 3 + [1])
    head = OccupancyHead(16, grid=GRID, free_weight=0.5)
    w = head.class_weights(labels)
    f = np.zeros(len(OCC_CLASSES))
    f[[0, 5, 1]] = (0.6, 0.3, 0.1)
    expected = 1.0 / np.log(1.02 + f)
    expected[0] *= 0.5
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)
    fixed = OccupancyHead(16, grid=GRID, class_weights=[2.0] * len(OCC_CLASSES))
    assert fixed.class_weights(labels).tolist() == [2.0] * len(OCC_CLASSES)


def test_flow_mos_and_occupancy_heads_share_one_backbone_from_the_multitask_config(seq):
    cfg = _cfg("flowmosocc_sparseunet_5f_sim.py")
    model = _model(cfg)
    assert set(model.heads) == {"flow", "mos", "occupancy"}
    samples = _samples(seq, ends=(3,), tasks=("flow", "mos", "occupancy"))
    data = model.data_preprocessor({"inputs": samples}, training=True)
    losses = model(**data, mode="loss")
    assert {"loss_flow", "loss_mos", "loss_occ_ce"} <= set(losses)
    _total(losses).backward()
    for head in model.heads.values():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    model.eval()
    with torch.no_grad():
        r = model(**model.data_preprocessor({"inputs": samples}), mode="predict")[0]
    r.to_flow_sample()
    r.to_mos_sample()
    assert r.to_occupancy_sample().frame_id == seq.frames[3].frame_id
