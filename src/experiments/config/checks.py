"""Config checks with clear messages, before anything is built: rules across fields and groups,
the keys each group's target takes, and the ranges of the groups whose keys are a library's
arguments (optim, sched, mix, loader) or a dataset's. The trainer's own types and ranges live in
its schema (training/options.py), the augmentation's in its class (batches/augment.py); every
rule is one of experiments/values.py's."""

from __future__ import annotations

import inspect

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError

from experiments.errors import ConfigError
from experiments.models.pretrained import PRETRAINED_KEYS, wants_pretrained
from experiments.models.resnet import SMALL_IMAGES, TIMM_MODEL
from experiments.training.metrics import VAL_METRICS
from experiments.training.muon import MUON_RULES
from experiments.training.options import TrainerOptions
from experiments.values import (
    INF,
    MOMENTUM,
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    PROBABILITY,
    Rule,
    integer,
    is_int,
    number,
    one_of,
)


def select(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key)


# the optimizer's own keys, checked on the optimizer that steps (`optim`, or `optim.base` under
# optim=sam: see optimizer_key); Muon's are its own (training/muon.py)
OPTIMIZER_RULES = {"momentum": MOMENTUM, "weight_decay": NON_NEGATIVE, **MUON_RULES}
# key: what it must be. Checked where the composed config has the key (sched.pct_start only
# with sched=onecycle, ...): values torch would refuse with a traceback, mid-run for some
# (StepLR's step_size=0 divides by zero at the first epoch's end), or, worse, accept and train
# silently wrong (a mixing probability above 1, a negative warm-up).
RULES = {
    "optim.rho": number(0, INF, "a number > 0 (SAM's neighbourhood size)", open_low=True),
    "sched.warmup_epochs": number(0, INF, "a number of epochs >= 0"),
    "sched.min_lr_ratio": number(0, 1, "a fraction of optim.lr in [0, 1]"),
    "sched.step_size": integer(1, "a positive integer (epochs)"),
    "sched.gamma": number(0, 1, "a factor in (0, 1]", open_low=True),
    "sched.factor": number(0, 1, "a factor in (0, 1)", open_low=True, open_high=True),
    "sched.patience": integer(0, "an integer >= 0 (epochs)"),
    "sched.pct_start": number(0, 1, "a fraction in (0, 1)", open_low=True, open_high=True),
    "sched.div_factor": POSITIVE,
    "sched.final_div_factor": POSITIVE,
    "sched.monitor": one_of(*VAL_METRICS),
    "mix.prob": PROBABILITY,
    "mix.switch_prob": PROBABILITY,
    "mix.mixup_alpha": number(0, INF, "a number >= 0 (0: no MixUp)"),
    "mix.cutmix_alpha": number(0, INF, "a number >= 0 (0: no CutMix)"),
    "loader.workers": Rule(lambda v: v == "auto" or (is_int(v) and v >= 0),
                           "auto or a number of worker processes >= 0 (0: load in the main process)"),
    "param_groups.backbone_lr_scale": number(0, 1, "a fraction of optim.lr in (0, 1]", open_low=True),
    "param_groups.layer_decay": number(0, 1, "", open_low=True).or_null(
        "a factor in (0, 1] per layer, or null (off)"),
    "param_groups.vector_lr_scale": POSITIVE,
    "param_groups.vector_weight_decay_scale": NON_NEGATIVE,
    "data.image_size": integer(1, "a positive integer (pixels)"),
    "data.num_classes": POSITIVE_INT,
    "data.noise": number(0, 1, "a weight in [0, 1]"),
    "data.val_size": Rule(lambda v: (is_int(v) and v >= 0) or (isinstance(v, float) and 0 <= v < 1),
                          "a count >= 0 or a fraction in [0, 1)"),
    "seed": Rule(is_int, "an integer"),
    "logger.wandb.mode": one_of("offline", "online", "disabled"),
}
ABSENT = object()


def optimizer_key(cfg: DictConfig) -> str:
    """Where the optimizer that steps is configured: `optim`, or, under an optimizer that wraps
    another (optim=sam), the wrapped one: `optim.base`."""
    key = "optim"
    while isinstance(OmegaConf.select(cfg, f"{key}.base"), DictConfig):
        key += ".base"
    return key


def check_ranges(cfg: DictConfig) -> None:
    """RULES, OPTIMIZER_RULES (and the optimizer's lr, which every optimizer has), and a mixing
    option that would mix nothing (timm's Mixup asserts on it)."""
    base = optimizer_key(cfg)
    POSITIVE.check(f"{base}.lr", select(cfg, f"{base}.lr"))
    for key, rule in {**RULES, **{f"{base}.{k}": r for k, r in OPTIMIZER_RULES.items()}}.items():
        value = OmegaConf.select(cfg, key, default=ABSENT)
        if value is not ABSENT:
            rule.check(key, value)
    mix = cfg.mix
    if mix.get("_target_") and not (mix.get("mixup_alpha") or mix.get("cutmix_alpha")
                                    or mix.get("cutmix_minmax")):
        raise ConfigError("mixing needs mix.mixup_alpha > 0 or mix.cutmix_alpha > 0; for no "
                          "mixing use mix=none")


