"""Shared fixtures: the real sample recordings in ../shared/data (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("P4D_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "PROVENANCE.md").is_file():
        pytest.skip(f"{SHARED_DATA} not found: the real-sample tests need the shared data folder "
                    f"(set P4D_SHARED_DATA to its path)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def semantickitti_root(shared_data) -> Path:
    return shared_data / "semantickitti"


@pytest.fixture(scope="session")
def av2_log_dir(shared_data) -> Path:
    return shared_data / "av2" / "sensor" / "val" / "7fab2350-7eaf-3b7e-a39d-6937a4c1bede"
