"""summary.md: a sweep's report, in the order a reader asks: what to pick, an Optuna search's
trials, the grid, what each factor did, the plots, what failed, what produced the numbers, and
every job."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from experiments.report import effects
from experiments.report.analysis import SweepAnalysis
from experiments.report.effects import Comparison, completed
from experiments.report.grid import frame, sweep_grid
from experiments.report.job_summary import COMPLETED, FAILED, PRUNED
from experiments.report.plots import EFFECTS_PLOT, GRID_PLOT, PLOTS, search_plot_name
from experiments.report.search import (
    Search,
    best_text,
    describe,
    edge_sentence,
    headline,
    pruning,
    pruning_sentence,
    value_text,
)
from experiments.report.tables import (
    by_config_shown,
    fmt,
    markdown_table,
    mean_pm_std,
    missing,
    shared_and_shown,
    shared_line,
)

MISSING_CELL = "–"
PROVENANCE = "provenance."


def report_markdown(roots: list[Path], result: SweepAnalysis, out_dir: Path) -> str:
    same, shown = shared_and_shown(result.table)
    text = ["# Sweep report", "", f"Sweeps: {', '.join(str(r) for r in roots)}", "",
            *pick_section(result), *search_sections(result.searches, out_dir),
            *grid_section(result, out_dir), *effects_section(result.analysis, out_dir, result.searches),
            *plots_section(out_dir), *problems_section(result.df), *provenance_section(result.df),
            "## All jobs", "",
            "Sorted by test accuracy (%). `*` marks the jobs of the picked configuration (best "
            "validation accuracy). Test accuracy is for reporting, never for choosing.", "",
            *([shared_line(same), ""] if same else []), markdown_table(result.table, shown)]
    if (result.configs["n"] > 1).any():
        text += ["## Per configuration, over seeds (mean +- std, n seeds)", "",
                 markdown_table(by_config_shown(result.configs, same, effects.AGGREGATED))]
    return "\n".join(text)


def configuration(config: dict, columns: list[str]) -> str:
    return " ".join(f"{c}={config[c]}" for c in columns) or "the only configuration"


def pick_section(result: SweepAnalysis) -> list[str]:
    counts = result.df["status"].value_counts()
    jobs = f"{len(result.df)} jobs: " + ", ".join(f"{n} {status}" for status, n in counts.items()) + "."
    jobs += copies(result.df)
    if result.pick is None:
        return ["## Pick", "", "No completed job has a validation accuracy: nothing to pick on "
                "(test accuracy is not for choosing).", "", jobs + pruned_apart(counts.get(PRUNED, 0)), ""]
    row, n = result.pick["row"], int(result.pick["row"]["n"])
    over = f"mean +- std over {n} seeds" if n > 1 else "one seed"
    varying = result.analysis.factors + result.analysis.searched
    return ["## Pick", "",
            f"**{configuration(result.pick['config'], varying)}**: best validation accuracy "
            f"{mean_pm_std('best_val_acc', row['best_val_acc_mean'], row['best_val_acc_std'])} ({over}); "
            f"its test accuracy {mean_pm_std('test_acc', row['test_acc_mean'], row['test_acc_std'])}."
            + compared(result.pick["seeds"], result.pick["left_out"])
            + tied(result.pick.get("ties", 0)), "", jobs + pruned_apart(counts.get(PRUNED, 0)), ""]


def pruned_apart(pruned: int) -> str:
    """Pruned trials stopped early by the search: their numbers are partial, never a candidate's."""
    if not pruned:
        return ""
    return (f" The {pruned} pruned trial{'s are not candidates' if pruned > 1 else ' is not a candidate'}: "
            "stopped early by the search, with partial numbers and no test accuracy (see Search).")


def copies(df: pd.DataFrame) -> str:
    """The directories left out because they hold a job another one holds (the same config and
    seed: a sweep of an older version, rerun, trained its jobs again at their new places)."""
    pairs = [(copy, job) for job, names in zip(df["job"], df["copies"]) for copy in names.split()]
    if not pairs:
        return ""
    shown = ", ".join(f"`{copy}` (as `{job}`)" for copy, job in pairs[:6])
    more = f" and {len(pairs) - 6} more" if len(pairs) > 6 else ""
    one = len(pairs) == 1
    return (f" {len(pairs)} director{'y holds' if one else 'ies hold'} a job that another holds too "
            f"(the same config and seed) and {'is' if one else 'are'} left out, so that each counts "
            f"once: {shown}{more}.")


