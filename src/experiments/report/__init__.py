"""Reporting: each job's tracking and summary.json, and a sweep read back as tables, effects,
plots and a report. `from experiments.report import load_sweep` gives a sweep as a DataFrame."""

from experiments.report.sweep import load_sweep

__all__ = ["load_sweep"]
