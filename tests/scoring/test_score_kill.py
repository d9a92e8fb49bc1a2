"""A `p4d score` process killed (SIGKILL) mid-way, then rerun: nothing missing, duplicated or truncated.

In this process and with two worker processes (``--backend processes``), whose processes must end with
their driver.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import psutil
import pytest

from perception4d.cli import main
from perception4d.inference import DEFAULT_FLOW

from .helpers import FLOW_CONFIG, assert_same_files, journal_lines, report_metrics

pytestmark = pytest.mark.slow


def ended(process: psutil.Process) -> bool:
    """Gone, or exited and waiting to be reaped by whoever adopted it."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("backend", [[], ["--backend", "processes", "--workers", "2"]], ids=["local", "processes"])
def test_killed_run_resumes_to_the_uninterrupted_outputs_and_metrics(flow_run, sim_root, tmp_path, backend):
    _, reference = flow_run
    out = tmp_path / "out"
    args = ["score", FLOW_CONFIG, str(DEFAULT_FLOW), "--data", str(sim_root / "av2"), "--out", str(out),
            "--segment-frames", "0", "--chunk-frames", "1", "--no-progress", *backend]
    proc = subprocess.Popen([sys.executable, "-m", "perception4d.cli", *args, "--threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    children = []
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "manifest" / "sequences").is_dir() and journal_lines(out) >= 3:
            children = psutil.Process(proc.pid).children(recursive=True)
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    if backend:  # the worker processes (and multiprocessing's resource tracker) end with their driver
        assert len(children) >= 2
        until = time.monotonic() + 60
        while time.monotonic() < until and not all(map(ended, children)):
            time.sleep(0.1)
        assert [p.pid for p in children if not ended(p)] == []
    done_before = journal_lines(out)
    assert 3 <= done_before < 10  # killed mid-way (10 frames in all)
    assert not (out / "report.json").exists()

    assert main(args) == 0  # the same command resumes
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] and report["run"]["resumed_frames"] == done_before
    assert report["run"]["frames_scored"] == 10 - done_before
    assert assert_same_files(out / "flow", reference / "flow") == 8
    assert not list(out.rglob("*.tmp"))
    assert report_metrics(out) == report_metrics(reference)
    for j in (out / "manifest" / "sequences").glob("*.jsonl"):
        assert sorted(json.loads(line)["index"] for line in j.read_text().splitlines()) == list(range(5))
