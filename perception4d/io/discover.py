"""Find the sequences of a dataset folder and open them with the matching reader."""

from __future__ import annotations

import os
from pathlib import Path

from perception4d.errors import ConfigError, DataFormatError
from perception4d.io.base import SequenceReader

FORMATS = ("semantickitti", "av2", "nuscenes")

_LOOKED_FOR = {
    "semantickitti": "velodyne/ in the folder, in sequences/*/ or in its sub-folders",
    "av2": "sensors/lidar/ in the folder or in any folder below it",
    "nuscenes": "v1.0-*/sample_data.json tables, or *__LIDAR_TOP__*.pcd.bin files below the folder",
}


def semantickitti_sequence_dirs(path: Path) -> list[Path]:
    """``path`` itself when it is a sequence folder, else the sequence folders of ``path/sequences`` or ``path``."""
    if (path / "velodyne").is_dir():
        return [path]
    parent = path / "sequences" if (path / "sequences").is_dir() else path
    return sorted(p for p in parent.iterdir() if (p / "velodyne").is_dir())


def av2_log_dirs(path: Path) -> list[Path]:
    """Every folder at or below ``path`` holding ``sensors/lidar/`` (not searched inside a log)."""
    found = []
    for dirpath, dirnames, _ in os.walk(path, followlinks=True):
        d = Path(dirpath)
        if (d / "sensors" / "lidar").is_dir():
            found.append(d)
            dirnames.clear()
        else:
            dirnames.sort()
    return sorted(found)


def has_nuscenes(path: Path) -> bool:
    from perception4d.io.nuscenes import table_versions

    if table_versions(path):
        return True
    return next(iter(path.rglob("*__LIDAR_TOP__*.pcd.bin")), None) is not None


def detect_formats(path: str | Path) -> list[str]:
    """The formats whose layout is found under ``path``, in ``FORMATS`` order."""
    path = Path(path)
    found = []
    if semantickitti_sequence_dirs(path):
        found.append("semantickitti")
    if av2_log_dirs(path):
        found.append("av2")
    if has_nuscenes(path):
        found.append("nuscenes")
    return found


def open_dataset(path: str | Path, format: str | None = None, **kw) -> list[SequenceReader]:
    """All sequences (SemanticKITTI sequences, AV2 logs, nuScenes scenes or logs) under ``path``.

    ``format`` is one of ``FORMATS``, detected when None; ``kw`` goes to the
    reader (``require_poses``/``require_times`` for SemanticKITTI,
    ``version``/``infos_dir`` for nuScenes).
    """
    path = Path(path)
    if not path.is_dir():
        raise DataFormatError(path, "not a folder")
    if format is None:
        found = detect_formats(path)
        if not found:
            looked = "; ".join(f"{k}: {v}" for k, v in _LOOKED_FOR.items())
            raise DataFormatError(path, f"no known dataset layout found (looked for {looked})")
        if len(found) > 1:
            raise DataFormatError(path, f"holds several dataset layouts {found}: pass format= to choose one")
        format = found[0]
    if format == "semantickitti":
        from perception4d.io.semantickitti import SemanticKittiReader

        dirs = semantickitti_sequence_dirs(path)
        if not dirs:
            raise DataFormatError(path, f"no SemanticKITTI sequence (looked for {_LOOKED_FOR[format]})")
        return [SemanticKittiReader(d, **kw) for d in dirs]
    if format == "av2":
        from perception4d.io.av2 import Av2LogReader

        if kw:
            raise TypeError(f"Av2LogReader takes no options, got {sorted(kw)}")
        logs = av2_log_dirs(path)
        if not logs:
            raise DataFormatError(path, f"no Argoverse 2 log (looked for {_LOOKED_FOR[format]})")
        return [Av2LogReader(d) for d in logs]
    if format == "nuscenes":
        from perception4d.io.nuscenes import NuScenesReader

        return NuScenesReader.open(path, **kw)
    raise ConfigError(f"unknown dataset format {format!r}; known formats are {list(FORMATS)}")
