"""The code version recorded next to every run, checkpoint and benchmark."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def code_version() -> str:
    """``<package version>+<git describe --dirty>``; ``P4D_CODE_VERSION`` where no git checkout exists."""
    import perception4d

    root = Path(perception4d.__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--tags"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return f"{perception4d.__version__}+{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    env = os.environ.get("P4D_CODE_VERSION")
    return f"{perception4d.__version__}+{env}" if env else perception4d.__version__
