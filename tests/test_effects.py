"""The sweep report's numbers against values computed by hand, on fabricated job directories:
paired differences, sign counts, 95% t-intervals (only with two or more seeds), interactions,
an unbalanced grid with a failed job, a confounded sweep, and the provenance section."""

import itertools
import json
import math

import pandas as pd
import pytest
import yaml

from experiments.report import effects, load_sweep
from experiments.report import sweep_report as report
from experiments.report.grid import sweep_grid
from experiments.report.job_summary import write_json
from experiments.report.provenance import resumed_code_change
from experiments.report.sweep import load_job, ran_with

T_975 = {2: 4.302653, 3: 3.182446}  # t quantiles (0.975; 2 and 3 degrees of freedom), from tables
CODE = {"commit": "c0ffee", "dirty": False, "diff_sha256": None}


def job_dir(sweep, num, choices, seed, test, status="completed", config=None, **extra):
    """A job directory as train.py leaves it: overrides, summary.json, metrics.csv (and with
    `config`, its config.yaml)."""
    name = f"{num}-" + "-".join(choices.values()) + f"-seed={seed}"
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    if config is not None:
        (job / "config.yaml").write_text(yaml.safe_dump(config))
    overrides = [f"{k}={v}" for k, v in choices.items()] + [f"seed={seed}"]
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    done = status == "completed"
    write_json(job / "summary.json", {
        "status": status, "choices": {"model": "preact", **choices}, "overrides": overrides,
        "seed": seed, "test_acc": test / 100 if done else None,
        "best_val_acc": (test + 1) / 100 if done else None, "epochs_completed": 2,
        "error": None if done else "diverged at epoch 2", "provenance": extra.pop("provenance", {
            "code": CODE, "versions": {"torch": "2.4.0"}, "device_name": "cpu"}), **extra})
    (job / "metrics.csv").write_text(
        "epoch,train/loss,train/acc,train/lr,val/loss,val/acc\n"
        f"1,3.0,0.2,0.1,3.1,0.25\n2,2.5,0.3,0.05,2.8,{(test + 1) / 100}\n")
    return job


# test accuracy (%) per (optim, aug, seed): sgd - adamw = 4, 6 (basic) and 5, 7 (advanced)
GRID = {("sgd", "basic", 0): 50, ("sgd", "basic", 1): 52, ("adamw", "basic", 0): 46,
        ("adamw", "basic", 1): 46, ("sgd", "advanced", 0): 55, ("sgd", "advanced", 1): 58,
        ("adamw", "advanced", 0): 50, ("adamw", "advanced", 1): 51}


def fabricate(sweep, grid, failed=(), val=None):
    """`val`: the best validation accuracy (%) of some jobs, by the same keys as `grid`
    (otherwise test + 1)."""
    for num, ((optim, aug, seed), acc) in enumerate(grid.items()):
        key, done = (optim, aug, seed), (optim, aug, seed) not in failed
        job_dir(sweep, num, {"optim": optim, "aug": aug}, seed, acc,
                status="completed" if done else "failed",
                **({"best_val_acc": val[key] / 100} if done and key in (val or {}) else {}))
    return report.write_tables([sweep], sweep)


def comparison(result, factor, metric="test_acc"):
    (c,) = [c for c in result.analysis.comparisons if c.factor == factor and c.metric == metric]
    return c


def t_interval(diffs):
    n, mean = len(diffs), sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = T_975[n - 1] * sd / math.sqrt(n)
    return mean - half, mean + half


