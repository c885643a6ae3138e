"""Reading sweeps back: failures in the table, seed aggregation, partial sweeps, the report of a
real grid, plots, provenance, Optuna, launchers."""

import csv
import importlib.metadata
import json
import os
import re
import socket
import statistics

import pytest
import torch
import yaml

from conftest import run_train
from experiments import summarize
from experiments.report import sweep_report as report
from experiments.report.job_summary import write_json
from experiments.report.sweep import load_job
from experiments.training.backends import resolve_device
from support.jobs import run_here

SMOKE = ["experiment=smoke", "logger=none", "trainer.epochs=1"]


def fake_job(sweep, name, overrides, **summary):
    """A job directory as train.py leaves it, without training."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    write_json(job / "summary.json", {"status": "completed", "choices": {"model": "preact"}, **summary})
    return job


def test_seed_aggregation_math(tmp_path):
    sweep = tmp_path / "s"
    accs = {("sgd", 0): 0.70, ("sgd", 1): 0.72, ("sgd", 2): 0.74, ("adamw", 0): 0.60, ("adamw", 1): 0.66}
    for i, ((optim, seed), acc) in enumerate(accs.items()):
        fake_job(sweep, f"{i}-preact-{optim}-basic-seed={seed}", [f"optim={optim}", f"seed={seed}"],
                 test_acc=acc, best_val_acc=acc + 0.01, train_time_s=10.0 + seed)
    configs = report.write_tables([sweep], sweep).configs
    by_optim = configs.set_index("optim")
    assert by_optim.loc["sgd", "n"] == 3 and by_optim.loc["adamw", "n"] == 2
    assert by_optim.loc["sgd", "test_acc_mean"] == pytest.approx(0.72)
    assert by_optim.loc["sgd", "test_acc_std"] == pytest.approx(statistics.stdev([0.70, 0.72, 0.74]))
    assert by_optim.loc["adamw", "test_acc_std"] == pytest.approx(statistics.stdev([0.60, 0.66]))
    assert by_optim.loc["sgd", "seeds"] == "0 1 2"
    assert list(configs["optim"]) == ["sgd", "adamw"]
    assert (sweep / "summary_by_config.csv").exists()
    assert "72.00 +- 2.00" in (sweep / "summary.md").read_text()


def test_partial_sweeps_show_running_and_interrupted_jobs(tmp_path):
    sweep = tmp_path / "s"
    fake_job(sweep, "0-preact-sgd-basic", ["optim=sgd"], test_acc=0.5, best_val_acc=0.5)
    live = fake_job(sweep, "1-preact-sgd-basic", ["optim=sgd"], status="running",
                    pid=os.getpid(), host=socket.gethostname())
    (live / "metrics.csv").write_text("epoch,val/acc\n1,0.25\n2,0.375\n")
    fake_job(sweep, "2-preact-sgd-basic", ["optim=sgd"], status="running", pid=2**22 + 12345,
             host=socket.gethostname())
    table = report.write_tables([sweep], sweep).table
    status = {r["job"]: r for r in table.to_dict("records")}
    assert status["1-preact-sgd-basic"]["status"] == "running"
    assert status["1-preact-sgd-basic"]["epochs_completed"] == 2
    assert status["1-preact-sgd-basic"]["best_val_acc"] == 0.375
    assert status["2-preact-sgd-basic"]["status"] == "interrupted"


# a val/loss job's epochs: the lowest loss (epoch 2) is not the highest accuracy (epoch 3)
LOSS_AND_ACC = "epoch,val/loss,val/acc\n1,1.0,0.5\n2,0.8,0.4\n3,0.9,0.6\n"


def running_job(sweep, name, monitor=None, **summary):
    """A job still training, with three epochs in its metrics.csv; `monitor`: its config's
    trainer.monitor (None: no config.yaml)."""
    job = fake_job(sweep, name, ["optim=sgd"], status="running", pid=os.getpid(),
                   host=socket.gethostname(), **summary)
    (job / "metrics.csv").write_text(LOSS_AND_ACC)
    if monitor is not None:
        (job / "config.yaml").write_text(yaml.safe_dump({"trainer": {"monitor": monitor}}))
    return job


def test_a_running_job_keeps_the_selection_its_summary_has(tmp_path):
    # the job writes its selection after every epoch; metrics.csv is written first, so it is
    # an epoch ahead here
    job = running_job(tmp_path, "0-preact-sgd-basic", "val/loss", best_val_acc=0.4,
                      best_val_loss=0.8, best_epoch=2, epochs_completed=2)
    summary = load_job(job, "s").summary
    assert (summary["status"], summary["best_val_acc"], summary["best_val_loss"]) == ("running", 0.4, 0.8)
    assert (summary["best_epoch"], summary["epochs_completed"]) == (2, 3)


def test_a_running_job_without_a_selection_gets_the_one_its_monitor_makes(tmp_path):
    by_loss = load_job(running_job(tmp_path, "0-preact-sgd-basic", "val/loss"), "s").summary
    assert by_loss["best_val_acc"] == 0.4  # not the highest val/acc, 0.6
    assert (by_loss["best_val_loss"], by_loss["best_epoch"], by_loss["epochs_completed"]) == (0.8, 2, 3)
    by_acc = load_job(running_job(tmp_path, "1-preact-sgd-basic", "val/acc"), "s").summary
    assert (by_acc["best_val_acc"], by_acc["best_epoch"]) == (0.6, 3)
    unsaid = load_job(running_job(tmp_path, "2-preact-sgd-basic"), "s").summary  # no config.yaml
    assert (unsaid["best_val_acc"], unsaid["best_epoch"]) == (0.6, 3)


def test_summarize_combines_several_sweeps(tmp_path, capsys):
    for name, acc in (("a", 0.5), ("b", 0.6)):
        fake_job(tmp_path / name, "0-preact-sgd-basic", ["optim=sgd"], test_acc=acc, best_val_acc=acc)
    with pytest.raises(SystemExit):
        summarize.main([str(tmp_path / "a"), str(tmp_path / "b")])  # where should it go?
    summarize.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "both")])
    rows = list(csv.DictReader(open(tmp_path / "both" / "summary.csv")))
    assert [(r["sweep"], r["test_acc"]) for r in rows] == [("b", "0.6"), ("a", "0.5")]
    assert (tmp_path / "both" / "plots" / "test_acc.png").exists()
    assert "| b |" in capsys.readouterr().out


def test_an_optuna_search_in_sqlite_continues_into_the_same_sweep_directory(tmp_path):
    """Three trials, then the README's way to continue the search: the same command again with
    n_trials, the study's total, raised to 4 (and once more unchanged: the study has its 4,
    nothing runs). Each trial gets the study's number (unique directories, none refused or
    overwritten), and the seeded sampler, still in its random start-up phase (n_startup_trials 5
    > 4 trials), draws new values rather than the first run's again."""
    db, sweep = f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "sweep"
    command = ["hparams_search=optuna", *SMOKE, f"hydra.sweeper.storage={db}",
               f"hydra.sweep.dir={sweep}"]
    proc = run_train(*command, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"optim.lr", "optim.weight_decay", "trainer.batch_size"}
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows)
    lrs = {float(r["optim.lr"]) for r in rows}
    assert len(lrs) == 3 and all(0.01 <= lr <= 0.5 for lr in lrs)
    best_val = max(float(r["best_val_acc"]) for r in rows)
    assert results["best_value"] == pytest.approx(best_val)  # Optuna saw the validation metric

    for _ in range(2):
        proc = run_train(*command, "hydra.sweeper.n_trials=4", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
    import optuna

    study = optuna.load_study(study_name="resnet18-sgd", storage=db)
    assert len(study.trials) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4  # no repeats
    names = [p.name for p in sweep.iterdir() if (p / ".hydra").is_dir()]
    jobs = sorted(name.split("-")[0] for name in names)
    assert jobs == ["0", "1", "2", "3"]
    # named by the trial's number and sampled values (tests/test_trial_names.py), all distinct
    number = r"-?[0-9.]+(e-?[0-9]+)?"
    assert all(re.fullmatch(rf"\d+-lr={number}-wd={number}-bs=(64|128|256)", n) for n in names), names
    assert len({name.split("-", 1)[1] for name in names}) == 4
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    assert [s["status"] for s in summaries] == ["completed"] * 4
    # the report reads the search back (tests/test_search_report.py): the study's best trial, by
    # its number, and the picture of the best so far
    md = (sweep / "summary.md").read_text()
    best = study.best_trial
    assert "## Search (Optuna)\n\n4 trials (4 completed) of TPESampler, maximizing best_val_acc" in md
    assert f"**Best trial {best.number} ({best.number}-lr=" in md
    assert f"best_val_acc {100 * best.value:.2f}%" in md and (sweep / "plots" / "search.png").exists()


def test_jobs_take_gpus_round_robin(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [resolve_device("auto", n) for n in range(4)] == [torch.device("cuda", i) for i in (0, 1, 0, 1)]
    assert resolve_device("cuda:1", 0) == torch.device("cuda", 1)


TINY = [*SMOKE, "data.train_size=128", "data.val_size=64", "data.test_size=64"]
PLOT_FILES = ("val_acc.png", "val_loss.png", "train_acc.png", "train_loss.png", "lr.png",
              "best_val_acc.png", "epochs.png", "test_acc.png")


def test_report_of_a_real_grid_over_two_seeds(tmp_path):
    from PIL import Image

    sweep = tmp_path / "grid"
    proc = run_train("-m", *TINY, "model=resnet18,preact", "seed=0,1", f"hydra.sweep.dir={sweep}",
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (sweep / "summary.md").read_text()
    for section in ("## Pick", "## Grid: test accuracy (%)", "## Effects", "## Plots",
                    "## Provenance", "## All jobs", "## Per configuration, over seeds"):
        assert section in md, section
    assert "4 jobs: 4 completed." in md and "(mean +- std over 2 seeds)" in md
    (sentence,) = [line for line in md.splitlines() if line.startswith("- model: ")]
    assert "of 2 pairs" in sentence and "95% interval [" in sentence  # two seeds: an interval
    effects = list(csv.DictReader(open(sweep / "effects.csv")))
    assert [(r["factor"], r["level"], r["vs"]) for r in effects] == [
        ("model", "resnet18", ""), ("model", "preact", "resnet18")]
    assert (effects[1]["n_pairs"], effects[1]["n_seeds"]) == ("2", "2")
    assert effects[1]["diff_test_acc_low"] and effects[1]["n_jobs"] == "2"
    assert "![grid](plots/grid.png)" in md and "![effects](plots/effects.png)" in md
    for png in (*PLOT_FILES, "grid.png", "effects.png"):
        assert f"](plots/{png})" in md, png
        with Image.open(sweep / "plots" / png) as img:
            assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 150, png
    provenance = md.split("## Provenance")[1].split("## All jobs")[0]
    assert "Every completed job:" in provenance and "differs" not in provenance  # stated once
    summary = json.loads(next(sweep.glob("0-*/summary.json")).read_text())
    assert f"- code.commit: `{summary['provenance']['code']['commit']}`" in provenance
    assert "- data.source: `generated`" in provenance and "- versions.torch: `" in provenance
    assert "model=resnet18,preact" in summary["provenance"]["command"]


def test_provenance_in_summary_and_resume_with_changed_code_warns(tmp_path, caplog):
    run = tmp_path / "run"
    args = [*TINY, "trainer.keep_checkpoint=true"]
    run_here(args, run)
    first = json.loads((run / "summary.json").read_text())
    prov = first["provenance"]
    assert set(prov) == {"code", "versions", "device_name", "data", "command"}
    assert set(prov["versions"]) == {"python", "torch", "torchvision", "timm", "hydra-core", "cuda", "cudnn"}
    assert prov["versions"]["torch"] == importlib.metadata.version("torch")
    assert len(prov["code"]["commit"]) == 40 and isinstance(prov["code"]["dirty"], bool)
    assert prov["device_name"].startswith("cpu") and first["code_changed_on_resume"] is None
    # the job was killed after its epoch by other code: another commit in its checkpoint
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    payload["code"] = {"commit": "0" * 40, "dirty": False, "diff_sha256": None}
    torch.save(payload, run / "checkpoint.pt")
    write_json(run / "summary.json", {**first, "status": "running"})
    run_here(args, run)
    assert "RESUMING WITH DIFFERENT CODE" in caplog.text and "0" * 40 in caplog.text
    resumed = json.loads((run / "summary.json").read_text())
    assert resumed["resumed_from_epoch"] == 1
    assert resumed["code_changed_on_resume"]["checkpoint"]["commit"] == "0" * 40
    assert resumed["code_changed_on_resume"]["now"] == prov["code"]
    report.write_tables([run], tmp_path / "report")
    assert "**Resumed with different code**" in (tmp_path / "report" / "summary.md").read_text()


def test_provenance_goes_to_tensorboard_and_wandb(tmp_path, monkeypatch):
    import wandb
    from omegaconf import OmegaConf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from experiments.report.tracking import Tracker

    seen = {}
    monkeypatch.setattr(wandb, "init", lambda **kw: seen.update(kw) or None)
    cfg = OmegaConf.create({"tensorboard": {"enabled": True}, "wandb": {
        "enabled": True, "project": "p", "entity": None, "group": None, "tags": [],
        "mode": "offline", "system_stats": False}})
    prov = {"code": {"commit": "c0ffee", "dirty": False, "diff_sha256": None}}
    with Tracker(tmp_path, run_name="r", group=None, config={"seed": 0}, provenance=prov,
                 tensorboard=cfg.tensorboard, wandb=cfg.wandb):
        pass
    assert seen["config"] == {"seed": 0, "provenance": prov}
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    (event,) = acc.Tensors("provenance/text_summary")
    assert "c0ffee" in event.tensor_proto.string_val[0].decode()


def test_data_provenance_identifies_the_cache_without_reading_it(tmp_path, compose_cfg):
    from experiments.data import make_source
    from experiments.report.provenance import data_source

    url = "https://example.org/cifar-10-python.tar.gz"
    cfg = compose_cfg(["data=cifar10", f"data.root={tmp_path}", f"data.url={url}"]).data
    source = make_source(cfg)
    assert data_source(cfg, source, ["airplane", "automobile"]) == {
        "name": "cifar10", "source": url, "classes": ["airplane", "automobile"], "cache": None,
        "cache_id": None}
    cache = tmp_path / "cifar10.uint8.pt"  # where experiments.data.cifar decodes CIFAR-10 to
    cache.write_bytes(b"x" * 10)
    first = data_source(cfg, source)
    assert first["cache"] == str(cache.resolve()) and len(first["cache_id"]) == 16
    assert data_source(cfg, source) == first
    os.utime(cache, ns=(0, cache.stat().st_mtime_ns + 10**9))  # rewritten: same size, new mtime
    assert data_source(cfg, source)["cache_id"] != first["cache_id"]
    synthetic = compose_cfg(["data=synthetic"]).data
    assert data_source(synthetic, make_source(synthetic)) == {
        "name": "synthetic", "source": "generated", "classes": None, "cache": None, "cache_id": None}
