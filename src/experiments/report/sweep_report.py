"""A sweep's report written: summary.csv, summary_by_config.csv, effects.csv, summary.md and
plots/, and the table printed in a terminal.

The summarize command (experiments.report.command) and the Hydra callback that rebuilds the
report after every job (experiments.report.callbacks) both go through `write_tables`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from experiments.atomic import atomic_write
from experiments.report import effects
from experiments.report.analysis import SweepAnalysis, analyse_sweep
from experiments.report.markdown import report_markdown
from experiments.report.plots import write_plots
from experiments.report.search import Search, best_text, edge_sentence, headline, pruning, pruning_sentence
from experiments.report.sweep import Job, load_sweeps
from experiments.report.tables import by_config_shown, markdown_table, shared_and_shown, shared_line


def write_csv(path: Path, table: pd.DataFrame) -> None:
    with atomic_write(path) as tmp:
        table.to_csv(tmp, index=False)


def write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def write_tables(roots: list[Path], out_dir: Path, jobs: list[Job] | None = None,
                 plots: bool = False) -> SweepAnalysis | None:
    """summary.csv, effects.csv, summary.md (and summary_by_config.csv when seeds repeat a
    configuration), and with `plots` the PNGs in out_dir/plots, drawn first so that summary.md
    embeds them. From `jobs` when the caller already read them."""
    jobs = load_sweeps(roots) if jobs is None else jobs
    out_dir.mkdir(parents=True, exist_ok=True)
    if not jobs:
        write_text(out_dir / "summary.md", "# Sweep report\n\n(no jobs)\n")
        return None
    result = analyse_sweep(jobs)
    if plots:
        write_plots(jobs, result, out_dir / "plots")
    write_csv(out_dir / "summary.csv", result.table)
    write_csv(out_dir / "effects.csv", result.analysis.csv)
    if (result.configs["n"] > 1).any():
        write_csv(out_dir / "summary_by_config.csv", result.configs)
    write_text(out_dir / "summary.md", report_markdown(roots, result, out_dir))
    return result


def terminal_table(result: SweepAnalysis | None) -> str:
    """The table for a terminal: columns that never vary are listed once above it, then the
    per-configuration means and the effects in a sentence each."""
    if result is None:
        return "(no jobs)"
    same, shown = shared_and_shown(result.table)
    text = shared_line(same) + "\n\n" if same else ""
    text += markdown_table(result.table, shown)
    failed = [f"  {r.job}: {r.error}" for r in result.table.itertuples() if r.status == "failed"]
    if failed:
        text += "\nfailed:\n" + "\n".join(failed) + "\n"
    if (result.configs["n"] > 1).any():
        text += "\nper configuration, over seeds (accuracy in %, mean +- std):\n"
        text += markdown_table(by_config_shown(result.configs, same, effects.AGGREGATED))
    if result.analysis.sentences:
        text += "\neffects (test accuracy, paired over jobs that differ only in that factor):\n"
        text += "\n".join(f"  {s}" for s in result.analysis.sentences) + "\n"
    for search in result.searches:
        text += search_lines(search, several=len(result.searches) > 1)
    return text


def search_lines(search: Search, several: bool) -> str:
    """An Optuna search in a few lines: its trials, the best, the importances, what pruning saved."""
    lines = [f"\nsearch{f' {search.sweep}' if several else ''} (Optuna): {headline(search)}",
             f"  {best_text(search)}"] + ([f"  {edge_sentence(search)}"] if edge_sentence(search) else [])
    if search.importances:
        lines.append(f"  importances (fANOVA over {len(search.valued)} completed trials): "
                     + ", ".join(f"{k} {v:.2f}" for k, v in search.importances.items()))
    else:
        lines.append(f"  importances: {search.importance_note}")
    saved = pruning_sentence(pruning(search), len(search.trials))
    return "\n".join(lines + ([f"  {saved}"] if saved else [])) + "\n"