def test_balanced_grid_two_seeds(tmp_path):
    result = fabricate(tmp_path / "s", GRID)
    optim = comparison(result, "optim")  # sgd - adamw over the pairs [4, 6, 5, 7]
    assert (optim.level, optim.vs, optim.n_pairs, optim.n_seeds) == ("sgd", "adamw", 4, 2)
    assert (optim.n_better, optim.n_worse) == (4, 0)
    assert optim.mean == pytest.approx(5.5)
    assert (optim.low, optim.high) == pytest.approx((3.4457, 7.5543), abs=1e-3)
    assert (optim.low, optim.high) == pytest.approx(t_interval([4, 6, 5, 7]))
    aug = comparison(result, "aug")  # basic - advanced: [-5, -6, -4, -5]
    assert aug.mean == pytest.approx(-5.0) and (aug.n_better, aug.n_worse) == (0, 4)
    assert (aug.low, aug.high) == pytest.approx((-6.2992, -3.7008), abs=1e-3)
    val = comparison(result, "optim", "best_val_acc")
    assert val.mean == pytest.approx(5.5)  # validation = test + 1 in every job
    (inter,) = result.analysis.interactions  # (sgd - adamw | basic) - (sgd - adamw | advanced)
    assert (inter.factor, inter.other) == ("optim", "aug")
    assert (inter.at_b1, inter.at_b2, inter.diff.mean, inter.diff.n_pairs) == pytest.approx((5, 6, -1, 2))
    assert result.analysis.balanced
    assert result.analysis.sentences == [
        "optim: sgd beats adamw by 5.5 points on average, 4 of 4 pairs, 95% interval [3.4, 7.6].",
        "aug: advanced beats basic by 5.0 points on average, 4 of 4 pairs, 95% interval [3.7, 6.3]."]

    rows = pd.read_csv(tmp_path / "s" / "effects.csv").set_index(["factor", "level"])
    assert rows.loc[("optim", "sgd"), "mean_test_acc"] == pytest.approx((50 + 52 + 55 + 58) / 4)
    assert rows.loc[("optim", "adamw"), "mean_best_val_acc"] == pytest.approx((47 + 47 + 51 + 52) / 4)
    adamw = rows.loc[("optim", "adamw")]  # against the first level: adamw - sgd
    assert (adamw["vs"], adamw["n_pairs"], adamw["n_seeds"], adamw["n_better"], adamw["n_worse"]) == (
        "sgd", 4, 2, 0, 4)
    assert (adamw["diff_test_acc"], adamw["diff_test_acc_low"], adamw["diff_test_acc_high"]) == \
        pytest.approx((-5.5, -7.5543, -3.4457), abs=1e-3)
    assert pd.isna(rows.loc[("optim", "sgd"), "vs"]) and pd.isna(rows.loc[("optim", "sgd"), "diff_test_acc"])

    md = (tmp_path / "s" / "summary.md").read_text()
    assert "**optim=sgd aug=advanced**: best validation accuracy 57.50 +- 2.12 (mean +- std over 2 seeds); " \
           "its test accuracy 56.50 +- 2.12." in md
    assert "| optim \\ aug | basic | advanced |" in md  # the grid in the sweep's shape
    assert "| sgd | 51.00 +- 1.41 | 56.50 +- 2.12 |" in md
    assert "| adamw | 46.00 +- 0.00 | 50.50 +- 0.71 |" in md
    assert "- optim: sgd beats adamw by 5.5 points" in md and "unbalanced" not in md


def test_unbalanced_grid_with_a_failed_job(tmp_path):
    result = fabricate(tmp_path / "s", GRID, failed={("adamw", "advanced", 1)})
    optim = comparison(result, "optim")  # the failed job's pair is gone: [4, 6, 5]
    assert (optim.n_pairs, optim.n_seeds, optim.mean) == (3, 2, pytest.approx(5.0))
    assert (optim.low, optim.high) == pytest.approx((2.5159, 7.4841), abs=1e-3)
    assert (optim.low, optim.high) == pytest.approx(t_interval([4, 6, 5]))
    levels = result.analysis.levels.set_index(["factor", "level"])
    # the plain mean of adamw mixes in its missing advanced job; the paired difference does not
    assert levels.loc[("optim", "adamw"), "mean_test_acc"] == pytest.approx((46 + 46 + 50) / 3)
    assert levels.loc[("optim", "adamw"), ["n_jobs", "n_failed"]].tolist() == [3, 1]
    assert not result.analysis.balanced
    (inter,) = result.analysis.interactions  # only seed 0 has all four jobs: no interval
    assert (inter.diff.n_pairs, inter.diff.mean, inter.diff.low) == (1, pytest.approx(-1), None)
    md = (tmp_path / "s" / "summary.md").read_text()
    assert "the grid is unbalanced" in md and "| adamw | 46.00 +- 0.00 (n=2) | 50.00 (n=1) |" in md
    assert "## Failed and interrupted jobs" in md
    assert "- `7-adamw-advanced-seed=1` (failed, 2 epochs): diverged at epoch 2" in md
    assert "optim: sgd beats adamw by 5.0 points on average, 3 of 3 pairs, 95% interval [2.5, 7.5]." in md


