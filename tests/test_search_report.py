"""Reading an Optuna search (experiments.report.search), on trial directories written without
training (tests/support/searches.py): pruned trials shown apart, never picked nor failures; the
best value so far against the trial number; the parameters' importances; the epochs pruning
saved; the search space as the sweeper read it; a grid's report untouched. A real search's
report: tests/test_reports.py (test_an_optuna_search_in_sqlite...)."""

import json
import logging
import math
import sys
import time

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from experiments.report import plots
from experiments.report import sweep_report as report
from experiments.report.callbacks import SweepProgress
from experiments.report.grid import sweep_grid
from experiments.report.job_summary import COMPLETED, FAILED, PRUNED
from experiments.report.search import (
    MIN_IMPORTANCE_TRIALS,
    at_edge,
    history,
    load_study,
    pruning,
    search_space,
    searches,
)
from experiments.report.sweep import load_sweeps
from support.searches import lr_search, write_trial
from support.sweeps import grid_sweep

LRS = [0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.45]


def params(n: int) -> dict:
    return {"optim.lr": LRS[n], "optim.weight_decay": 1e-4, "trainer.batch_size": 128}


@pytest.fixture
def drawn(monkeypatch):
    """Every figure the report saves, by file name, kept open to look inside."""
    figures = {}

    def keep(fig, path):
        figures[path.name] = fig
        fig.savefig(path, dpi=40)

    monkeypatch.setattr(plots, "save", keep)
    yield figures
    for fig in figures.values():
        plots.pyplot().close(fig)


def section(md: str, title: str) -> str:
    return md.split(f"## {title}", 1)[1].split("\n## ", 1)[0] if f"## {title}" in md else ""


def test_pruned_trials_are_shown_apart_never_picked_nor_failed(tmp_path):
    """Trial 1 was pruned with the best validation accuracy so far of any trial: it is not the
    pick (its number is partial), not a failure, not in the per-configuration table, and the
    Search section lists it with its epochs and the value it was pruned at."""
    sweep = tmp_path / "s"
    write_trial(sweep, 0, params(0), value=0.60)
    pruned = write_trial(sweep, 1, params(1), PRUNED, value=0.90, trained=3, pruned_value=0.85)
    picked = write_trial(sweep, 2, params(2), value=0.70)
    failed = write_trial(sweep, 3, params(3), FAILED, trained=1)
    result = report.write_tables([sweep], sweep)
    md = (sweep / "summary.md").read_text()

    assert list(result.table.loc[result.table["best"] == "*", "job"]) == [picked.name]
    assert len(result.configs) == 2 and result.analysis.factors == [] and sweep_grid(result) is None
    pick = section(md, "Pick")
    assert "1 pruned" in pick and "The 1 pruned trial is not a candidate:" in pick
    problems = section(md, "Failed and interrupted jobs")
    assert failed.name in problems and pruned.name not in problems
    searched = section(md, "Search (Optuna)")
    assert "4 trials (" in searched and f"**Best trial 2 ({picked.name}): best_val_acc 70.00%" in searched
    rows = [line for line in searched.split("### Pruned trials")[1].splitlines() if line.startswith("| 1 |")]
    assert rows == [f"| 1 | {pruned.name} | 3 | 10 | 85.00% |"]
    assert "sampled by Optuna" in section(md, "Effects")
    printed = report.terminal_table(result)
    assert "failed:\n  " + failed.name in printed and f"  {pruned.name}:" not in printed
    assert "search (Optuna): 4 trials (" in printed and "best trial 2" in printed


