"""Reporting: what each job records, and a sweep read back as tables, effects, plots and a report.

Each job: `tracking` (TensorBoard, W&B, metrics.csv; the `logger` group's target), `job_summary`
(summary.json, its keys defined once), `provenance` (what produced the numbers).
A sweep: `sweep` (read back from disk, one row per job), `analysis` (analysed once), `effects`
(the statistics), `tables`, `markdown` (summary.md), `plots`, `sweep_report` (every file
written), `command` (`python -m experiments.summarize`), `callbacks` (Hydra's hooks).

`from experiments.report import load_sweep` gives a sweep as a DataFrame.
"""

from experiments.report.sweep import load_sweep

__all__ = ["load_sweep"]