def compared(seeds: list[str], left_out: int) -> str:
    """Which seeds the choice was made on, when not on every completed job: the numbers shown
    are over all of the pick's completed jobs, the choice was not."""
    if not seeds:
        return (" The configurations completed different seeds: their means are over different "
                "seeds (none is common to all), so the choice is not like for like.")
    if not left_out:
        return ""
    jobs = f"{left_out} job{'s' if left_out > 1 else ''} of other seeds {'are' if left_out > 1 else 'is'}"
    return (f" The configurations were compared over seeds {' '.join(seeds)}, the seeds every "
            f"configuration completed; {jobs} left out of the choice (the numbers above are over "
            "all of this configuration's completed jobs).")


def tied(others: int) -> str:
    """A tie on validation accuracy is broken by the sweep's order, which says nothing."""
    if not others:
        return ""
    return (f" {others} other configuration{'s' if others > 1 else ''} tie{'' if others > 1 else 's'} "
            "with it on validation accuracy (the first in the sweep's order is shown); see the grid.")


def grid_section(result: SweepAnalysis, out_dir: Path) -> list[str]:
    """Test accuracy per cell of the grid (experiments.report.grid), and its picture."""
    grid = sweep_grid(result)
    if grid is None:
        return []
    if isinstance(grid, str):  # e.g. a random search: the job table says more
        return ["## Grid: test accuracy (%)", "", grid, ""]

    def cell(mean: float, std: float, n: int) -> str:
        if n == 0:
            return MISSING_CELL
        return mean_pm_std("test_acc", mean, std) + ("" if grid.balanced else f" (n={n})")

    note = "mean +- std over seeds" if grid.several_seeds else "one job per cell"
    return ["## Grid: test accuracy (%)", "", f"{note}; `{MISSING_CELL}`: no completed job"
            + ("" if grid.balanced else "; the grid is unbalanced (n = completed jobs per cell)") + ".", "",
            markdown_table(frame(grid, cell)), *picture(out_dir, GRID_PLOT)]


def search_sections(searches: list[Search], out_dir: Path) -> list[str]:
    """Each Optuna search: its trials, the best one, the best value so far against the trial
    number (plots/search.png), the parameters' importances and what pruning saved."""
    several = len(searches) > 1
    return [line for i, s in enumerate(searches)
            for line in search_section(s, out_dir, search_plot_name(i), several)]


def search_section(search: Search, out_dir: Path, plot: str, several: bool) -> list[str]:
    metric = search.metric
    text = [f"## Search (Optuna){f': {search.sweep}' if several else ''}", "",
            f"{headline(search)}, over:", "", *[f"- `{k}`: {describe(d)}" for k, d in search.space.items()], "",
            f"**{sentence_case(best_text(search))}.**" if search.best else f"{sentence_case(best_text(search))}.", ""]
    text += [edge_sentence(search), ""] if edge_sentence(search) else []
    if (out_dir / "plots" / plot).exists():
        pruned, failed = search.with_status(PRUNED), search.with_status(FAILED)
        unvalued = [t for t in pruned if t.pruned_value is None]
        marks = ["dots: completed trials"]
        marks += ["crosses: pruned trials, at the value they were pruned at"] if len(unvalued) < len(pruned) else []
        bottom = [w for w, n in (("failed trials", failed), ("pruned trials without a value", unvalued)) if n]
        marks += [f"triangles on the bottom edge: {' and '.join(bottom)}"] if bottom else []
        text += [f"The best `{metric}` so far against the trial number (the line steps where a trial "
                 f"beats every one before it); {'; '.join(marks)}.", "", *picture(out_dir, plot)]
    text += importance_lines(search)
    p = pruning(search)
    if p.pruned:
        rows = pd.DataFrame([{"trial": t.number, "job": t.job, "epochs trained": t.epochs_completed,
                              "of": "" if t.epochs is None else t.epochs,
                              "value when pruned": "" if t.pruned_value is None else value_text(metric, t.pruned_value)}
                             for t in search.with_status(PRUNED)])
        text += ["### Pruned trials", "", pruning_sentence(p, len(search.trials)) + " They are not "
                 "candidates for the pick, nor in the grid or the effects.", "", markdown_table(rows)]
    return text


def sentence_case(text: str) -> str:
    return text[:1].upper() + text[1:]


