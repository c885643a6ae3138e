"""Reading sweeps back: one row per job, tables (CSV, Markdown, terminal) and seed aggregation.

Everything is rebuilt from the job directories on disk (their summary.json, metrics.csv and
.hydra/overrides.yaml), so it works on any sweep: finished, partial, still running, or killed.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from experiments.atomic import atomic_write
from experiments.groups import CONFIG_GROUPS
from experiments.summary import SUMMARY_FILE

CHOICE_COLUMNS = CONFIG_GROUPS  # every job's option of each group, swept or not
RESULT_COLUMNS = ("status", "best_val_acc", "test_acc", "test_acc_final", "test_tta_acc",
                  "epochs_completed", "early_stopped", "train_time_s", "images_per_s", "error")
BEST_MARK = "*"


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

    @property
    def label(self) -> str:
        """A short legend label: the directory name without its job number."""
        head, _, rest = self.name.partition("-")
        return rest if head.isdigit() and rest else self.name


def find_job_dirs(root: Path) -> list[Path]:
    """Job directories under `root` (a sweep), or `root` itself (a single run)."""
    root = Path(root)
    if (root / ".hydra").is_dir():
        return [root]
    jobs = [p for p in root.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]
    return sorted(jobs, key=lambda p: (int(p.name.split("-")[0]) if p.name.split("-")[0].isdigit() else 1e9, p.name))


def read_metrics(job_dir: Path) -> list[dict[str, float]]:
    path = job_dir / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def read_overrides(job_dir: Path) -> dict[str, str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    items = yaml.safe_load(path.read_text()) if path.exists() else []
    pairs = (item.split("=", 1) for item in items or [] if "=" in item)
    return {k.lstrip("+~"): v for k, v in pairs if not k.lstrip("+~").startswith("hydra")}


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_status(summary: dict[str, Any] | None) -> str:
    """`running` only while the process that wrote it still lives (when we can tell)."""
    if summary is None:
        return "unknown"
    if summary.get("status") != "running":
        return summary.get("status", "unknown")
    same_host = summary.get("host") == socket.gethostname()
    return "interrupted" if same_host and not process_alive(summary.get("pid", -1)) else "running"


def load_job(job_dir: Path, sweep: str) -> Job:
    path = job_dir / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text()) if path.exists() else None
    except json.JSONDecodeError:
        summary = None
    job = Job(job_dir, sweep, dict(summary or {}), read_overrides(job_dir), read_metrics(job_dir))
    job.summary["status"] = live_status(summary)
    if job.summary["status"] in ("running", "interrupted", "unknown") and job.metrics:
        # not finished: show what the epochs so far say
        vals = [m["val/acc"] for m in job.metrics if "val/acc" in m]
        job.summary.update(epochs_completed=len(job.metrics), best_val_acc=max(vals) if vals else None)
    return job


def load_sweeps(roots: list[Path]) -> list[Job]:
    return [load_job(d, Path(root).name) for root in roots for d in find_job_dirs(Path(root))]


def override_columns(jobs: list[Job]) -> list[str]:
    """Every key some job overrides, except those the choice columns already show."""
    keys = {k for job in jobs for k in job.overrides if k not in CHOICE_COLUMNS}
    return sorted(keys)


def rows(jobs: list[Job], with_sweep: bool = False) -> list[dict[str, Any]]:
    """One dict per job, sorted by test accuracy; BEST_MARK on the best *validation* accuracy."""
    extra = override_columns(jobs)
    table = []
    for job in jobs:
        s, choices = job.summary, job.summary.get("choices") or {}
        row = {"sweep": job.sweep} if with_sweep else {}
        row["job"] = job.name
        row.update({c: job.overrides.get(c, choices.get(c, "")) for c in CHOICE_COLUMNS})
        row.update({k: job.overrides.get(k, "") for k in extra})
        row.update({c: s.get(c) for c in RESULT_COLUMNS})
        row["best"] = ""
        table.append(row)
    done = [r for r in table if r["status"] == "completed" and r["best_val_acc"] is not None]
    if done:
        max(done, key=lambda r: r["best_val_acc"])["best"] = BEST_MARK
    return sorted(table, key=lambda r: (r["test_acc"] is None, -(r["test_acc"] or 0.0)))


def config_key(row: dict[str, Any], columns: list[str]) -> tuple:
    return tuple(row[c] for c in columns)


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate_seeds(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Completed rows grouped by configuration (every column but the job, its seed and results):
    mean and sample standard deviation over seeds, with the count. Sorted by mean test accuracy."""
    skip = {"job", "seed", "best", *RESULT_COLUMNS}
    columns = [c for c in (table[0] if table else {}) if c not in skip]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in table:
        if row["status"] == "completed":
            groups[config_key(row, columns)].append(row)
    out = []
    for key, members in groups.items():
        agg = dict(zip(columns, key))
        agg["n"] = len(members)
        seeds = sorted(str(r.get("seed", "")) for r in members)
        agg["seeds"] = " ".join(sorted(seeds, key=lambda x: (len(x), x))).strip()
        for metric in ("test_acc", "best_val_acc", "train_time_s"):
            values = [r[metric] for r in members if r[metric] is not None]
            agg[f"{metric}_mean"], agg[f"{metric}_std"] = mean_std(values)
        out.append(agg)
    return sorted(out, key=lambda r: -(r["test_acc_mean"] or 0.0))


