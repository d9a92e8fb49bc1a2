import matplotlib.image as mpimg
import numpy as np

from perception4d.core import SE3, Frame, PointLabels, Window
from perception4d.viz.bev import moving_colours, render_open3d, render_window_bev, semantic_colours, time_colours


def _window():
    rng = np.random.default_rng(0)
    frames = []
    for k in range(3):
        pts = np.c_[rng.uniform(-20, 20, (500, 2)), rng.uniform(-1, 2, 500), rng.uniform(0, 1, 500)]
        sem = rng.choice([40, 10, 252], 500).astype(np.uint16)
        frames.append(Frame(pts.astype(np.float32), k * 100_000_000, pose=SE3.from_yaw(0.0, [k, 0, 0]),
                            labels=PointLabels(semantic=sem, moving=sem >= 252)))
    return Window(tuple(frames))


def test_colour_maps():
    assert np.allclose(semantic_colours(np.array([252, 255]))[0], semantic_colours(np.array([259]))[0])
    c = moving_colours(np.array([True, False]))
    assert c[0, 0] > 0.8 and c[1, 0] < 0.6
    t = time_colours(np.array([0, 1, 2]), 3)
    assert not np.allclose(t[0], t[2])


def test_render_window_writes_three_pictures(tmp_path):
    w = _window()
    aligned = w.align()
    sem = np.concatenate([f.labels.semantic for f in w.frames])
    mov = np.concatenate([f.labels.moving for f in w.frames])
    paths = render_window_bev(aligned, tmp_path, "w", semantic=sem, moving=mov, extent=25)
    assert [p.name for p in paths] == ["w_time.png", "w_semantic.png", "w_moving.png"]
    img = mpimg.imread(paths[0])
    assert img.shape[0] > 500 and len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 10


def test_open3d_view_or_a_clear_skip(tmp_path, caplog):
    w = _window().align()
    caplog.set_level("INFO", logger="perception4d.viz")
    out = render_open3d(w.points[:, :3], time_colours(w.time, 3), tmp_path / "o3d.png")
    if out is None:
        assert "open3d view skipped" in caplog.text
    else:
        assert mpimg.imread(out).shape[0] == 720
