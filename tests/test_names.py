"""Each fact once: the metric names (experiments.training.metrics) are the ones the trainer logs
and the config checks accept; summary.json's keys are JobSummary's; the `logger` group builds
the tracker through its `_target_`."""

import functools
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from hydra.utils import instantiate

from experiments.batches.device import DeviceLoader, Normalize
from experiments.config.checks import check_config
from experiments.data import Split
from experiments.errors import ConfigError
from experiments.report import job_summary
from experiments.report.job_summary import (
    COMPLETED,
    FAILED,
    KEYS,
    RUNNING,
    JobSummary,
    completed_summary,
    failed_summary,
    keys_for,
    running_summary,
)
from experiments.report.tracking import Tracker
from experiments.training.metrics import EPOCH, EPOCH_METRICS, METRIC_MODES, VAL_METRICS, VAL_PREFIX
from experiments.training.options import TrainerOptions
from experiments.training.schedules import constant
from experiments.training.trainer import FitState, Trainer


def tiny_batches(n: int, seed: int) -> DeviceLoader:
    gen = torch.Generator().manual_seed(seed)
    split = Split(torch.randint(0, 256, (n, 3, 8, 8), generator=gen, dtype=torch.uint8),
                  torch.randint(0, 2, (n,), generator=gen))
    return DeviceLoader(split, 8, Normalize([0.5] * 3, [0.25] * 3, "cpu"), device="cpu")


def test_the_trainer_logs_exactly_the_named_metrics_in_their_order():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model, opt, constant(opt, epochs=1, steps=lambda e: round(2 * e)),
                      TrainerOptions(epochs=1, progress=False), device=torch.device("cpu"))
    logged = []
    fit = trainer.fit(tiny_batches(16, 0), tiny_batches(8, 1),
                      after_epoch=lambda state, metrics: logged.append(metrics))
    assert list(logged[0]) == list(EPOCH_METRICS)  # metrics.csv's, TensorBoard's, W&B's keys
    assert list(fit.history[0]) == [EPOCH, *EPOCH_METRICS]  # what a checkpoint carries
    # summary.json's best_val_* read the chosen epoch's validation metrics without the prefix
    assert {VAL_PREFIX + name for name in fit.best_val} == set(VAL_METRICS)


@pytest.mark.parametrize("metric", VAL_METRICS)
def test_selection_stopping_and_plateau_follow_the_direction_of_their_metric(compose_cfg, metric):
    """The direction (max for accuracy, min for loss) is the metric's (METRIC_MODES), never an
    option that could contradict it."""
    from experiments.training.schedules import plateau
    from experiments.training.selection import Monitor

    mode = METRIC_MODES[metric]
    check_config(compose_cfg([f"trainer.monitor={metric}", "sched=plateau", f"sched.monitor={metric}"]))
    assert Monitor(metric).mode == mode
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = plateau(opt, epochs=1, steps=len, monitor=metric, factor=0.5, patience=0,
                       threshold=0.0, min_lr=0.0)
    assert schedule.scheduler.mode == mode
    with pytest.raises(ConfigError, match="sched.mode is not a key of sched"):
        check_config(compose_cfg(["sched=plateau", "+sched.mode=max"]))


JOB = SimpleNamespace(name="0-resnet18-sgd-basic", choices={"model": "resnet18"},
                      overrides=["model=resnet18"], output_dir="/tmp/job")


def test_each_status_writes_its_keys_of_the_one_definition_in_order():
    assert KEYS == tuple(JobSummary.__dataclass_fields__)
    fit = FitState(epoch=2, best_epoch=1, best_val={"acc": 0.5, "loss": 1.0}, train_time_s=2.0,
                   train_images=100)
    test = {"acc": 0.4, "acc_final": 0.3, "tta_acc": None, "loss": 1.2}
    extra = {"device": "cpu", "precision": "fp32", "seed": 0, "fingerprint": "f", "compile": None,
             "resumed_from_epoch": None, "resume_note": None, "wandb_id": None,
             "provenance": None, "code_changed_on_resume": None}
    completed = completed_summary(JOB, fit, test, extra)
    assert tuple(completed) == keys_for(COMPLETED)
    assert (completed["test_acc"], completed["best_val_acc"]) == (0.4, 0.5)
    assert completed["images_per_s"] == 50.0
    assert tuple(running_summary(JOB)) == keys_for(RUNNING)
    assert tuple(failed_summary(JOB, "boom")) == keys_for(FAILED)
    assert {"pid", "host", "started_at"} & set(keys_for(COMPLETED)) == set()
    with pytest.raises(TypeError, match="test_accuracy"):  # a key that is not one
        completed_summary(JOB, fit, test, {**extra, "test_accuracy": 0.4})


def test_a_chosen_key_must_be_a_summary_key():
    assert set(job_summary.RESULT_COLUMNS + job_summary.LOGGED_RESULTS) <= set(KEYS)
    with pytest.raises(NameError, match="test_accuracy"):
        job_summary.chosen("test_acc", "test_accuracy")


@pytest.mark.parametrize("logger,tensorboard,wandb", [
    ("default", True, True), ("tensorboard", True, False), ("wandb", False, True),
    ("none", False, False)])
def test_every_logger_option_builds_the_tracker(compose_cfg, logger, tensorboard, wandb):
    cfg = compose_cfg([f"logger={logger}", "logger.wandb.project=mine"])
    make_tracker = instantiate(cfg.logger)
    assert isinstance(make_tracker, functools.partial) and make_tracker.func is Tracker
    options = make_tracker.keywords
    assert (options["tensorboard"]["enabled"], options["wandb"]["enabled"]) == (tensorboard, wandb)
    assert options["wandb"]["project"] == "mine"  # logger.* overrides arrive


def test_the_tracker_the_job_builds_writes_metrics_csv(compose_cfg, tmp_path):
    make_tracker = instantiate(compose_cfg(["logger=none"]).logger)
    with make_tracker(tmp_path, run_name="r", group=None, config={}) as tracker:
        tracker.log_epoch(1, dict.fromkeys(EPOCH_METRICS, 0.5))
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header.split(",") == [EPOCH, *EPOCH_METRICS]
    assert not (tmp_path / "tb").exists() and not (tmp_path / "wandb").exists()
