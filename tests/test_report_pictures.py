"""The report's pictures at any sweep size, on job directories written without training
(tests/support/sweeps.py): the grid as a heatmap and the effects as a forest plot, embedded next
to their tables; curves aggregated per configuration, legends capped, per-job bars as the top
20 and a histogram, every label its own row, no picture over 4,000 px a side; and a 256-job
sweep reported in bounded time."""

import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from experiments.report import plots
from experiments.report import sweep_report as report
from experiments.report.analysis import analyse_sweep
from experiments.report.grid import Grid, split, sweep_grid
from experiments.report.sweep import load_sweeps
from experiments.training.metrics import VAL_ACC
from support.sweeps import grid_sweep, write_job

THREE = {"model": ["resnet18", "preact"], "optim": ["sgd", "adamw"], "aug": ["basic", "advanced"]}


@pytest.fixture
def drawn(monkeypatch):
    """Every figure the report saves, by file name, kept open to look inside."""
    figures = {}

    def keep(fig, path):
        figures[path.name] = fig
        width, height = fig.get_size_inches()
        fig.savefig(path, dpi=min(plots.DPI, plots.MAX_PX / max(width, height)))

    monkeypatch.setattr(plots, "save", keep)
    yield figures
    for fig in figures.values():
        plots.pyplot().close(fig)


def png_size(path):
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_grid_heatmap_and_forest_plot_are_drawn_next_to_their_tables(tmp_path, drawn):
    sweep = tmp_path / "s"
    grid_sweep(sweep, seeds=2, factors=THREE, epochs=3)
    result = report.write_tables([sweep], sweep)  # the tables; then these two pictures (all: below)
    (sweep / "plots").mkdir()
    assert plots.grid_plot(sweep_grid(result), sweep / "plots" / "grid.png")
    assert plots.effects_plot(result.analysis.csv, sweep / "plots" / "effects.png")
    report.write_tables([sweep], sweep)  # summary.md embeds the pictures plots/ has
    md = (sweep / "summary.md").read_text()
    grid_part = md.split("## Grid: test accuracy (%)")[1].split("## Effects")[0]
    # rows: model x optim, columns: aug (no wider than tall); the picture right after the table
    assert "| model / optim \\ aug | basic | advanced |" in grid_part
    assert "| resnet18 / sgd | " in grid_part and "| preact / adamw | " in grid_part
    assert grid_part.strip().endswith("![grid](plots/grid.png)")
    effects_part = md.split("## Effects")[1].split("## Plots")[0]
    assert "![effects](plots/effects.png)" in effects_part.split("### Paired differences")[1]
    plots_part = md.split("## Plots")[1]
    assert "grid.png" not in plots_part and "effects.png" not in plots_part  # shown once
    for name in ("grid.png", "effects.png"):
        width, height = png_size(sweep / "plots" / name)
        assert 300 < width <= plots.MAX_PX and 150 < height <= plots.MAX_PX, name

    grid = sweep_grid(result)
    assert (grid.rows, grid.columns, grid.column_labels) == (["model", "optim"], ["aug"], ["basic", "advanced"])
    (ax, _colorbar) = drawn["grid.png"].axes
    assert [t.get_text() for t in ax.get_yticklabels()] == grid.row_labels
    cells = [t.get_text() for t in ax.texts]
    row = result.configs.set_index(["model", "optim", "aug"]).loc[("preact", "sgd", "advanced")]
    mean, std = 100 * row["test_acc_mean"], 100 * row["test_acc_std"]
    assert len(cells) == 8 and f"{mean:.2f}\n± {std:.2f}" in cells  # mean +- std: two seeds

    (forest,) = drawn["effects.png"].axes
    labels = [t.get_text() for t in forest.get_yticklabels()]
    assert labels == ["model: preact − resnet18", "optim: adamw − sgd", "aug: advanced − basic"]
    zero = [line for line in forest.lines if list(line.get_xdata()) == [0, 0]]
    assert zero, "a vertical line at 0"
    effects = result.analysis.csv.set_index(["factor", "level"])
    notes = [t.get_text() for t in forest.texts]
    model = effects.loc[("model", "preact")]
    assert f"{model['diff_test_acc']:+.2f} [{model['diff_test_acc_low']:+.2f}, " \
           f"{model['diff_test_acc_high']:+.2f}], 8 pairs" in notes  # 2 optim x 2 aug x 2 seeds


