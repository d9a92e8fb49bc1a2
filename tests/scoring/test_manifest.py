"""The manifest (journals, run header, lock, temporary files), work units, stream context and error profiles."""

from __future__ import annotations

import numpy as np
import pytest

from perception4d.core import Frame
from perception4d.datasets.window_dataset import FrameListReader
from perception4d.errors import ConfigError, DataFormatError
from perception4d.runtime.policy import FramePolicy
from perception4d.scoring.manifest import FrameRecord, Journal, RunFolder, RunHeader, Status, TaskOutcome
from perception4d.scoring.profiles import BinnedIoU, BinnedMean, ErrorProfile, sum_profiles
from perception4d.scoring.settings import Execution, ScoreSettings, SequenceSource, split_units
from perception4d.scoring.stream import context_start


def record(index: int, epe: float = 0.5) -> FrameRecord:
    profile = ErrorProfile(BinnedMean.of(np.array([5.0, 25.0]), np.array([epe, 2 * epe]), (0.0, 10.0, 20.0)))
    return FrameRecord("00", index, f"00/{index:06d}", index * 100, {
        "flow": TaskOutcome(Status.WRITTEN, f"flow/00/{index}.feather", metric=[("stats", index)], profile=profile),
        "mos": TaskOutcome(Status.SKIPPED, reason="dropped"),
    })


def header(**kw) -> RunHeader:
    base = dict(version=1, config="a.py", config_sha256="c", checkpoint="a.pth", checkpoint_sha256="w",
                cfg_options={}, data="/data", format="av2", tasks=("flow",), mos_output="fused", refine=False,
                occupancy_gt=None, max_gap_s=0.25, amp=None)
    base.update(kw)
    return RunHeader(**base)


def test_journal_round_trip_drops_a_torn_line_and_keeps_the_first_of_duplicates(tmp_path):
    j = Journal(tmp_path / "00.jsonl", "00")
    j.append([record(0), record(1)])
    j.append([record(1, epe=9.0), record(2)])  # frame 1 again: the first record stays
    size = j.path.stat().st_size
    with open(j.path, "ab") as f:
        f.write(record(3).to_line().encode()[:50])  # the kill cut this line
    got = j.load()
    assert sorted(got) == [0, 1, 2]
    assert j.path.stat().st_size == size  # the torn line was cut from the file
    r = got[1]
    assert r.tasks["flow"].metric == [("stats", 1)] and r.tasks["flow"].profile.by_distance.total[0] == 0.5
    assert (r.tasks["mos"].status, r.tasks["mos"].reason) == (Status.SKIPPED, "dropped")
    j.append([record(3)])
    assert sorted(j.load()) == [0, 1, 2, 3]


def test_journal_stops_at_an_unreadable_line(tmp_path):
    j = Journal(tmp_path / "00.jsonl", "00")
    j.append([record(0)])
    with open(j.path, "ab") as f:
        f.write(b"{not json}\n")
    j.append([record(2)])
    assert sorted(j.load()) == [0]  # frames from the bad line on are scored again


def test_run_header_is_written_then_compared_by_content(tmp_path):
    folder = RunFolder(tmp_path / "out")
    assert folder.check_header(header()) is False and (folder.manifest / "run.json").is_file()
    assert folder.check_header(header(config="/elsewhere/a.py")) is True  # same files at another path
    with pytest.raises(ConfigError, match=r"tasks, max_gap_s .*max_gap_s: 0.25 then, 0.5 now"):
        folder.check_header(header(max_gap_s=0.5, tasks=("flow", "mos")))
    other = RunFolder(tmp_path / "other")
    (other.root / "flow").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no manifest/run.json"):
        other.check_header(header())


def test_one_run_per_folder_and_stale_temporaries_are_removed(tmp_path):
    a, b = RunFolder(tmp_path), RunFolder(tmp_path)
    a.lock()
    with pytest.raises(ConfigError, match="another"):
        b.lock()
    a.unlock()
    b.lock()
    b.unlock()
    stale = tmp_path / "flow" / "log" / ".315966265259836000.k2j4.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x")
    (tmp_path / "flow" / "log" / "315966265259836000.feather").write_bytes(b"y")
    assert a.remove_stale_temporaries() == 1 and not stale.exists()
    assert (tmp_path / "flow" / "log" / "315966265259836000.feather").exists()


