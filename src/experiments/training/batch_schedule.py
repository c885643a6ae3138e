"""`trainer.batch_schedule` in one place: the batch size of each epoch, the optimizer steps the
run takes under it (for the lr schedules), and the switch at each listed epoch (a new batch size
for the loader; with scale_lr, the learning rate scaled by the same factor: the linear rule)."""

from __future__ import annotations

import logging
import math

from experiments.errors import ConfigError
from experiments.training.options import TrainerOptions

log = logging.getLogger(__name__)


class BatchSchedule:
    def __init__(self, options: TrainerOptions):
        plan = options.batch_schedule
        self.initial, self.accum = options.batch_size, options.grad_accum_steps
        self.points = sorted(zip(plan.epochs, plan.sizes)) if plan else []
        self.scale_lr = bool(plan and plan.scale_lr)
        self.sizes = options.batch_sizes  # by the key that sets each, for messages

    def size(self, epoch: int) -> int:
        """The training batch size in `epoch` (1-based)."""
        size = self.initial
        for start, new in self.points:
            if epoch >= start:
                size = new
        return size

    def check_fits(self, n_train: int, val_size) -> None:
        """Every training batch must fit in the training set. Refused rather than served as one
        short batch of the whole set: that would be another experiment (another batch size,
        learning-rate ratio and BatchNorm statistics) than the one asked for, and is almost
        always a mistake."""
        for key, size in self.sizes.items():
            if size > n_train:
                held_out = (f" after holding out data.val_size={val_size} for validation"
                            if val_size else "")
                raise ConfigError(f"{key}={size} is larger than the training set ({n_train} "
                                  f"images{held_out}): use {key} <= {n_train}")

    def steps_per_epoch(self, n_train: int, epoch: int) -> int:
        """Optimizer steps in `epoch`: the loader drops a ragged last batch, and an epoch's last
        accumulation group may be short but still steps."""
        return math.ceil((n_train // self.size(epoch)) / self.accum)

    def steps_until(self, n_train: int, epochs: float) -> int:
        """Optimizer steps taken after `epochs` (a fraction counts that share of the next
        epoch's steps): where a warm-up of `epochs` ends, what a run of `epochs` takes. Each
        epoch counts its own steps, so a batch size that changes during a warm-up (or any time)
        moves every schedule's step counts with it."""
        whole = int(epochs)
        steps = sum(self.steps_per_epoch(n_train, e) for e in range(1, whole + 1))
        return steps + round((epochs - whole) * self.steps_per_epoch(n_train, whole + 1))

    def apply(self, epoch: int, loader, schedule) -> None:
        """Before `epoch`: give the loader this epoch's batch size (and scale the lr with it)."""
        new = self.size(epoch)
        if not self.points or new == loader.batch_size:  # no schedule: the loader's size stays
            return
        before = self.size(epoch - 1) if epoch > 1 else loader.batch_size
        if self.scale_lr and new != before and schedule is not None:  # only where it steps
            # (schedule None: an epoch resumed inside, whose restored lr is already scaled)
            schedule.scale_lr(new / before)
        log.info("epoch %d: batch size %d -> %d", epoch, loader.batch_size, new)
        loader.set_batch_size(new)
