"""Fixtures of the scoring tests: one simulated dataset per session, one torch thread (2-core box)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from perception4d.inference import DEFAULT_FLOW
from perception4d.scoring import ScoreSettings, score

from .helpers import FLOW_CONFIG, QUIET, small_occupancy_model, write_sim_dataset


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Several workers share two cores: torch's own thread pool would oversubscribe them."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def sim_root(tmp_path_factory):
    return write_sim_dataset(tmp_path_factory.mktemp("score_sim"))


@pytest.fixture(scope="session")
def occ_model(tmp_path_factory):
    return small_occupancy_model(tmp_path_factory.mktemp("score_occ_model"))


@pytest.fixture(scope="session")
def flow_run(sim_root, tmp_path_factory):
    """The reference: the shipped flow checkpoint over the simulated AV2 logs, in this process."""
    out = tmp_path_factory.mktemp("flow_score")
    run = score(ScoreSettings(FLOW_CONFIG, str(DEFAULT_FLOW), str(sim_root / "av2"), str(out)),
                replace(QUIET, segment_frames=3, chunk_frames=2))
    return run, out