# --- formatting ------------------------------------------------------------------------------

def fmt(column: str, value: Any) -> str:
    if isinstance(value, str) and len(value) > 8:
        try:  # a long sampled number (Optuna): 4 significant digits are enough to read
            return f"{float(value):.4g}"
        except ValueError:
            return value
    if value is None or isinstance(value, (str, bool)):
        return "" if value is None else str(value)
    if "acc" in column.split("_"):  # accuracies are fractions: shown in %
        return f"{100 * value:.2f}"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return str(value)


def markdown(table: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not table:
        return "(no jobs)\n"
    columns = columns or list(table[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table:
        cells = [fmt(c, row.get(c)).replace("|", "\\|").replace("\n", " ") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def constant_columns(table: list[dict[str, Any]], keep=("status", "best")) -> dict[str, Any]:
    """Config columns with one value in every row (shown once above a table)."""
    if len(table) < 2:
        return {}
    return {c: table[0][c] for c in table[0]
            if c not in keep and c not in RESULT_COLUMNS and c != "job"
            and len({str(r.get(c)) for r in table}) == 1}


def shared_and_shown(table: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """The values every job shares (listed once, above the table) and the columns that vary
    (the table's). summary.csv keeps every column, for programs."""
    same = constant_columns(table)
    shown = [c for c in table[0] if c not in same and c != "error"
             and any(r.get(c) not in (None, "") for r in table)]
    return same, shown


def shared_line(same: dict[str, Any]) -> str:
    return "all jobs: " + " ".join(f"{k}={fmt(k, v)}" for k, v in same.items() if v not in (None, ""))


def mean_pm_std(agg: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Aggregated rows with `mean +- std` strings, for Markdown."""
    shown = []
    for row in agg:
        out = {k: v for k, v in row.items() if not k.endswith(("_mean", "_std"))}
        for metric in ("test_acc", "best_val_acc", "train_time_s"):
            mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
            out[metric] = "" if mean is None else f"{fmt(metric, mean)} +- {fmt(metric, std)}"
        shown.append(out)
    return shown


def write_csv(path: Path, table: list[dict[str, Any]]) -> None:
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        if table:
            writer = csv.DictWriter(f, list(table[0]))
            writer.writeheader()
            writer.writerows(table)


def write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def has_seed_repeats(agg: list[dict[str, Any]]) -> bool:
    return any(row["n"] > 1 for row in agg)


def write_tables(roots: list[Path], out_dir: Path,
                 jobs: list[Job] | None = None) -> tuple[list[dict], list[dict]]:
    """summary.csv, summary.md (and summary_by_config.csv when seeds repeat a configuration),
    from `jobs` when the caller already read them."""
    jobs = load_sweeps(roots) if jobs is None else jobs
    table = rows(jobs, with_sweep=len(roots) > 1)
    agg = aggregate_seeds(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "summary.csv", table)
    same, shown = shared_and_shown(table) if table else ({}, [])
    text = ["# Sweep summary", "", f"Sweeps: {', '.join(str(r) for r in roots)}", "",
            f"Sorted by test accuracy (%). `{BEST_MARK}` marks the best validation accuracy: the "
            "configuration to pick. Test accuracy is for reporting, never for choosing.", "",
            *([shared_line(same), ""] if same else []), markdown(table, shown)]
    failed = [r for r in table if r["status"] == "failed"]
    if failed:
        text += ["## Failed jobs", ""] + [f"- `{r['job']}`: {r['error']}" for r in failed] + [""]
    if has_seed_repeats(agg):
        write_csv(out_dir / "summary_by_config.csv", agg)
        text += ["## Per configuration, over seeds (mean +- std, n seeds)", "",
                 markdown(mean_pm_std(agg), [c for c in mean_pm_std(agg)[0] if c not in same])]
    write_text(out_dir / "summary.md", "\n".join(text))
    return table, agg


def terminal_table(table: list[dict], agg: list[dict]) -> str:
    """The table for a terminal: columns that never vary are listed once above it."""
    if not table:
        return "(no jobs)"
    same, shown = shared_and_shown(table)
    text = shared_line(same) + "\n\n" if same else ""
    text += markdown(table, shown)
    failed = [f"  {r['job']}: {r['error']}" for r in table if r["status"] == "failed"]
    if failed:
        text += "\nfailed:\n" + "\n".join(failed) + "\n"
    if has_seed_repeats(agg):
        agg_shown = [c for c in mean_pm_std(agg)[0] if c not in same]
        text += "\nper configuration, over seeds (accuracy in %, mean +- std):\n"
        text += markdown(mean_pm_std(agg), agg_shown)
    return text