def trainer_options(cfg: DictConfig) -> TrainerOptions:
    """The `trainer` group as one typed object (types checked by Hydra while composing, ranges
    by TrainerOptions itself)."""
    try:
        return OmegaConf.to_object(cfg.trainer)
    except ValidationError as err:  # raised inside TrainerOptions.__post_init__: keep our words
        if isinstance(err.__cause__, ConfigError):
            raise err.__cause__ from None
        raise


# the groups whose keys are the arguments of their `_target_` (the trainer group has a schema:
# Hydra refuses its unknown keys itself)
TARGET_GROUPS = ("data", "loader", "model", "aug", "mix", "optim", "sched", "logger")
HIDDEN = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def accepted_keys(target: str) -> list[str] | None:
    """The keyword arguments `target` takes, or None when it passes any on (**kwargs)."""
    params = inspect.signature(get_object(target)).parameters.values()
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind not in HIDDEN]


def check_group_keys(cfg: DictConfig) -> None:
    """A key added to a group (`+optim.foo=1`, `+optim.foreach=false` under optim=muon) must be
    an argument of what the group builds: one message naming it and the keys there are, rather
    than a TypeError from deep inside instantiate. Nested targets (SAM's `optim.base`) too;
    a target that passes **kwargs on (timm's models) is checked where it is built."""
    def check(node: DictConfig, key: str) -> None:
        target = node.get("_target_")
        if target is None:  # mix=none: an option that builds nothing takes no keys
            if node:
                raise ConfigError(f"{key} builds nothing (its option has no _target_), yet sets "
                                  f"{', '.join(f'{key}.{k}' for k in node)}: choose an option "
                                  f"that uses them (e.g. {key}=...) or drop them")
            return
        accepted = accepted_keys(target)
        for name, value in node.items_ex(resolve=False):  # (data.root=${hydra:...} needs Hydra)
            if isinstance(value, DictConfig) and "_target_" in value:
                check(value, f"{key}.{name}")
            elif accepted is not None and not name.startswith("_") and name not in accepted:
                raise ConfigError(f"{key}.{name} is not a key of {key} ({target}): it takes "
                                  f"{', '.join(accepted)}")

    for group in TARGET_GROUPS:
        if group in cfg:
            check(cfg[group], group)


def check_config(cfg: DictConfig, overrides=()) -> TrainerOptions:
    """Reject values that would fail late or, worse, train silently wrong; returns the trainer's
    options, checked. `overrides`: the job's command-line overrides, where a value alone cannot
    tell (`check_empty_nodes`)."""
    check_empty_nodes(overrides)
    check_pretrained_model(cfg)  # (its own message: a preset's pretrained keys on another model)
    check_group_keys(cfg)
    options = trainer_options(cfg)
    check_ranges(cfg)
    check_normalization(cfg)
    check_validation_users(cfg, options)
    check_combinations(cfg, options)
    return options


# how each of the trainer's nested options is switched on (each is a node even when off, so that
# an override of one of its keys merges into it)
SWITCHES = {"lookahead": "trainer.lookahead.every=N (airbench94: 5)",
            "batch_schedule": "trainer.batch_schedule={epochs: [E1, ...], sizes: [B1, ...]}",
            "early_stopping": "trainer.early_stopping.patience=N"}


def check_empty_nodes(overrides) -> None:
    """`trainer.lookahead={}` merges no key into its node, so the option stays as it was (off,
    by default): refused, naming the key that switches it on, rather than silently ignored. Only
    the override says so: the composed config is the same as without it."""
    for item in overrides or ():
        key, _, value = str(item).lstrip("+").partition("=")
        node = key.removeprefix("trainer.")
        if key.startswith("trainer.") and node in SWITCHES and value.replace(" ", "") == "{}":
            raise ConfigError(f"{key}={{}} sets no key of trainer.{node}, so it changes nothing: "
                              f"switch it on with {SWITCHES[node]}")


def check_combinations(cfg: DictConfig, options: TrainerOptions) -> None:
    """Options that each make sense alone but not together: refuse them rather than train
    silently wrong."""
    key = optimizer_key(cfg)
    optim = OmegaConf.select(cfg, key)
    if optim.get("nesterov") and not optim.get("momentum"):
        raise ConfigError(f"{key}.nesterov=true needs {key}.momentum > 0 (plain SGD: "
                          f"{key}.momentum=0 {key}.nesterov=false)")
    check_mirroring(cfg.data, bool(cfg.aug.get("flip")), options.tta)
    check_augmentation_fits_data(cfg)
    check_mixed_batches(cfg, options, options.devices)


