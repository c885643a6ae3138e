"""Reading sweeps back: failures in the table, seed aggregation, partial sweeps, Optuna, launchers."""

import csv
import json
import os
import statistics

import pytest
import torch
import yaml

from conftest import run_train
from experiments import report, summarize
from experiments.summary import write_json
from experiments.trainer import resolve_device

SMOKE = ["experiment=smoke", "logger=none", "trainer.epochs=1"]


def fake_job(sweep, name, overrides, **summary):
    """A job directory as train.py leaves it, without training."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    write_json(job / "summary.json", {"status": "completed", "choices": {"model": "preact"}, **summary})
    return job


def test_a_sweep_with_a_failed_job_still_gets_its_table(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_train("-m", *SMOKE, "optim.lr=0.05,-1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode != 0  # a failed job makes the sweep fail ...
    rows = {r["optim.lr"]: r for r in csv.DictReader(open(sweep / "summary.csv"))}
    assert rows["0.05"]["status"] == "completed" and rows["-1"]["status"] == "failed"
    assert "optim.lr must be a number > 0" in rows["-1"]["error"]
    md = (sweep / "summary.md").read_text()
    assert "## Failed jobs" in md and "optim.lr must be a number > 0" in md
    assert "| failed |" in proc.stdout and "| completed |" in proc.stdout  # ... and prints the table


def test_seed_aggregation_math(tmp_path):
    sweep = tmp_path / "s"
    accs = {("sgd", 0): 0.70, ("sgd", 1): 0.72, ("sgd", 2): 0.74, ("adamw", 0): 0.60, ("adamw", 1): 0.66}
    for i, ((optim, seed), acc) in enumerate(accs.items()):
        fake_job(sweep, f"{i}-preact-{optim}-basic-seed={seed}", [f"optim={optim}", f"seed={seed}"],
                 test_acc=acc, best_val_acc=acc + 0.01, train_time_s=10.0 + seed)
    table, agg = report.write_tables([sweep], sweep)
    by_optim = {a["optim"]: a for a in agg}
    assert by_optim["sgd"]["n"] == 3 and by_optim["adamw"]["n"] == 2
    assert by_optim["sgd"]["test_acc_mean"] == pytest.approx(0.72)
    assert by_optim["sgd"]["test_acc_std"] == pytest.approx(statistics.stdev([0.70, 0.72, 0.74]))
    assert by_optim["adamw"]["test_acc_std"] == pytest.approx(statistics.stdev([0.60, 0.66]))
    assert by_optim["sgd"]["seeds"] == "0 1 2"
    assert [a["optim"] for a in agg] == ["sgd", "adamw"]
    assert (sweep / "summary_by_config.csv").exists()
    assert "72.00 +- 2.00" in (sweep / "summary.md").read_text()


def test_partial_sweeps_show_running_and_interrupted_jobs(tmp_path):
    sweep = tmp_path / "s"
    fake_job(sweep, "0-preact-sgd-basic", ["optim=sgd"], test_acc=0.5, best_val_acc=0.5)
    import socket

    live = fake_job(sweep, "1-preact-sgd-basic", ["optim=sgd"], status="running",
                    pid=os.getpid(), host=socket.gethostname())
    (live / "metrics.csv").write_text("epoch,val/acc\n1,0.25\n2,0.375\n")
    fake_job(sweep, "2-preact-sgd-basic", ["optim=sgd"], status="running", pid=2**22 + 12345,
             host=socket.gethostname())
    table, _ = report.write_tables([sweep], sweep)
    status = {r["job"]: r for r in table}
    assert status["1-preact-sgd-basic"]["status"] == "running"
    assert status["1-preact-sgd-basic"]["epochs_completed"] == 2
    assert status["1-preact-sgd-basic"]["best_val_acc"] == 0.375
    assert status["2-preact-sgd-basic"]["status"] == "interrupted"


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


def test_three_trial_optuna_search(tmp_path):
    sweep = tmp_path / "optuna"
    proc = run_train("hparams_search=optuna", *SMOKE, "hydra.sweeper.n_trials=3",
                     f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"optim.lr", "optim.weight_decay", "trainer.batch_size"}
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows)
    lrs = {float(r["optim.lr"]) for r in rows}
    assert len(lrs) == 3 and all(0.01 <= lr <= 0.5 for lr in lrs)
    best_val = max(float(r["best_val_acc"]) for r in rows)
    assert results["best_value"] == pytest.approx(best_val)  # Optuna saw the validation metric


def test_optuna_study_in_sqlite_continues(tmp_path):
    db = f"sqlite:///{tmp_path / 'study.db'}"
    for i in (1, 2):
        proc = run_train("hparams_search=optuna", *SMOKE, "hydra.sweeper.n_trials=2",
                         f"hydra.sweeper.storage={db}", f"hydra.sweep.dir={tmp_path / f's{i}'}",
                         cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
    import optuna

    study = optuna.load_study(study_name="resnet18-sgd", storage=db)
    assert len(study.trials) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)


def test_submitit_local_runs_two_jobs(tmp_path):
    sweep = tmp_path / "submitit"
    proc = run_train("-m", "hydra/launcher=submitit_local", *SMOKE, "model=resnet18,preact",
                     f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    assert sorted(s["choices"]["model"] for s in summaries) == ["preact", "resnet18"]
    assert all(s["status"] == "completed" for s in summaries)
    assert len(list(csv.DictReader(open(sweep / "summary.csv")))) == 2


def test_jobs_take_gpus_round_robin(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [resolve_device("auto", n) for n in range(4)] == [torch.device("cuda", i) for i in (0, 1, 0, 1)]
    assert resolve_device("cuda:1", 0) == torch.device("cuda", 1)
