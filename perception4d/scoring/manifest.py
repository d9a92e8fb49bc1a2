"""The run's manifest: what was asked (``run.json``) and which frames are finished (one journal per sequence).

Layout under the output folder::

    manifest/run.json              the ScoreSettings that produce the outputs, and the model files' SHA-256
    manifest/lock                  held (flock) by the driver while it runs: one run per folder at a time
    manifest/sequences/<key>.jsonl one line per finished frame, appended in one write + fsync per chunk

A frame is finished once all its outputs were renamed into place (they are
written to a temporary file first, ``perception4d.io.atomic``); only then is
its line appended. A run killed at any point therefore leaves (a) complete
outputs with a line, (b) complete outputs without a line (scored again on
resumption and renamed over the same path: same content, no duplicate), or
(c) a temporary file, which the next run deletes. A line cut short by the
kill has no trailing newline or does not parse; loading drops it and
truncates the journal to the last complete line.

Each line is JSON a person can read (status, output paths, reasons) plus the
frame's metric records (what the metrics' ``process`` appended for it) and
error profiles, pickled and base64-encoded: the metrics merge exactly from
those records, whatever run or worker produced them. The manifest is the
run's own working data: like a checkpoint, load it only from folders you trust.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import os
import pickle
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from perception4d.errors import ConfigError
from perception4d.io.atomic import write_atomic

log = logging.getLogger("perception4d.scoring")

MANIFEST_DIR = "manifest"
MANIFEST_VERSION = 1
OUTPUT_DIRS = ("flow", "mos", "occupancy")  # per-task output folders under the run's folder
REPORT_FILES = ("report.json", "report.md")
REPORT_DIRS = ("plots",)


class Status:
    WRITTEN = "written"  # the output file exists
    SKIPPED = "skipped"  # no output by design (no next sweep for flow, a dropped empty sweep, ...)
    FAILED = "failed"  # no output because of an error (corrupt input file, out of memory)


@dataclass
class TaskOutcome:
    """One task's result for one frame."""

    status: str
    path: str = ""  # the output file, relative to the run's folder
    reason: str = ""  # why skipped / failed
    window: tuple[int, int] | None = None  # occupancy: (first, last) frame index of the window
    metric: list = field(default_factory=list)  # the task metric's records for this frame (from its process())
    profile: object | None = None  # the task's ErrorProfile of this frame (None without ground truth)


@dataclass
class FrameRecord:
    """A finished frame: every task resolved."""

    sequence: str  # SequenceSource.key
    index: int
    frame_id: str
    timestamp_ns: int
    tasks: dict[str, TaskOutcome]

    def to_line(self) -> str:
        stats = {t: (o.metric, o.profile) for t, o in self.tasks.items()}
        doc = {"index": self.index, "frame_id": self.frame_id, "timestamp_ns": self.timestamp_ns,
               "tasks": {t: {"status": o.status, "path": o.path, "reason": o.reason,
                             "window": None if o.window is None else list(o.window)}
                         for t, o in self.tasks.items()},
               "stats": base64.b64encode(pickle.dumps(stats, protocol=5)).decode("ascii")}
        return json.dumps(doc, separators=(",", ":")) + "\n"

    @classmethod
    def from_line(cls, sequence: str, line: str) -> "FrameRecord":
        doc = json.loads(line)
        stats = pickle.loads(base64.b64decode(doc["stats"]))
        tasks = {}
        for t, o in doc["tasks"].items():
            metric, profile = stats.get(t, ([], None))
            tasks[t] = TaskOutcome(o["status"], o["path"], o["reason"],
                                   None if o["window"] is None else tuple(o["window"]), metric, profile)
        return cls(sequence, int(doc["index"]), doc["frame_id"], int(doc["timestamp_ns"]), tasks)


class Journal:
    """The append-only list of one sequence's finished frames."""

    def __init__(self, path: str | Path, sequence: str):
        self.path = Path(path)
        self.sequence = sequence

    def load(self) -> dict[int, FrameRecord]:
        """Finished frames by index; a torn last line (killed run) is dropped and cut from the file."""
        if not self.path.is_file():
            return {}
        data = self.path.read_bytes()
        records: dict[int, FrameRecord] = {}
        good = 0
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break
            try:
                rec = FrameRecord.from_line(self.sequence, raw.decode("utf-8"))
            except (ValueError, KeyError, TypeError, pickle.UnpicklingError, EOFError) as e:
                log.warning("%s: unreadable line after byte %d (%s); it and what follows are scored again",
                            self.path, good, type(e).__name__)
                break
            records.setdefault(rec.index, rec)  # a frame recorded twice keeps its first record
            good += len(raw)
        if good < len(data):
            log.warning("%s: dropping %d bytes of an incomplete last line (interrupted run)", self.path,
                        len(data) - good)
            with open(self.path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
        return records

    def append(self, records: list[FrameRecord]) -> None:
        """One write and one fsync for the whole batch."""
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = "".join(r.to_line() for r in records).encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)