def test_the_forest_plot_tells_clear_unclear_and_unmeasured_effects_apart_without_colour(tmp_path, drawn):
    table = pd.DataFrame({
        "factor": ["optim", "optim", "aug", "aug", "model", "model"],
        "level": ["sgd", "adamw", "basic", "advanced", "resnet18", "preact"],
        "vs": [None, "sgd", None, "basic", None, "resnet18"],
        "n_pairs": [None, 4, None, 4, None, 2],
        "diff_test_acc": [None, -5.5, None, 1.0, None, 0.5],
        "diff_test_acc_low": [None, -7.5, None, -1.0, None, None],
        "diff_test_acc_high": [None, -3.4, None, 3.0, None, None]})
    assert plots.effects_plot(table, tmp_path / "effects.png")
    (ax,) = drawn["effects.png"].axes
    markers = {(line.get_marker(), str(line.get_markerfacecolor())) for line in ax.lines
               if line.get_marker() in ("o", "D")}  # (not the interval's caps)
    # filled: the interval excludes 0; open: it includes 0; an open diamond: no interval
    assert markers == {("o", "black"), ("o", "white"), ("D", "white")}
    assert plots.effects_plot(table[:0], tmp_path / "none.png") is False


def test_heatmap_text_is_black_on_light_cells_and_white_on_dark_ones():
    cmap = plots.pyplot().get_cmap("viridis")
    brightness = [plots.luminance(cmap(x)) for x in np.linspace(0, 1, 50)]
    assert brightness == sorted(brightness)  # brighter with the value: readable in grey
    assert plots.luminance(cmap(0.0)) < 0.179 < plots.luminance(cmap(1.0))  # white text, black text


def test_the_grid_is_split_no_wider_than_tall():
    assert split([2]) == 1
    assert split([2, 2]) == 1 and split([2, 5]) == 1  # two factors: the first down, the second across
    assert split([2, 2, 2]) == 2  # model x optim down, aug across
    assert split([2, 2, 2, 2]) == 2  # 4 x 4
    assert split([3, 2, 2]) == 2  # 6 x 2: 3 x 4 would be wider than tall
    assert split([4, 2, 2]) == 1  # 4 x 4


def analysed(sweep):
    jobs = load_sweeps([sweep])
    return jobs, analyse_sweep(jobs)


def test_many_jobs_give_one_line_per_configuration_and_a_capped_legend(tmp_path, drawn):
    sweep = tmp_path / "s"  # 16 configurations x 2 seeds
    grid_sweep(sweep, seeds=2, epochs=3)
    jobs, result = analysed(sweep)
    assert plots.curve_plot(plots.Epochs(jobs, result.df), VAL_ACC, "acc", "Validation", tmp_path / "val_acc.png")
    (ax,) = drawn["val_acc.png"].axes
    assert len(ax.lines) == 16  # the mean over seeds, not 32 jobs
    assert len(ax.collections) == 16  # a band each
    assert legend_texts(ax) == ["model=resnet18", "model=preact", "optim=sgd", "optim=adamw"]
    assert "colour: model, line style: optim" in ax.get_title()
    # per-job bars: the 20 best, and all 32 in a histogram
    assert plots.best_val_bars(result.df, tmp_path / "best_val_acc.png")
    bars, histogram = drawn["best_val_acc.png"].axes
    assert len(bars.get_yticklabels()) == 20 and histogram.get_title() == "all 32 jobs"
    for png in ("val_acc.png", "best_val_acc.png"):
        width, height = png_size(tmp_path / png)
        assert width <= plots.MAX_PX and height <= plots.MAX_PX, png


def test_a_search_highlights_its_best_trials_and_says_how_many_more(tmp_path, drawn):
    sweep = tmp_path / "s"  # every trial its own values: no factor of few levels to colour by
    for num in range(30):
        write_job(sweep, num, {"optim.lr": f"{0.01 + num / 1000:.4f}"}, 0, 0.5 + num / 100, epochs=3)
    jobs, result = analysed(sweep)
    assert plots.curve_plot(plots.Epochs(jobs, result.df), VAL_ACC, "acc", "Validation", tmp_path / "val_acc.png")
    (ax,) = drawn["val_acc.png"].axes
    texts = legend_texts(ax)
    assert len(texts) == plots.MAX_LEGEND and texts[-1] == "+19 more"
    df = result.df
    assert texts[0] == df.loc[df["best_val_acc"].idxmax(), "optim.lr"]  # the best first
    assert len(ax.lines) == 11 and len(ax.collections) == 1  # the 19 others: one grey collection


