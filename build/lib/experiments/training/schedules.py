"""Learning-rate schedules for the `sched` config group.

Each factory is `_partial_` in its config; the trainer completes it with the optimizer and the run's
length, and gets back a Schedule that says when it must be stepped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR, ReduceLROnPlateau, StepLR


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
        else:
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


def warmup_cosine(optimizer: Optimizer, *, epochs: int, steps_per_epoch: int, total_steps: int,
                  warmup_epochs: float, min_lr_ratio: float) -> Schedule:
    """Linear warm-up from ~0 to the base lr, then half a cosine down to min_lr_ratio * lr.

    `total_steps` is the run's optimizer steps (not epochs * steps_per_epoch when a batch-size
    schedule changes the steps per epoch)."""
    total = max(1, total_steps)
    warmup = min(total, round(warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return Schedule(optimizer, LambdaLR(optimizer, factor), "step")


def plateau(optimizer: Optimizer, *, epochs: int, steps_per_epoch: int, total_steps: int,
            monitor: str, mode: str, factor: float, patience: int, threshold: float,
            min_lr: float) -> Schedule:
    """ReduceLROnPlateau on a validation metric (there must be a validation split)."""
    scheduler = ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience,
                                  threshold=threshold, min_lr=min_lr)
    return Schedule(optimizer, scheduler, "epoch", monitor)


def step(optimizer: Optimizer, *, epochs: int, steps_per_epoch: int, total_steps: int,
         step_size: int, gamma: float) -> Schedule:
    """Multiply the lr by gamma every step_size epochs."""
    return Schedule(optimizer, StepLR(optimizer, step_size=step_size, gamma=gamma), "epoch")


def one_cycle(optimizer: Optimizer, *, epochs: int, steps_per_epoch: int, total_steps: int,
              pct_start: float, div_factor: float, final_div_factor: float,
              anneal_strategy: str) -> Schedule:
    """OneCycleLR up to the optimizer's lr (as max_lr) and down, over the whole run."""
    max_lrs = [group["lr"] for group in optimizer.param_groups]
    scheduler = OneCycleLR(optimizer, max_lr=max_lrs, total_steps=max(1, total_steps),
                           pct_start=pct_start, div_factor=div_factor,
                           final_div_factor=final_div_factor, anneal_strategy=anneal_strategy,
                           cycle_momentum=False)
    return Schedule(optimizer, scheduler, "step")


def constant(optimizer: Optimizer, *, epochs: int, steps_per_epoch: int,
             total_steps: int) -> Schedule:
    return Schedule(optimizer, None, "epoch")
