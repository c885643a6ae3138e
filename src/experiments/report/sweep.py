"""A sweep read back: its jobs, and one row per job (a pandas DataFrame).

Everything is read from the job directories on disk (their summary.json, metrics.csv and
.hydra/overrides.yaml), so it works on any sweep: finished, partial, still running, or killed.
In a notebook: `from experiments.report import load_sweep; df = load_sweep("multirun/...")`.
"""

from __future__ import annotations

import csv
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from experiments.groups import CONFIG_GROUPS
from experiments.report.job_summary import (
    CONFIG_FILE,
    COUNTS,
    FLOATS,
    NESTED,
    RESULT_COLUMNS,
    SUMMARY_FILE,
    pid_alive,
    read_summary,
)
from experiments.report.tracking import METRICS_FILE
from experiments.training.metrics import EPOCH, METRIC_MODES, VAL_ACC, VAL_LOSS

SEED = "seed"  # the replicate: a column of its own, never part of a configuration
DEFAULT_MONITOR = VAL_ACC  # trainer.monitor when a job's config does not say (conf/trainer)
UNFINISHED = ("running", "interrupted", "unknown")


@dataclass
class Job:
    path: Path
    sweep: str
    summary: dict[str, Any]
    overrides: dict[str, str]
    metrics: list[dict[str, float]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name


def label(job_name: str) -> str:
    """A short legend label: the directory name without its job number."""
    head, _, rest = job_name.partition("-")
    return rest if head.isdigit() and rest else job_name


def find_job_dirs(root: Path) -> list[Path]:
    """Job directories under `root` (a sweep), or `root` itself (a single run)."""
    root = Path(root)
    if (root / ".hydra").is_dir():
        return [root]
    jobs = [p for p in root.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]
    return sorted(jobs, key=lambda p: (int(p.name.split("-")[0]) if p.name.split("-")[0].isdigit() else 1e9, p.name))


def read_metrics(job_dir: Path) -> list[dict[str, float]]:
    path = job_dir / METRICS_FILE
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


# libyaml's loader when PyYAML has it: 7x faster than the pure-Python one (a big sweep has a
# file per job), the same safe subset
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_overrides(job_dir: Path) -> dict[str, str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    items = yaml.load(path.read_text(), Loader=SAFE_LOADER) if path.exists() else []
    pairs = (item.split("=", 1) for item in items or [] if "=" in item)
    return {k.lstrip("+~"): v for k, v in pairs if not k.lstrip("+~").startswith("hydra")}


def live_status(summary: dict[str, Any] | None) -> str:
    """`running` only while the process that wrote it still lives (when we can tell)."""
    if summary is None:
        return "unknown"
    if summary.get("status") != "running":
        return summary.get("status", "unknown")
    same_host = summary.get("host") == socket.gethostname()
    return "interrupted" if same_host and not pid_alive(summary.get("pid", -1)) else "running"


def load_job(job_dir: Path, sweep: str) -> Job:
    summary = read_summary(job_dir)
    job = Job(job_dir, sweep, dict(summary or {}), read_overrides(job_dir), read_metrics(job_dir))
    job.summary["status"] = live_status(summary)
    if job.summary["status"] in UNFINISHED and job.metrics:
        job.summary.update(selection_so_far(job))
    return job


def selection_so_far(job: Job) -> dict[str, Any]:
    """What the epochs so far say about an unfinished job: its own selection when its summary
    has one (the job writes it after every epoch), else the same selection made from its
    metrics.csv (a summary written by an older version, at the start only)."""
    # metrics.csv is written before the summary: it can be an epoch ahead
    epochs = max(len(job.metrics), job.summary.get("epochs_completed") or 0)
    if job.summary.get("best_val_acc") is not None:
        return {"epochs_completed": epochs}
    return {"epochs_completed": epochs, **selected_epoch(job.metrics, monitored(job.path))}


def monitored(job_dir: Path) -> str:
    """The metric the job selects its epoch on: trainer.monitor in its config."""
    path = job_dir / CONFIG_FILE
    config = yaml.load(path.read_text(), Loader=SAFE_LOADER) if path.exists() else None
    return ((config or {}).get("trainer") or {}).get("monitor") or DEFAULT_MONITOR


def selected_epoch(metrics: list[dict[str, float]], monitor: str) -> dict[str, Any]:
    """The epoch the job selects, as experiments.training.selection.Monitor does: the best by
    `monitor` (the lowest val/loss is not always the highest val/acc), the first of equals."""
    watched = [row for row in metrics if monitor in row]
    if not watched:
        return {"best_val_acc": None, "best_val_loss": None, "best_epoch": None}
    best = (max if METRIC_MODES[monitor] == "max" else min)(watched, key=lambda row: row[monitor])
    return {"best_val_acc": best.get(VAL_ACC), "best_val_loss": best.get(VAL_LOSS),
            "best_epoch": int(best[EPOCH]) if EPOCH in best else None}


ENDED = ("completed", "failed", "pruned")  # a job that will not change (until it is rerun: a new summary)


def load_sweeps(roots: list[Path], cache: dict | None = None) -> list[Job]:
    """Every job of the sweeps under `roots`. With `cache` (a dict the caller keeps between
    calls: the sweep callback, rebuilding after every job), an ended job whose summary.json has
    not changed since is not read again: a rebuild of a 1,024-job sweep read every job in
    0.7 s (2-core CPU, 2026-12-01), after each of its jobs."""
    return [cached_job(d, Path(root).name, cache) for root in roots for d in find_job_dirs(Path(root))]


def cached_job(job_dir: Path, sweep: str, cache: dict | None) -> Job:
    if cache is None:
        return load_job(job_dir, sweep)
    try:
        stamp = (job_dir / SUMMARY_FILE).stat().st_mtime_ns
    except OSError:
        stamp = None
    hit = cache.get(job_dir)
    if hit is not None and hit[0] == stamp and stamp is not None:
        return hit[1]
    job = load_job(job_dir, sweep)
    if job.summary.get("status") in ENDED:
        cache[job_dir] = (stamp, job)
    return job


# --- one row per job -------------------------------------------------------------------------

def override_columns(jobs: list[Job]) -> list[str]:
    """Every key some job overrides, except those the choice columns and `seed` already show."""
    keys = {k for job in jobs for k in job.overrides if k not in CONFIG_GROUPS and k != SEED}
    return sorted(keys)


def job_record(job: Job, overridden: list[str]) -> dict[str, Any]:
    s, choices = job.summary, job.summary.get("choices") or {}
    record = {"sweep": job.sweep, "job": job.name}
    record.update({g: job.overrides.get(g, choices.get(g)) or "" for g in CONFIG_GROUPS})
    record.update({k: job.overrides.get(k, "") for k in overridden})
    seed = job.overrides.get(SEED, s.get(SEED))
    record[SEED] = "" if seed is None else str(seed)
    record.update({c: s.get(c) for c in RESULT_COLUMNS})
    record.update({k: v for k, v in s.items() if k not in record and k not in ("choices", "overrides")
                   and not (k in NESTED and v is None)})
    record["overrides"] = " ".join(s.get("overrides") or [f"{k}={v}" for k, v in job.overrides.items()])
    return record


def jobs_frame(jobs: list[Job]) -> pd.DataFrame:
    """One row per job: sweep, job, every config group's option, every overridden key, seed,
    status, every number of summary.json (accuracies as fractions, as there), and its
    provenance as dotted columns (`provenance.code.commit`, ...). df.attrs["config_columns"]
    names the columns that define a configuration (groups and overridden keys)."""
    overridden = override_columns(jobs)
    df = pd.json_normalize([job_record(j, overridden) for j in jobs], sep=".")
    for column in FLOATS:
        df[column] = pd.to_numeric(df[column])
    for column in COUNTS:
        if column in df:
            df[column] = pd.to_numeric(df[column]).round().astype("Int64")
    df.attrs["config_columns"] = [*CONFIG_GROUPS, *overridden]
    return df


def load_sweep(*roots: str | Path) -> pd.DataFrame:
    """The jobs of one or more sweep (or single-run) directories, one row per job."""
    return jobs_frame(load_sweeps([Path(r) for r in roots]))