def importance_lines(search: Search) -> list[str]:
    n = len(search.valued)
    if not search.importances:
        return ["### Parameter importances", "", f"Not shown: {search.importance_note}.", ""]
    best = search.best.params if search.best else {}
    rows = pd.DataFrame([{"parameter": k, "importance": f"{v:.2f}", "searched over": describe(search.space[k]),
                          "best trial's": fmt(k, best[k]) if isinstance(best.get(k), float) else best.get(k, "")}
                         for k, v in search.importances.items()])
    return [f"### Parameter importances (fANOVA over {n} completed trials)", "",
            f"How much of the variation of `{search.metric}` between the completed trials each parameter "
            "explains on its own (Optuna's `get_param_importances`: fANOVA on a random forest fit to the "
            "trials, normalized to sum to 1). It describes these trials, which the "
            "sampler chose (TPE samples more where it found good values), not an effect measured like "
            "for like; a parameter with a small importance may still matter outside the ranges searched.",
            "", markdown_table(rows)]


def picture(out_dir: Path, name: str) -> list[str]:
    """The Markdown image of plots/NAME, when it was drawn."""
    return [f"![{name.removesuffix('.png')}](plots/{name})", ""] if (out_dir / "plots" / name).exists() else []


def points(x: float | None) -> str:
    return "" if missing(x) else f"{x:+.2f}"


def with_interval(c: Comparison) -> str:
    if c.n_pairs == 0:
        return ""
    return points(c.mean) + ("" if c.low is None else f" [{c.low:+.2f}, {c.high:+.2f}]")


def agreeing(c: Comparison) -> int:
    """Pairs on the side of the mean difference (as the sentences count them)."""
    return c.n_better if c.mean >= 0 else c.n_worse


def effects_section(analysis: effects.Effects, out_dir: Path, searches: list[Search] = ()) -> list[str]:
    sampled = [k for k in analysis.searched if any(k in s.space for s in searches)]
    if not analysis.factors:
        searched = (f" ({', '.join(analysis.searched)} take more than {effects.MAX_LEVELS} values:"
                    " a search, not a grid)") if analysis.searched else ""
        if sampled:
            searched = (f" ({', '.join(sampled)}: sampled by Optuna, so no two trials differ in one "
                        "of them alone; their importances are under Search)")
        return ["## Effects", "", f"No factor to analyse{searched}.", ""] if searched else []
    if analysis.levels.empty:
        return ["## Effects", "", "No completed job yet: nothing to compare.", ""]
    text = ["## Effects", "",
            "Each factor's effect on test accuracy, in points, from *pairs* of completed jobs that "
            "differ only in that factor (same other choices, same seed); the 95% interval of the "
            "mean paired difference needs two or more seeds.", "",
            *[f"- {s}" for s in analysis.sentences], ""]
    if not analysis.balanced:
        text += ["The grid is unbalanced (a failed, missing or extra job): the per-level means "
                 "below mix in the other factors; the paired differences do not.", ""]
    levels_table = analysis.levels.rename(columns={
        "n_jobs": "completed jobs", "n_failed": "failed", "mean_test_acc": "test acc (%)",
        "mean_best_val_acc": "best val acc (%)"})
    for column in ("test acc (%)", "best val acc (%)"):
        levels_table[column] = levels_table[column].map(lambda x: "" if missing(x) else f"{x:.2f}")
    text += ["### Per level (mean over completed jobs)", "", markdown_table(levels_table)]
    pairs = pd.DataFrame([{
        "factor": c.factor, "difference": f"{c.level} − {c.vs}", "pairs": c.n_pairs,
        "seeds": c.n_seeds, "agree": f"{agreeing(c)}/{c.n_pairs}" if c.n_pairs else "",
        "test acc [95%]": with_interval(c),
        "best val acc [95%]": with_interval(v)}
        for c, v in zip(*[[c for c in analysis.comparisons if c.metric == m] for m in effects.METRICS])])
    text += ["### Paired differences (points; `agree`: pairs on the side of the mean)", "",
             markdown_table(pairs)]
    if (out_dir / "plots" / EFFECTS_PLOT).exists():
        text += ["Each level against its factor's first level (as in effects.csv), test accuracy: "
                 "the mean paired difference and its 95% interval (filled: the interval excludes 0; "
                 "open: it includes 0; diamond: one seed, no interval).", "", *picture(out_dir, EFFECTS_PLOT)]
    if analysis.interactions:
        rows = pd.DataFrame([{
            "effect": f"{i.factor}: {i.a[0]} − {i.a[1]}",
            "at one level": f"{i.other}={i.b[0]}: {points(i.at_b1)}",
            "at the other": f"{i.other}={i.b[1]}: {points(i.at_b2)}",
            "difference [95%]": with_interval(i.diff), "quartets": i.diff.n_pairs}
            for i in analysis.interactions])
        text += ["### Interactions of two-level factors (test accuracy, points)", "",
                 "How much one factor's effect changes with another's level, over the other "
                 "choices and seeds where all four jobs completed (`quartets`).", "",
                 markdown_table(rows)]
    if analysis.searched:
        text += [f"Not analysed per level ({', '.join(analysis.searched)}): more than "
                 f"{effects.MAX_LEVELS} values, a search rather than a grid.", ""]
    return text


