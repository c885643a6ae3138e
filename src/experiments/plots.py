"""PNG plots of a sweep for a report: curves per job and test accuracy per configuration."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from experiments.report import Job  # noqa: E402

CURVES = {  # file name: (metric column, y label, title)
    "val_acc.png": ("val/acc", "validation accuracy (%)", "Validation accuracy per epoch"),
    "train_loss.png": ("train/loss", "training loss", "Training loss per epoch"),
    "lr.png": ("train/lr", "learning rate", "Learning rate per epoch"),
}


def legend(ax, count: int) -> None:
    """Inside for a few lines; to the right, in columns, for a big sweep."""
    if count <= 8:
        ax.legend(fontsize=8)
    else:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + count // 25)


def curve_plot(jobs: list[Job], column: str, ylabel: str, title: str, path: Path) -> bool:
    drawn = [j for j in jobs if any(column in m for m in j.metrics)]
    if not drawn:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    scale = 100.0 if column.endswith("acc") else 1.0
    for job in drawn:
        points = [(m["epoch"], m[column] * scale) for m in job.metrics if column in m]
        ax.plot(*zip(*points), marker="o" if len(points) < 15 else None, markersize=3,
                label=f"{job.sweep}/{job.label}" if len({j.sweep for j in jobs}) > 1 else job.label)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    values = [m[column] for j in drawn for m in j.metrics if column in m]
    if column == "train/lr" and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")  # SGD's and AdamW's rates differ by ~100x
    ax.grid(alpha=0.3)
    legend(ax, len(drawn))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


def accuracy_bars(agg: list[dict], path: Path, config_columns: list[str]) -> bool:
    """Mean test accuracy per configuration, with the spread over seeds as error bars."""
    shown = [a for a in agg if a["test_acc_mean"] is not None]
    if not shown:
        return False
    shown = sorted(shown, key=lambda a: a["test_acc_mean"])
    labels = ["-".join(str(a[c]) for c in config_columns if a.get(c) not in (None, "")) or "run"
              for a in shown]
    labels = [f"{label} (n={a['n']})" if a["n"] > 1 else label for label, a in zip(labels, shown)]
    means = [100 * a["test_acc_mean"] for a in shown]
    errors = [100 * (a["test_acc_std"] or 0.0) for a in shown]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.35 * len(shown)))
    ax.barh(labels, means, xerr=errors, color="tab:blue", alpha=0.8, capsize=3)
    for y, value in enumerate(means):
        ax.text(value, y, f" {value:.2f}", va="center", fontsize=8)
    ax.set(xlabel="test accuracy (%)", title="Test accuracy per configuration")
    ax.set_xlim(0, max(means) * 1.15 + 1)
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


def write_plots(jobs: list[Job], agg: list[dict], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (column, ylabel, title) in CURVES.items():
        if curve_plot(jobs, column, ylabel, title, out_dir / name):
            written.append(out_dir / name)
    columns = [c for c in (agg[0] if agg else {})
               if c not in ("n", "seeds") and not c.endswith(("_mean", "_std"))]
    # label bars by what differs between configurations, not by what all of them share
    config_columns = [c for c in columns if len({a[c] for a in agg}) > 1] or columns
    if accuracy_bars(agg, out_dir / "test_acc.png", config_columns):
        written.append(out_dir / "test_acc.png")
    return written
