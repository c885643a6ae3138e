"""Bad input, tried as a new user would: one clear message, a non-zero exit, no traceback; and
checks that are errors, not `assert`s (`python -O` drops those)."""

import functools
import os
import re
import subprocess
import sys

import pytest
import torch
from hydra.errors import ConfigCompositionException

from conftest import ROOT
from experiments.config.checks import check_config
from experiments.data import load_splits
from experiments.errors import ConfigError
from experiments.training.batch_schedule import BatchSchedule
from experiments.training.checkpoint import CheckpointError, load_checkpoint
from experiments.training.sam import SAM
from experiments.training.selection import Monitor
from support.jobs import run_here

BASE = ["experiment=smoke", "logger=none", "trainer.epochs=1", "trainer.progress=false"]
# name: (python flags, overrides, what the message must say); the smoke training set has 768 images
CASES = {
    "unknown timm model": ([], ["model=timm", "model.name=nosuchnet"],
                           ["model.name='nosuchnet': timm has no such model",
                            "python -c \"import timm; print(timm.list_models('*resnet*'))\""]),
    "missing image folder": ([], ["data=folder", "data.root={tmp}/nothere"],
                             ["nothere/train does not exist: data=folder needs data.root=PATH"]),
    "image folder not given": ([], ["data=folder"], ["data.root is required"]),
    "erasing probability above 1": ([], ["aug.erase_p=1.5"],
                                    ["aug.erase_p must be a probability in [0, 1], got 1.5"]),
    "... also under python -O": (["-O"], ["aug.erase_p=1.5"], ["aug.erase_p must be a probability"]),
    "zero width": ([], ["model.width=0"], ["model.width must be a positive integer"]),
    "pretrained weights neither cached nor downloadable": (
        [], ["model=timm", "model.name=test_resnet", "model.pretrained=true", "model.image_size=32"],
        ["model.pretrained=true: no weights for timm's test_resnet in the local cache",
         "model.pretrained_file=PATH (a state dict or a timm checkpoint)"]),
    "padding crop on large images": (
        [], ["data.image_size=128"],
        ["aug.crop_padding=4 pads and crops 128 px images", "Use aug=rrc"]),
    "random resized crops of digits": (
        [], ["data=mnist", "aug=rrc", "aug.flip=false"],
        ["aug=rrc crops as little as aug.rrc_scale[0] of a data=mnist digit"]),
    "an empty node for an option that is off": (
        [], ["trainer.lookahead={{}}"],  # (the overrides are formatted: {tmp})
        ["trainer.lookahead={} sets no key of trainer.lookahead, so it changes nothing: switch it on "
         "with trainer.lookahead.every=N"]),
    "batch larger than the training set": (
        [], ["trainer.batch_size=1024"],
        ["trainer.batch_size=1024 is larger than the training set (768 images after holding out "
         "data.val_size=256 for validation): use trainer.batch_size <= 768"]),
}


# cases that need a new interpreter: a flag (-O drops `assert`s), or an environment read at
# import (Hugging Face's offline switch and cache); the others run in this process
IN_A_SUBPROCESS = ("... also under python -O", "pretrained weights neither cached nor downloadable")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """(exit code, console output) of each case that needs its own interpreter, started at once."""
    tmp = tmp_path_factory.mktemp("bad")
    # no network, and an empty Hugging Face cache: pretrained weights cannot be found
    env = {**os.environ, "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "hf"),
           "OMP_NUM_THREADS": "1"}  # side by side on 2 cores: one thread each
    procs = {}
    for i, name in enumerate(IN_A_SUBPROCESS):
        flags, overrides, _ = CASES[name]
        out = open(tmp / f"{i}.txt", "w+")
        procs[name] = (out, subprocess.Popen(
            [sys.executable, *flags, str(ROOT / "train.py"), *BASE, *overrides,
             f"hydra.run.dir={tmp / str(i)}"], cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT))
    results = {}
    for name, (out, proc) in procs.items():
        code = proc.wait(timeout=300)
        out.seek(0)
        results[name] = code, out.read()
    return results


@pytest.mark.parametrize("name", IN_A_SUBPROCESS)
def test_bad_input_gives_one_message_and_exit_code_2(outcomes, name):
    code, text = outcomes[name]
    assert code == 2, text[-3000:]
    assert "Traceback" not in text and "InstantiationException" not in text, text[-3000:]
    for message in CASES[name][2]:
        assert message in text, text[-3000:]


@pytest.mark.parametrize("name", [n for n in CASES if n not in IN_A_SUBPROCESS])
def test_bad_input_stops_the_job_with_one_message(tmp_path, caplog, name):
    """The task function, in this process: exit code 2, the message, no traceback logged."""
    _, overrides, messages = CASES[name]
    with pytest.raises(SystemExit) as exited:
        run_here([*BASE, *(o.format(tmp=tmp_path) for o in overrides)], tmp_path / "run")
    assert exited.value.code == 2
    for message in messages:
        assert message in caplog.text, caplog.text[-3000:]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