def test_the_best_so_far_steps_over_pruned_and_failed_trials(tmp_path, drawn):
    """What plots/search.png draws: the best completed value up to each trial (none before the
    first completed one; a pruned or failed trial keeps the best as it was), the completed
    trials' values, pruned ones at their value when pruned, failed ones (and a pruned one
    without a value) on the bottom edge."""
    sweep = tmp_path / "s"
    statuses = [(PRUNED, 0.30), (COMPLETED, 0.50), (FAILED, None), (COMPLETED, 0.45), (PRUNED, 0.40),
                (COMPLETED, 0.70), (PRUNED, None)]
    for n, (status, value) in enumerate(statuses):
        write_trial(sweep, n, params(n), status, value=0.5 if status == PRUNED else value,
                    pruned_value=value if status == PRUNED else None)
    (search,) = searches(load_sweeps([sweep]))
    table = history(search)
    assert list(table["trial"]) == list(range(7))
    assert table["best"].tolist()[1:] == [0.50, 0.50, 0.50, 0.50, 0.70, 0.70] and math.isnan(table["best"][0])

    path = tmp_path / "search.png"
    assert plots.search_plot(search, path) and path.exists()
    (ax,) = drawn["search.png"].axes
    lines = {line.get_label().split(" (")[0]: line for line in ax.get_lines()}
    assert list(lines["best so far"].get_xdata()) == [1, 2, 3, 4, 5, 6]
    assert list(lines["best so far"].get_ydata()) == pytest.approx([50, 50, 50, 50, 70, 70])
    assert list(lines["completed"].get_xdata()) == [1, 3, 5]
    assert list(lines["pruned"].get_xdata()) == [0, 4]
    assert list(lines["pruned"].get_ydata()) == pytest.approx([30, 40])
    assert sorted(lines["failed"].get_xdata()) == [2, 6] and set(lines["failed"].get_ydata()) == {0.03}

    study = load_study(sweep)  # the same trials as an optuna.Study, for Optuna's own plots
    states = [(t.user_attrs["trial"], t.state.name) for t in study.trials]
    assert states == [(0, "PRUNED"), (1, "COMPLETE"), (2, "FAIL"), (3, "COMPLETE"), (4, "PRUNED"),
                      (5, "COMPLETE"), (6, "PRUNED")]
    assert study.best_trial.user_attrs["trial"] == 5 and study.best_value == 0.70


def test_a_minimized_metric_keeps_the_lowest_so_far_and_two_searches_report_apart(tmp_path):
    sweep = tmp_path / "s"
    for n, loss in enumerate([0.9, 0.7, 0.8]):
        write_trial(sweep, n, params(n), value=loss, metric="best_val_loss", direction="minimize")
    (search,) = searches(load_sweeps([sweep]))
    assert (search.metric, search.direction, search.best.number) == ("best_val_loss", "minimize", 1)
    assert history(search)["best"].tolist() == [0.9, 0.7, 0.7]

    other = tmp_path / "t"  # combined into one report: a section each, and a picture each
    write_trial(other, 0, params(0), value=0.6)
    result = report.write_tables([sweep, other], tmp_path / "both")
    md = (tmp_path / "both" / "summary.md").read_text()
    assert [s.sweep for s in result.searches] == ["s", "t"]
    assert "## Search (Optuna): s" in md and "## Search (Optuna): t" in md
    assert [plots.search_plot_name(i) for i in range(2)] == ["search.png", "search-2.png"]


def test_a_best_value_on_the_edge_of_its_range_is_pointed_out(tmp_path):
    """On a log range, 2% of its log-width from an end (0.496 of [0.01, 0.5]); a choice never."""
    sweep = tmp_path / "s"
    write_trial(sweep, 0, {"optim.lr": 0.496, "optim.weight_decay": 1.1e-5, "trainer.batch_size": 256}, value=0.7)
    write_trial(sweep, 1, {"optim.lr": 0.45, "optim.weight_decay": 1e-4, "trainer.batch_size": 64}, value=0.6)
    (search,) = searches(load_sweeps([sweep]))
    assert at_edge(search) == {"optim.lr": "top", "optim.weight_decay": "bottom"}
    md = report.write_tables([sweep], sweep) and (sweep / "summary.md").read_text()
    assert ("The best trial has optim.lr at the top of its range log [0.01, 0.5] and optim.weight_decay at the "
            "bottom of its range log [1e-05, 0.01]: the best may lie beyond") in md
    write_trial(sweep, 2, params(2), value=0.8)  # lr 0.1, wd 1e-4: inside
    (search,) = searches(load_sweeps([sweep]))
    assert at_edge(search) == {}


