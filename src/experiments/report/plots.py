"""PNG pictures of a sweep for its report: curves per epoch, bars per job and per configuration,
the grid as a heatmap (grid.png), the effects as a forest plot (effects.png), and an Optuna
search's best value so far against the trial number (search.png). PLOTS names the files of
summary.md's Plots section, in its order; grid.png, effects.png and search.png are shown next to
the tables they draw.

Every picture stays readable at any sweep size, and in black and white:
- at most MAX_PX pixels on a side (the figure's size is clamped; the layout is constrained, so
  what is saved is the figure's size);
- legends of at most MAX_LEGEND entries, then "+N more";
- curves: one line per job for a few jobs; beyond MAX_LEGEND, one line per configuration (the
  mean over its seeds, with a band of +-1 std), coloured by a factor and styled by another, or,
  with no factor of few levels (a search), the best configurations highlighted over the others
  in grey;
- bars: one per job (or configuration) up to TOP_K, else the TOP_K first and a histogram of all;
  every bar's label unique, so one row per bar;
- colours come with line styles, hatches or marker fills; the heatmap's colour map is
  perceptually uniform (its brightness grows with the value) and its numbers are black or white
  by the cell's brightness.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.report.analysis import SweepAnalysis
from experiments.report.grid import JOINER, Grid, sweep_grid
from experiments.report.job_summary import COMPLETED, FAILED, PRUNED
from experiments.report.search import Search, history
from experiments.report.sweep import SEED, Job, label
from experiments.training.metrics import ACCURACIES, EPOCH, LR, TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS

CURVES = {  # file name: (metrics.csv column, y label, title)
    "val_acc.png": (VAL_ACC, "validation accuracy (%)", "Validation accuracy per epoch"),
    "val_loss.png": (VAL_LOSS, "validation loss", "Validation loss per epoch"),
    "train_acc.png": (TRAIN_ACC, "training accuracy (%)", "Training accuracy per epoch"),
    "train_loss.png": (TRAIN_LOSS, "training loss", "Training loss per epoch"),
    "lr.png": (LR, "learning rate", "Learning rate per epoch"),
}
BARS = {
    "best_val_acc.png": "Best validation accuracy per job",
    "epochs.png": "Epochs trained per job (early stopping shows as a shorter bar)",
    "test_acc.png": "Test accuracy per configuration (error bars: std over seeds)",
}
PLOTS = {**{name: title for name, (_, _, title) in CURVES.items()}, **BARS}
GRID_PLOT = "grid.png"  # next to summary.md's grid table
EFFECTS_PLOT = "effects.png"  # next to summary.md's effects tables
SEARCH_PLOT = "search.png"  # next to summary.md's Search section (a second search's: search-2.png)
ALL_PLOTS = (*PLOTS, GRID_PLOT, EFFECTS_PLOT)

DPI = 120
MAX_PX = 4000  # no picture is larger on either side
MAX_INCHES = MAX_PX / DPI
MAX_LEGEND = 12  # legend entries, "+N more" included
TOP_K = 20  # bars shown one by one; the rest in a histogram
MAX_BANDS = 50  # more configurations than this: their mean lines without the bands
LABEL_CHARS = 48  # longer labels are cut in the middle
MAX_CELL_NUMBERS = 800  # a bigger grid's heatmap is drawn without its numbers (the table has them)
STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")
STATUS = {  # epochs.png's bars: colour, hatch, meaning
    "completed": ("tab:blue", "", "completed"),
    "early": ("tab:orange", "//", "early-stopped"),
    "pruned": ("tab:red", "..", "pruned"),
    "other": ("tab:gray", "xx", "not completed"),
}


def pyplot():
    """matplotlib, imported when a plot is drawn (tables alone never pay for it), file-only."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def figure(width: float, height: float, **kwargs):
    """A figure of at most MAX_INCHES a side, laid out to fit it (`subplots`' other arguments)."""
    return pyplot().subplots(figsize=(min(width, MAX_INCHES), min(height, MAX_INCHES)),
                             layout="constrained", **kwargs)


def save(fig, path: Path) -> None:
    """The figure's own size (never stretched by what sticks out: the layout keeps it inside),
    at DPI or less, so that no side exceeds MAX_PX."""
    width, height = fig.get_size_inches()
    fig.savefig(path, dpi=min(DPI, MAX_PX / max(width, height)))
    pyplot().close(fig)