@pytest.mark.parametrize("overrides,message", [
    (["sched=step", "sched.step_size=0"], "sched.step_size must be a positive integer"),
    (["sched=onecycle", "sched.pct_start=1.5"], "sched.pct_start must be a fraction in (0, 1)"),
    (["sched=plateau", "sched.factor=2"], "sched.factor must be a factor in (0, 1)"),
    (["sched.warmup_epochs=-1"], "sched.warmup_epochs must be a number of epochs >= 0"),
    (["optim.momentum=-0.9"], "optim.momentum must be a number in [0, 1)"),
    (["optim=muon", "optim.momentum=1.0"], "optim.momentum must be a number in [0, 1)"),
    (["optim=muon", "optim.ns_steps=0"], "optim.ns_steps must be a positive integer"),
    (["optim=muon", "optim.adamw_lr=0"], "optim.adamw_lr must be a number > 0"),
    (["optim=muon", "optim.adamw_betas=[0.9,1.0]"], "optim.adamw_betas must be two numbers in [0, 1)"),
    (["optim=muon", "optim.adamw_eps=-1e-8"], "optim.adamw_eps must be a number > 0"),
    (["optim.weight_decay=-1"], "optim.weight_decay must be a number >= 0"),
    (["optim=sam", "optim.rho=0"], "optim.rho must be a number > 0"),
    (["trainer.label_smoothing=1.5"], "trainer.label_smoothing must be a number in [0, 1)"),
    (["trainer.ema_decay=1.5"], "trainer.ema_decay must be null or a decay in (0, 1)"),
    (["trainer.early_stopping.patience=-1"], "trainer.early_stopping.patience must be null"),
    (["trainer.channels_last=maybe"], "trainer.channels_last must be auto, true or false"),
    (["trainer.monitor=train/acc"], "trainer.monitor must be one of ['val/acc', 'val/loss']"),
    (["loader=dataloader", "loader.workers=-1"], "loader.workers must be auto or a number"),
    (["data.image_size=0"], "data.image_size must be a positive integer"),
    (["param_groups.backbone_lr_scale=0"], "param_groups.backbone_lr_scale must be a fraction"),
    (["param_groups.layer_decay=1.5"], "param_groups.layer_decay must be a factor in (0, 1]"),
    (["mix=mixup", "mix.mixup_alpha=0"], "mixing needs mix.mixup_alpha > 0 or mix.cutmix_alpha > 0"),
    (["mix=mixup", "mix.prob=2"], "mix.prob must be a probability in [0, 1]"),
])
def test_out_of_range_values_are_refused_before_training(compose_cfg, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_config(compose_cfg(["experiment=smoke", *overrides]))


def test_every_scheduled_batch_must_fit_in_the_training_set(compose_cfg):
    cfg = compose_cfg(["experiment=smoke", "trainer.batch_schedule={epochs:[2],sizes:[1024]}"])
    plan = BatchSchedule(check_config(cfg))
    plan.check_fits(1024, 256)
    with pytest.raises(ConfigError, match=r"trainer.batch_schedule.sizes\[0\]=1024 is larger than "
                                          r"the training set \(768 images"):
        plan.check_fits(768, 256)


def test_unknown_dataset_names_are_config_errors(compose_cfg):
    cfg = compose_cfg(["experiment=smoke", "data.name=imagenet"])
    with pytest.raises(ConfigError, match="data.name='imagenet' is not a dataset here"):
        load_splits(cfg.data)


@pytest.mark.parametrize("override,message", [
    ("trainer.epochs=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
    ("trainer.grad_clip=x", "Value 'x' of type 'str' could not be converted to Float"),
    ("trainer.no_such_key=1", "Could not override 'trainer.no_such_key'"),
    ("trainer.batch_schedule={epochs:[2],sizes:[64],scale:true}", "Key 'scale' not in 'BatchScheduleOptions'"),
    ("loader=no_such_loader", "Could not find 'loader/no_such_loader'"),
])
def test_hydra_refuses_a_wrong_type_or_an_unknown_key_while_composing(compose_cfg, override, message):
    """The trainer group is typed by its schema (training/options.py): Hydra's own message."""
    with pytest.raises(ConfigCompositionException) as raised:
        compose_cfg(["experiment=smoke", override])
    text = f"{raised.value} {raised.value.__cause__}"
    assert message in text, text


def test_a_checkpoint_of_another_format_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": 99}, path)
    with pytest.raises(CheckpointError, match=r"has format 99, this code reads formats \(1, 2, 3\)"):
        load_checkpoint(path, {})


def test_control_flow_checks_are_errors_not_asserts():
    with pytest.raises(ConfigError, match="train/acc cannot be monitored"):
        Monitor("train/acc")
    sam = SAM([torch.nn.Parameter(torch.zeros(1))], functools.partial(torch.optim.SGD, lr=0.1))
    with pytest.raises(TypeError, match="SAM.step takes no closure"):
        sam.step(lambda: 0.0)
