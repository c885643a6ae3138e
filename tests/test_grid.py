"""Every model option runs under every preset at smoke size, and with optim=muon: composed as
`python train.py` does, wired by train.py's own functions (data, loaders, model, optimizer,
schedule, mixing, EMA, SAM), one optimizer step, then validation (schedule included) and the
test pass (TTA included).

Options are read from conf/, so a new model or preset is in the grid without editing this file.
"""

import pytest
import timm
import torch

from conftest import CONF
from experiments.config.checks import check_config
from experiments.data import load_splits
from experiments.errors import ConfigError
from experiments.job import build_loaders, build_model, build_trainer
from experiments.training.batch_schedule import BatchSchedule
from support.batches import PreMadeBatches

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
CPU = torch.device("cpu")
TINY = ["data.train_size=96", "data.val_size=32", "data.test_size=32"]  # one step needs one batch


def test_the_grid_covers_every_documented_option():
    assert {"resnet18", "preact", "timm", "mlp", "lenet"} <= set(MODELS)
    assert {"smoke", "best", "seed_report"} <= set(PRESETS)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random weights of timm's 0.5M-parameter test model stand in for pretrained ones."""
    path = tmp_path_factory.mktemp("weights") / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), path)
    return path


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("model", MODELS)
def test_model_runs_under_preset_at_smoke_size(compose_cfg, model, preset, weights):
    """experiment=finetune fine-tunes a pretrained timm model: with model=timm it runs from a
    weights file; a model without pretrained weights is refused with a message."""
    pretrained = ["model.name=test_resnet", f"model.pretrained_file={weights}", "model.image_size=48"]
    extra = pretrained if preset == "finetune" and model == "timm" else []
    cfg = compose_cfg([f"experiment={preset}", "size=smoke", f"model={model}", *TINY, *extra])
    smoke = compose_cfg(["size=smoke"])
    assert (cfg.data.name, cfg.trainer.epochs) == (smoke.data.name, smoke.trainer.epochs)  # smoke size won
    if preset == "finetune" and model != "timm":
        with pytest.raises(ConfigError, match="trains from scratch: only model=timm loads pretrained"):
            check_config(cfg)
        return
    trainer = step_once(cfg)
    if preset == "finetune":  # the new head learns 10x faster than the pretrained backbone
        assert sorted({g["lr"] for g in trainer.optimizer.param_groups}) == pytest.approx(
            [0.1 * cfg.optim.lr, cfg.optim.lr])


SCRATCH_PRESETS = [p for p in PRESETS if p != "finetune"]


@pytest.mark.parametrize("preset", SCRATCH_PRESETS)
@pytest.mark.parametrize("option", ["aug=rrc", "optim=muon", "aug=rrc data.image_size=64"])
def test_new_options_run_under_every_preset(compose_cfg, option, preset):
    """aug=rrc and optim=muon combined with each preset's recipe (mixing, EMA, TTA, plateau,
    clipping...), built and stepped at smoke size."""
    step_once(compose_cfg([f"experiment={preset}", "size=smoke", *option.split(), *TINY]))


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
    model_, model_input = build_model(cfg, CPU, channels_last=False)
    train_batches, val_batches, test_batches = build_loaders(cfg, options, splits, model_input, CPU,
                                                             channels_last=False)
    trainer = build_trainer(cfg, options, model_, CPU, len(splits.train), BatchSchedule(options))
    before = [p.detach().clone() for p in model_.parameters()]

    one_batch = PreMadeBatches([next(iter(train_batches))])
    metrics = trainer.run_epoch(one_batch, val_batches)  # one step, validation, schedule
    test = trainer.evaluate(test_batches, tta=cfg.trainer.tta)

    assert trainer.steps_taken == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model_.parameters()))
    assert torch.isfinite(torch.tensor([metrics["train/loss"], metrics["val/loss"], test["loss"]])).all()
    assert model_(one_batch[0][0][:2]).shape == (2, cfg.data.num_classes)
    return trainer
