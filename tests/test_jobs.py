"""`python train.py` as users run it: a smoke job's outputs, and clear failures on bad input."""

import csv
import json
import re

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_train
from experiments.report.job_summary import COMPLETED, LOGGED_RESULTS, keys_for
from experiments.training.metrics import EPOCH, EPOCH_METRICS
from support.jobs import run_here

TAGS = {"train/loss", "train/acc", "val/loss", "val/acc", "train/lr"}


@pytest.fixture(scope="module")
def smoke_job(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "run"
    proc = run_train("experiment=smoke", f"hydra.run.dir={out}", cwd=out.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_smoke_job_writes_a_completed_summary(smoke_job):
    out, _ = smoke_job
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["error"] is None
    assert summary["test_acc"] >= 0.3 and summary["best_val_acc"] >= 0.3  # 3x chance: it learns
    assert summary["epochs_completed"] == 3 and summary["early_stopped"] is False
    assert summary["train_time_s"] > 0 and summary["images_per_s"] > 0
    assert summary["choices"].items() >= {"model": "resnet18", "optim": "sgd", "aug": "basic",
                                          "sched": "cosine", "data": "synthetic"}.items()


def test_smoke_job_tensorboard_events_have_every_tag_and_hparams_in_one_run(smoke_job):
    out, _ = smoke_job
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert TAGS <= scalars
    assert [e.step for e in acc.Scalars("val/acc")] == [1, 2, 3]
    assert "hparam/test_acc" in scalars
    assert "_hparams_/session_start_info" in acc.summary_metadata  # hparams plugin, same dir
    assert not [p for p in (out / "tb").iterdir() if p.is_dir()]  # no second run directory


def test_smoke_job_has_one_offline_wandb_run_and_per_epoch_metrics(smoke_job):
    out, _ = smoke_job
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    record = next(runs[0].glob("*.wandb")).read_bytes()
    assert b"val/acc" in record and b"test_acc" in record
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and TAGS <= set(rows[0])
    assert (out / ".hydra" / "config.yaml").exists() and (out / "train.log").exists()
    assert "epoch 3/3" in (out / "train.log").read_text()


def test_smoke_job_writes_the_defined_summary_keys_and_metric_names(smoke_job):
    out, _ = smoke_job
    summary = json.loads((out / "summary.json").read_text())
    assert tuple(summary) == keys_for(COMPLETED)
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert header.split(",") == [EPOCH, *EPOCH_METRICS]
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    logged = {f"hparam/{k}" for k in LOGGED_RESULTS if summary[k] is not None}
    assert set(acc.Tags()["scalars"]) == set(EPOCH_METRICS) | logged


def test_without_a_terminal_the_console_has_one_short_line_per_epoch_and_no_bar(smoke_job):
    """A pipe (a log file, Slurm's output): no carriage-return bar; each epoch one short line,
    every metric by its full name in train.log only (the bar on a terminal: test_console.py)."""
    out, proc = smoke_job
    console = proc.stdout + proc.stderr
    assert "\r" not in console
    for epoch in (1, 2, 3):
        assert re.search(rf"epoch {epoch}/3  loss \d+\.\d{{3}}  acc \d+\.\d%  val \d+\.\d%  lr \S+  \d+\.\d s\n",
                         console), console[-2000:]
    log = (out / "train.log").read_text()
    assert "train/loss=" not in console and log.count("train/loss=") == 3
    assert "  acc " not in log  # the console's line is the console's


@pytest.mark.parametrize("overrides,message", [
    (["model=resnet50x"], "Available options"),
    (["trainer.epochs=abc"], "could not be converted to Integer"),  # Hydra, from the schema
    (["trainer.epochs=1", "trainer.nope=1"], "Could not override 'trainer.nope'"),
])
def test_composition_errors_are_hydras_one_message(tmp_path, overrides, message):
    """Hydra refuses these while composing, before any job directory exists."""
    out = tmp_path / "run"
    proc = run_train("experiment=smoke", f"hydra.run.dir={out}", *overrides, cwd=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize("overrides,message", [
    (["trainer.epochs=-1"], "trainer.epochs must be a positive integer"),
    (["optim.lr=-0.1"], "optim.lr must be a number > 0"),
    (["trainer.batch_size=0"], "trainer.batch_size must be a positive integer"),
    (["sched=plateau", "data.val_size=0"], "needs a validation split"),
])
def test_bad_values_fail_the_job_with_a_clear_message(tmp_path, caplog, overrides, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exited:
        run_here(["experiment=smoke", "logger=none", *overrides], out)
    assert exited.value.code == 2 and message in caplog.text
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


def test_missing_data_without_network_fails_clearly(tmp_path, caplog):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exited:
        run_here(["logger=none", f"data.root={tmp_path / 'data'}",
                  "data.url=http://127.0.0.1:9/cifar-100-python.tar.gz"], out)
    assert exited.value.code == 2
    assert "cifar-100-python.tar.gz is missing" in caplog.text and "experiment=smoke" in caplog.text
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


def test_corrupt_archive_and_corrupt_cache_fail_clearly(tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    (data / "cifar-100-python.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(SystemExit) as exited:
        run_here(["logger=none", f"data.root={data}", "data.md5=null"], tmp_path / "a")
    assert exited.value.code == 2 and "is not a readable CIFAR archive" in caplog.text
    (data / "cifar-100-python.tar.gz").unlink()
    (data / "cifar100.uint8.pt").write_bytes(b"corrupt")
    with pytest.raises(SystemExit) as exited:
        run_here(["logger=none", f"data.root={data}",
                  "data.url=http://127.0.0.1:9/cifar-100-python.tar.gz"], tmp_path / "b")
    assert exited.value.code == 2 and "cifar100.uint8.pt is corrupt or stale" in caplog.text
    assert not [r for r in caplog.records if r.exc_info]