# --- labels and legends ----------------------------------------------------------------------

def shorten(text: str, limit: int = LABEL_CHARS) -> str:
    """Cut in the middle: a job's name differs from its neighbours' at the end (the seed)."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "…" + text[len(text) - (limit - 1 - head):]


def unique(labels: list[str]) -> list[str]:
    """Each label once: a repeated one is numbered (`x (2)`), so that every bar gets its row."""
    counts, seen, out = Counter(labels), Counter(), []
    for text in labels:
        seen[text] += 1
        out.append(f"{text} ({seen[text]})" if counts[text] > 1 else text)
    return out


def job_label(job_name: str, sweep: str, several_sweeps: bool) -> str:
    return f"{sweep}/{label(job_name)}" if several_sweeps else label(job_name)


def job_labels(names: list[str], sweeps: list[str]) -> list[str]:
    """Short and unique: without the job number while that leaves them distinct."""
    several = len(set(sweeps)) > 1
    labels = [job_label(n, s, several) for n, s in zip(names, sweeps)]
    if len(set(labels)) < len(labels):  # the numbers told them apart (e.g. rounded Optuna values)
        labels = [f"{s}/{n}" if several else n for n, s in zip(names, sweeps)]
    return unique([shorten(text) for text in labels])


def legend(ax, handles: list | None = None, labels: list[str] | None = None, more: int = 0,
           outside: bool | None = None) -> None:
    """At most MAX_LEGEND entries, the last one "+N more" when there are more; inside the axes
    for a few, to their right for more."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    handles, labels = list(handles), list(labels)
    if len(handles) + (1 if more else 0) > MAX_LEGEND:
        more += len(handles) - (MAX_LEGEND - 1)
        handles, labels = handles[:MAX_LEGEND - 1], labels[:MAX_LEGEND - 1]
    if more:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], linestyle="none"))
        labels.append(f"+{more} more")
    if not handles:
        return
    if outside if outside is not None else len(handles) > 6:
        ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(handles, labels, fontsize=8)


# --- curves per epoch ------------------------------------------------------------------------

class Epochs:
    """Every job's metrics.csv read into one table (a row per job and epoch, `job` its index in
    `jobs`), and each job's configuration: made once for all the curves."""

    def __init__(self, jobs: list[Job], df: pd.DataFrame):
        self.jobs, self.df = jobs, df
        columns = ["sweep", *df.attrs["config_columns"]]
        # each job's configuration: its sweep and every configuration column, not its seed
        self.keys = list(df[columns].astype(str).itertuples(index=False, name=None))
        self.table = pd.DataFrame.from_records([m for job in jobs for m in job.metrics])
        self.table["job"] = np.repeat(np.arange(len(jobs)), [len(job.metrics) for job in jobs])

    def drawn(self, column: str) -> list[int]:
        """The jobs with a value of `column`, in the sweep's order."""
        if column not in self.table or EPOCH not in self.table:
            return []
        return sorted(self.table.loc[self.table[column].notna(), "job"].unique().tolist())

    def points(self, job: int, column: str) -> list[tuple[float, float]]:
        return [(m[EPOCH], m[column]) for m in self.jobs[job].metrics if column in m and EPOCH in m]


def varying(df: pd.DataFrame) -> list[str]:
    """The columns that tell the jobs' configurations apart (the sweep when there are several)."""
    columns = ["sweep", *df.attrs["config_columns"]]
    return [c for c in columns if df[c].astype(str).nunique() > 1]


def per_job_lines(ax, epochs: Epochs, drawn: list[int], column: str, scale: float) -> None:
    """A few jobs: one colour and marker per configuration, one line style per seed (a
    configuration's seeds read as one family of lines; with one seed, per configuration, for
    black and white), each job in the legend."""
    df, keys = epochs.df, epochs.keys
    configs = list(dict.fromkeys(keys[i] for i in drawn))
    seeds = list(dict.fromkeys(str(df[SEED].iloc[i]) for i in drawn))
    colors = pyplot().get_cmap("tab10" if len(configs) <= 10 else "tab20")
    labels = job_labels([epochs.jobs[i].name for i in drawn], [epochs.jobs[i].sweep for i in drawn])
    for i, text in zip(drawn, labels):
        x, y = zip(*epochs.points(i, column))
        config = configs.index(keys[i])
        style = seeds.index(str(df[SEED].iloc[i])) if len(seeds) > 1 else config
        ax.plot(x, [v * scale for v in y], marker=MARKERS[config % len(MARKERS)] if len(x) < 15 else None,
                markersize=4, label=text, color=colors(config % colors.N), linestyle=STYLES[style % len(STYLES)])
    legend(ax)


