"""The trainer's options: the `trainer` config group, its defaults, types and ranges in one place.

config/schema.py registers `TrainerOptions` as the group's only option, `trainer=default`, so
Hydra itself refuses a wrong type or an unknown key while composing (`trainer.epochs=abc`, with
its usual message); `__post_init__` adds the ranges a type cannot say. The job gets the options
with `OmegaConf.to_object(cfg.trainer)`. Which way a monitored metric is better follows from the
metric (training/metrics.py), so it is no option.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field, fields
from typing import Any, List, Optional

from experiments.errors import ConfigError
from experiments.training.backends import PRECISIONS
from experiments.training.metrics import VAL_ACC, VAL_METRICS
from experiments.values import INF, POSITIVE, POSITIVE_INT, Rule, integer, number, one_of


@dataclass
class EarlyStopping:
    patience: Optional[int] = None  # epochs without improvement before stopping; None = off
    monitor: Optional[str] = None  # a validation metric; None: the trainer's `monitor`
    min_delta: float = 0.0  # an improvement must beat the best by more than this


@dataclass
class BatchScheduleOptions:
    """The batch size grows to sizes[i] from epochs[i] on (empty lists: no schedule)."""

    epochs: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    scale_lr: bool = False  # the lr follows the batch size (linear scaling rule)


@dataclass
class LookaheadOptions:
    """airbench94's lookahead: at every `every`-th step the slow weights move towards the
    weights, `slow = d * slow + (1 - d) * weights`, with d = decay * (step / total) ** warmup_power
    (0 at the start: no averaging), and the weights are set to the slow ones; the last step
    ends on the slow weights. `every: null` is off; `trainer.lookahead.every=5` switches it on
    with airbench94's decay and power."""

    every: Optional[int] = None  # null: off (airbench94: 5)
    decay: float = 0.7737809375  # 0.95 ** 5: airbench94's per-step 0.95 over its 5 steps
    warmup_power: float = 3.0


@dataclass
class TrainerOptions:
    epochs: int = 30
    batch_size: int = 128  # per optimizer micro-step; effective batch = batch_size * grad_accum_steps
    eval_batch_size: int = 1024
    grad_accum_steps: int = 1
    grad_clip: Optional[float] = None  # max gradient norm, or null
    label_smoothing: float = 0.0
    # e.g. 0.9998: validate, select and test an exponential moving average of the weights
    # (timm's ModelEmaV3)
    ema_decay: Optional[float] = None
    # none | flip | flip_translate: also report test accuracy averaged over mirrored (and, with
    # flip_translate, 1-px shifted: airbench's TTA) copies of each image, as test_tta_acc
    tta: str = "none"
    # a lookahead of the weights (airbench94): every `every` steps the weights become an average
    # of themselves and their slow copy; off while `every` is null (then None here, as the job
    # reads it). See training/lookahead.py. Like batch_schedule, a node even when off: an override
    # (trainer.lookahead.every=5, trainer.lookahead={every: 5, decay: 0.9}) merges into a node,
    # where OmegaConf 2.3 fails to merge one into a null (AssertionError, AttributeError)
    lookahead: Optional[LookaheadOptions] = field(default_factory=LookaheadOptions)
    # off by default; e.g. trainer.batch_schedule={epochs: [60, 120], sizes: [256, 512],
    # scale_lr: true}. A node even when off, so that such an override merges into it
    batch_schedule: Optional[BatchScheduleOptions] = field(default_factory=BatchScheduleOptions)
    # auto: bf16 on compute capability >= 8.0, else fp16 + GradScaler; fp32 on CPU
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    # auto: CUDA if available (job k of a parallel sweep on GPU k mod #GPUs), else CPU
    device: str = "auto"  # auto | cpu | cuda (= cuda:0) | cuda:N | mps
    # the job's processes (DDP): one per GPU, or shares of the CPU's cores; batch_size stays the
    # global batch. Under torchrun or Slurm tasks the launcher's count rules (1 or equal to it)
    devices: int = 1
    sync_batchnorm: bool = False  # with devices > 1 (GPU): BatchNorm statistics over every rank
    # how long a rank waits in a collective (its data loading or compile included) before the
    # job fails: a hung rank ends the job in bounded time
    collective_timeout_s: float = 1800.0
    channels_last: Any = "auto"  # auto (on for CUDA) | true | false
    cudnn_benchmark: bool = True  # cuDNN picks the fastest kernels for the (fixed) input shapes
    compile: bool = False  # torch.compile the model: faster epochs after a one-off compile per job
    fused_optimizer: bool = True  # fused optimizer kernels on CUDA where the optimizer has them
    deterministic: bool = False
    progress: bool = True  # the progress bar
    resume: bool = True  # rerunning into the same directory resumes, or returns a finished result
    keep_checkpoint: bool = False  # keep checkpoint.pt after the job completes (model.pt stays)
    # checkpoint every this many epochs (the last epoch, and a stop signal, always checkpoint):
    # a checkpoint costs ~0.1 s for a ResNet-18 here, the speed presets' epochs 1-2 s on a GPU;
    # a killed job redoes the epochs since its last checkpoint
    checkpoint_every: int = 1
    # validate every this many epochs (the last epoch always validates): model selection,
    # early stopping (its patience counts validations) and sched=plateau see those epochs only
    val_every: int = 1
    # record this many training steps (after a warm-up step) with torch.profiler: the trace goes
    # into the job's TensorBoard run (tb/), the top ops table to the log; 0: off
    profile: int = 0
    # also checkpoint inside an epoch every this many minutes (null: at epoch ends only); a
    # killed job then loses at most that much (training/interrupts.py)
    checkpoint_every_min: Optional[float] = None
    # what stops a job cleanly (finish the step, checkpoint where it is, exit): Slurm's SIGTERM,
    # submitit's SIGUSR2 (preemption, timeout), Ctrl-C
    stop_signals: List[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR2", "SIGINT"])
    # fp16: NaN/inf losses in a row before the job fails (its scaler skips a few); bf16 and fp32
    # fail at the first
    nonfinite_tolerance: int = 20
    monitor: str = VAL_ACC  # model selection: the weights of the best epoch by it are tested
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)

    def __post_init__(self) -> None:
        if self.early_stopping.monitor is None:
            self.early_stopping.monitor = self.monitor
        for key, rule in RULES.items():
            rule.check(f"trainer.{key}", get(self, key))
        self.lookahead = self.checked_lookahead()
        self.check_ranks_divide(self.devices)
        unknown = [name for name in self.stop_signals if name not in signal.Signals.__members__]
        if unknown:
            raise ConfigError(f"trainer.stop_signals: {unknown} are not signal names (e.g. "
                              "SIGTERM, SIGUSR2, SIGINT)")
        schedule = self.batch_schedule
        if schedule is not None and (len(schedule.epochs) != len(schedule.sizes) or not all(
                v > 0 for v in schedule.epochs + schedule.sizes)):
            raise ConfigError("trainer.batch_schedule needs epochs: [e1, ...] and sizes: [b1, ...] "
                              "of positive integers and equal length (and optionally scale_lr: "
                              f"true|false), got epochs={schedule.epochs} sizes={schedule.sizes}")

    def checked_lookahead(self) -> LookaheadOptions | None:
        """The lookahead's options, or None when it is off (`every` null, or the node null). A
        decay or power set while it is off would change nothing: refused, naming the switch."""
        lookahead = self.lookahead
        if lookahead is None:
            return None
        if lookahead.every is None:
            changed = [f"trainer.lookahead.{f.name}={getattr(lookahead, f.name)}" for f in fields(lookahead)
                       if getattr(lookahead, f.name) != getattr(LOOKAHEAD_OFF, f.name)]
            if changed:
                raise ConfigError(f"{' '.join(changed)} changes nothing while the lookahead is off "
                                  "(trainer.lookahead.every=null): switch it on with "
                                  "trainer.lookahead.every=N (airbench94: 5)")
            return None
        for key, rule in LOOKAHEAD_RULES.items():
            rule.check(f"trainer.lookahead.{key}", getattr(lookahead, key))
        return lookahead

    def check_ranks_divide(self, world_size: int) -> None:
        """Every training batch is the global batch, split evenly over the ranks."""
        for key, size in self.batch_sizes.items():
            if size % world_size:
                raise ConfigError(
                    f"{key}={size} is the global batch of {world_size} ranks, which must divide "
                    f"it: use a multiple of {world_size}, e.g. {key}={size - size % world_size or world_size}")

    @property
    def batch_sizes(self) -> dict[str, int]:
        """Every training batch size the job will use, by the key that sets it."""
        sizes = {"trainer.batch_size": self.batch_size}
        for i, size in enumerate(self.batch_schedule.sizes if self.batch_schedule else ()):
            sizes[f"trainer.batch_schedule.sizes[{i}]"] = size
        return sizes


