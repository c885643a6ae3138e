"""Learning-rate schedules for the `sched` config group.

Each factory is `_partial_` in its config; the trainer completes it with the optimizer and the run's
length, and gets back a Schedule that says when it must be stepped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau, StepLR


@dataclass
class Schedule:
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


def warmup_cosine(optimizer: Optimizer, *, epochs: int, steps_per_epoch: int,
                  warmup_epochs: float, min_lr_ratio: float) -> Schedule:
    """Linear warm-up from ~0 to the base lr, then half a cosine down to min_lr_ratio * lr."""
    total = max(1, epochs * steps_per_epoch)
    warmup = min(total, round(warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return Schedule(LambdaLR(optimizer, factor), "step")


def plateau(optimizer: Optimizer, *, epochs: int, steps_per_epoch: int, monitor: str,
            mode: str, factor: float, patience: int, threshold: float, min_lr: float) -> Schedule:
    """ReduceLROnPlateau on a validation metric (there must be a validation split)."""
    scheduler = ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience,
                                  threshold=threshold, min_lr=min_lr)
    return Schedule(scheduler, "epoch", monitor)


def step(optimizer: Optimizer, *, epochs: int, steps_per_epoch: int, step_size: int,
         gamma: float) -> Schedule:
    """Multiply the lr by gamma every step_size epochs."""
    return Schedule(StepLR(optimizer, step_size=step_size, gamma=gamma), "epoch")


def constant(optimizer: Optimizer, *, epochs: int, steps_per_epoch: int) -> Schedule:
    return Schedule(None, "epoch")