def check_mixed_batches(cfg: DictConfig, options: TrainerOptions, world_size: int) -> None:
    """timm's Mixup pairs image i with image n-1-i of the batch it is given and asserts that n
    is even: an odd batch failed mid-run, at the epoch where the batch schedule reaches that
    size. It is given each micro-batch of a rank: `batch_size / world_size` images of every
    training batch size the job uses (trainer.batch_size, each of the batch schedule's sizes),
    whole (accumulation groups micro-batches, it never splits one; the loader drops a ragged
    last batch, and BatchSchedule.check_fits refuses a batch larger than the training set);
    evaluation does not mix. Checked with trainer.devices here, and again with the launcher's
    ranks (torchrun, Slurm tasks) when the job starts (job.train)."""
    if not cfg.mix.get("_target_"):
        return
    mixing = f"mixing (mix={cfg.mix.get('_target_', '').split('.')[-1]}) pairs images within a batch"
    for key, size in options.batch_sizes.items():
        per_rank = size // world_size
        if per_rank % 2 == 0:
            continue
        if world_size == 1:
            raise ConfigError(f"{mixing}: {key} must be even, got {size}")
        multiple = 2 * world_size
        lower = size - size % multiple
        raise ConfigError(
            f"{mixing}, and each of the {world_size} ranks mixes its own part of it: {key}={size} "
            f"is {per_rank} image{'s' if per_rank > 1 else ''} per rank, which must be even. Use a "
            f"multiple of {multiple}, e.g. "
            f"{key}={lower or multiple}" + (f" or {lower + multiple}" if lower else ""))


def check_mirroring(data: DictConfig, flip: bool, tta: str) -> None:
    """A dataset whose mirrored images are another class (`data.hflip_ok: false`: digits) is
    never mirrored: not by the augmentation, not by the TTA; in training (check_combinations)
    and in `experiments.evaluate`."""
    if data.get("hflip_ok", True):
        return
    if flip:
        raise ConfigError(f"aug.flip=true mirrors images, which changes the class of "
                          f"data={data.name} images: use aug=none or aug.flip=false")
    if tta != "none":
        raise ConfigError(f"trainer.tta={tta} mirrors data={data.name} images, which changes "
                          "their class: use trainer.tta=none")


def check_normalization(cfg: DictConfig) -> None:
    """One mean and one std per channel (a pretrained model brings its own: not checked)."""
    data = cfg.data
    if wants_pretrained(cfg.model):
        return
    for key in ("mean", "std"):
        values = list(data[key])
        if len(values) != data.channels:
            raise ConfigError(
                f"data.{key} has {len(values)} values but data.channels={data.channels}: give one "
                f"per channel, e.g. data.{key}=[{', '.join(['0.5'] * data.channels)}]")


def check_pretrained_model(cfg: DictConfig) -> None:
    """Only model=timm loads pretrained weights; a preset that asks for them (experiment=finetune)
    with another model would otherwise fail on an unexpected keyword, deep in instantiate."""
    model = cfg.model
    if model.get("_target_") != TIMM_MODEL and any(k in model for k in PRETRAINED_KEYS):
        raise ConfigError(
            f"{model.get('_target_')} trains from scratch: only model=timm loads pretrained weights "
            "(experiment=finetune uses it: pick the network by model.name=..., e.g. resnet50).")



def check_augmentation_fits_data(cfg: DictConfig) -> None:
    """The padding crop of aug=basic/advanced is a CIFAR recipe (4 px on 32); random resized
    crops cut away most of a digit."""
    aug, data = cfg.aug, cfg.data
    if aug.get("crop_padding") and data.image_size > SMALL_IMAGES:
        raise ConfigError(
            f"aug.crop_padding={aug.crop_padding} pads and crops {data.image_size} px images: a "
            f"recipe for small images (<= {SMALL_IMAGES} px, e.g. 4 px on CIFAR's 32). Use aug=rrc "
            "(random resized crops) for larger images, or aug=none.")
    if aug.get("rrc_scale") is not None and data.name == "mnist":
        raise ConfigError("aug=rrc crops as little as aug.rrc_scale[0] of a data=mnist digit and "
                          "stretches it, which can change its class: use aug=none or a mild crop "
                          "such as aug=basic aug.flip=false")


def check_validation_users(cfg: DictConfig, options: TrainerOptions) -> None:
    """Early stopping and ReduceLROnPlateau watch validation metrics; the test set never stands in."""
    watchers = {"trainer.early_stopping.monitor": options.early_stopping.patience is not None,
                "sched.monitor": "monitor" in cfg.sched}
    for key, active in watchers.items():
        if active:  # (both are validation metrics: the trainer's schema and RULES check it)
            if cfg.data.val_size == 0:
                raise ConfigError(f"{key}={OmegaConf.select(cfg, key)} needs a validation split, "
                                  "but data.val_size=0. Set data.val_size > 0 (the test set is "
                                  "never used for model selection or stopping).")
