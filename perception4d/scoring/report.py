"""The run's report: metrics per sequence and overall, error profiles, failures; JSON, Markdown and plots.

Metrics are merged through the metrics' mmengine API: the per-frame records
that a metric's ``process`` produced (in whichever worker or run) are handed
to a fresh metric of the same class as its ``results`` and reduced by its own
``evaluate`` (``compute_metrics`` plus the metric's key prefix), exactly as
mmengine collects the results of several ranks. Records are always reduced in
dataset order (sequence, then frame index), so a resumed or distributed run
reports the same floating-point numbers as a single uninterrupted one.

``report.json`` has ``metrics`` / ``profiles`` / ``sequences`` (a function of
the outputs only) and ``run`` (timings and workers of this invocation).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from perception4d.io.atomic import write_atomic
from perception4d.scoring.manifest import Status
from perception4d.scoring.profiles import DISTANCE_EDGES_M, SPEED_EDGES_MPS, BinnedIoU, bin_labels, sum_profiles
from perception4d.scoring.tasks import build_metric

#: the metrics shown in tables and plots (report.json has every key)
KEY_METRICS = {"flow": ("av2/EPE 3-Way Average", "av2/Dynamic IoU", "av2/Bucketed/Mean Dynamic Normalized EPE"),
               "mos": ("mos/iou_moving", "mos/precision", "mos/recall"),
               "occupancy": ("occ/geometry_iou", "occ/miou", "occ/rayiou")}


def evaluate_records(task: str, records) -> dict[str, float]:
    """The task metric over the frames' records (``FrameRecord`` in dataset order); {} without any."""
    metric = build_metric(task)
    for r in records:
        o = r.tasks.get(task)
        if o is not None:
            metric.results.extend(o.metric)
    n = len(metric.results)
    return {k: float(v) for k, v in metric.evaluate(n).items()} if n else {}


def _json_safe(x):
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _profile_doc(binned, edges, unit: str) -> dict | None:
    if binned is None:
        return None
    if isinstance(binned, BinnedIoU):
        return {"bins": bin_labels(edges, unit), "quantity": "IoU", "value": binned.iou.tolist(),
                "count": binned.count.tolist()}
    return {"bins": bin_labels(edges, unit), "quantity": "mean error", "value": binned.mean.tolist(),
            "count": binned.count.tolist()}


def build_report(settings, facts, sequences, failures, stats) -> dict:
    tasks = facts.tasks
    ordered = [r for s in sequences for _, r in sorted(s.records.items())]
    seq_docs = []
    for s in sequences:
        recs = [r for _, r in sorted(s.records.items())]
        counts = {t: {st: sum(1 for r in recs if r.tasks[t].status == st)
                      for st in (Status.WRITTEN, Status.SKIPPED, Status.FAILED)} for t in tasks}
        notes = [{"index": r.index, "frame_id": r.frame_id, "task": t, "status": o.status, "reason": o.reason}
                 for r in recs for t, o in r.tasks.items() if o.status != Status.WRITTEN]
        seq_docs.append({"key": s.source.key, "sequence_id": s.sequence_id, "path": s.source.path,
                         "frames": s.num_frames, "finished": len(s.records), "error": s.error, "counts": counts,
                         "metrics": {t: evaluate_records(t, recs) for t in tasks}, "not_written": notes})
    profiles = {}
    for t in tasks:
        p = sum_profiles(r.tasks[t].profile for r in ordered)
        profiles[t] = None if p is None else {
            "distance": _profile_doc(p.by_distance, DISTANCE_EDGES_M, "m"),
            "speed": _profile_doc(p.by_speed, SPEED_EDGES_MPS, "m/s")}
    run = {"backend": stats.backend, "workers": [asdict(w) for w in stats.workers], "wall_s": stats.wall_s,
           "startup_s": stats.startup_s, "scoring_s": stats.scoring_s, "frames_scored": stats.frames_scored,
           "frames_per_s": stats.frames_per_s, "steps": stats.steps, "worker_crashes": stats.crashes,
           "resumed_frames": stats.resumed_frames, "removed_temporaries": stats.removed_temporaries}
    complete = not failures and all(s.complete for s in sequences if not s.error)
    return _json_safe({
        "model": facts.description, "random_init": facts.random_init, "tasks": list(tasks),
        "settings": {"config": settings.config, "checkpoint": settings.checkpoint, "data": settings.data,
                     "format": sequences[0].source.format if sequences else settings.format,
                     "mos_output": settings.mos_output, "refine": settings.refine,
                     "occupancy_gt": settings.occupancy_gt, "max_gap_s": settings.max_gap_s, "amp": settings.amp},
        "complete": complete,
        "frames": {"total": sum(s.num_frames for s in sequences), "finished": len(ordered)},
        "metrics": {t: evaluate_records(t, ordered) for t in tasks},
        "profiles": profiles,
        "sequences": seq_docs,
        "failed_sequences": [{"key": s.source.key, "path": s.source.path, "reason": s.error}
                             for s in sequences if s.error],
        "failed_units": [asdict(f) for f in failures],
        "run": run,
    })


