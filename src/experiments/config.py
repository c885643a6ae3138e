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
from experiments.groups import NAMED_GROUPS

VAL_METRICS = ("val/acc", "val/loss")


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
    check_validation_users(cfg)
    check_combinations(cfg)


METRIC_MODES = {"val/acc": "max", "val/loss": "min"}
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
    from experiments.folder import class_names

    return len(class_names(root))


def register_resolvers() -> None:
    for name, fn in (("job_suffix", job_suffix), ("folder_classes", folder_classes)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
