"""The trainer's options as one typed object: the `trainer` config group's schema.

Hydra checks every type while composing (`trainer.epochs=abc` and unknown keys are refused with
its usual message; config/schema.py registers these classes); `__post_init__` adds the ranges a
type cannot say. The job gets them with `OmegaConf.to_object(cfg.trainer)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

from experiments.errors import ConfigError
from experiments.training.backends import PRECISIONS
from experiments.training.metrics import METRIC_MODES, VAL_METRICS


def positive_int(key: str, value) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")


def within(key: str, value, low: float, high: float, what: str, *, open_low: bool = False,
           open_high: bool = False) -> None:
    ok = (low < value if open_low else low <= value) and (value < high if open_high else value <= high)
    if not ok:
        raise ConfigError(f"{key} must be {what}, got {value!r}")


def one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")


@dataclass
class EarlyStopping:
    patience: Optional[int] = None  # epochs without improvement before stopping; None = off
    monitor: str = "val/acc"
    mode: str = "max"
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.patience is not None and self.patience < 1:
            raise ConfigError("trainer.early_stopping.patience must be null (off) or a positive "
                              f"number of epochs, got {self.patience}")
        # monitor and mode: checked by TrainerOptions, after the trainer's own (they default to them)


@dataclass
class BatchScheduleOptions:
    """The batch size grows to sizes[i] from epochs[i] on (empty lists: no schedule)."""

    epochs: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    scale_lr: bool = False  # the lr follows the batch size (linear scaling rule)

    def __post_init__(self) -> None:
        if len(self.epochs) != len(self.sizes) or not all(v > 0 for v in self.epochs + self.sizes):
            raise ConfigError("trainer.batch_schedule needs epochs: [e1, ...] and sizes: [b1, ...] "
                              "of positive integers and equal length (and optionally scale_lr: "
                              f"true|false), got epochs={self.epochs} sizes={self.sizes}")


@dataclass
class TrainerOptions:
    epochs: int = 30
    batch_size: int = 128  # per optimizer micro-step; effective batch = batch_size * grad_accum_steps
    eval_batch_size: int = 1024
    grad_accum_steps: int = 1
    grad_clip: Optional[float] = None  # max gradient norm
    label_smoothing: float = 0.0
    ema_decay: Optional[float] = None  # validate, select and test an EMA of the weights
    tta: str = "none"  # none | flip
    # a node even when off, so that `trainer.batch_schedule={epochs: [..], sizes: [..]}` merges
    batch_schedule: Optional[BatchScheduleOptions] = field(default_factory=BatchScheduleOptions)
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    channels_last: Any = "auto"  # auto | true | false
    cudnn_benchmark: bool = True
    compile: bool = False
    fused_optimizer: bool = True
    deterministic: bool = False
    progress: bool = True
    resume: bool = True
    keep_checkpoint: bool = False
    nonfinite_tolerance: int = 20  # fp16: NaN/inf losses in a row tolerated (the scaler skips them)
    monitor: str = "val/acc"  # model selection: the best epoch by this metric is tested
    monitor_mode: str = "max"
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "eval_batch_size", "grad_accum_steps"):
            positive_int(f"trainer.{key}", getattr(self, key))
        if self.grad_clip is not None:
            within("trainer.grad_clip", self.grad_clip, 0, float("inf"), "a number > 0 or null",
                   open_low=True)
        within("trainer.label_smoothing", self.label_smoothing, 0, 1, "a number in [0, 1)",
               open_high=True)
        if self.ema_decay is not None:
            within("trainer.ema_decay", self.ema_decay, 0, 1,
                   "null or a decay in (0, 1), e.g. 0.9998", open_low=True, open_high=True)
        if self.nonfinite_tolerance < 0:
            raise ConfigError(f"trainer.nonfinite_tolerance must be an integer >= 0, "
                              f"got {self.nonfinite_tolerance}")
        one_of("trainer.tta", self.tta, ("none", "flip"))
        one_of("trainer.precision", self.precision, ("auto", *PRECISIONS))
        one_of("trainer.monitor", self.monitor, VAL_METRICS)
        one_of("trainer.monitor_mode", self.monitor_mode, ("min", "max"))
        one_of("trainer.early_stopping.monitor", self.early_stopping.monitor, VAL_METRICS)
        one_of("trainer.early_stopping.mode", self.early_stopping.mode, ("min", "max"))
        if self.channels_last not in ("auto", True, False):
            raise ConfigError(f"trainer.channels_last must be auto, true or false, "
                              f"got {self.channels_last!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device):
            raise ConfigError(f"trainer.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        for metric, mode, mode_key in ((self.monitor, self.monitor_mode, "trainer.monitor_mode"),
                                       (self.early_stopping.monitor, self.early_stopping.mode,
                                        "trainer.early_stopping.mode")):
            if mode != METRIC_MODES[metric]:
                raise ConfigError(f"{mode_key}={mode} would treat a worse {metric} as better: "
                                  f"{metric} needs mode {METRIC_MODES[metric]}")

    @property
    def batch_sizes(self) -> dict[str, int]:
        """Every training batch size the job will use, by the key that sets it."""
        sizes = {"trainer.batch_size": self.batch_size}
        for i, size in enumerate(self.batch_schedule.sizes if self.batch_schedule else ()):
            sizes[f"trainer.batch_schedule.sizes[{i}]"] = size
        return sizes
