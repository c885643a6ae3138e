"""PNG plots of a sweep for its report: curves per job, bars per job, test accuracy per
configuration. PLOTS names every file, in the order summary.md shows them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

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


def pyplot():
    """matplotlib, imported when a plot is drawn (tables alone never pay for it), file-only."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def legend(ax, count: int) -> None:
    """Inside for a few lines; to the right, in columns, for a big sweep."""
    if count <= 8:
        ax.legend(fontsize=8)
    else:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + count // 25)


KEY = {"tab:blue": "completed", "tab:orange": "early-stopped", "tab:gray": "not completed"}


def save(fig, path: Path) -> None:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    pyplot().close(fig)


def job_label(job_name: str, sweep: str, several_sweeps: bool) -> str:
    return f"{sweep}/{label(job_name)}" if several_sweeps else label(job_name)


SEED_STYLES = ("-", "--", ":", "-.")


def line_styles(jobs: list[Job]) -> dict[Path, dict]:
    """One colour per configuration, one line style per seed: a configuration's seeds read as
    one family of lines."""
    def config(job: Job) -> tuple:
        return job.sweep, tuple(sorted((k, v) for k, v in job.overrides.items() if k != SEED))

    def seed(job: Job) -> str:
        return str(job.overrides.get(SEED, job.summary.get(SEED)))

    configs, seeds = list(dict.fromkeys(map(config, jobs))), list(dict.fromkeys(map(seed, jobs)))
    colors = pyplot().get_cmap("tab10" if len(configs) <= 10 else "tab20")
    return {j.path: {"color": colors(configs.index(config(j)) % colors.N),
                     "linestyle": SEED_STYLES[seeds.index(seed(j)) % len(SEED_STYLES)]} for j in jobs}


def curve_plot(jobs: list[Job], column: str, ylabel: str, title: str, path: Path) -> bool:
    from matplotlib.ticker import MaxNLocator

    drawn = [j for j in jobs if any(column in m for m in j.metrics)]
    if not drawn:
        return False
    fig, ax = pyplot().subplots(figsize=(8, 5))
    scale = 100.0 if column in ACCURACIES else 1.0
    several, style = len({j.sweep for j in jobs}) > 1, line_styles(drawn)
    for job in drawn:
        points = [(m[EPOCH], m[column] * scale) for m in job.metrics if column in m]
        ax.plot(*zip(*points), marker="o" if len(points) < 15 else None, markersize=3,
                label=job_label(job.name, job.sweep, several), **style[job.path])
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    values = [m[column] for j in drawn for m in j.metrics if column in m]
    if column == LR and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")  # SGD's and AdamW's rates differ by ~100x
    ax.grid(alpha=0.3)
    legend(ax, len(drawn))
    save(fig, path)
    return True


def bars(labels: list[str], values: list[float], xlabel: str, title: str,
         errors: list[float] | None = None, colors: list[str] | None = None,
         fmt: str = "{:.2f}", key: dict[str, str] | None = None):
    """Horizontal bars, the first label on top, each with its value written past its end;
    `key` maps colours to what they mean (a legend)."""
    fig, ax = pyplot().subplots(figsize=(8, 1.2 + 0.35 * len(labels)))
    ax.barh(labels, values, xerr=errors, color=colors or "tab:blue", alpha=0.8, capsize=3)
    for y, (value, error) in enumerate(zip(values, errors or [0.0] * len(values))):
        ax.text(value + error, y, " " + fmt.format(value), va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel=xlabel, title=title)
    ax.set_xlim(0, max(v + e for v, e in zip(values, errors or [0.0] * len(values))) * 1.15 + 1)
    ax.grid(axis="x", alpha=0.3)
    if key:
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=c, alpha=0.8, label=text) for c, text in key.items()],
                  fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig, ax


def best_val_bars(df: pd.DataFrame, path: Path) -> bool:
    shown = df.dropna(subset=["best_val_acc"]).sort_values("best_val_acc", ascending=False)
    if shown.empty:
        return False
    several = shown["sweep"].nunique() > 1
    fig, _ = bars([job_label(j, s, several) for j, s in zip(shown["job"], shown["sweep"])],
                  list(100 * shown["best_val_acc"]), "best validation accuracy (%)", BARS[path.name])
    save(fig, path)
    return True


def epoch_bars(df: pd.DataFrame, path: Path) -> bool:
    """Early-stopped jobs in orange; jobs that did not complete in grey."""
    shown = df.dropna(subset=["epochs_completed"])
    if shown.empty:
        return False
    several = shown["sweep"].nunique() > 1
    colors = ["tab:gray" if status != "completed" else
              "tab:orange" if pd.notna(stopped) and bool(stopped) else "tab:blue"
              for stopped, status in zip(shown["early_stopped"], shown["status"])]
    fig, ax = bars([job_label(j, s, several) for j, s in zip(shown["job"], shown["sweep"])],
                   [float(e) for e in shown["epochs_completed"]], "epochs trained", BARS[path.name],
                   colors=colors, fmt="{:.0f}", key={c: KEY[c] for c in dict.fromkeys(colors)})
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    save(fig, path)
    return True


def accuracy_bars(configs: pd.DataFrame, path: Path, columns: list[str]) -> bool:
    """Mean test accuracy per configuration, with the spread over seeds as error bars."""
    shown = configs.dropna(subset=["test_acc_mean"]).sort_values("test_acc_mean", ascending=False) \
        if "test_acc_mean" in configs else configs[:0]
    if shown.empty:
        return False
    labels = ["-".join(str(v) for v in row if v not in (None, "")) or "run"
              for row in shown[columns].itertuples(index=False)]
    labels = [f"{text} (n={n})" if n > 1 else text for text, n in zip(labels, shown["n"])]
    fig, _ = bars(labels, list(100 * shown["test_acc_mean"]), "test accuracy (%)", BARS[path.name],
                  errors=list(100 * shown["test_acc_std"].fillna(0.0)))
    save(fig, path)
    return True


def write_plots(jobs: list[Job], df: pd.DataFrame, configs: pd.DataFrame, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / name for name, (column, ylabel, title) in CURVES.items()
               if curve_plot(jobs, column, ylabel, title, out_dir / name)]
    config_columns = [c for c in df.attrs["config_columns"] if c in configs]
    # label bars by what differs between configurations, not by what all of them share
    varying = [c for c in config_columns if configs[c].astype(str).nunique() > 1] or config_columns[:3]
    for name, draw in (("best_val_acc.png", lambda p: best_val_bars(df, p)),
                       ("epochs.png", lambda p: epoch_bars(df, p)),
                       ("test_acc.png", lambda p: accuracy_bars(configs, p, varying))):
        if draw(out_dir / name):
            written.append(out_dir / name)
    return written
