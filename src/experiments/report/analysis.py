"""A sweep analysed once (`SweepAnalysis`): one row per job, the job table, the per-configuration
aggregate, the configuration picked on validation, the effects, and an Optuna search's trials.
Written out by experiments.report.sweep_report and experiments.report.markdown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from experiments.report import effects
from experiments.report.job_summary import RESULT_COLUMNS
from experiments.report.search import Search, searches
from experiments.report.sweep import SEED, Job, jobs_frame

BEST_MARK = "*"


def table_columns(df: pd.DataFrame) -> list[str]:
    """summary.csv's columns: the sweep (when several), the job, its configuration and seed,
    and the results."""
    sweep = ["sweep"] if df["sweep"].nunique() > 1 else []
    return [*sweep, "job", *df.attrs["config_columns"], SEED, *RESULT_COLUMNS, "best"]


def job_table(df: pd.DataFrame, pick: dict | None) -> pd.DataFrame:
    """Sorted by test accuracy; BEST_MARK on the jobs of the configuration picked on validation."""
    table = df.copy()
    picked = pd.Series(True, index=df.index)
    for column, value in (pick or {}).get("config", {}).items():
        picked &= df[column] == value
    table["best"] = picked.map({True: BEST_MARK, False: ""}) if pick else ""
    table = table.sort_values("test_acc", ascending=False, na_position="last", kind="stable")
    return table[[c for c in table_columns(df) if c in table]]


@dataclass
class SweepAnalysis:
    """What one pass over a sweep computed: its jobs, their table, the per-configuration
    aggregate, the pick, the effects, and the Optuna searches among its sweep directories."""

    df: pd.DataFrame
    table: pd.DataFrame
    configs: pd.DataFrame
    pick: dict | None
    analysis: effects.Effects
    searches: list[Search] = field(default_factory=list)


def analyse_sweep(jobs: list[Job]) -> SweepAnalysis:
    """Only completed jobs are candidates and enter the grid and the effects (pruned trials
    are neither: their numbers are partial). The parameters an Optuna search sampled are
    searched, not factors of a grid: no two trials differ in one of them alone."""
    df = jobs_frame(jobs)
    configs = effects.by_config(df, df.attrs["config_columns"])
    pick = effects.pick(df, configs, df.attrs["config_columns"])
    found = searches(jobs)
    sampled = [k for k in df.attrs["config_columns"] if any(k in s.space for s in found)]
    return SweepAnalysis(df, job_table(df, pick), configs, pick,
                         effects.estimate(df, df.attrs["config_columns"], searched=sampled), found)