def test_one_seed_claims_no_interval(tmp_path):
    result = fabricate(tmp_path / "s", {k: v for k, v in GRID.items() if k[2] == 0})
    optim = comparison(result, "optim")  # [4, 5]
    assert (optim.n_pairs, optim.n_seeds, optim.low, optim.high) == (2, 1, None, None)
    assert optim.mean == pytest.approx(4.5)
    assert result.analysis.sentences[0] == (
        "optim: sgd scored 4.5 points above adamw on average, 2 of 2 pairs; one seed, so no "
        "interval: the difference may be seed noise.")
    rows = pd.read_csv(tmp_path / "s" / "effects.csv").set_index(["factor", "level"])
    assert rows.loc[("optim", "adamw"), "diff_test_acc"] == pytest.approx(-4.5)
    assert pd.isna(rows.loc[("optim", "adamw"), "diff_test_acc_low"])
    md = (tmp_path / "s" / "summary.md").read_text()
    assert "interval [" not in md and " [+" not in md and " [-" not in md  # no interval anywhere
    assert "one job per cell" in md and "| sgd | 50.00 | 55.00 |" in md


def test_pairs_that_disagree_give_no_clear_difference(tmp_path):
    diffs = [3, -1, 1, -1]  # sgd - adamw per seed; the interval straddles 0
    grid = {}
    for seed, d in enumerate(diffs):
        grid[("sgd", "basic", seed)] = 50 + d
        grid[("adamw", "basic", seed)] = 50
    result = fabricate(tmp_path / "s", grid)
    optim = comparison(result, "optim")
    assert (optim.mean, optim.n_better, optim.n_worse) == (pytest.approx(0.5), 2, 2)
    low, high = t_interval(diffs)
    assert (optim.low, optim.high) == pytest.approx((low, high)) and low < 0 < high
    assert result.analysis.sentences == [
        f"optim: no clear difference between sgd and adamw: sgd is 0.5 points ahead on average "
        f"(2 of 4 pairs), but the 95% interval [{low:.1f}, {high:.1f}] includes 0."]


def test_confounded_factors_have_no_pairs_and_no_claim(tmp_path):
    sweep = tmp_path / "s"  # model and optim change together: their effects cannot be told apart
    for num, (model, optim) in enumerate((("resnet18", "sgd"), ("preact", "adamw"))):
        for seed in (0, 1):
            job_dir(sweep, 2 * num + seed, {"model": model, "optim": optim}, seed, 50 + 5 * num + seed)
    result = report.write_tables([sweep], sweep)
    assert [c.n_pairs for c in result.analysis.comparisons] == [0, 0, 0, 0]
    assert result.analysis.sentences[0] == (
        "model: no two completed jobs differ only in model, so its effect is not separated from "
        "the other factors'.")
    assert "beats" not in (sweep / "summary.md").read_text()


def test_three_levels_compare_every_pair(tmp_path):
    sweep = tmp_path / "s"
    accs = {"sgd": 50, "adamw": 45, "rmsprop": 40}
    for num, ((optim, acc), seed) in enumerate(itertools.product(accs.items(), (0, 1))):
        job_dir(sweep, num, {"optim": optim}, seed, acc + seed * (optim == "sgd"))
    result = report.write_tables([sweep], sweep)
    pairs = {(c.level, c.vs): c for c in result.analysis.comparisons if c.metric == "test_acc"}
    assert set(pairs) == {("sgd", "adamw"), ("sgd", "rmsprop"), ("adamw", "rmsprop")}
    assert pairs[("sgd", "rmsprop")].mean == pytest.approx(10.5)
    assert pairs[("adamw", "rmsprop")].low == pytest.approx(5.0)  # two equal differences: no spread
    assert result.analysis.interactions == []  # only for two-level factors
    rows = pd.read_csv(sweep / "effects.csv")
    assert rows[["level", "vs"]].fillna("").values.tolist() == [["sgd", ""], ["adamw", "sgd"], ["rmsprop", "sgd"]]