def test_importances_find_the_one_parameter_that_decides_the_value(tmp_path):
    """30 random trials whose value only the learning rate moves: fANOVA (Optuna 2.10's, with
    NumPy 2: search.fanova_reads_floats) gives it most of the importance, the same on every
    rebuild (seeded); below MIN_IMPORTANCE_TRIALS completed trials there are none, and the
    report says why."""
    lr_search(tmp_path / "many", 30)
    (search,) = searches(load_sweeps([tmp_path / "many"]))
    assert list(search.importances)[0] == "optim.lr" and search.importances["optim.lr"] > 0.6, search.importances
    assert sum(search.importances.values()) == pytest.approx(1.0)
    (again,) = searches(load_sweeps([tmp_path / "many"]))
    assert again.importances == search.importances
    md = report.write_tables([tmp_path / "many"], tmp_path / "many").searches and \
        (tmp_path / "many" / "summary.md").read_text()
    table = section(md, "Search (Optuna)").split("### Parameter importances (fANOVA over 30 completed trials)")[1]
    first = next(line for line in table.splitlines() if line.startswith("| optim"))
    assert first.startswith(f"| optim.lr | {search.importances['optim.lr']:.2f} | log [0.01, 0.5] |")

    lr_search(tmp_path / "few", MIN_IMPORTANCE_TRIALS - 1)
    (few,) = searches(load_sweeps([tmp_path / "few"]))
    assert few.importances == {} and f"{MIN_IMPORTANCE_TRIALS - 1} completed trials with a value: too few" \
        in few.importance_note


def test_the_epochs_pruning_saved(tmp_path, capsys):
    """Each pruned trial's trainer.epochs minus the epochs it trained (a trial may configure its
    own), against every epoch the search trained plus those."""
    sweep = tmp_path / "s"
    write_trial(sweep, 0, params(0), value=0.6, epochs=10)
    write_trial(sweep, 1, params(1), PRUNED, value=0.3, epochs=10, trained=3, pruned_value=0.3)
    write_trial(sweep, 2, params(2), value=0.5, epochs=10, trained=7)  # early-stopped: not pruning
    write_trial(sweep, 3, params(3), PRUNED, value=0.4, epochs=20, trained=5, pruned_value=0.4)
    write_trial(sweep, 4, params(4), FAILED, epochs=10, trained=2)
    (search,) = searches(load_sweeps([sweep]))
    saved = pruning(search)
    assert (saved.pruned, saved.saved, saved.trained, saved.unpruned) == (2, 7 + 15, 10 + 3 + 7 + 5 + 2, 49)
    sentence = "2 of 5 trials were pruned, saving 22 epochs against running every trial to its trainer.epochs " \
               "(45% of the 49 epochs it would have trained)."
    from experiments import summarize

    summarize.main([str(sweep), "--no-plots"])
    assert sentence in (sweep / "summary.md").read_text() and sentence in capsys.readouterr().out


def test_one_trial_or_only_pruned_trials_report_without_failing(tmp_path, drawn):
    one = tmp_path / "one"
    write_trial(one, 0, params(0), value=0.6)
    md = (report.write_tables([one], one) and (one / "summary.md").read_text())
    assert "**Best trial 0 (" in md and "1 completed trial with a value: too few" in md

    pruned = tmp_path / "pruned"
    for n in range(3):
        write_trial(pruned, n, params(n), PRUNED, value=0.2, trained=2, pruned_value=0.1 * (n + 1))
    result = report.write_tables([pruned], pruned)
    md = (pruned / "summary.md").read_text()
    assert result.pick is None and "No completed job has a validation accuracy" in md
    searched = section(md, "Search (Optuna)")
    assert "3 trials (3 pruned)" in searched and "No completed trial has a value of best_val_acc yet" in searched
    assert "3 of 3 trials were pruned, saving 24 epochs" in searched
    assert "Failed and interrupted jobs" not in md
    assert plots.search_plot(result.searches[0], tmp_path / "search.png")  # the crosses alone
    assert plots.search_plot_name(0) == "search.png"


