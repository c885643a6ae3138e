"""Reporting: what each job records, and a sweep read back as tables, effects, plots and a report.

Each job: `tracking` (TensorBoard, W&B, metrics.csv; the `logger` group's target), `job_summary`
(summary.json, its keys defined once), `provenance` (what produced the numbers).
A sweep: `sweep` (read back from disk, one row per job), `analysis` (analysed once), `effects`
(the statistics), `search` (an Optuna search's trials: importances, pruning), `tables`,
`markdown` (summary.md), `plots`, `sweep_report` (every file written), `command`
(`python -m experiments.summarize`), `callbacks` (Hydra's hooks).

`from experiments.report import load_sweep` gives a sweep as a DataFrame.
"""

__all__ = ["load_sweep"]


def __getattr__(name: str):
    # on first use, not at import: a job imports this package for job_summary, and pandas (which
    # `sweep` needs) added 0.3 s to every job's, rank's and Slurm task's start (2026-12-02)
    if name == "load_sweep":
        from experiments.report.sweep import load_sweep

        return load_sweep
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
