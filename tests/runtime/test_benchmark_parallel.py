"""``tools/benchmark.py parallel`` runs end to end on the CPU with tiny settings and prints its tables."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from .helpers import OCC_GRID, REPO

SMALL = dict(point_range=(-12.8, -12.8, -2.2, 12.8, 12.8, 4.2), voxel_size=(0.4, 0.4, 0.4), num_frames=3)


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("p4d_benchmark_tool", REPO / "tools" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_parallel_benchmark_prints_every_configuration(tmp_path, capsys):
    options = {"geometry": SMALL, "model.data_preprocessor.geometry": SMALL, "model.backbone.channels": (16, 32)}
    cfg = tmp_path / "tiny_runtime.py"
    cfg.write_text(
        f"_o = {options!r}\n"
        f"model_sets = [dict(name='flowmos', config={str(REPO / 'configs' / 'flowmos_sparseunet_5f_sim.py')!r}, "
        f"device='cuda:0', cfg_options=_o),\n"
        f"              dict(name='occupancy', config={str(REPO / 'configs' / 'occ_sparseunet_5f_sim.py')!r}, "
        f"device='cuda:1', init_seed=1, cfg_options=dict(_o, **{{'model.heads.occupancy.grid': {OCC_GRID!r}, "
        f"'model.heads.occupancy.channels': (16, 32)}}))]\n")
    tool = _benchmark_module()
    tool.main(["parallel", "--runtime-config", str(cfg), "--devices", "cpu,cpu", "--group", "model", "--frames", "2",
               "--unique-frames", "2", "--warmup-frames", "1", "--preset", "hdl32e", "--azimuth-step", "8",
               "--workers", "thread"])
    out = capsys.readouterr().out
    for row in ("| (c) flowmos alone | inline | cpu | 2 |", "| (c) occupancy alone | inline | cpu | 2 |",
                "| (a) sequential, one device | inline | cpu | 2 |",
                "| (b) parallel, thread workers | thread | cpu | 2 |"):
        assert row in out
    assert "device: CPU box" in out and "RANDOM INIT" in out and "target >= 1.9x" in out
    assert "| (b) parallel, thread workers | occupancy |" in out  # the per-stage table