def test_a_key_only_some_jobs_override_shows_what_the_others_ran_with(tmp_path):
    """Two sweeps combined, one with trainer.epochs=2, the other at the default 3: each job
    shows the epochs it ran (its config.yaml), never a blank, in the pick, the sentences,
    summary.csv and the grid."""
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    for (num, optim), seed in itertools.product(enumerate(("sgd", "adamw")), (0, 1)):
        for sweep, epochs, more in ((a, 2, {"trainer.epochs": "2"}), (b, 3, {})):
            job_dir(sweep, 2 * num + seed, {"optim": optim, **more}, seed, 50 - 4 * num + seed + 5 * (epochs == 3),
                    config={"seed": seed, "optim": {"name": optim}, "trainer": {"epochs": epochs}})
    result = report.write_tables([a, b], out)
    assert list(result.df["trainer.epochs"]) == ["2"] * 4 + ["3"] * 4
    assert result.analysis.factors == ["optim", "trainer.epochs"]
    assert result.analysis.sentences[1] == (
        "trainer.epochs: 3 beats 2 by 5.0 points on average, 4 of 4 pairs, 95% interval [5.0, 5.0].")
    assert "**optim=sgd trainer.epochs=3**: best validation accuracy" in (out / "summary.md").read_text()
    assert sorted(pd.read_csv(out / "summary.csv")["trainer.epochs"]) == [2] * 4 + [3] * 4  # no NaN
    grid = sweep_grid(result)
    assert (grid.rows, grid.columns, grid.column_labels) == (["optim"], ["trainer.epochs"], ["2", "3"])


def test_a_value_every_job_ran_with_is_no_factor_however_it_was_given(tmp_path):
    """A rerun added trainer.epochs=3 (the default) and optim.lr=1e-3 (the default, 0.001) to
    the jobs of seed 1: one value each, so the only factor is optim; a running job that did not
    override the seed shows the one it runs with."""
    sweep = tmp_path / "s"
    for (num, optim), seed in itertools.product(enumerate(("sgd", "adamw")), (0, 1)):
        more = {"trainer.epochs": "3", "optim.lr": "1e-3"} if seed else {}
        job_dir(sweep, 2 * num + seed, {"optim": optim, **more}, seed, 50 - 4 * num + seed,
                config={"seed": seed, "optim": {"name": optim, "lr": 0.001}, "trainer": {"epochs": 3}})
    running = job_dir(sweep, 4, {"optim": "sgd"}, 2, 0, status="running",
                      config={"seed": 2, "optim": {"name": "sgd", "lr": 0.001}, "trainer": {"epochs": 3}})
    (running / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["optim=sgd"]))
    summary = json.loads((running / "summary.json").read_text())  # (a running one has no seed)
    write_json(running / "summary.json", {k: v for k, v in summary.items() if k not in ("seed", "overrides")})
    result = report.write_tables([sweep], sweep)
    assert result.analysis.factors == ["optim"]
    assert set(result.df["trainer.epochs"]) == {"3"} and set(result.df["optim.lr"]) == {"1e-3"}
    assert result.df.set_index("job").loc[running.name, "seed"] == "2"
    md = (sweep / "summary.md").read_text()
    assert "**optim=sgd**: best validation accuracy" in md
    assert "optim.lr=1e-3 trainer.epochs=3" in md.split("## All jobs")[1]  # on the `all jobs:` line


