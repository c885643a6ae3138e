"""Config checks with clear messages, and the OmegaConf resolvers the config tree uses."""

from __future__ import annotations

import os
import re
import sys
from numbers import Real
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from experiments.errors import ConfigError
from experiments.config.groups import NAMED_GROUPS
from experiments.training.metrics import METRIC_MODES, VAL_METRICS


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def positive_int(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if not _is_int(value) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")


def positive_number(cfg: DictConfig, key: str, optional: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if optional and value is None:
        return
    if not _is_number(value) or not value > 0:
        raise ConfigError(f"{key} must be a number > 0{' or null' if optional else ''}, got {value!r}")


def one_of(cfg: DictConfig, key: str, allowed) -> None:
    value = OmegaConf.select(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")


def _in(low, high, *, open_low=False, open_high=False, optional=False):
    """A test that a value is a number in [low, high] (or (low, high] ..., or null if optional)."""
    def test(value) -> bool:
        if value is None:
            return optional
        return _is_number(value) and (low < value if open_low else low <= value) and (
            value < high if open_high else value <= high)
    return test


INF = float("inf")
# key: (test, what it must be). Checked where the composed config has the key (sched.pct_start
# only with sched=onecycle, ...): values torch would refuse with a traceback, mid-run for some
# (StepLR's step_size=0 divides by zero at the first epoch's end), or, worse, accept and train
# silently wrong (label smoothing or EMA decay above 1, a negative warm-up).
RANGES = {
    "optim.momentum": (_in(0, INF), "a number >= 0"),
    "optim.weight_decay": (_in(0, INF), "a number >= 0"),
    "optim.rho": (_in(0, INF, open_low=True), "a number > 0 (SAM's neighbourhood size)"),
    "sched.warmup_epochs": (_in(0, INF), "a number of epochs >= 0"),
    "sched.min_lr_ratio": (_in(0, 1), "a fraction of optim.lr in [0, 1]"),
    "sched.step_size": (lambda v: _is_int(v) and v >= 1, "a positive integer (epochs)"),
    "sched.gamma": (_in(0, 1, open_low=True), "a factor in (0, 1]"),
    "sched.factor": (_in(0, 1, open_low=True, open_high=True), "a factor in (0, 1)"),
    "sched.patience": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (epochs)"),
    "sched.pct_start": (_in(0, 1, open_low=True, open_high=True), "a fraction in (0, 1)"),
    "sched.div_factor": (_in(0, INF, open_low=True), "a number > 0"),
    "sched.final_div_factor": (_in(0, INF, open_low=True), "a number > 0"),
    "mix.prob": (_in(0, 1), "a probability in [0, 1]"),
    "mix.switch_prob": (_in(0, 1), "a probability in [0, 1]"),
    "mix.mixup_alpha": (_in(0, INF), "a number >= 0 (0: no MixUp)"),
    "mix.cutmix_alpha": (_in(0, INF), "a number >= 0 (0: no CutMix)"),
    "trainer.label_smoothing": (_in(0, 1, open_high=True), "a number in [0, 1)"),
    "trainer.ema_decay": (_in(0, 1, open_low=True, open_high=True, optional=True),
                          "null or a decay in (0, 1), e.g. 0.9998"),
    "trainer.early_stopping.patience": (lambda v: v is None or (_is_int(v) and v >= 1),
                                        "null (off) or a positive number of epochs"),
    "trainer.nonfinite_tolerance": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "trainer.channels_last": (lambda v: v in ("auto", True, False), "auto, true or false"),
    "loader.workers": (lambda v: v == "auto" or (_is_int(v) and v >= 0),
                       "auto or a number of worker processes >= 0 (0: load in the main process)"),
    "data.image_size": (lambda v: _is_int(v) and v >= 1, "a positive integer (pixels)"),
    "data.num_classes": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "data.noise": (_in(0, 1), "a weight in [0, 1]"),
}
ABSENT = object()


def check_ranges(cfg: DictConfig) -> None:
    """RANGES, and a mixing option that would mix nothing (timm's Mixup asserts on it)."""
    for key, (test, expected) in RANGES.items():
        value = OmegaConf.select(cfg, key, default=ABSENT)
        if value is not ABSENT and not test(value):
            raise ConfigError(f"{key} must be {expected}, got {value!r}")
    mix = cfg.mix
    if mix.get("_target_") and not (mix.get("mixup_alpha") or mix.get("cutmix_alpha")
                                    or mix.get("cutmix_minmax")):
        raise ConfigError("mixing needs mix.mixup_alpha > 0 or mix.cutmix_alpha > 0; for no "
                          "mixing use mix=none")


def check_config(cfg: DictConfig) -> None:
    """Reject values that would fail late or, worse, train silently wrong."""
    for key in ("trainer.epochs", "trainer.batch_size", "trainer.eval_batch_size",
                "trainer.grad_accum_steps"):
        positive_int(cfg, key)
    positive_number(cfg, "optim.lr")
    positive_number(cfg, "trainer.grad_clip", optional=True)
    if not _is_int(cfg.seed):
        raise ConfigError(f"seed must be an integer, got {cfg.seed!r}")
    val_size = cfg.data.val_size
    if not (_is_int(val_size) and val_size >= 0) and not (isinstance(val_size, float) and 0 <= val_size < 1):
        raise ConfigError(f"data.val_size must be a count >= 0 or a fraction in [0, 1), got {val_size!r}")
    one_of(cfg, "trainer.precision", ("auto", "bf16", "fp16", "fp32"))
    one_of(cfg, "trainer.monitor", VAL_METRICS)
    one_of(cfg, "logger.wandb.mode", ("offline", "online", "disabled"))
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", str(cfg.trainer.device)):
        raise ConfigError(f"trainer.device must be auto, cpu, cuda or cuda:N, got {cfg.trainer.device!r}")
    check_ranges(cfg)
    check_validation_users(cfg)
    check_combinations(cfg)


SCHEDULE_KEYS = {"epochs", "sizes", "scale_lr"}  # trainer.batch_schedule


def check_combinations(cfg: DictConfig) -> None:
    """Options that each make sense alone but not together: refuse them rather than train
    silently wrong."""
    optim = cfg.optim
    if optim.get("nesterov") and not optim.get("momentum"):
        raise ConfigError("optim.nesterov=true needs optim.momentum > 0 (plain SGD: "
                          "optim.momentum=0 optim.nesterov=false)")
    for key, mode_key in (("trainer.monitor", "trainer.monitor_mode"),
                          ("trainer.early_stopping.monitor", "trainer.early_stopping.mode"),
                          ("sched.monitor", "sched.mode")):
        metric, mode = OmegaConf.select(cfg, key), OmegaConf.select(cfg, mode_key)
        if mode is not None:
            one_of(cfg, mode_key, ("min", "max"))
        if metric in METRIC_MODES and mode is not None and mode != METRIC_MODES[metric]:
            raise ConfigError(f"{mode_key}={mode} would treat a worse {metric} as better: "
                              f"{metric} needs mode {METRIC_MODES[metric]}")
    if not cfg.data.get("hflip_ok", True):
        if cfg.aug.get("flip"):
            raise ConfigError(f"aug.flip=true mirrors images, which changes the class of "
                              f"data={cfg.data.name} images: use aug=none or aug.flip=false")
        if cfg.trainer.tta == "flip":
            raise ConfigError(f"trainer.tta=flip mirrors data={cfg.data.name} images, which "
                              "changes their class: use trainer.tta=none")
    one_of(cfg, "trainer.tta", ("none", "flip"))
    plan = cfg.trainer.batch_schedule
    if plan:
        epochs, sizes = list(plan.get("epochs") or []), list(plan.get("sizes") or [])
        if len(epochs) != len(sizes) or not epochs or not all(
                _is_int(v) and v > 0 for v in epochs + sizes) or set(plan) - SCHEDULE_KEYS:
            raise ConfigError("trainer.batch_schedule needs epochs: [e1, ...] and sizes: [b1, ...] "
                              "of positive integers and equal length (and optionally scale_lr: "
                              f"true|false), got {OmegaConf.to_container(plan)}")
    if cfg.mix.get("_target_"):
        # timm's Mixup pairs image i with image n-1-i: an odd batch fails mid-run, at the epoch
        # where the schedule reaches that size
        for key, size in train_batch_sizes(cfg).items():
            if size % 2:
                raise ConfigError(f"mixing (mix={cfg.mix.get('_target_', '').split('.')[-1]}) pairs "
                                  f"images within a batch: {key} must be even, got {size}")


def check_train_batch_sizes(cfg: DictConfig, n_train: int) -> None:
    """Every training batch must fit in the training set. Refused rather than served as one short
    batch of the whole set: that would be another experiment (another batch size, learning-rate
    ratio and BatchNorm statistics) than the one asked for, and is almost always a mistake."""
    for key, size in train_batch_sizes(cfg).items():
        if size > n_train:
            held_out = (f" after holding out data.val_size={cfg.data.val_size} for validation"
                        if cfg.data.val_size else "")
            raise ConfigError(f"{key}={size} is larger than the training set ({n_train} images"
                              f"{held_out}): use {key} <= {n_train}")


def train_batch_sizes(cfg: DictConfig) -> dict[str, int]:
    """Every training batch size the job will use, by the key that sets it."""
    sizes = {"trainer.batch_size": cfg.trainer.batch_size}
    plan = cfg.trainer.batch_schedule
    for i, size in enumerate(plan.sizes if plan else ()):
        sizes[f"trainer.batch_schedule.sizes[{i}]"] = size
    return sizes


def check_validation_users(cfg: DictConfig) -> None:
    """Early stopping and ReduceLROnPlateau watch validation metrics; the test set never stands in."""
    watchers = {"trainer.early_stopping.monitor": cfg.trainer.early_stopping.patience is not None}
    if "monitor" in cfg.sched:
        watchers["sched.monitor"] = True
    for key, active in watchers.items():
        if active:
            one_of(cfg, key, VAL_METRICS)
            if cfg.data.val_size == 0:
                raise ConfigError(f"{key}={OmegaConf.select(cfg, key)} needs a validation split, "
                                  "but data.val_size=0. Set data.val_size > 0 (the test set is "
                                  "never used for model selection or stopping).")


SECRET_NAME = re.compile(r"api[_-]?key|token|secret|passw(or)?d|credential", re.IGNORECASE)


def redact_secrets(config: Any) -> Any:
    """Mask values that look secret before any config is logged or saved: keys named like
    secrets, and any value equal to a secret-named environment variable (e.g. WANDB_API_KEY)."""
    secrets = {v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 6}

    def clean(node, key=""):
        if isinstance(node, dict):
            return {k: clean(v, str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [clean(v, key) for v in node]
        if node is not None and (SECRET_NAME.search(key) or (isinstance(node, str) and node in secrets)):
            return "***"
        return node

    return clean(config)


def swept_keys(argv: list[str]) -> set[str]:
    """The keys the command line sweeps (`optim.lr=0.05,0.1`, `seed=range(3)`, ...)."""
    try:
        parsed = OverridesParser.create().parse_overrides(
            [a for a in argv if "=" in a and not a.startswith("-")])
    except Exception:  # not a Hydra command line (e.g. the compose API in tests)
        return set()
    return {o.key_or_group for o in parsed if o.is_sweep_override()}


def job_suffix(task_overrides) -> str:
    """`-key=value,...` for this job's values of the swept keys its name does not show yet.

    Constant overrides (`experiment=smoke`, `data.root=...`) would only make every name longer.
    """
    swept = swept_keys(sys.argv[1:]) - set(NAMED_GROUPS)
    parts = [o for o in task_overrides if o.split("=", 1)[0].lstrip("+~") in swept]
    return "-" + ",".join(parts).replace("/", "_") if parts else ""


def folder_classes(root: str) -> int:
    """`data=folder`'s class count, read from the folder names under ROOT/train."""
    from experiments.data.folder import class_names

    return len(class_names(root))


def register_resolvers() -> None:
    for name, fn in (("job_suffix", job_suffix), ("folder_classes", folder_classes)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