def units_of(epochs: Epochs, drawn: list[int]) -> pd.DataFrame:
    """One row per configuration of the drawn jobs, numbered in the sweep's order: its varying
    columns' values, its jobs, its mean best validation accuracy (what highlights are chosen
    on) and its label; `unit` maps each drawn job to its row."""
    keys = [epochs.keys[i] for i in drawn]
    number = {key: n for n, key in enumerate(dict.fromkeys(keys))}
    rows = epochs.df.iloc[drawn]
    columns = varying(rows)
    table = rows[columns].astype(str).assign(unit=[number[k] for k in keys])
    score = rows["best_val_acc"] if "best_val_acc" in rows else pd.Series(np.nan, index=rows.index)
    out = table.groupby("unit", sort=True).first()
    out["jobs"] = table.groupby("unit").size()
    out["score"] = score.groupby(table["unit"].to_numpy()).mean()
    out["label"] = unique([shorten("-".join(values) or "run") for values in out[columns].itertuples(index=False)])
    out.attrs["unit"] = dict(zip(drawn, table["unit"]))
    out.attrs["columns"] = columns
    return out


def unit_curves(epochs: Epochs, units: pd.DataFrame, column: str, scale: float) -> dict[int, pd.DataFrame]:
    """Per configuration: the mean of `column` over its jobs at each epoch, their std (NaN for
    one job) and how many jobs have that epoch, indexed by epoch."""
    unit = units.attrs["unit"]
    points = epochs.table.loc[epochs.table["job"].isin(unit) & epochs.table[column].notna(), ["job", EPOCH, column]]
    points = points.assign(unit=points["job"].map(unit), value=points[column] * scale)
    stats = points.groupby(["unit", EPOCH])["value"].agg(["mean", "std", "count"])
    return {u: curve.droplevel(0) for u, curve in stats.groupby(level=0)}


def colour_factors(units: pd.DataFrame, columns: list[str]) -> tuple[str | None, str | None]:
    """The factor that colours the lines (the first with 2 to 8 levels) and the one that styles
    them (the next with 2 to 4), so that their legend fits in MAX_LEGEND entries."""
    colour = next((c for c in columns if 2 <= units[c].nunique() <= 8), None)
    style = next((c for c in columns if c != colour and 2 <= units[c].nunique() <= len(STYLES)), None)
    return colour, style


def line(curve: pd.DataFrame) -> np.ndarray:
    return np.column_stack([curve.index.to_numpy(dtype=float), curve["mean"].to_numpy()])


def draw_unit(ax, curve: pd.DataFrame, band: bool, **style) -> None:
    x, mean = curve.index.to_numpy(dtype=float), curve["mean"].to_numpy()
    ax.plot(x, mean, **style)
    if band and (curve["count"] > 1).any():
        std = curve["std"].fillna(0.0).to_numpy()
        ax.fill_between(x, mean - std, mean + std, color=style.get("color"), alpha=0.12, linewidth=0)


