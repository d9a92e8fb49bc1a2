"""Small synthetic windows with exact flow labels for model tests (no simulator needed)."""

import numpy as np

from perception4d.core import SE3, Frame, PointLabels, Window


def toy_sequence(n_frames=4, n_static=1500, n_moving=300, speed=8.0, seed=0, extent=12.0):
    """A static cloud plus a moving box seen by an ego driving at 5 m/s; flow labels AV2-style."""
    rng = np.random.default_rng(seed)
    world_static = np.c_[rng.uniform(-extent, extent, (n_static, 2)), rng.uniform(-1.5, 2.5, n_static)]
    box = np.c_[rng.uniform(-1.0, 1.0, (n_moving, 2)) * [2.0, 0.9], rng.uniform(0.0, 1.5, n_moving)]
    dt = 0.1
    poses = [SE3.from_yaw(0.01 * k, [5.0 * dt * k, 0.0, 0.0]) for k in range(n_frames + 1)]
    obj = [np.array([3.0 + speed * dt * k, 4.0, 0.0]) for k in range(n_frames + 1)]
    frames = []
    for k in range(n_frames):
        world = np.vstack([world_static, box + obj[k]])
        world_next = np.vstack([world_static, box + obj[k + 1]])
        ego = poses[k].inverse().transform_points(world)
        ego_next = poses[k + 1].inverse().transform_points(world_next)
        moving = np.r_[np.zeros(n_static, bool), np.ones(n_moving, bool)]
        pts = np.c_[ego, rng.uniform(0, 1, len(ego))].astype(np.float32)
        labels = PointLabels(semantic=np.where(moving, 252, 40).astype(np.uint16), instance=moving.astype(np.uint16),
                             moving=moving, flow=(ego_next - ego).astype(np.float32),
                             flow_valid=np.ones(len(ego), bool), ground=np.zeros(len(ego), bool),
                             flow_category=np.where(moving, 19, 0).astype(np.uint8))
        frames.append(Frame(pts, int(k * dt * 1e9), pose=poses[k], labels=labels, frame_id=f"toy/{k}"))
    return frames


def toy_window(**kw) -> Window:
    return Window(tuple(toy_sequence(**kw)))


def amp_training_step(model, batch_samples) -> None:
    """One fp16-autocast training step of ``model`` (on CUDA, train mode) on ``batch_samples`` with a gradient
    scaler; the flow loss and every parameter stay finite."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda")
    data = model.data_preprocessor({"inputs": batch_samples}, training=True)
    with torch.autocast("cuda", dtype=torch.float16):
        losses = model(**data, mode="loss")
    scaler.scale(losses["loss_flow"]).backward()
    scaler.step(opt)
    scaler.update()
    assert torch.isfinite(losses["loss_flow"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
