"""Tables for people: numbers formatted (accuracies in %), Markdown, values shared by every row
listed once above a table."""

from __future__ import annotations

from typing import Any

import pandas as pd

from experiments.report.job_summary import RESULT_COLUMNS


def missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def fmt(column: str, value: Any) -> str:
    if isinstance(value, str) and len(value) > 8:
        try:  # a long sampled number (Optuna): 4 significant digits are enough to read
            return f"{float(value):.4g}"
        except ValueError:
            return value
    if missing(value):
        return ""
    if isinstance(value, (str, bool)):
        return str(value)
    if "acc" in column.split("_"):  # accuracies are fractions: shown in %
        return f"{100 * value:.2f}"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return str(value)


def mean_pm_std(column: str, mean: float, std: float) -> str:
    """`mean +- std`; the mean alone when there is no spread to measure (one seed)."""
    if missing(mean):
        return ""
    return fmt(column, mean) if missing(std) else f"{fmt(column, mean)} +- {fmt(column, std)}"


def markdown_table(table: pd.DataFrame, columns: list[str] | None = None) -> str:
    """A Markdown table; string cells are shown as they are."""
    if table.empty:
        return "(no jobs)\n"
    columns = list(columns or table.columns)
    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    for row in table[columns].itertuples(index=False):
        cells = [fmt(str(c), v).replace("|", "\\|").replace("\n", " ") for c, v in zip(columns, row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def constant_columns(table: pd.DataFrame, keep=("status", "best")) -> dict[str, Any]:
    """Config columns with one (non-empty) value in every row (shown once above a table)."""
    if len(table) < 2:
        return {}
    return {c: table[c].iloc[0] for c in table.columns
            if c not in keep and c not in RESULT_COLUMNS and c != "job"
            and table[c].astype(str).nunique() == 1 and fmt(c, table[c].iloc[0])}


def shared_and_shown(table: pd.DataFrame) -> tuple[dict[str, Any], list[str]]:
    """The values every job shares (listed once, above the table) and the columns that vary
    (the table's). summary.csv keeps every column, for programs."""
    same = constant_columns(table)
    shown = [c for c in table.columns if c not in same and c != "error" and shows(table[c], c)]
    return same, shown


def shows(values: pd.Series, column: str) -> bool:
    """Whether any of a column's values reads as something (not all empty)."""
    return values.map(lambda v: fmt(column, v) != "").any()


def shared_line(same: dict[str, Any]) -> str:
    return "all jobs: " + " ".join(f"{k}={fmt(k, v)}" for k, v in same.items())


def by_config_shown(configs: pd.DataFrame, same: dict[str, Any], metrics: tuple[str, ...]) -> pd.DataFrame:
    """Per-configuration rows with `mean +- std` strings, without the columns in `same`."""
    shown = configs[[c for c in configs.columns if c not in same and not c.endswith(("_mean", "_std"))
                     and shows(configs[c], c)]].copy()
    for metric in metrics:
        if f"{metric}_mean" in configs:
            shown[metric] = [mean_pm_std(metric, m, s) for m, s in
                             zip(configs[f"{metric}_mean"], configs[f"{metric}_std"])]
    return shown