def file_sha256(path: str | Path | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class RunHeader:
    """``manifest/run.json``: what produced the outputs of this folder."""

    version: int
    config: str
    config_sha256: str
    checkpoint: str | None
    checkpoint_sha256: str | None
    cfg_options: dict
    data: str
    format: str
    tasks: tuple[str, ...]
    mos_output: str
    refine: bool
    occupancy_gt: str | None
    max_gap_s: float
    amp: bool | None

    #: fields that may differ between a run and its resumption (the files are compared by content)
    LOCATION_FIELDS = ("config", "checkpoint")

    def to_json(self) -> str:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        return json.dumps(d, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "RunHeader":
        d = json.loads(text)
        d["tasks"] = tuple(d["tasks"])
        return cls(**d)

    def differences(self, other: "RunHeader") -> list[str]:
        a, b = asdict(self), asdict(other)
        return [k for k in a if k not in self.LOCATION_FIELDS and a[k] != b[k]]


class RunFolder:
    """The output folder of a run: its manifest, journals, lock and temporary-file cleanup."""

    def __init__(self, out: str | Path):
        self.root = Path(out)
        self.manifest = self.root / MANIFEST_DIR
        self._lock_fd: int | None = None

    def journal(self, key: str) -> Journal:
        return Journal(self.manifest / "sequences" / f"{key}.jsonl", key)

    def lock(self) -> None:
        """Refuse a second run on the same folder while this one runs (released by ``unlock`` or at exit)."""
        self.manifest.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.manifest / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"{self.root}: another `p4d score` run is writing to this folder") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def clear(self) -> None:
        """Forget an earlier run: its journals, outputs and report (the lock and this run's header stay)."""
        shutil.rmtree(self.manifest / "sequences", ignore_errors=True)
        (self.manifest / "run.json").unlink(missing_ok=True)
        for d in OUTPUT_DIRS + REPORT_DIRS:
            shutil.rmtree(self.root / d, ignore_errors=True)
        for f in REPORT_FILES:
            (self.root / f).unlink(missing_ok=True)

    def check_header(self, header: RunHeader) -> bool:
        """Write ``run.json`` for a new run; for an earlier one, True if it asked for the same outputs.

        A different request is a ``ConfigError`` naming the fields (resume it with the same settings, use
        another folder, or restart).
        """
        path = self.manifest / "run.json"
        if not path.is_file():
            if any((self.root / d).exists() for d in OUTPUT_DIRS + (MANIFEST_DIR + "/sequences",)):
                raise ConfigError(f"{self.root} holds outputs but no manifest/run.json: not a `p4d score` run "
                                  f"folder (choose an empty folder, or pass --restart to clear it)")
            write_atomic(path, lambda tmp: Path(tmp).write_text(header.to_json()))
            return False
        try:
            earlier = RunHeader.from_json(path.read_text())
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError(f"{path}: not a readable run manifest ({e}); pass --restart to start over") from None
        diff = earlier.differences(header)
        if diff:
            changes = "; ".join(f"{k}: {getattr(earlier, k)!r} then, {getattr(header, k)!r} now" for k in diff)
            raise ConfigError(f"{self.root} holds a run with different {', '.join(diff)} ({changes}); resume it "
                              f"with the same settings, choose another --out, or pass --restart to start over")
        return True

    def remove_stale_temporaries(self) -> int:
        """Delete the temporary files of writes a killed run left behind (``.<stem>.<random>.tmp``)."""
        n = 0
        for d in OUTPUT_DIRS + (MANIFEST_DIR,):
            base = self.root / d
            if not base.is_dir():
                continue
            for p in base.rglob(".*.tmp"):
                if p.is_file():
                    p.unlink()
                    n += 1
        if n:
            log.warning("%s: removed %d temporary file(s) of an interrupted run", self.root, n)
        return n