def test_repeated_labels_get_a_row_each(tmp_path, drawn):
    # two trials whose rounded values read alike: their labels fall back to the whole names
    df = pd.DataFrame({"job": ["0-lr=0.1", "1-lr=0.1", "2-lr=0.2"], "sweep": ["s"] * 3,
                       "best_val_acc": [0.5, 0.6, 0.7]})
    assert plots.best_val_bars(df, tmp_path / "best_val_acc.png")
    (ax,) = drawn["best_val_acc.png"].axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["2-lr=0.2", "1-lr=0.1", "0-lr=0.1"]
    assert plots.unique(["a", "b", "a"]) == ["a (1)", "b", "a (2)"]
    height = png_size(tmp_path / "best_val_acc.png")[1]
    assert height < 1.2 * plots.DPI * (1.2 + 0.35 * 3)  # three rows tall


def test_no_picture_is_larger_than_4000_pixels_a_side(tmp_path):
    fig, _ = plots.figure(200, 300)
    plots.save(fig, tmp_path / "huge.png")
    assert max(png_size(tmp_path / "huge.png")) <= plots.MAX_PX
    rows, columns = [(f"a{i}", f"b{j}") for i in range(12) for j in range(12)], [(f"c{k}",) for k in range(12)]
    rng = np.random.default_rng(0)
    big = Grid(["a", "b"], ["c"], rows, columns, rng.uniform(0.5, 0.6, (144, 12)), np.full((144, 12), 0.01),
               np.full((144, 12), 2), True)
    assert plots.grid_plot(big, tmp_path / "grid.png")
    width, height = png_size(tmp_path / "grid.png")
    assert width <= plots.MAX_PX and height <= plots.MAX_PX and height > 1000


def test_a_256_job_sweep_reports_in_bounded_time_with_bounded_pictures(tmp_path):
    """16 configurations x 16 seeds (bench/report_scale.py measures 1,024 jobs: python
    bench/report_scale.py). ~4 s of CPU on 2 cores (it took ~40 s when every job had its own
    line, legend entry and bar); the bounds are generous, and on this process's CPU time, which
    other processes sharing the cores do not inflate, so that it cannot flake."""
    sweep = tmp_path / "s"
    grid_sweep(sweep, seeds=16, epochs=20)
    start, cpu = time.perf_counter(), time.process_time()
    report.write_tables([sweep], sweep, plots=True)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    assert cpu_seconds < 15 and seconds < 60, f"{cpu_seconds:.1f} s of CPU, {seconds:.1f} s"
    md = (sweep / "summary.md").read_text()
    assert "256 jobs: 256 completed." in md and "![grid](plots/grid.png)" in md
    assert "![effects](plots/effects.png)" in md and "![Validation accuracy per epoch](plots/val_acc.png)" in md
    sizes = {png: png_size(sweep / "plots" / png) for png in plots.ALL_PLOTS}
    assert all(w <= plots.MAX_PX and h <= plots.MAX_PX for w, h in sizes.values()), sizes
    assert sizes["best_val_acc.png"][1] < 1200 and sizes["epochs.png"][1] < 1200  # 20 bars, not 256


def test_the_sweep_callback_reads_an_ended_job_once_and_a_rewritten_one_again(tmp_path, monkeypatch):
    """The rebuild after every job (report/callbacks.py) keeps the jobs that ended: one whose
    summary.json is rewritten (a rerun) is read again, the others are not."""
    import json

    from experiments.report import sweep as sweep_module

    jobs = grid_sweep(tmp_path, seeds=2, factors={"model": ["a", "b"]}, epochs=2)
    cache, reads = {}, []
    load = sweep_module.load_job
    monkeypatch.setattr(sweep_module, "load_job", lambda d, s: reads.append(d.name) or load(d, s))
    first = sweep_module.load_sweeps([tmp_path], cache)
    assert len(reads) == len(jobs) == 4
    summary = jobs[1] / "summary.json"
    rerun = {**json.loads(summary.read_text()), "test_acc": 0.123}
    time.sleep(0.01)  # (a new modification time)
    summary.write_text(json.dumps(rerun))
    again = sweep_module.load_sweeps([tmp_path], cache)
    assert reads[4:] == [jobs[1].name]
    assert again[1].summary["test_acc"] == 0.123 and again[0] is first[0]
