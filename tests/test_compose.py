"""Every combination of the config groups composes, instantiates and takes a training step."""

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from conftest import CONF, ROOT
from experiments.batches.augment import BatchAugment
from experiments.batches.device import Normalize

MODELS, AUGS, OPTIMS, SCHEDS = (sorted(p.stem for p in (CONF / g).glob("*.yaml"))
                                for g in ("model", "aug", "optim", "sched"))


def test_groups_hold_the_documented_options():
    assert set(MODELS) == {"resnet18", "preact", "timm", "mlp", "lenet", "speedrun", "airbench"}
    assert set(AUGS) == {"none", "basic", "advanced", "rrc", "speedrun", "airbench"}
    assert set(OPTIMS) == {"sgd", "adam", "adamw", "rmsprop", "sam", "muon", "speedrun", "airbench"}
    assert set(SCHEDS) == {"cosine", "plateau", "step", "onecycle", "linear", "speedrun", "none"}


SMALL = {"resnet18": ["model.width=8"], "preact": ["model.width=8"], "mlp": ["model.width=32"],
         "timm": ["model.name=mobilenetv3_small_050"], "lenet": [], "speedrun": ["model.width=8"],
         "airbench": ["model.width=8"]}  # CPU-sized versions


@pytest.fixture(scope="module")
def composed():
    """Each option of each group composed once (Hydra composes in ~0.1 s; 375 combinations
    would spend most of the suite there). The groups do not interact in composition, so a
    combination is the base config with those four composed nodes put in."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        base = compose(config_name="train", overrides=["data=synthetic"])
        nodes = {(group, option): compose(config_name="train", overrides=[
                     "data=synthetic", f"{group}={option}", *(SMALL[option] if group == "model" else [])])[group]
                 for group, options in (("model", MODELS), ("aug", AUGS), ("optim", OPTIMS), ("sched", SCHEDS))
                 for option in options}
    return base, nodes


def combine(composed, **choices):
    base, nodes = composed
    cfg = base.copy()
    with open_dict(cfg):
        for group, option in choices.items():
            cfg[group] = nodes[(group, option)]
    return cfg


def test_a_combination_equals_composing_it(composed, compose_cfg):
    choice = dict(model="preact", aug="advanced", optim="sam", sched="onecycle")
    direct = compose_cfg(["data=synthetic", *(f"{g}={o}" for g, o in choice.items()), *SMALL["preact"]])
    merged = combine(composed, **choice)
    for group in ("data", "model", "aug", "optim", "sched", "trainer", "mix"):
        assert OmegaConf.to_container(merged[group], resolve=True) == \
            OmegaConf.to_container(direct[group], resolve=True), group


DEFAULTS = dict(model="resnet18", aug="basic", optim="sgd", sched="cosine")
GROUP_OPTIONS = dict(model=MODELS, aug=AUGS, optim=OPTIMS, sched=SCHEDS)
# the options whose behaviour depends on another group's: Muon splits each model's parameters
# by shape, SAM freezes each model's BatchNorm statistics in its second pass and re-shares its
# base's groups with every schedule, and one-cycle and plateau read every optimizer's groups
INTERACTING = [dict(model=m, optim=o) for m in MODELS for o in ("muon", "sam")] + \
              [dict(optim=o, sched=s) for o in ("muon", "sam") for s in SCHEDS]


def cases() -> list[dict]:
    """Every option of every group once (with the others at their defaults), and the pairs
    above: what a full product (600 combinations) would check, as far as the groups interact."""
    single = [{**DEFAULTS, group: option} for group, options in GROUP_OPTIONS.items()
              for option in options]
    unique = {tuple(sorted(c.items())): c for c in single + [{**DEFAULTS, **p} for p in INTERACTING]}
    return list(unique.values())


@pytest.mark.parametrize("choice", cases(), ids=lambda c: "-".join(c.values()))
def test_combination_builds_and_steps(composed, choice):
    model, aug, optim, sched = (choice[g] for g in ("model", "aug", "optim", "sched"))
    cfg = combine(composed, model=model, aug=aug, optim=optim, sched=sched)
    net = instantiate(cfg.model)
    augment = instantiate(cfg.aug)
    assert isinstance(augment, BatchAugment)
    optimizer = instantiate(cfg.optim)(net.parameters())
    schedule = instantiate(cfg.sched)(optimizer, epochs=3, steps=lambda e: round(2 * e))

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    selected = augment.select(augment.store(images), torch.arange(4), gen)
    x = augment.erase(Normalize(cfg.data.mean, cfg.data.std, "cpu")(augment.rotate(selected.float(), gen)), gen)
    loss = torch.nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    schedule.step_batch()
    schedule.step_epoch({"val/acc": 0.5, "val/loss": 1.0})
    assert torch.isfinite(loss)
    assert net(x).shape == (4, cfg.data.num_classes)


def test_optimizer_fields_reach_torch(compose_cfg):
    cfg = compose_cfg(["optim=sgd", "optim.lr=0.05", "optim.momentum=0.5", "data=synthetic"])
    opt = instantiate(cfg.optim)([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.05, 0.5, True, 5e-4)
    adamw = instantiate(compose_cfg(["optim=adamw", "data=synthetic"]).optim)([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.05


def test_num_classes_come_from_the_data_config(compose_cfg):
    assert compose_cfg(["data=cifar10"]).model.num_classes == 10
    assert compose_cfg(["data=cifar100"]).model.num_classes == 100


def test_cifar_stem_and_imagenet_stem(compose_cfg):
    cifar = instantiate(compose_cfg(["model=resnet18"]).model)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, torch.nn.Identity)
    imagenet = instantiate(compose_cfg(["model=resnet18", "model.cifar_stem=false"]).model)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert not isinstance(imagenet.maxpool, torch.nn.Identity)


@pytest.mark.parametrize("model", ["resnet18", "preact"])
def test_width_narrows_every_stage_including_the_stem(compose_cfg, model):
    cfg = compose_cfg([f"model={model}", "model.width=8"])
    net = instantiate(cfg.model)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].out_channels == 8
    assert max(c.out_channels for c in convs) == 64  # 8, 16, 32, 64
    full = instantiate(compose_cfg([f"model={model}"]).model)
    assert 10e6 < sum(p.numel() for p in full.parameters()) < 12e6  # a real ResNet-18


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("model", MODELS)
def test_width_is_every_models_size_knob(compose_cfg, model):
    """`model.width` exists for every model (size=smoke sets it) and grows the model."""
    small, large = (instantiate(compose_cfg(["data=synthetic", f"model={model}", f"model.width={w}"]).model)
                    for w in (4, 8))
    assert n_params(small) < n_params(large)


def test_small_models_default_to_the_standard_ones(compose_cfg):
    def layers(net, kind, attr):
        return [getattr(m, attr) for m in net.modules() if isinstance(m, kind)]

    mlp = instantiate(compose_cfg(["model=mlp"]).model)
    assert layers(mlp, torch.nn.Linear, "out_features") == [512, 256, 100]
    lenet = instantiate(compose_cfg(["model=lenet"]).model)
    assert layers(lenet, torch.nn.Conv2d, "out_channels") == [6, 16]
    assert layers(lenet, torch.nn.Linear, "out_features") == [120, 84, 100]
    timm_net = instantiate(compose_cfg(["model=timm"]).model)  # width null: timm's own
    assert n_params(timm_net) == n_params(instantiate(compose_cfg(["model=resnet18"]).model))


def test_timm_width_needs_a_resnet_and_says_what_to_type():
    from experiments.errors import ConfigError
    from experiments.models import timm_model

    narrow = timm_model("resnet50", num_classes=10, width=8)
    assert narrow.layer1[0].conv1.out_channels == 8 and narrow.fc.in_features == 8 * 8 * 4
    with pytest.raises(ConfigError, match="model.width=null"):
        timm_model("mobilenetv3_small_050", num_classes=10, width=8)


def test_unknown_option_lists_the_valid_ones(compose_cfg):
    with pytest.raises(ConfigCompositionException, match="preact"):
        compose_cfg(["model=resnet50x"])


def test_smoke_experiment_is_the_default_job_at_smoke_size(compose_cfg):
    smoke = compose_cfg(["experiment=smoke"])
    assert OmegaConf.to_container(smoke) == OmegaConf.to_container(compose_cfg(["size=smoke"]))
    assert smoke.data.name == "synthetic" and smoke.trainer.epochs <= 3 and smoke.model.width < 64


def test_size_smoke_shrinks_a_preset_and_keeps_its_recipe(compose_cfg):
    best, small = compose_cfg(["experiment=best"]), compose_cfg(["experiment=best", "size=smoke"])
    assert (small.trainer.epochs, small.data.name, small.model.width) == (3, "synthetic", 8)
    for key in ("optim", "sched", "mix", "aug"):
        assert OmegaConf.to_container(small[key]) == OmegaConf.to_container(best[key]), key
    assert (small.trainer.ema_decay, small.trainer.tta) == (best.trainer.ema_decay, "flip")


# --- every trainer option by override ------------------------------------------------------

# trainer.<key>: a value other than its default, as typed on the command line, and what the job
# reads. Every leaf of the schema must be here (checked below): an option a user cannot set by
# an override is a bug (trainer.lookahead, null by default, took no override until 2026-12-07).
TRAINER_OVERRIDES = {
    "epochs": ("7", 7), "batch_size": ("64", 64), "eval_batch_size": ("256", 256),
    "grad_accum_steps": ("2", 2), "grad_clip": ("1.5", 1.5), "label_smoothing": ("0.1", 0.1),
    "ema_decay": ("0.999", 0.999), "tta": ("flip", "flip"),
    "lookahead.every": ("3", 3), "lookahead.decay": ("0.5", 0.5), "lookahead.warmup_power": ("2.0", 2.0),
    "batch_schedule.epochs": ("[2]", [2]), "batch_schedule.sizes": ("[64]", [64]),
    "batch_schedule.scale_lr": ("true", True),
    "precision": ("bf16", "bf16"), "device": ("cuda:1", "cuda:1"), "devices": ("2", 2),
    "sync_batchnorm": ("true", True), "collective_timeout_s": ("60", 60.0),
    "channels_last": ("true", True), "cudnn_benchmark": ("false", False), "compile": ("true", True),
    "fused_optimizer": ("false", False), "deterministic": ("true", True), "progress": ("false", False),
    "resume": ("false", False), "keep_checkpoint": ("true", True), "checkpoint_every": ("2", 2),
    "val_every": ("2", 2), "profile": ("3", 3), "checkpoint_every_min": ("0.5", 0.5),
    "stop_signals": ("[SIGTERM]", ["SIGTERM"]), "nonfinite_tolerance": ("5", 5),
    "monitor": ("val/loss", "val/loss"), "early_stopping.patience": ("3", 3),
    "early_stopping.monitor": ("val/acc", "val/acc"), "early_stopping.min_delta": ("0.01", 0.01),
}
NODES = ("lookahead", "batch_schedule", "early_stopping")  # the trainer's nested options


def trainer_leaves(node=None, prefix="") -> list[str]:
    from experiments.training.options import TrainerOptions

    node = OmegaConf.structured(TrainerOptions) if node is None else node
    return [leaf for key in node for leaf in (
        trainer_leaves(node[key], f"{prefix}{key}.") if OmegaConf.is_dict(node[key]) else [f"{prefix}{key}"])]


@pytest.fixture(scope="module")
def by_override():
    """The trainer's options from one job given every override above as `trainer.KEY=VALUE`, and
    from one given each nested option as a whole, `trainer.NODE={key: value, ...}`."""
    from hydra import compose, initialize_config_dir

    nested = {node: "{" + ",".join(f"{k.split('.')[1]}:{v}" for k, (v, _) in TRAINER_OVERRIDES.items()
                                   if k.startswith(node + ".")) + "}" for node in NODES}
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        dotted = compose(config_name="train", overrides=[
            "experiment=smoke", *(f"trainer.{k}={v}" for k, (v, _) in TRAINER_OVERRIDES.items())])
        whole = compose(config_name="train", overrides=[
            "experiment=smoke", *(f"trainer.{node}={value}" for node, value in nested.items())])
    return OmegaConf.to_object(dotted.trainer), OmegaConf.to_object(whole.trainer)


def test_the_override_table_holds_every_trainer_option_and_the_docs_name_each():
    assert sorted(TRAINER_OVERRIDES) == sorted(trainer_leaves())
    documented = (ROOT / "docs" / "config.md").read_text()
    for key in TRAINER_OVERRIDES:  # (a nested option's row may name its node)
        assert f"`trainer.{key}`" in documented or f"`trainer.{key.split('.')[0]}`" in documented, key


@pytest.mark.parametrize("key", sorted(TRAINER_OVERRIDES))
def test_every_trainer_option_takes_an_override(by_override, key):
    from experiments.training.options import get

    dotted, whole = by_override
    expected = TRAINER_OVERRIDES[key][1]
    assert get(dotted, key) == expected
    if key.split(".")[0] in NODES:
        assert get(whole, key) == expected


def test_the_lookahead_is_switched_on_and_off_by_override(compose_cfg):
    from experiments.config.checks import check_config
    from experiments.errors import ConfigError

    def lookahead(*overrides):
        return check_config(compose_cfg(["experiment=smoke", *overrides])).lookahead

    assert lookahead() is None and lookahead("trainer.lookahead={}") is None  # (a node, off)
    for node, switch in [("lookahead", "trainer.lookahead.every=N"), ("batch_schedule", "epochs"),
                         ("early_stopping", "patience=N")]:  # ... which the override alone tells
        with pytest.raises(ConfigError, match=rf"trainer.{node}={{}} sets no key .*{switch}"):
            check_config(compose_cfg(["experiment=smoke", f"trainer.{node}={{}}"]), [f"trainer.{node}={{}}"])
    on = lookahead("trainer.lookahead.every=5")  # airbench94's decay and power with it
    assert (on.every, on.decay, on.warmup_power) == (5, pytest.approx(0.95 ** 5), 3.0)
    assert lookahead("experiment=airbench", "trainer.lookahead.every=null") is None
    assert lookahead("experiment=airbench", "trainer.lookahead=null") is None
    with pytest.raises(ConfigError, match=r"trainer.lookahead.decay=0.5 changes nothing while the "
                                          r"lookahead is off .* trainer.lookahead.every=N"):
        lookahead("trainer.lookahead.decay=0.5")
    with pytest.raises(ConfigError, match="trainer.lookahead.every must be a positive integer, got 0"):
        lookahead("trainer.lookahead.every=0")


def test_a_lookahead_that_is_off_fingerprints_as_before_it_became_a_node(compose_cfg):
    """Jobs run before 2026-12-07 recorded `trainer.lookahead: null`: their checkpoints and
    completed results must still match their rerun's config, now `{every: null, ...}`."""
    from experiments.training.checkpoint import fingerprint

    def record(*overrides):  # (the trainer group: the rest needs Hydra's runtime to resolve)
        trainer = compose_cfg(["experiment=smoke", *overrides]).trainer
        return {"trainer": OmegaConf.to_container(trainer, resolve=True)}

    now = record()
    assert now["trainer"]["lookahead"]["every"] is None
    before = {**now, "trainer": {**now["trainer"], "lookahead": None}}
    assert fingerprint(now) == fingerprint(before)
    assert fingerprint(record("trainer.lookahead.every=5")) != fingerprint(now)