def test_units_cover_the_sequence_in_near_equal_segments():
    src = SequenceSource("00", "/d/00", "semantickitti", 0)
    units = split_units(src, 10, 4)
    assert [(u.start, u.stop) for u in units] == [(0, 3), (3, 7), (7, 10)]
    assert [(u.start, u.stop) for u in split_units(src, 10, 0)] == [(0, 10)]
    assert split_units(src, 0, 4) == []
    assert units[1].name == "00[3:7]"


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="tasks"):
        ScoreSettings("c.py", None, "/d", "/o", tasks=("depth",))
    assert ScoreSettings("c.py", None, "/d", "/o", tasks=("occupancy", "flow")).tasks == ("flow", "occupancy")
    with pytest.raises(ConfigError, match="mos_output"):
        ScoreSettings("c.py", None, "/d", "/o", mos_output="smoothed")
    with pytest.raises(ConfigError, match="backend"):
        Execution(backend="spark")
    with pytest.raises(ConfigError, match="chunk_frames"):
        Execution(chunk_frames=0)


class BrokenReader(FrameListReader):
    def __init__(self, frames, broken):
        super().__init__(frames, "seq")
        self.broken = set(broken)

    def _read(self, index):
        if index in self.broken:
            raise DataFormatError(f"/seq/{index}.bin", "truncated")
        return super()._read(index)


def frames_at(times_s, empty=()):
    rng = np.random.default_rng(0)
    return [Frame(rng.uniform(-5, 5, (0 if k in empty else 20, 4)).astype(np.float32), round(t * 1e9),
                  frame_id=f"seq/{k}") for k, t in enumerate(times_s)]


def test_context_start_counts_usable_sweeps_and_stops_at_a_gap():
    cols = FramePolicy().columns
    reader = BrokenReader(frames_at([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), broken={4})
    cache = {}
    assert context_start(reader, 6, 4, 0.25, cols, cache) == 1  # 5, 3, 2, 1 usable; 4 unreadable
    assert cache[4][0] is None and "truncated" in cache[4][1]
    assert context_start(reader, 6, 2, 0.25, cols, {}) == 3
    assert context_start(reader, 2, 4, 0.25, cols, {}) == 0  # the start of the sequence
    gap = FrameListReader(frames_at([0.0, 0.1, 0.6, 0.7, 0.8]), "seq")
    assert context_start(gap, 4, 4, 0.25, cols, {}) == 2  # the window restarts after the 0.5 s gap
    empty = FrameListReader(frames_at([0.0, 0.1, 0.2, 0.3], empty={2}), "seq")
    assert context_start(empty, 3, 2, 0.25, cols, {}) == 0  # the empty sweep is dropped, it does not count


def test_profiles_of_parts_sum_to_the_profile_of_the_whole():
    rng = np.random.default_rng(1)
    d, e = rng.uniform(0, 90, 500), rng.uniform(0, 1, 500)
    pred, gt = rng.random(500) > 0.5, rng.random(500) > 0.7
    edges = (0.0, 10.0, 30.0, 60.0)
    whole = ErrorProfile(BinnedMean.of(d, e, edges), BinnedIoU.of(d, pred, gt, edges))
    parts = [ErrorProfile(BinnedMean.of(d[s], e[s], edges), BinnedIoU.of(d[s], pred[s], gt[s], edges))
             for s in (slice(0, 200), slice(200, 500))]
    total = sum_profiles([parts[0], None, parts[1]])
    np.testing.assert_array_equal(total.by_distance.count, whole.by_distance.count)
    np.testing.assert_allclose(total.by_distance.mean, whole.by_distance.mean, rtol=1e-12)
    np.testing.assert_array_equal(total.by_speed.iou, whole.by_speed.iou)
    assert whole.by_distance.count.sum() == 500 and whole.by_distance.count[-1] == (d >= 60).sum()
    b = BinnedIoU.of(np.array([1.0]), np.array([False]), np.array([False]), edges)
    assert np.isnan(b.iou).all() and np.isnan(BinnedMean.of(np.array([]), np.array([]), edges).mean).all()