def aggregated_lines(ax, epochs: Epochs, drawn: list[int], column: str, scale: float) -> str:
    """Many jobs: one line per configuration; returns what the lines and colours are, for the
    title."""
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    units = units_of(epochs, drawn)
    curves = unit_curves(epochs, units, column, scale)
    seeds = bool((units["jobs"] > 1).any())
    band = seeds and len(units) <= MAX_BANDS
    what = ("mean over seeds per configuration" + (", band ±1 std" if band else "")) if seeds \
        else "one line per job"
    colour, style = colour_factors(units, units.attrs["columns"])
    cmap = pyplot().get_cmap("tab10")
    if len(units) <= MAX_LEGEND:  # few configurations: each its own line and legend entry
        for n, unit in enumerate(units.index):
            draw_unit(ax, curves[unit], band, color=cmap(n % 10), linestyle=STYLES[n % len(STYLES)],
                      linewidth=1.4, label=units.loc[unit, "label"])
        legend(ax, outside=True)
        return what
    if colour is not None:
        colours = {v: cmap(n) for n, v in enumerate(dict.fromkeys(units[colour]))}
        styles = {v: STYLES[n] for n, v in enumerate(dict.fromkeys(units[style]))} if style else {}
        many = len(units) > MAX_BANDS  # one collection per colour and style: thousands of lines draw fast
        groups: dict[tuple, list] = {}
        for unit, row in units.iterrows():
            look = (colours[row[colour]], styles[row[style]] if style else "-")
            if many:
                groups.setdefault(look, []).append(line(curves[unit]))
            else:
                draw_unit(ax, curves[unit], band, color=look[0], linestyle=look[1], linewidth=1.2)
        for (color, linestyle), lines in groups.items():
            ax.add_collection(LineCollection(lines, colors=[color], linestyles=linestyle, linewidths=0.8))
        ax.autoscale_view()
        handles = [Line2D([], [], color=c, linewidth=2) for c in colours.values()]
        labels = [f"{colour}={v}" for v in colours]
        if style:
            handles += [Line2D([], [], color="black", linestyle=s) for s in styles.values()]
            labels += [f"{style}={v}" for v in styles]
        legend(ax, handles, labels, outside=True)
        return f"{what}; colour: {colour}" + (f", line style: {style}" if style else "")
    # no factor of few levels (a search): the best configurations stand out, the others in grey
    ranked = units.sort_values("score", ascending=False, na_position="last", kind="stable")
    best, rest = ranked.index[:MAX_LEGEND - 1], ranked.index[MAX_LEGEND - 1:]
    if len(rest):
        ax.add_collection(LineCollection([line(curves[u]) for u in rest], colors=["0.75"], linewidths=0.6))
    for n, unit in enumerate(best):
        draw_unit(ax, curves[unit], band, color=cmap(n % 10), linestyle=STYLES[n % len(STYLES)],
                  linewidth=1.4, label=units.loc[unit, "label"])
    ax.autoscale_view()
    legend(ax, more=len(rest), outside=True)
    return f"{what}; the {len(best)} best by validation accuracy in colour" + (", the others grey" if len(rest) else "")


