"""Bird's-eye-view pictures of point clouds and windows (matplotlib, no display needed)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("perception4d.viz")

# One colour per SemanticKITTI id group (RGB 0..1); unknown ids are grey.
_SEMANTIC_COLOURS = {
    0: (0.0, 0.0, 0.0), 1: (0.4, 0.0, 0.4),
    10: (0.25, 0.55, 0.95), 11: (0.35, 0.75, 0.95), 13: (0.2, 0.35, 0.85), 15: (0.45, 0.3, 0.85),
    18: (0.3, 0.3, 0.7), 20: (0.4, 0.5, 0.75),
    30: (0.95, 0.25, 0.3), 31: (0.95, 0.5, 0.25), 32: (0.85, 0.35, 0.55),
    40: (0.55, 0.55, 0.6), 44: (0.75, 0.6, 0.75), 48: (0.7, 0.55, 0.45), 49: (0.55, 0.45, 0.4),
    50: (0.95, 0.8, 0.35), 51: (0.75, 0.65, 0.35), 52: (0.85, 0.7, 0.5), 60: (0.95, 0.95, 0.95),
    70: (0.2, 0.65, 0.2), 71: (0.45, 0.3, 0.1), 72: (0.55, 0.8, 0.3), 80: (0.95, 0.95, 0.3),
    81: (0.9, 0.1, 0.1), 99: (0.6, 0.6, 0.6),
}
_MOVING_COLOUR = (0.9, 0.05, 0.05)
_STATIC_COLOUR = (0.55, 0.55, 0.55)


def semantic_colours(semantic: np.ndarray) -> np.ndarray:
    """(N, 3) RGB for SemanticKITTI ids; moving ids (251..259) are red."""
    sem = np.asarray(semantic).astype(np.int64)
    lut = np.full((260, 3), 0.6, dtype=np.float32)
    for k, c in _SEMANTIC_COLOURS.items():
        lut[k] = c
    lut[251:260] = _MOVING_COLOUR
    return lut[np.clip(sem, 0, 259)]


def moving_colours(moving: np.ndarray) -> np.ndarray:
    m = np.asarray(moving).astype(bool)
    out = np.empty((m.shape[0], 3), dtype=np.float32)
    out[:] = _STATIC_COLOUR
    out[m] = _MOVING_COLOUR
    return out


def time_colours(time: np.ndarray, num_frames: int | None = None) -> np.ndarray:
    import matplotlib

    t = np.asarray(time).astype(np.float32)
    n = max(int(num_frames or (t.max() + 1 if t.size else 1)), 2)
    return matplotlib.colormaps["viridis"](t / (n - 1))[:, :3].astype(np.float32)


def bev_figure(xyz: np.ndarray, colours: np.ndarray, title: str = "", extent: float = 50.0,
               point_size: float = 0.3, arrows: tuple[np.ndarray, np.ndarray] | None = None,
               arrow_colours: np.ndarray | None = None, legend: dict[str, tuple] | None = None):
    """A matplotlib Figure of points (x forward = up in the picture) with optional flow arrows."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 8), dpi=110)
    keep = (np.abs(xyz[:, 0]) < extent) & (np.abs(xyz[:, 1]) < extent)
    # picture axes: right = -y (ego's right), up = +x (forward)
    ax.scatter(-xyz[keep, 1], xyz[keep, 0], c=colours[keep], s=point_size, linewidths=0, rasterized=True)
    if arrows is not None:
        start, vec = arrows
        ax.quiver(-start[:, 1], start[:, 0], -vec[:, 1], vec[:, 0], color=arrow_colours, angles="xy",
                  scale_units="xy", scale=1.0, width=0.002)
    ax.plot([0], [0], marker="^", color="k", markersize=6)
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_xlabel("-y (m)")
    ax.set_ylabel("x (m)")
    if legend:
        from matplotlib.lines import Line2D

        ax.legend(handles=[Line2D([], [], marker="o", ls="", color=c, label=k) for k, c in legend.items()],
                  loc="upper right", fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def render_window_bev(aligned, out_dir: str | Path, prefix: str = "window", semantic=None, moving=None,
                      extent: float = 50.0) -> list[Path]:
    """BEV PNGs of an AlignedWindow coloured by time and, when given, by semantic id and moving flag.

    ``semantic`` / ``moving`` are per-point arrays over the aligned window's points.
    """
    out_dir = Path(out_dir)
    xyz = aligned.points[:, :3]
    n = aligned.num_frames
    paths = [save_figure(bev_figure(xyz, time_colours(aligned.time, n), f"{prefix}: {n} sweeps by time "
                                    f"(dark = oldest)", extent), out_dir / f"{prefix}_time.png")]
    if semantic is not None:
        paths.append(save_figure(bev_figure(xyz, semantic_colours(semantic), f"{prefix}: semantic class",
                                            extent), out_dir / f"{prefix}_semantic.png"))
    if moving is not None:
        paths.append(save_figure(bev_figure(xyz, moving_colours(moving), f"{prefix}: moving (red) / static",
                                            extent, legend={"moving": _MOVING_COLOUR, "static": _STATIC_COLOUR}),
                                 out_dir / f"{prefix}_moving.png"))
    return paths


def render_open3d(xyz: np.ndarray, colours: np.ndarray, path: str | Path, width: int = 960,
                  height: int = 720) -> Path | None:
    """An open3d offscreen screenshot; returns None (and logs why) when no renderer is available."""
    try:
        import open3d as o3d
        from open3d.visualization import rendering
    except Exception as exc:  # open3d missing or its system libraries (libusb) absent
        log.info("open3d view skipped: %s", exc)
        return None
    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    try:
        renderer = rendering.OffscreenRenderer(width, height)
    except Exception as exc:  # no EGL/Vulkan offscreen backend on this machine
        log.info("open3d view skipped: no offscreen renderer (%s)", exc)
        return None
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz.astype(np.float64)))
    pcd.colors = o3d.utility.Vector3dVector(colours.astype(np.float64))
    mat = rendering.MaterialRecord()
    mat.shader = "defaultUnlit"
    mat.point_size = 2.0
    renderer.scene.set_background([1, 1, 1, 1])
    renderer.scene.add_geometry("points", pcd, mat)
    renderer.setup_camera(60.0, [0, 0, 0], [-35, 0, 25], [0, 0, 1])
    img = renderer.render_to_image()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    o3d.io.write_image(str(path), img)
    return path
