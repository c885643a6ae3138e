"""Every model option runs under every preset at smoke size, and with optim=muon: composed as
`python train.py` does, wired by train.py's own functions (data, loaders, model, optimizer,
schedule, mixing, EMA, SAM), one optimizer step, then validation (schedule included) and the
test pass (TTA included).

Options are read from conf/, so a new model or preset is in the grid without editing this file.
"""

import pytest
import torch

from conftest import CONF
from experiments.config.checks import check_config
from experiments.data import load_splits
from support.batches import PreMadeBatches
from experiments.job import build_loaders, build_model, build_trainer

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
CPU = torch.device("cpu")
TINY = ["data.train_size=96", "data.val_size=32", "data.test_size=32"]  # one step needs one batch


def test_the_grid_covers_every_documented_option():
    assert {"resnet18", "preact", "timm", "mlp", "lenet"} <= set(MODELS)
    assert {"smoke", "best", "seed_report"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("model", MODELS)
def test_model_runs_under_preset_at_smoke_size(compose_cfg, model, preset):
    cfg = compose_cfg([f"experiment={preset}", "size=smoke", f"model={model}", *TINY])
    smoke = compose_cfg(["size=smoke"])
    assert (cfg.data.name, cfg.trainer.epochs) == (smoke.data.name, smoke.trainer.epochs)  # smoke size won
    step_once(cfg)


@pytest.mark.parametrize("model", MODELS)
def test_muon_steps_every_model(compose_cfg, model):
    """optim=muon with every model option: Muon for the hidden matrices, AdamW for the rest."""
    trainer = step_once(compose_cfg(["experiment=smoke", "optim=muon", f"model={model}", *TINY]))
    sides = {g["use_muon"] for g in trainer.optimizer.param_groups}
    assert sides == {True, False}


def step_once(cfg):
    """Build the job's parts as train.py does, take one optimizer step, validate and test."""
    options = check_config(cfg)
    splits = load_splits(cfg.data)
    train_batches, val_batches, test_batches = build_loaders(cfg, options, splits, CPU, channels_last=False)
    model_ = build_model(cfg, CPU, channels_last=False)
    trainer = build_trainer(cfg, options, model_, CPU, len(splits.train))
    before = [p.detach().clone() for p in model_.parameters()]

    one_batch = PreMadeBatches([next(iter(train_batches))])
    metrics = trainer.run_epoch(one_batch, val_batches)  # one step, validation, schedule
    test = trainer.evaluate(test_batches, tta_flip=cfg.trainer.tta == "flip")

    assert trainer.steps == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model_.parameters()))
    assert torch.isfinite(torch.tensor([metrics["train/loss"], metrics["val/loss"], test["loss"]])).all()
    assert 0 <= test["acc"] <= 1
    assert model_(one_batch[0][0][:2]).shape == (2, cfg.data.num_classes)
    return trainer