def curve_plot(epochs: Epochs, column: str, ylabel: str, title: str, path: Path) -> bool:
    from matplotlib.ticker import MaxNLocator

    drawn = epochs.drawn(column)
    if not drawn:
        return False
    scale = 100.0 if column in ACCURACIES else 1.0
    fig, ax = figure(9, 5.5)
    if len(drawn) <= MAX_LEGEND:
        per_job_lines(ax, epochs, drawn, column, scale)
    else:
        title = f"{title}\n({len(drawn)} jobs: {aggregated_lines(ax, epochs, drawn, column, scale)})"
    ax.set(xlabel="epoch", ylabel=ylabel)
    ax.set_title(title, fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    values = epochs.table[column].dropna()
    if column == LR and values.min() > 0 and values.max() / values.min() > 20:
        ax.set_yscale("log")  # SGD's and AdamW's rates differ by ~100x
    ax.grid(alpha=0.3)
    save(fig, path)
    return True


# --- bars ------------------------------------------------------------------------------------

def bar_panel(ax, labels: list[str], values: list[float], xlabel: str, errors: list[float] | None = None,
              colors: list | None = None, hatches: list[str] | None = None, fmt: str = "{:.2f}",
              whole: bool = False) -> None:
    """Horizontal bars, the first on top, one row each (labels made unique by the caller), each
    with its value written past its end."""
    y = np.arange(len(labels))
    bars = ax.barh(y, values, xerr=errors, color=colors or "tab:blue", alpha=0.8, capsize=3,
                   edgecolor="black", linewidth=0.4)
    for patch, hatch in zip(bars.patches, hatches or []):
        patch.set_hatch(hatch)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # the first on top
    for row, (value, error) in enumerate(zip(values, errors or [0.0] * len(values))):
        ax.text(value + error, row, " " + fmt.format(value), va="center", fontsize=8)
    ax.set_xlim(0, max(v + e for v, e in zip(values, errors or [0.0] * len(values))) * 1.15 + 1)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    if whole:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def histogram_bins(values: np.ndarray, whole: bool):
    if whole and len(values) and values.max() - values.min() <= 60:  # a bar per whole number
        return np.arange(values.min() - 0.5, values.max() + 1.5)
    return min(40, max(10, int(math.sqrt(len(values)))))


def ranked_bars(labels: list[str], values: list[float], xlabel: str, title: str, path: Path, what: str,
                first: str, errors: list[float] | None = None, groups: list[str] | None = None,
                fmt: str = "{:.2f}", whole: bool = False) -> None:
    """Bars in the given order, each labelled; with more than TOP_K, the TOP_K first (`first`
    says which they are) beside a histogram of all of them. `groups`: a STATUS key per bar
    (colour, hatch and legend)."""
    look = [STATUS[g] for g in groups] if groups else None
    key = list(dict.fromkeys(groups)) if groups else []
    colors = [c for c, _, _ in look] if look else None
    hatches = [h for _, h, _ in look] if look else None
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=STATUS[g][0], hatch=STATUS[g][1], edgecolor="black", alpha=0.8) for g in key]
    names = [STATUS[g][2] for g in key]
    n = len(labels)
    if n <= TOP_K:
        fig, ax = figure(8, 1.2 + 0.35 * n)
        bar_panel(ax, unique(labels), values, xlabel, errors, colors, hatches, fmt, whole)
        ax.set_title(title, fontsize=10)
        if key:
            legend(ax, handles, names, outside=True)
        save(fig, path)
        return
    top = slice(0, TOP_K)
    fig, (ax, hist) = figure(14, 1.2 + 0.35 * TOP_K, ncols=2, width_ratios=[3, 2])
    bar_panel(ax, unique(labels)[top], values[top], xlabel, errors[top] if errors else None,
              colors[top] if colors else None, hatches[top] if hatches else None, fmt, whole)
    ax.set_title(f"{first}: {TOP_K} of {n} {what}", fontsize=10)
    data = np.asarray(values, dtype=float)
    bins = histogram_bins(data, whole)
    if groups:
        stack = [data[[g == k for g in groups]] for k in key]
        _, _, patches = hist.hist(stack, bins=bins, stacked=True, color=[STATUS[k][0] for k in key],
                                  edgecolor="black", linewidth=0.4, alpha=0.8, label=names)
        for bars, k in zip(patches if len(key) > 1 else [patches], key):
            for patch in bars:
                patch.set_hatch(STATUS[k][1])
        legend(hist, handles, names, outside=False)
    else:
        hist.hist(data, bins=bins, color="tab:blue", edgecolor="black", linewidth=0.4, alpha=0.8)
    cut = data[TOP_K - 1]
    hist.axvline(cut, color="black", linestyle="--", linewidth=1)
    hist.annotate(f"the {TOP_K} shown", (cut, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                  textcoords="offset points", fontsize=8)
    hist.set(xlabel=xlabel, ylabel=what)
    if whole:
        from matplotlib.ticker import MaxNLocator

        hist.xaxis.set_major_locator(MaxNLocator(integer=True))
    hist.set_title(f"all {n} {what}", fontsize=10)
    hist.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=11)
    save(fig, path)


def best_val_bars(df: pd.DataFrame, path: Path) -> bool:
    shown = df.dropna(subset=["best_val_acc"]).sort_values("best_val_acc", ascending=False, kind="stable")
    if shown.empty:
        return False
    statuses = list(shown["status"]) if "status" in shown else []
    # a pruned trial's is its best so far when it was pruned: told apart from the others'
    groups = [PRUNED if status == PRUNED else "completed" if status == COMPLETED else "other"
              for status in statuses] if PRUNED in statuses else None
    ranked_bars(job_labels(list(shown["job"]), list(shown["sweep"])), list(100 * shown["best_val_acc"]),
                "best validation accuracy (%)", BARS[path.name], path, "jobs", "the best", groups=groups)
    return True