def write_report(root: Path, report: dict, sequences, tasks) -> list[Path]:
    """``report.json``, ``plots/*.png`` and ``report.md`` (each written atomically)."""
    root = Path(root)
    paths = [write_atomic(root / "report.json",
                          lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1, allow_nan=False) + "\n"))]
    plots = plot_report(report, root / "plots")
    md = markdown_report(report, [p.relative_to(root) for p in plots])
    paths.append(write_atomic(root / "report.md", lambda tmp: Path(tmp).write_text(md)))
    return paths + plots


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def _num(v, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _table(headers: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return lines + ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]


def summary_rows(report: dict) -> tuple[list[str], list[list]]:
    tasks = report["tasks"]
    keys = [(t, k) for t in tasks for k in KEY_METRICS[t]]
    headers = ["sequence", "frames", "written", "skipped", "failed"] + [k for _, k in keys]
    rows = []
    for s in report["sequences"]:
        c = s["counts"]
        rows.append([s["key"], s["frames"], *(" / ".join(str(c[t][st]) for t in tasks)
                                             for st in (Status.WRITTEN, Status.SKIPPED, Status.FAILED)),
                     *(s["metrics"][t].get(k) for t, k in keys)])
    rows.append(["all", report["frames"]["total"], "", "", "", *(report["metrics"][t].get(k) for t, k in keys)])
    return headers, rows


def markdown_report(report: dict, plots: list[Path]) -> str:
    r = report["run"]
    tasks = report["tasks"]
    out = ["# Scoring report", "",
           f"* model: {report['model']}", f"* data: `{report['settings']['data']}` ({report['settings']['format']})",
           f"* tasks: {', '.join(tasks)}" + (f" (MOS output: {report['settings']['mos_output']}"
                                            f"{', refined' if report['settings']['refine'] else ''})"
                                            if "mos" in tasks else ""),
           f"* frames: {report['frames']['finished']} of {report['frames']['total']} finished"
           + ("" if report["complete"] else " (INCOMPLETE: rerun the same command to resume)"),
           f"* this run: {r['frames_scored']} frames in {_num(r['scoring_s'], 1)} s of scoring "
           f"({_num(r['frames_per_s'], 2)} frames/s) on {len(r['workers'])} {r['backend']} worker(s), "
           f"{_num(r['startup_s'], 1)} s start-up; {r['resumed_frames']} frames resumed from the manifest; "
           f"{r['worker_crashes']} worker crash(es)", ""]
    if report["random_init"]:
        out += ["**The model has no checkpoint (random init): the outputs and metrics are meaningless.**", ""]
    out += ["## Summary", ""] + _table(*summary_rows(report)) + [""]
    out += ["written / skipped / failed: one count per task in the order " + ", ".join(tasks) + ".", ""]
    out += ["## Overall metrics", ""]
    for t in tasks:
        m = report["metrics"][t]
        out += [f"### {t}", ""] + (_table(["metric", "value"], [[k, v] for k, v in m.items()]) if m else
                                   ["no ground truth for this task in the data"]) + [""]
    out += ["## Error profiles", ""]
    for t in tasks:
        p = report["profiles"].get(t)
        for axis in ("distance", "speed"):
            d = None if p is None else p.get(axis)
            if d:
                out += [f"{t}, by {axis} ({d['quantity']}):", ""]
                out += _table(["bin", d["quantity"], "count"], [[b, v, n] for b, v, n in
                                                               zip(d["bins"], d["value"], d["count"])]) + [""]
    out += [f"![{p.stem}]({p.as_posix()})" for p in plots] + [""]
    failed = [(s["key"], n) for s in report["sequences"] for n in s["not_written"] if n["status"] == Status.FAILED]
    if failed or report["failed_sequences"] or report["failed_units"]:
        out += ["## Failures", ""]
        out += [f"* sequence {f['key']} ({f['path']}): {f['reason']}" for f in report["failed_sequences"]]
        out += [f"* work unit {f['unit']}: {f['reason'].splitlines()[0]} (attempts: {f['attempts']})"
                for f in report["failed_units"]]
        out += [f"* {key} frame {n['index']} {n['frame_id']} ({n['task']}): {n['reason']}" for key, n in failed]
        out += [""]
    skipped = sum(1 for s in report["sequences"] for n in s["not_written"] if n["status"] == Status.SKIPPED)
    if skipped:
        out += [f"{skipped} frame outputs were skipped by design (e.g. no next sweep for flow); report.json lists "
                f"them with their reasons.", ""]
    return "\n".join(out)


def plot_report(report: dict, folder: Path) -> list[Path]:
    """Per-sequence key metrics, error vs distance, error vs speed (only the plots with data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save_figure(fig, path: Path) -> Path:
        fig.tight_layout()
        path = write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
        plt.close(fig)
        return path

    folder = Path(folder)
    out = []
    tasks = [t for t in report["tasks"] if report["metrics"].get(t)]
    if tasks:
        fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
        names = [s["key"] for s in report["sequences"]]
        for ax, t in zip(axes[0], tasks):
            keys = KEY_METRICS[t]
            width = 0.8 / len(keys)
            for j, k in enumerate(keys):
                vals = [s["metrics"][t].get(k) for s in report["sequences"]]
                ax.bar(np.arange(len(names)) + j * width, [np.nan if v is None else v for v in vals], width,
                       label=k.split("/", 1)[1])
            labels = [n if len(n) <= 14 else n[:12] + ".." for n in names] if len(names) <= 40 else []
            ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2 if labels else [], labels, rotation=45,
                          ha="right", fontsize=7)
            ax.set_title(f"{t}: per sequence")
            ax.legend(fontsize=7)
        out.append(save_figure(fig, folder / "per_sequence.png"))
    for axis, xlabel in (("distance", "distance from the ego (m)"), ("speed", "true speed (m/s)")):
        docs = [(t, report["profiles"][t][axis]) for t in report["tasks"]
                if report["profiles"].get(t) and report["profiles"][t].get(axis)]
        if not docs:
            continue
        fig, axes = plt.subplots(1, len(docs), figsize=(6 * len(docs), 4), squeeze=False)
        for ax, (t, d) in zip(axes[0], docs):
            vals = [np.nan if v is None else v for v in d["value"]]
            ax.plot(range(len(vals)), vals, marker="o")
            ax.set_xticks(range(len(vals)), d["bins"], rotation=45, ha="right", fontsize=7)
            ylabel = {"flow": "mean end-point error (m)", "mos": "moving IoU",
                      "occupancy": "geometry IoU" if axis == "distance" else "velocity error (m/s)"}[t]
            ax.set_ylabel(ylabel)
            ax.set_xlabel(xlabel)
            ax.set_title(f"{t}: {ylabel} by {axis}")
            ax.grid(alpha=0.3)
        out.append(save_figure(fig, folder / f"error_vs_{axis}.png"))
    return out


def print_summary(report: dict) -> None:
    r = report["run"]
    print(f"scored {r['frames_scored']} frames ({r['resumed_frames']} resumed) at {_num(r['frames_per_s'], 2)} "
          f"frames/s on {len(r['workers'])} worker(s); report: report.json, report.md")
    print("\n".join(_table(*summary_rows(report))))
    n_failed = len(report["failed_sequences"]) + len(report["failed_units"])
    if n_failed or not report["complete"]:
        print(f"{n_failed} sequence(s) / unit(s) failed; "
              + ("rerun the same command to resume" if not report["complete"] else "see report.md"))
