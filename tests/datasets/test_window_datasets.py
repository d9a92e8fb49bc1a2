"""Scene-flow datasets: simulator output read back from disk equals the in-memory simulation;
sweeps without flow labels are skipped; the first sweeps of a log get shortened, right-aligned windows."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from perception4d.datasets.window_dataset import ReaderWindowDataset, SimWindowDataset
from perception4d.sim import get_preset, simulate, write_av2

GEOMETRY = dict(point_range=(-51.2, -51.2, -2.2, 51.2, 51.2, 4.2), voxel_size=(0.2, 0.2, 0.2), num_frames=5)
COARSE = dict(azimuth_resolution_deg=1.0)
SEED, FRAMES = 4, 6


@pytest.fixture(scope="module")
def sim_dataset():
    return SimWindowDataset(GEOMETRY, seeds=(SEED,), frames_per_sequence=FRAMES, preset="hdl32e",
                          preset_overrides=COARSE)


@pytest.fixture(scope="module")
def disk_log(tmp_path_factory):
    seq = simulate(preset=get_preset("hdl32e").with_overrides(**COARSE), num_frames=FRAMES, seed=SEED,
                   occupancy=None)
    return write_av2(seq, tmp_path_factory.mktemp("sim") / "av2")


def test_reader_dataset_on_disk_equals_simulated_dataset(sim_dataset, disk_log):
    disk = ReaderWindowDataset(GEOMETRY, data_root=str(disk_log.parent), format="av2")
    assert len(disk) == len(sim_dataset) == FRAMES - 1
    for i in range(len(disk)):
        a, b = sim_dataset[i]["inputs"], disk[i]["inputs"]
        assert a.meta.timestamp_ns == b.meta.timestamp_ns and a.meta.next_timestamp_ns == b.meta.next_timestamp_ns
        assert a.meta.sequence_id == f"sim_hdl32e_{SEED}" and b.meta.sequence_id == disk_log.name
        assert a.source_index == b.source_index
        np.testing.assert_array_equal(a.aligned.offsets, b.aligned.offsets)
        np.testing.assert_array_equal(a.aligned.time, b.aligned.time)
        assert a.aligned.columns == b.aligned.columns == ("x", "y", "z", "intensity")
        np.testing.assert_allclose(a.aligned.points[:, :3], b.aligned.points[:, :3], atol=2e-5)
        np.testing.assert_allclose(a.aligned.points[:, 3], b.aligned.points[:, 3], atol=0.5 / 255 + 1e-6)  # uint8
        np.testing.assert_allclose(a.source_xyz, b.source_xyz, atol=2e-5)
        np.testing.assert_allclose(a.ego_flow, b.ego_flow, atol=2e-5)
        ta, tb = a.targets, b.targets
        np.testing.assert_array_equal(ta.flow, tb.flow)
        for name in ("valid", "dynamic", "ground", "category"):
            np.testing.assert_array_equal(getattr(ta, name), getattr(tb, name), err_msg=name)
        assert ta.dynamic.any() and ta.valid.all()


def test_sweeps_without_flow_labels_are_skipped(disk_log, av2_log_dir, tmp_path):
    real = ReaderWindowDataset(GEOMETRY, data_root=str(av2_log_dir))
    assert len(real) == 1  # only sweep 0 has labels (and sweep 1 has no next sweep)
    s = real[0]["inputs"]
    assert s.meta.timestamp_ns == 315966265259836000 and s.targets.flow.shape == (99229, 3)
    assert s.targets.dynamic.sum() == 2037 and s.targets.ground.sum() == 17374

    log = shutil.copytree(disk_log, tmp_path / "av2" / disk_log.name)
    stamps = sorted(int(p.stem) for p in (log / "flow_labels").glob("*.feather"))
    for t in (stamps[1], stamps[3]):
        (log / "flow_labels" / f"{t}.feather").unlink()
    labelled = ReaderWindowDataset(GEOMETRY, data_root=str(log.parent))
    assert [labelled[i]["inputs"].meta.timestamp_ns for i in range(len(labelled))] == [stamps[0], stamps[2],
                                                                                        stamps[4]]
    assert len(ReaderWindowDataset(GEOMETRY, data_root=str(log.parent), require_labels=False)) == FRAMES - 1


def test_first_sweeps_get_shortened_right_aligned_windows(sim_dataset):
    t_ref = GEOMETRY["num_frames"] - 1
    for i in range(len(sim_dataset)):
        s = sim_dataset[i]["inputs"]
        n = min(i + 2, GEOMETRY["num_frames"])  # sample i has reference frame i + 1
        assert s.aligned.num_frames == n and s.source_index == n - 2
        assert np.unique(s.aligned.time).tolist() == list(range(t_ref + 1 - n, t_ref + 1))
        ref = s.aligned.time[s.aligned.offsets[n - 1]:]
        assert len(ref) > 0 and (ref == t_ref).all()
        assert (s.aligned.time[s.source_slice] == t_ref - 1).all()
        assert len(s.source_xyz) == s.source_slice.stop - s.source_slice.start == len(s.targets.flow)