def epoch_bars(df: pd.DataFrame, path: Path) -> bool:
    """Early-stopped jobs in orange, hatched; jobs that did not complete in grey, cross-hatched.
    Beyond TOP_K jobs, the ones that trained the fewest epochs."""
    shown = df.dropna(subset=["epochs_completed"])
    if shown.empty:
        return False
    if len(shown) > TOP_K:
        shown = shown.sort_values("epochs_completed", kind="stable")
    groups = [status if status == PRUNED else "other" if status != COMPLETED else "early"
              if pd.notna(stopped) and bool(stopped) else "completed"
              for stopped, status in zip(shown["early_stopped"], shown["status"])]
    ranked_bars(job_labels(list(shown["job"]), list(shown["sweep"])),
                [float(e) for e in shown["epochs_completed"]], "epochs trained", BARS[path.name], path,
                "jobs", "the fewest epochs", groups=groups, fmt="{:.0f}", whole=True)
    return True


def accuracy_bars(configs: pd.DataFrame, path: Path, columns: list[str]) -> bool:
    """Mean test accuracy per configuration, with the spread over seeds as error bars."""
    shown = configs.dropna(subset=["test_acc_mean"]).sort_values("test_acc_mean", ascending=False) \
        if "test_acc_mean" in configs else configs[:0]
    if shown.empty:
        return False
    labels = ["-".join(str(v) for v in row if v not in (None, "")) or "run"
              for row in shown[columns].itertuples(index=False)]
    labels = [shorten(f"{text} (n={n})" if n > 1 else text) for text, n in zip(labels, shown["n"])]
    errors = list(100 * shown["test_acc_std"].fillna(0.0))
    ranked_bars(labels, list(100 * shown["test_acc_mean"]), "test accuracy (%)", BARS[path.name], path,
                "configurations", "the best", errors=errors if any(errors) else None)  # none: one seed
    return True


# --- the grid and the effects ----------------------------------------------------------------

def luminance(rgba) -> float:
    """Relative luminance (WCAG) of a colour: above 0.179, black text reads better than white."""
    channels = np.asarray(rgba[:3], dtype=float)
    linear = np.where(channels <= 0.03928, channels / 12.92, ((channels + 0.055) / 1.055) ** 2.4)
    return float(linear @ [0.2126, 0.7152, 0.0722])


def cell_text(mean: float, std: float, n: int, several: bool, balanced: bool) -> str:
    if n == 0:
        return "–"
    text = f"{mean:.2f}"
    if several and not math.isnan(std):
        text += f"\n± {std:.2f}"
    return text if balanced else f"{text}\nn={n}"