LOOKAHEAD_OFF = LookaheadOptions()
LOOKAHEAD_RULES = {"every": POSITIVE_INT,
                   "decay": number(0, 1, "a number in [0, 1)", open_high=True),
                   "warmup_power": number(0, INF, "a number >= 0")}


def get(options, dotted: str):
    for part in dotted.split("."):
        options = getattr(options, part)
    return options


DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")
RULES = {  # trainer.<key>: what it must be
    "epochs": POSITIVE_INT, "batch_size": POSITIVE_INT, "eval_batch_size": POSITIVE_INT,
    "grad_accum_steps": POSITIVE_INT, "devices": POSITIVE_INT, "collective_timeout_s": POSITIVE,
    "checkpoint_every": POSITIVE_INT, "val_every": POSITIVE_INT,
    "profile": integer(0, "an integer >= 0 (training steps to record; 0: off)"),
    "checkpoint_every_min": POSITIVE.or_null("null (at epoch ends only) or minutes > 0"),
    "grad_clip": POSITIVE.or_null("a number > 0 or null"),
    "label_smoothing": number(0, 1, "a number in [0, 1)", open_high=True),
    "ema_decay": number(0, 1, "", open_low=True, open_high=True).or_null(
        "null or a decay in (0, 1), e.g. 0.9998"),
    "nonfinite_tolerance": integer(0, "an integer >= 0"),
    "tta": one_of("none", "flip", "flip_translate"),
    "precision": one_of("auto", *PRECISIONS),
    "monitor": one_of(*VAL_METRICS),
    "early_stopping.monitor": one_of(None, *VAL_METRICS),
    "early_stopping.patience": integer(1, "").or_null(
        "null (off) or a positive number of epochs"),
    "early_stopping.min_delta": number(0, INF, "a number >= 0"),
    "channels_last": Rule(lambda v: v == "auto" or isinstance(v, bool), "auto, true or false"),
    "device": Rule(lambda v: isinstance(v, str) and bool(DEVICE.fullmatch(v)),
                   "auto, cpu, cuda or cuda:N"),
}
