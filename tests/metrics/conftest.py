"""Random scene-flow frames for the metric tests (AV2 conventions, edge cases included)."""

from __future__ import annotations

import numpy as np
import pytest

from perception4d.metrics import FlowSample


def random_flow_sample(rng: np.random.Generator, n: int = 600, *, all_static: bool = False,
                       no_foreground: bool = False, frame_id: str = "") -> FlowSample:
    """A sweep with ego motion, moving objects, ground, invalid rows, zero flows, points on the box edges."""
    xyz = np.column_stack([rng.uniform(-60, 60, n), rng.uniform(-60, 60, n), rng.uniform(-3, 5, n)])
    f32 = np.float32
    edges = [35.0, -35.0, 50.0, -50.0, np.nextafter(f32(35), f32(99)), -np.nextafter(f32(35), f32(99)),
             np.nextafter(f32(50), f32(99)), np.nextafter(f32(35), f32(0)), np.nextafter(f32(50), f32(0))]
    k = min(len(edges), n // 4)
    xyz[:k, 0] = edges[:k]
    xyz[k:2 * k, 1] = edges[:k]
    xyz[2 * k:3 * k, 0] = edges[:k]
    xyz[2 * k:3 * k, 1] = edges[::-1][:k]
    xyz = xyz.astype(np.float32)

    yaw = rng.uniform(-0.03, 0.03)
    rot = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    trans = np.array([-rng.uniform(0, 1.5), rng.normal(0, 0.05), rng.normal(0, 0.01)])
    p = xyz.astype(np.float64)
    ego_flow = (p @ rot.T + trans - p).astype(np.float32)

    category = np.where(rng.random(n) < 0.5, 0, rng.integers(1, 31, n)).astype(np.uint8)
    if no_foreground:
        category[:] = 0
    moving = (category > 0) & (rng.random(n) < 0.6)
    jitter = rng.normal(0, 0.01, (n, 3)) * (rng.random(n) < 0.2)[:, None]
    motion = rng.normal(0, 0.5, (n, 3)) * moving[:, None] + jitter
    gt = ego_flow.copy() if all_static else (ego_flow + motion).astype(np.float32)
    zero = (rng.random(n) < 0.05) & (not all_static)  # zero-length ground-truth flows
    gt[zero] = 0.0

    noise_scale = rng.choice([0.0, 0.005, 0.03, 0.08, 0.3], n)
    pred = (gt + rng.normal(0, 1, (n, 3)) * noise_scale[:, None]).astype(np.float32)
    pred[zero & (rng.random(n) < 0.5)] = 0.0
    dyn = np.linalg.norm(gt.astype(np.float64) - ego_flow, axis=1) >= 0.05
    pred_dyn = np.linalg.norm(pred.astype(np.float64) - ego_flow, axis=1) >= 0.05
    return FlowSample(
        pred_flow=pred, gt_flow=gt, flow_valid=rng.random(n) < 0.9, category=category, dynamic=dyn,
        ground=rng.random(n) < 0.2, xyz=xyz, ego_flow=ego_flow, pred_dynamic=pred_dyn, frame_id=frame_id,
    )


@pytest.fixture(scope="session")
def make_flow_sample():
    return random_flow_sample