def test_each_job_shows_what_its_config_says_and_only_then_its_override(tmp_path):
    """config.yaml first; Hydra's record of the composed config for a job that failed before
    writing its own (an interpolation there is not a value); `(unset)` for a key the config
    lacks; the override where no config says."""
    sweep = tmp_path / "s"
    written = job_dir(sweep, 0, {"trainer.epochs": "2"}, 0, 50, config={"trainer": {"epochs": 2}})
    lacking = job_dir(sweep, 1, {}, 0, 50, config={"trainer": {}})
    early = job_dir(sweep, 2, {}, 0, 50, status="failed")
    (early / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"trainer": {"epochs": 4}}))
    interpolated = job_dir(sweep, 3, {}, 0, 50, status="failed")
    (interpolated / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"trainer": {"epochs": "${x}"}}))
    unread = job_dir(sweep, 4, {"trainer.epochs": "5"}, 0, 50)
    jobs = [load_job(path, "s") for path in (written, lacking, early, interpolated, unread)]
    assert ran_with(jobs, "trainer.epochs") == ["2", "(unset)", "4", "", "5"]


def test_load_sweep_gives_one_row_per_job(tmp_path):
    fabricate(tmp_path / "s", GRID, failed={("adamw", "advanced", 1)})
    df = load_sweep(tmp_path / "s")
    assert isinstance(df, pd.DataFrame) and len(df) == 8
    assert {"job", "model", "optim", "aug", "mix", "seed", "status", "overrides", "test_acc",
            "best_val_acc", "epochs_completed", "error", "provenance.code.commit",
            "provenance.versions.torch"} <= set(df.columns)
    row = df.set_index("job").loc["0-sgd-basic-seed=0"]
    assert (row["optim"], row["aug"], row["seed"], row["test_acc"]) == ("sgd", "basic", "0", 0.5)
    assert row["overrides"] == "optim=sgd aug=basic seed=0"
    assert df["status"].value_counts().to_dict() == {"completed": 7, "failed": 1}
    by_optim = df.groupby("optim")["test_acc"].mean()  # ready for a notebook's own analysis
    assert by_optim["sgd"] == pytest.approx(0.5375)


def test_provenance_stated_once_and_differences_flagged(tmp_path):
    sweep = tmp_path / "s"
    other = {"code": {**CODE, "commit": "beef42", "dirty": True, "diff_sha256": "d1ff"},
             "versions": {"torch": "2.4.0"}, "device_name": "cpu"}
    for num, seed in enumerate((0, 1, 2)):
        job_dir(sweep, num, {"optim": "sgd"}, seed, 50, **({"provenance": other} if seed == 2 else {}))
    job_dir(sweep, 3, {"optim": "adamw"}, 0, 45, code_changed_on_resume={
        "checkpoint": CODE, "now": other["code"], "after_epoch": 1, "earlier": None})
    report.write_tables([sweep], sweep)
    md = (sweep / "summary.md").read_text()
    section = md.split("## Provenance")[1].split("## All jobs")[0]
    assert "- versions.torch: `2.4.0`" in section and "- device_name: `cpu`" in section
    assert ("- **code.commit differs between jobs**: `c0ffee` (`0-sgd-seed=0`, `1-sgd-seed=1`, "
            "`3-adamw-seed=0`); `beef42` (`2-sgd-seed=2`)") in section
    assert "**Resumed with different code**" in section and "`3-adamw-seed=0`" in section.split("Resumed")[1]


def test_resumed_code_change_is_detected_and_carried_forward(caplog):
    checkpoint = {"code": CODE, "fit": {"epoch": 3}}
    assert resumed_code_change(checkpoint, dict(CODE)) is None
    now = {**CODE, "dirty": True, "diff_sha256": "abcd"}  # same commit, uncommitted edits
    change = resumed_code_change(checkpoint, now)
    assert change["checkpoint"] == CODE and change["now"] == now and change["after_epoch"] == 3
    assert "RESUMING WITH DIFFERENT CODE" in caplog.text
    later = {"code": now, "code_changed": change, "fit": {"epoch": 5}}  # resumed again, same code
    assert resumed_code_change(later, now) == change
    assert resumed_code_change({"fit": {"epoch": 1}}, now) is None  # nothing recorded to compare