def grid_plot(grid: Grid | str | None, path: Path) -> bool:
    """The grid's table as a heatmap: a row per row of summary.md's grid table, a column per
    column, each cell's number written in it."""
    if not isinstance(grid, Grid) or not (grid.count > 0).any():
        return False
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    values = grid.mean * 100
    n_rows, n_columns = values.shape
    lines = 1 + (grid.several_seeds) + (not grid.balanced)
    row_labels, column_labels = [shorten(t, 32) for t in grid.row_labels], [shorten(t, 24) for t in grid.column_labels]
    cell_w = max(1.0, 0.09 * max(map(len, column_labels)), 1.3 if grid.several_seeds else 0.0)
    cell_h = 0.3 + 0.22 * lines
    label_w = 0.08 * max(map(len, row_labels))
    fig, ax = figure(2.8 + label_w + n_columns * cell_w, 1.6 + n_rows * cell_h)
    width, height = fig.get_size_inches()  # clamped: a big grid gets smaller cells
    cell_w, cell_h = (width - 2.8 - label_w) / n_columns, (height - 1.6) / n_rows
    chars = 13 if grid.several_seeds else 6  # the widest line of a cell ("56.50", "± 2.12"...)
    size = min(10.0, 72 * cell_h / lines * 0.55, 72 * cell_w / chars * 1.5)
    numbers = size >= 5 and n_rows * n_columns <= MAX_CELL_NUMBERS  # else too small to read, and slow
    finite = values[np.isfinite(values)]
    low, high = float(finite.min()), float(finite.max())
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    cmap, norm = pyplot().get_cmap("viridis").with_extremes(bad="white"), Normalize(low, high)
    # one quad per cell, white edges between them (no image resampled to a big canvas)
    image = ax.pcolormesh(np.arange(n_columns + 1) - 0.5, np.arange(n_rows + 1) - 0.5,
                          np.ma.masked_invalid(values), cmap=cmap, norm=norm, edgecolors="white", linewidth=1.5)
    light = [[luminance(rgba) > 0.179 for rgba in row] for row in cmap(norm(np.nan_to_num(values, nan=low)))]
    for r in range(n_rows):
        for c in range(n_columns):
            n = int(grid.count[r, c])
            if n == 0:
                ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, hatch="//", edgecolor="0.6",
                                       linewidth=0))
            if numbers:
                ax.text(c, r, cell_text(values[r, c], grid.std[r, c] * 100, n, grid.several_seeds, grid.balanced),
                        ha="center", va="center", fontsize=size, color="black" if n == 0 or light[r][c] else "white",
                        in_layout=False)  # inside its cell: nothing for the layout to make room for
    long = max(map(len, column_labels)) > 10
    ax.set_xticks(range(n_columns), column_labels, rotation=30 if long else 0, ha="right" if long else "center",
                  fontsize=8)
    ax.set_yticks(range(n_rows), row_labels, fontsize=8)
    ax.set_xlim(-0.5, n_columns - 0.5)
    ax.set_ylim(n_rows - 0.5, -0.5)  # the first row on top, as in the table
    ax.tick_params(length=0)
    ax.set_xlabel(JOINER.join(grid.columns))
    ax.set_ylabel(JOINER.join(grid.rows))
    fig.colorbar(image, ax=ax, label="test accuracy (%)", shrink=0.9)
    note = "mean ± std over seeds" if grid.several_seeds else "one job per cell"
    ax.set_title(f"Test accuracy (%) per cell of the grid ({note}" + ("" if grid.balanced else "; n: completed jobs")
                 + ("" if numbers else "; too many cells to write their numbers") + ")", fontsize=10)
    save(fig, path)
    return True


