"""The mmengine scene-flow metrics: registry, per-frame statistics, exact merging across workers."""

from __future__ import annotations

import numpy as np
import pytest

from perception4d.metrics import (
    Av2FlowMetric,
    BucketClass,
    FlowSample,
    KittiFlowMetric,
    av2_2023_frame_stats,
    av2_2023_result,
    av2_2024_frame_stats,
    av2_2024_result,
    kitti_frame_stats,
    kitti_result,
)
from perception4d.registry import METRICS


@pytest.fixture(scope="module")
def frames(make_flow_sample):
    rng = np.random.default_rng(21)
    out = [make_flow_sample(rng, n=700, frame_id=f"log/{i}") for i in range(5)]
    out.append(make_flow_sample(rng, n=300, all_static=True, frame_id="log/5"))
    return out


def _same(a: dict[str, float], b: dict[str, float]) -> None:
    assert a.keys() == b.keys()
    keys = sorted(a)
    np.testing.assert_array_equal([a[k] for k in keys], [b[k] for k in keys], err_msg=str(keys))


def test_registered_and_built_from_config():
    m = METRICS.build(dict(type="Av2FlowMetric", bucket_close_distance=30.0))
    assert isinstance(m, Av2FlowMetric) and m.bucket_close_distance == 30.0
    assert isinstance(METRICS.build(dict(type="KittiFlowMetric")), KittiFlowMetric)


def test_av2_metric_merges_workers_exactly(frames):
    one = Av2FlowMetric()
    one.process(None, frames)
    a, b = Av2FlowMetric(), Av2FlowMetric()
    a.process(None, frames[:2])
    for f in frames[2:]:
        b.process(None, [f])
    assert len(one.results) == len(a.results) + len(b.results) == len(frames)
    single = one.compute_metrics(one.results)
    _same(single, a.compute_metrics(a.results + b.results))

    r2023 = av2_2023_result(av2_2023_frame_stats(f) for f in frames)
    r2024 = av2_2024_result(av2_2024_frame_stats(f) for f in frames)
    _same({k: v for k, v in single.items() if not k.startswith("Bucketed/")}, r2023.to_av2_dict())
    assert single["Bucketed/Mean Dynamic Normalized EPE"] == r2024.mean_dynamic_error
    assert single["Bucketed/CAR/Static EPE"] == r2024.classes[BucketClass.CAR].static_epe
    assert len(single) == 38 + 2 * 5 + 2
    assert np.isfinite(single["EPE 3-Way Average"]) and 0 < single["Dynamic IoU"] < 1


def test_av2_metric_evaluate_adds_the_prefix(frames):
    m = Av2FlowMetric()
    m.process(None, frames[:3])
    out = m.evaluate(size=3)
    assert out["av2/EPE 3-Way Average"] == pytest.approx(
        av2_2023_result(av2_2023_frame_stats(f) for f in frames[:3]).epe_3way, rel=1e-15)
    assert m.results == []


def test_kitti_metric_merges_workers_exactly(frames):
    one, a, b = KittiFlowMetric(), KittiFlowMetric(), KittiFlowMetric()
    one.process(None, frames)
    a.process(None, frames[:3])
    b.process(None, frames[3:])
    single = one.compute_metrics(one.results)
    _same(single, a.compute_metrics(a.results + b.results))
    r = kitti_result(kitti_frame_stats(f) for f in frames)
    _same(single, {"EPE3D": r.epe3d, "Acc3DS": r.acc3d_strict, "Acc3DR": r.acc3d_relax,
                   "Outliers": r.outliers})


def test_process_rejects_other_sample_types():
    with pytest.raises(TypeError, match="FlowSample"):
        Av2FlowMetric().process(None, [{"pred_flow": np.zeros((2, 3))}])
    with pytest.raises(TypeError, match="FlowSample"):
        KittiFlowMetric().process(None, [np.zeros((2, 3))])


def test_av2_metric_needs_ego_flow_or_labels():
    n = 3
    z = np.zeros((n, 3), np.float32)
    s = FlowSample(z, z, np.ones(n, bool), category=np.zeros(n, np.uint8), dynamic=np.zeros(n, bool),
                   ground=np.zeros(n, bool), xyz=z, frame_id="log/9")
    with pytest.raises(ValueError, match="log/9.*pred_dynamic"):
        Av2FlowMetric().process(None, [s])