def test_interval_needs_two_seeds_and_two_pairs():
    one_seed = pd.Series([1.0, 2.0], index=pd.Index(["0", "0"], name=effects.SEED))
    assert effects.compare(one_seed, "f", "a", "b", "test_acc").low is None
    two = pd.Series([1.0, 3.0], index=pd.Index(["0", "1"], name=effects.SEED))
    c = effects.compare(two, "f", "a", "b", "test_acc")
    assert (c.low, c.high) == pytest.approx((2 - 12.7062 * 1.0, 2 + 12.7062 * 1.0), abs=1e-3)


def test_paired_differences_from_a_notebook(tmp_path):
    fabricate(tmp_path / "s", GRID)
    df = load_sweep(tmp_path / "s")
    by_metric = {c.metric: c for c in effects.paired_differences(df, "optim")}
    assert by_metric["test_acc"].mean == pytest.approx(5.5) and by_metric["test_acc"].n_pairs == 4
    # matched on the seed alone, each seed's cell averages over optim: one pair per seed
    (seed_only, _) = effects.paired_differences(df, "aug", factors=["aug"])
    assert (seed_only.n_pairs, seed_only.mean) == (2, pytest.approx(-5.0))


def test_a_random_search_gets_no_grid_and_no_claims(tmp_path):
    sweep = tmp_path / "s"  # like Optuna: every trial its own lr and weight decay
    for num, (lr, wd) in enumerate((("0.01", "1e-4"), ("0.05", "3e-4"), ("0.2", "1e-3"))):
        job_dir(sweep, num, {"optim.lr": lr, "optim.weight_decay": wd}, 0, 40 + num)
    result = report.write_tables([sweep], sweep)
    assert result.analysis.factors == ["optim.lr", "optim.weight_decay"]
    assert all(c.n_pairs == 0 for c in result.analysis.comparisons)
    md = (sweep / "summary.md").read_text()
    assert "Not shown: only 3 of the 9 combinations of optim.lr, optim.weight_decay" in md
    assert "- optim.lr: no two completed jobs differ only in optim.lr" in md
    assert "**optim.lr=0.2 optim.weight_decay=1e-3**: best validation accuracy 43.00" in md


def test_agreement_counts_the_pairs_on_the_side_of_the_mean(tmp_path):
    diffs = [-1, -1, 3]  # sgd - adamw: the mean favours sgd, but 2 of 3 pairs favour adamw
    grid = {}
    for seed, d in enumerate(diffs):
        grid[("sgd", "basic", seed)], grid[("adamw", "basic", seed)] = 50 + d, 50
    result = fabricate(tmp_path / "s", grid)
    assert "sgd is 0.3 points ahead on average (1 of 3 pairs)" in result.analysis.sentences[0]
    md = (tmp_path / "s" / "summary.md").read_text()
    assert "| optim | sgd − adamw | 3 | 3 | 1/3 |" in md


def test_ties_counted_and_a_clear_interaction_qualifies_the_average(tmp_path):
    """The smoke grid's shape: sgd saturates (model makes no difference there, the pairs tie),
    adamw does not (preact is 40 points ahead): the average hides a clear interaction."""
    grid = {}
    for seed, noise in ((0, 0), (1, 2), (2, -1)):
        for model in ("resnet18", "preact"):
            grid[(model, "sgd", seed)] = 100
            grid[(model, "adamw", seed)] = (45 if model == "resnet18" else 85) + noise
    for num, ((model, optim, seed), acc) in enumerate(grid.items()):
        job_dir(tmp_path / "s", num, {"model": model, "optim": optim}, seed, acc)
    result = report.write_tables([tmp_path / "s"], tmp_path / "s")
    model = comparison(result, "model")  # resnet18 - preact: 0 0 0 -40 -40 -40
    assert (model.n_better, model.n_worse, model.n_pairs) == (0, 3, 6)
    (inter,) = result.analysis.interactions
    assert inter.diff.mean == pytest.approx(40) and inter.diff.low == pytest.approx(40)
    sentence = result.analysis.sentences[0]
    assert sentence.startswith("model: no clear difference between preact and resnet18: preact is 20.0 "
                               "points ahead on average (3 of 6 pairs, 3 tied)")
    assert "but it depends on optim: the difference changes by 40.0 points" in sentence
    assert "depends" not in fabricate(tmp_path / "t", GRID).analysis.sentences[0]  # no clear one