def effects_plot(table: pd.DataFrame, path: Path) -> bool:
    """A forest plot of effects.csv: for each level against its factor's first level, the mean
    paired difference in test accuracy (a marker) and its 95% interval (a bar); filled where the
    interval excludes 0, open where it includes it, a diamond without an interval (one seed)."""
    rows = table[table["vs"].notna() & (table["vs"].astype(str) != "")].reset_index(drop=True)
    if rows.empty or not (rows["n_pairs"].fillna(0) > 0).any():
        return False
    fig, ax = figure(9, 1.6 + 0.42 * len(rows))
    ax.axvline(0, color="black", linewidth=1, linestyle="--")
    for y, row in rows.iterrows():
        mean, low, high, pairs = (row["diff_test_acc"], row["diff_test_acc_low"], row["diff_test_acc_high"],
                                  0 if pd.isna(row["n_pairs"]) else int(row["n_pairs"]))
        if pairs == 0 or pd.isna(mean):
            ax.annotate("no pairs (confounded)", (0, y), xytext=(4, 0), textcoords="offset points",
                        va="center", fontsize=8, style="italic")
            continue
        if pd.isna(low):
            ax.plot(mean, y, marker="D", markersize=7, markerfacecolor="white", markeredgecolor="black",
                    linestyle="none")
            text = f"{mean:+.2f}, no interval (one seed), {pairs} pairs"
        else:
            clear = low > 0 or high < 0
            ax.errorbar(mean, y, xerr=[[mean - low], [high - mean]], fmt="o", color="black", capsize=4,
                        markersize=7, markerfacecolor="black" if clear else "white", elinewidth=1.5)
            text = f"{mean:+.2f} [{low:+.2f}, {high:+.2f}], {pairs} pairs"
        ax.annotate(text, (1.0, y), xycoords=("axes fraction", "data"), xytext=(6, 0),
                    textcoords="offset points", va="center", fontsize=8, annotation_clip=False)
    boundaries = [y - 0.5 for y in range(1, len(rows)) if rows["factor"][y] != rows["factor"][y - 1]]
    for y in boundaries:
        ax.axhline(y, color="0.75", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [shorten(f"{f}: {lv} − {vs}", 40) for f, lv, vs in
                                     zip(rows["factor"], rows["level"], rows["vs"])], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("difference in test accuracy (points), level − the factor's first level")
    ax.set_title("Effects: mean paired difference and 95% interval (filled: excludes 0; open: includes 0; "
                 "diamond: no interval)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    save(fig, path)
    return True


# --- an Optuna search ------------------------------------------------------------------------

def search_plot_name(index: int) -> str:
    """The picture of the report's index-th Optuna search."""
    return SEARCH_PLOT if index == 0 else f"search-{index + 1}.png"


def search_plot(search: Search, path: Path) -> bool:
    """The best value so far against the trial number (experiments.report.search.history): a
    step line over the completed trials' values (dots); pruned trials as crosses at the value
    they were pruned at; failed ones, and pruned ones without a value, as triangles on the
    bottom edge."""
    table = history(search)
    if table.empty:
        return False
    scale = 100.0 if "acc" in search.metric.split("_") else 1.0
    fig, ax = figure(9, 4.5)
    done = table[(table["status"] == COMPLETED) & table["value"].notna()]
    ax.plot(done["trial"], done["value"] * scale, "o", color="tab:blue", markersize=4, alpha=0.7,
            label=f"completed ({len(done)})")
    best = table.dropna(subset=["best"])
    if not best.empty:  # to the last trial, so that the line shows how long the best has held
        ax.step(best["trial"], best["best"] * scale, where="post", color="black", linewidth=1.5,
                label="best so far")
    pruned = table[table["status"] == PRUNED]
    valued = pruned.dropna(subset=["pruned_value"])
    if not valued.empty:
        ax.plot(valued["trial"], valued["pruned_value"] * scale, "x", color="tab:red", markersize=6,
                label=f"pruned ({len(pruned)}), at its value then")
    bottom = pd.concat([table[table["status"] == FAILED], pruned[pruned["pruned_value"].isna()]])
    if not bottom.empty:  # no value to place them at: along the bottom edge (x in data, y in axes)
        ax.plot(bottom["trial"], [0.03] * len(bottom), "v", color="0.3", markerfacecolor="white", markersize=6,
                clip_on=False, transform=ax.get_xaxis_transform(),
                label=f"failed ({(table['status'] == FAILED).sum()})" + (", pruned without a value" if
                                                                         pruned["pruned_value"].isna().any() else ""))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial", ylabel=search.metric + (" (%)" if scale == 100.0 else ""))
    ax.set_title(f"{search.sampler or 'Optuna'}, {search.direction}: the best {search.metric} so far, "
                 f"{len(table)} trials", fontsize=10)
    legend(ax, outside=True)
    ax.grid(alpha=0.3)
    save(fig, path)
    return True


# --- all of them -----------------------------------------------------------------------------

def write_plots(jobs: list[Job], result: SweepAnalysis, out_dir: Path) -> list[Path]:
    """Every picture that has something to show; one that has nothing any more (a grid that went
    away) is removed, so that summary.md never embeds a stale one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    df, configs = result.df, result.configs
    config_columns = [c for c in df.attrs["config_columns"] if c in configs]
    # label bars by what differs between configurations, not by what all of them share
    differ = [c for c in config_columns if configs[c].astype(str).nunique() > 1] or config_columns[:3]
    epochs = Epochs(jobs, df)
    draws = {name: (lambda p, c=column, y=ylabel, t=title: curve_plot(epochs, c, y, t, p))
             for name, (column, ylabel, title) in CURVES.items()}
    draws.update({"best_val_acc.png": lambda p: best_val_bars(df, p),
                  "epochs.png": lambda p: epoch_bars(df, p),
                  "test_acc.png": lambda p: accuracy_bars(configs, p, differ),
                  GRID_PLOT: lambda p: grid_plot(sweep_grid(result), p),
                  EFFECTS_PLOT: lambda p: effects_plot(result.analysis.csv, p)})
    draws.update({search_plot_name(i): (lambda p, s=search: search_plot(s, p))
                  for i, search in enumerate(result.searches)})
    stale = sorted(p.name for p in out_dir.glob("search*.png") if p.name not in draws)  # a search gone
    written = []
    for name in [*draws, *stale]:
        path = out_dir / name
        if name in draws and draws[name](path):
            written.append(path)
        else:
            path.unlink(missing_ok=True)
    return written
