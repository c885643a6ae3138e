"""A sweep analysed once (`SweepAnalysis`): one row per job, the job table, the per-configuration
aggregate, the configuration picked on validation, and the effects. Written out by
experiments.report.sweep_report and experiments.report.markdown.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from experiments.report import effects
from experiments.report.job_summary import RESULT_COLUMNS
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
    aggregate, the pick and the effects."""

    df: pd.DataFrame
    table: pd.DataFrame
    configs: pd.DataFrame
    pick: dict | None
    analysis: effects.Effects


def analyse_sweep(jobs: list[Job]) -> SweepAnalysis:
    df = jobs_frame(jobs)
    configs = effects.by_config(df, df.attrs["config_columns"])
    pick = effects.pick(df, configs, df.attrs["config_columns"])
    return SweepAnalysis(df, job_table(df, pick), configs, pick,
                       effects.estimate(df, df.attrs["config_columns"]))