def test_a_tie_for_the_pick_is_said(tmp_path):
    grid = {("sgd", "basic", 0): 60, ("adamw", "basic", 0): 60, ("sgd", "advanced", 0): 50,
            ("adamw", "advanced", 0): 40}
    result = fabricate(tmp_path / "s", grid)
    assert result.pick["ties"] == 1
    md = (tmp_path / "s" / "summary.md").read_text()
    assert "1 other configuration ties with it on validation accuracy" in md
    assert fabricate(tmp_path / "t", GRID).pick["ties"] == 0
    assert "ties with it" not in (tmp_path / "t" / "summary.md").read_text()


def test_a_tie_for_the_pick_goes_to_the_sweeps_order_not_to_test_accuracy(tmp_path):
    grid = {("sgd", "basic", 0): 50, ("adamw", "basic", 0): 60}  # the second tests higher
    result = fabricate(tmp_path / "s", grid, val={k: 70 for k in grid})
    assert result.pick["config"]["optim"] == "sgd" and result.pick["ties"] == 1
    md = (tmp_path / "s" / "summary.md").read_text()
    assert ("**optim=sgd**: best validation accuracy 70.00 (one seed); its test accuracy 50.00. "
            "1 other configuration ties with it on validation accuracy (the first in the sweep's "
            "order is shown)") in md


def test_the_pick_compares_over_the_seeds_every_configuration_completed(tmp_path):
    # validation (%): sgd/basic 70 70 40, adamw/basic 65 65 (seed 2 failed), sgd/advanced 50 50 50.
    # Over all seeds adamw/basic leads (65 against 60); over seeds 0 and 1 sgd/basic does (70).
    val = {("sgd", "basic", 0): 70, ("sgd", "basic", 1): 70, ("sgd", "basic", 2): 40,
           ("adamw", "basic", 0): 65, ("adamw", "basic", 1): 65, ("adamw", "basic", 2): 99,
           ("sgd", "advanced", 0): 50, ("sgd", "advanced", 1): 50, ("sgd", "advanced", 2): 50}
    grid = {k: v - 1 for k, v in val.items()}
    result = fabricate(tmp_path / "s", grid, failed={("adamw", "basic", 2)})
    pick = result.pick
    assert (pick["config"]["optim"], pick["config"]["aug"]) == ("sgd", "basic")
    assert (pick["seeds"], pick["left_out"], pick["ties"]) == (["0", "1"], 2, 0)
    # the numbers reported are over all of its completed jobs; only the choice is over seeds 0 1
    assert pick["row"]["n"] == 3 and pick["row"]["best_val_acc_mean"] == pytest.approx(0.6)
    md = (tmp_path / "s" / "summary.md").read_text()
    assert ("**optim=sgd aug=basic**: best validation accuracy 60.00 +- 17.32 (mean +- std over 3 "
            "seeds); its test accuracy 59.00 +- 17.32. The configurations were compared over seeds "
            "0 1, the seeds every configuration completed; 2 jobs of other seeds are left out of "
            "the choice (the numbers above are over all of this configuration's completed jobs).") in md
    full = fabricate(tmp_path / "t", GRID)  # every seed completed: nothing to say
    assert (full.pick["seeds"], full.pick["left_out"]) == (["0", "1"], 0)
    assert "compared over seeds" not in (tmp_path / "t" / "summary.md").read_text()


def test_a_pick_over_different_seeds_says_so(tmp_path):
    grid = {("sgd", "basic", 0): 50, ("sgd", "basic", 1): 52, ("adamw", "basic", 2): 60}
    result = fabricate(tmp_path / "s", grid)  # no seed is common: every mean over its own seeds
    assert result.pick["config"]["optim"] == "adamw"
    md = (tmp_path / "s" / "summary.md").read_text()
    assert ("its test accuracy 60.00. The configurations completed different seeds: their means "
            "are over different seeds (none is common to all), so the choice is not like for "
            "like.") in md
    assert (result.pick["seeds"], result.pick["left_out"]) == ([], 0)
