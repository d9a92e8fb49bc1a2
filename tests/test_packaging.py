"""Packaging: every subpackage is installed, ops/ is perception4d.ops, the CLI starts light."""

import configparser
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _cfg():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def test_every_subpackage_is_listed_in_setup_cfg():
    listed = {p.strip() for p in _cfg()["options"]["packages"].split("\n") if p.strip()}
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "perception4d").rglob("__init__.py")}
    found |= {"perception4d.ops"}
    assert found == listed, f"missing from setup.cfg: {found - listed}; listed but absent: {listed - found}"


def test_ops_is_importable_as_perception4d_ops():
    import perception4d.ops

    assert Path(perception4d.ops.__file__).resolve().parent == REPO / "ops"


def test_cli_import_is_light_and_lists_subcommands():
    code = ("import sys, perception4d.cli as c; heavy = [m for m in ('torch', 'spconv', 'open3d', 'av2', 'numba') "
            "if m in sys.modules]; print(sorted(c.COMMANDS), heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "[]" in out.split("]", 1)[1], f"heavy modules imported by the CLI module: {out}"
    for name in ("simulate", "render", "train", "eval", "infer", "demo"):
        assert f"'{name}'" in out


def test_lock_file_pins_every_requirement_and_not_torch():
    lock = (REPO / "requirements" / "constraints.txt").read_text().lower()
    pins = {line.split("==")[0] for line in lock.splitlines() if "==" in line and not line.startswith("#")}
    for name in ("numpy", "spconv-cu120", "numba", "mmengine", "pyquaternion", "open3d-cpu", "nuscenes-devkit",
                 "av2", "pyarrow"):
        assert name in pins, f"{name} is not pinned in requirements/constraints.txt"
    assert "torch" not in pins  # pinned by TORCH_SPEC in the same pip command