def plots_section(out_dir: Path) -> list[str]:
    drawn = [(name, title) for name, title in PLOTS.items() if (out_dir / "plots" / name).exists()]
    if not drawn:
        return ["## Plots", "", "None yet: they are drawn from the jobs' metrics.csv when the "
                "sweep ends, or by `python -m experiments.summarize DIR`.", ""]
    return ["## Plots", "", *[line for name, title in drawn
                              for line in (f"### {title}", "", f"![{title}](plots/{name})", "")]]


def problems_section(df: pd.DataFrame) -> list[str]:
    """Jobs that did not complete, and why (pruned trials are no failure: under Search)."""
    bad = df[~df["status"].isin([COMPLETED, PRUNED])]
    if bad.empty:
        return []
    # (an interrupted job that stopped at a signal says which, and where, in its error)
    reasons = {"interrupted": "its process ended without a result (killed?); rerun the sweep's "
                              "command to resume it",
               "running": "still running", "unknown": "no readable summary.json"}
    lines = [f"- `{r.job}` ({r.status}, {0 if missing(r.epochs_completed) else r.epochs_completed} "
             f"epochs): {r.error if isinstance(r.error, str) and r.error else reasons.get(r.status, r.status)}"
             for r in bad.itertuples()]
    return ["## Failed and interrupted jobs", "", *lines, ""]


def job_list(names: pd.Series, limit: int = 6) -> str:
    names = list(names)
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def provenance_section(df: pd.DataFrame) -> list[str]:
    """Each provenance field once when every completed job agrees; each value with its jobs
    when not. Running and failed jobs may not have recorded theirs yet."""
    columns = [c for c in df.columns if c.startswith(PROVENANCE)]
    done = completed(df)
    recorded = done[columns].notna().any(axis=1) if columns else pd.Series(False, index=done.index)
    if not recorded.any():
        return ["## Provenance", "", "No completed job recorded its provenance.", ""]
    values = done.loc[recorded, columns].map(lambda v: "(none)" if missing(v) else str(v))
    values = values.loc[:, (values != "(none)").any()]  # fields no job has (no data cache)
    name = {c: c.removeprefix(PROVENANCE) for c in columns}
    same = [f"- {name[c]}: `{values[c].iloc[0]}`" for c in values if values[c].nunique() == 1]
    differ = [f"- **{name[c]} differs between jobs**: " + "; ".join(
              f"`{value}` ({job_list(done.loc[values.index[values[c] == value], 'job'])})"
              for value in pd.unique(values[c])) for c in values if values[c].nunique() > 1]
    text = ["## Provenance", ""]
    if differ:
        text += ["**Not every job ran the same code, libraries, device, data or command:**", "",
                 *differ, ""]
    everyone = "Every completed job:" if recorded.all() else "Every completed job that recorded it:"
    text += ["The others are the same for every completed job:" if differ else everyone, "", *same, ""]
    changed = [c for c in df.columns if c.startswith("code_changed_on_resume.")]
    flagged = df[df[changed].notna().any(axis=1)] if changed else df[:0]
    if not flagged.empty:
        text += [f"**Resumed with different code** (epochs from two versions of the code): "
                 f"{job_list(flagged['job'])}. See `code_changed_on_resume` in their summary.json.", ""]
    if not recorded.all():
        text += [f"No provenance recorded (written by an older version): "
                 f"{job_list(done.loc[~recorded, 'job'])}.", ""]
    return text
