"""``tools/benchmark.py mos`` runs on the CPU with a tiny grid: the offline table and the streaming one."""

from __future__ import annotations

import pytest

from .helpers import REPO
from .test_benchmark_parallel import SMALL, _benchmark_module


@pytest.mark.slow
def test_mos_benchmark_prints_the_offline_and_the_streaming_tables(tmp_path, capsys):
    cfg = tmp_path / "tiny_mos.py"
    cfg.write_text(f"_base_ = [{str(REPO / 'configs' / 'mos_sparseunet_11f_sim.py')!r}]\n"
                   f"geometry = {SMALL!r}\nmodel = dict(data_preprocessor=dict(geometry=geometry), "
                   f"backbone=dict(channels=(16, 32)))\n")
    tool = _benchmark_module()
    tool.main(["mos", "--device", "cpu", "--config", str(cfg), "--preset", "hdl32e", "--precision", "fp32",
               "--repeats", "1", "--warmup", "1", "--stream-frames", "3"])
    out = capsys.readouterr().out
    assert "## mos: 3 sweeps of the simulated hdl32e sensor" in out and "| fp32 |" in out
    assert "### mos, streaming: Predictor.step over 3 frames" in out
    stream_rows = [line for line in out.splitlines() if line.startswith("| fp32 |")]
    assert len(stream_rows) == 3  # offline, streaming latency, streaming stages
    assert stream_rows[1].split("|")[-2].strip() == "3"  # every streamed frame came back OK
