"""Atomic file output: write to a temporary file beside the target, then rename it into place."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomic(target: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, then ``os.replace`` it onto ``target``: readers never see a partial file.

    The temporary file is removed if ``write`` fails; the folder is created when missing.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target