def test_the_search_space_is_what_the_sweeper_searched():
    """hydra.sweeper.params, then the command line's sweeps (a range there is searched; a fixed
    value there takes its key out of the search), parsed by the plugin's own parser; Hydra's
    keys and what does not parse (a masked secret) left out."""
    from optuna.distributions import CategoricalDistribution, LogUniformDistribution, UniformDistribution

    sweeper = {"params": {"optim.lr": "tag(log, interval(0.01, 0.5))", "trainer.batch_size": "choice(64, 128)",
                          "optim.weight_decay": "tag(log, interval(1e-5, 1e-2))"}}
    command = ("python train.py -m hparams_search=optuna 'optim.momentum=interval(0.8, 0.95)' "
               "optim.weight_decay=5e-4 'hydra.sweep.dir=/tmp/x' logger.wandb.api_key=*** 'x=(' ")
    space = search_space(sweeper, command)
    assert space == {"optim.lr": LogUniformDistribution(0.01, 0.5),
                     "trainer.batch_size": CategoricalDistribution([64, 128]),
                     "optim.momentum": UniformDistribution(0.8, 0.95)}
    assert search_space(sweeper, None).keys() == {"optim.lr", "trainer.batch_size", "optim.weight_decay"}
    older = {"search_space": {"optim.lr": {"type": "float", "low": 0.01, "high": 0.5, "log": True}}}
    assert search_space(older, "python train.py 'optim.momentum=interval(0.8, 0.95)'") == {
        "optim.lr": LogUniformDistribution(0.01, 0.5), "optim.momentum": UniformDistribution(0.8, 0.95)}


def test_a_grid_sweeps_report_has_no_search_and_never_imports_optuna(tmp_path, monkeypatch):
    """A grid (Hydra's basic sweeper in its jobs' hydra.yaml) is reported as before: no Search
    section or picture, its factors analysed; optuna is never imported for it (made to fail
    here if it were)."""
    sweep = tmp_path / "grid"
    jobs = grid_sweep(sweep, 1, {"model": ["resnet18", "preact"], "optim": ["sgd", "adamw"]}, epochs=3)
    for job in jobs:
        hydra = {"hydra": {"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"}}}
        (job / ".hydra" / "hydra.yaml").write_text(json.dumps(hydra))
    for module in ("optuna", "hydra_plugins.hydra_optuna_sweeper._impl"):
        monkeypatch.setitem(sys.modules, module, None)  # `import optuna` raises ImportError
    result = report.write_tables([sweep], sweep)
    md = (sweep / "summary.md").read_text()
    assert result.searches == [] and "## Search" not in md and result.analysis.factors == ["model", "optim"]
    assert "search (Optuna)" not in report.terminal_table(result)


def test_a_sweeps_job_line_says_pruned_and_its_eta_counts_pruned_trials(tmp_path, caplog):
    """`job 2/4 1-... done: pruned after 3 epochs`, not `pruned` as if it were an error; the ETA
    counts a pruned trial as a job this run trained (10 s for it, 3 left: 30 s more)."""
    sweep = tmp_path / "s"
    write_trial(sweep, 0, params(0), value=0.6)
    pruned = write_trial(sweep, 1, params(1), PRUNED, value=0.3, trained=3, pruned_value=0.3)
    (sweep / SweepProgress.FILE).write_text(json.dumps({"jobs": 4, "started": time.time() - 10}))
    config = OmegaConf.create({"hydra": {"mode": "RunMode.MULTIRUN", "sweep": {"dir": str(sweep)},
                                         "job": {"num": 1}, "runtime": {"output_dir": str(pruned)}}})
    caplog.set_level(logging.INFO)
    from experiments.search.trial import Pruned

    # (the job raised Pruned: a failed return to Hydra, which the sweeper reads as PRUNED)
    SweepProgress().on_job_end(config, JobReturn(status=JobStatus.FAILED, _return_value=Pruned(3, 0.3, "val/acc")))
    (line,) = [r.getMessage() for r in caplog.records if " done: " in r.getMessage()]
    assert line.startswith(f"job 2/4 {pruned.name} done: pruned after 3 epochs (")
    state = SweepProgress().state(sweep)
    assert state["ended"] == {"1": True}
    assert SweepProgress.sweep_eta(state) == pytest.approx(30, abs=1)
