"""Learning-rate schedules for the `sched` config group.

Each factory is `_partial_` in its config; the job completes it with the optimizer, the run's
length in epochs and `steps(epochs)`, the optimizer steps taken after that many epochs (which
follows trainer.batch_schedule: training/batch_schedule.py), and gets back a Schedule that says
when it must be stepped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR, ReduceLROnPlateau, StepLR

from experiments.training.metrics import METRIC_MODES


@dataclass
class Schedule:
    optimizer: Optimizer
    scheduler: LRScheduler | ReduceLROnPlateau | None
    interval: str  # "step": after every optimizer step; "epoch": after every epoch
    monitor: str | None = None  # the metric ReduceLROnPlateau watches, e.g. "val/acc"

    def step_batch(self) -> None:
        if self.scheduler is not None and self.interval == "step":
            self.scheduler.step()

    def step_epoch(self, metrics: dict[str, float]) -> None:
        if self.scheduler is None or self.interval != "epoch":
            return
        if self.monitor is None:
            self.scheduler.step()
        elif self.monitor in metrics:  # (not every epoch validates: trainer.val_every)
            self.scheduler.step(metrics[self.monitor])

    def state_dict(self) -> dict:
        return {} if self.scheduler is None else self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)

    def scale_lr(self, factor: float) -> None:
        """Multiply every learning rate this schedule works from (batch-size schedule, linear rule)."""
        for i, group in enumerate(self.optimizer.param_groups):
            for key in ("lr", "initial_lr", "max_lr", "min_lr"):
                if isinstance(group.get(key), (int, float)):
                    group[key] *= factor
            if self.scheduler is not None and hasattr(self.scheduler, "base_lrs"):
                self.scheduler.base_lrs[i] *= factor


Steps = Callable[[float], int]  # optimizer steps after a (fractional) number of epochs


def warmup_cosine(optimizer: Optimizer, *, epochs: int, steps: Steps, warmup_epochs: float,
                  min_lr_ratio: float) -> Schedule:
    """Linear warm-up from ~0 to the base lr over `warmup_epochs`, then half a cosine down to
    min_lr_ratio * lr at the run's last step. torch's LambdaLR with this factor, rather than
    SequentialLR(LinearLR, CosineAnnealingLR): CosineAnnealingLR's floor is one absolute
    eta_min for every group, so a floor relative to each group's rate (fine-tuning's 10x lower
    backbone) cannot be said; timm's CosineLRScheduler is no torch LRScheduler (step_update)."""
    total = max(1, steps(epochs))
    warmup = min(total, steps(warmup_epochs))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return Schedule(optimizer, LambdaLR(optimizer, factor), "step")


def plateau(optimizer: Optimizer, *, epochs: int, steps: Steps, monitor: str, factor: float,
            patience: int, threshold: float, min_lr: float) -> Schedule:
    """ReduceLROnPlateau on a validation metric (there must be a validation split); which way
    is better follows from the metric."""
    scheduler = ReduceLROnPlateau(optimizer, mode=METRIC_MODES[monitor], factor=factor,
                                  patience=patience, threshold=threshold, min_lr=min_lr)
    return Schedule(optimizer, scheduler, "epoch", monitor)


def step_decay(optimizer: Optimizer, *, epochs: int, steps: Steps, step_size: int,
         gamma: float) -> Schedule:
    """Multiply the lr by gamma every step_size epochs (stepped per epoch: the batch size does
    not move it)."""
    return Schedule(optimizer, StepLR(optimizer, step_size=step_size, gamma=gamma), "epoch")


def one_cycle(optimizer: Optimizer, *, epochs: int, steps: Steps, pct_start: float,
              div_factor: float, final_div_factor: float, anneal_strategy: str) -> Schedule:
    """OneCycleLR up to the optimizer's lr (as max_lr) and down, over the whole run; the peak
    after `pct_start` of the run's epochs."""
    max_lrs = [group["lr"] for group in optimizer.param_groups]
    total = max(1, steps(epochs))
    # the share of the run's steps before the peak; OneCycleLR needs 2 steps or more in each of
    # its phases (a phase of 1 step divides by zero), which a tiny run's rounding could miss
    peak = min(max(steps(pct_start * epochs), 2), total - 2) / total if total > 4 else pct_start
    scheduler = OneCycleLR(optimizer, max_lr=max_lrs, total_steps=total, pct_start=peak, div_factor=div_factor,
                           final_div_factor=final_div_factor, anneal_strategy=anneal_strategy,
                           cycle_momentum=False)
    return Schedule(optimizer, scheduler, "step")


def linear_warmup_decay(optimizer: Optimizer, *, epochs: int, steps: Steps, start_ratio: float,
                        peak_at: float, end_ratio: float) -> Schedule:
    """airbench94's triangle: from start_ratio x lr, linearly up to lr at `peak_at` of the run's
    steps, then linearly down to end_ratio x lr at its end. Step k (0-based) of a run of n
    steps trains at factor(k), as in the source's LambdaLR (there: n = 476, the peak at step
    int(0.23 n) = 109)."""
    total = max(1, steps(epochs))
    peak = int(peak_at * total)

    def factor(step: int) -> float:
        if step < peak:
            return start_ratio + (1 - start_ratio) * step / peak
        return 1 - (1 - end_ratio) * (step - peak) / max(1, total - peak)

    return Schedule(optimizer, LambdaLR(optimizer, factor), "step")


def constant(optimizer: Optimizer, *, epochs: int, steps: Steps) -> Schedule:
    return Schedule(optimizer, None, "epoch")
