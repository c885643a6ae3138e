"""The one trainer every job uses: CUDA AMP, gradient accumulation and clipping, SAM, EMA,
early stopping, best-validation weights. The test set never enters here: `fit` selects on
validation only. One optimizer step, SAM's second pass included, reads top to bottom in
`Trainer.optimizer_step`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.contrib.logging import logging_redirect_tqdm

from experiments.ranks import SINGLE, Ranks
from experiments.timing import JobClock, NoClock
from experiments.training import metrics as m
from experiments.training.backends import precision_name, resolve_precision, synchronize, unwrap
from experiments.training.batch_schedule import BatchSchedule
from experiments.training.distributed import MAX, all_reduce
from experiments.training.divergence import NonfiniteWatch
from experiments.training.interrupts import GO_ON, NEVER, SAVE, Interrupted, Interrupts
from experiments.training.lookahead import Lookahead
from experiments.training.options import TrainerOptions
from experiments.training.progress import EpochBar, interactive
from experiments.training.sam import SAM
from experiments.training.schedules import Schedule
from experiments.training.selection import Monitor

Batch = tuple[torch.Tensor, torch.Tensor]  # images, targets (labels, or soft targets when mixed)

log = logging.getLogger(__name__)


@dataclass
class FitState:
    """Everything `fit` needs to continue where it stopped (saved in every checkpoint)."""

    epoch: int = 0  # epochs completed
    early_stopped: bool = False
    best_epoch: int | None = None
    best_val: dict[str, float] = field(default_factory=dict)  # validation metrics at best_epoch
    best_weights: dict[str, torch.Tensor] | None = None
    train_time_s: float = 0.0  # training passes only: validation and the warm-up step excluded
    train_images: int = 0  # the images of those passes
    warmup_s: float = 0.0  # the job's first optimizer step (compile, autotuning): apart
    history: list[dict[str, float]] = field(default_factory=list)  # metrics of every epoch
    select: dict = field(default_factory=dict)
    stopper: dict = field(default_factory=dict)
    # the epoch in progress when the checkpoint was written inside it (at a signal, or on
    # trainer.checkpoint_every_min): EpochProgress.state_dict(); None at an epoch's end
    progress: dict | None = None

    @property
    def images_per_s(self) -> float | None:
        return self.train_images / self.train_time_s if self.train_time_s > 0 else None


class Trainer:
    """Optional parts: `mixup` (timm Mixup: mixed images, soft targets), `ema` (timm ModelEmaV3:
    the averaged weights are the ones validated, selected and tested), `lookahead`
    (training/lookahead.py: an average written back into the weights), a SAM optimizer (its
    second pass is part of the step), a batch-size schedule (training/batch_schedule.py, made
    once per job), a `profiler` (training/profile.py: stepped after every optimizer step), a
    `clock` (experiments/timing.py: where the job's time goes). Everything else comes from
    `options`, the `trainer` config group as one typed object."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule,
                 options: TrainerOptions, *, device: torch.device,
                 batch_schedule: BatchSchedule | None = None, mixup=None, ema=None,
                 lookahead: Lookahead | None = None, ranks: Ranks = SINGLE,
                 interrupts: Interrupts = NEVER, clock: JobClock | None = None, profiler=None):
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.options, self.device, self.mixup, self.ema = options, device, mixup, ema
        self.lookahead, self.profiler = lookahead, profiler
        self.ranks = ranks  # under DDP `model` is wrapped (DistributedDataParallel)
        self.interrupts = interrupts  # asked after every step: checkpoint here, or stop
        self.clock = clock or NoClock()
        self.batch_schedule = batch_schedule or BatchSchedule(options)
        self.sam = optimizer if isinstance(optimizer, SAM) else None
        self.amp_dtype = resolve_precision(options.precision, device)
        # fp16 needs loss scaling to keep small gradients; bf16 has fp32's range and does not
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        # with mixing, timm's Mixup smooths the labels: the loss must not do it again
        smoothing = 0.0 if mixup is not None else options.label_smoothing
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=smoothing)  # takes soft targets too
        self.nonfinite_streak = torch.zeros((), device=device, dtype=torch.long)
        # stops at the first non-finite loss (fp16: past its tolerance) without waiting for the
        # GPU: training/divergence.py
        self.divergence = NonfiniteWatch(device, precision_name(self.amp_dtype), options)
        self.steps_taken = 0  # optimizer steps, over the whole run
        self.warmed_up = False  # this process has taken its first step (timed apart)
        # in this epoch: the warm-up step (seconds, images); the seconds inside its training pass
        # that were no training (checkpoints written inside it, the profiler's trace)
        self.warmup, self.aside_s = (0.0, 0), 0.0
        self.bar: EpochBar | None = None  # the epoch's progress on the console (fit sets it)

    @property
    def eval_model(self) -> nn.Module:
        """What is validated, selected and tested: the EMA weights when there are any. Under DDP
        the plain module: DDP's forward would sync buffers across ranks in the middle of a pass
        that the ranks split unevenly (evaluation's batch k is on rank k mod world_size)."""
        if self.ema is not None:
            return self.ema.module
        return unwrap(self.model) if self.ranks.distributed else self.model

    def eval_weights(self) -> dict[str, torch.Tensor]:
        """`eval_model`'s state dict with plain names (no torch.compile `_orig_mod.` prefix), so
        that saved weights load into the model as the config builds it."""
        return unwrap(self.eval_model).state_dict()

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def state_dict(self) -> dict:
        state = {"model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                 "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
                 "steps": self.steps_taken}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.lookahead is not None:
            state["lookahead"] = self.lookahead.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.steps_taken = state["steps"]
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.lookahead is not None:
            self.lookahead.load_state_dict(state["lookahead"])

    def forward_backward(self, images: torch.Tensor, targets: torch.Tensor, group_size: int,
                         last: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Add this micro-batch's share of its group's mean-loss gradient (scaled for fp16).
        Under DDP the gradients are averaged over the ranks in the backward of the group's
        `last` micro-batch only (`no_sync` before it)."""
        with nullcontext() if last or not self.ranks.distributed else self.model.no_sync():
            with self.autocast():
                logits = self.model(images)
                loss = self.loss_fn(logits, targets)
            # divided by the group's real size: an epoch's last group can be short, and dividing
            # it by grad_accum_steps would shrink its gradient (to half, for 3 micro-batches and
            # accum 2); DDP divides by the ranks: the mean over the global batch
            self.scaler.scale(loss / group_size).backward()
        return logits, loss

    def optimizer_step(self, group: list[Batch]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One optimizer step from the micro-batches of one accumulation group; returns each
        micro-batch's (logits, loss) of the first pass. The clean AMP sequence: the gradients
        accumulate (scaled under fp16), `unscale_` before clipping, the scaler's step (skipped
        when they hold inf/NaN) and update, then `zero_grad(set_to_none)`."""
        outputs = [self.forward_backward(images, targets, len(group), i == len(group) - 1)
                   for i, (images, targets) in enumerate(group)]
        if self.sam is not None:
            self.sam_second_pass(group)  # the gradients are now those at w + e(w)
        if self.options.grad_clip:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(self.model.parameters(), self.options.grad_clip)
        self.scaler.step(self.optimizer)  # skipped when unscale_ found inf/NaN (fp16)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step_batch()
        self.steps_taken += 1
        if self.ema is not None:
            self.ema.update(unwrap(self.model), step=self.steps_taken)
        if self.lookahead is not None:
            self.lookahead.after_step(self.steps_taken)
        if self.profiler is not None:
            self.aside_s += self.profiler.step()  # (the step that ends its recording writes it)
        return outputs

    def sam_second_pass(self, group: list[Batch]) -> None:
        """SAM: move to w + e(w) with the first pass's gradients, redo the group there, and come
        back to w holding the new gradients (still scaled) for the base optimizer's step."""
        norm = self.sam.grad_norm()
        if self.scaler.is_enabled() and not torch.isfinite(norm):
            # the first pass overflowed (fp16): a perturbation of inf * 0 would put NaN in the
            # weights and, through the second forward, in BatchNorm's running statistics. Skip
            # the second pass: scaler.step finds the inf, skips this step and lowers its scale.
            return  # (the check syncs with the GPU once per step, and only under fp16)
        self.sam.perturb(norm)  # e(w) = rho * g / ||g|| is the same for scaled gradients
        self.optimizer.zero_grad(set_to_none=True)
        with frozen_batchnorm_stats(self.model):  # the group is not counted twice in them
            for i, (images, targets) in enumerate(group):
                self.forward_backward(images, targets, len(group), i == len(group) - 1)
        self.sam.restore()
        # the usual unscale_ (in clipping or scaler.step) now checks THESE gradients for inf, so
        # an overflow in the second pass also skips the step and lowers the scale

    def ask_interrupts(self, nonfinite: torch.Tensor | None = None) -> int:
        """GO_ON, SAVE or the signal to stop at (training/interrupts.py), the same on every rank:
        under DDP the ranks' answers are reduced (one small all-reduce per step). After a step,
        `nonfinite` (its epoch's longest run of non-finite losses, on the device) is checked
        (training/divergence.py): under DDP in the same all-reduce, so that every rank reads
        the same maximum over the ranks after the same step and they stop together."""
        answer = self.interrupts.poll()
        if self.ranks.distributed:
            count = nonfinite if nonfinite is not None else self.nonfinite_streak.new_zeros(())
            flags = torch.stack([torch.tensor(answer, device=self.device, dtype=count.dtype), count])
            answer, longest = (int(v) for v in all_reduce(flags, self.ranks, MAX).tolist())
            if nonfinite is not None:
                self.divergence.check(longest, self.steps_taken)
        elif nonfinite is not None:
            self.divergence.after_step(nonfinite, self.steps_taken)
        return answer

    def stop_if_asked(self, where: str) -> None:
        """Raise Interrupted, on every rank alike, when a stop signal has come: outside the fit
        (between the passes of the test), where the fit's last checkpoint is the place to
        continue from. (A checkpoint due on the clock is not: the fit is done.)"""
        answer = self.ask_interrupts()
        if answer not in (GO_ON, SAVE):
            raise Interrupted(answer, where)

    def train_epoch(self, batches, progress: EpochProgress | None = None,
                    save_inside: Callable[[EpochProgress], None] = lambda p: None) -> dict[str, float]:
        """One pass over `batches`. train/acc compares predictions with the labels; under
        MixUp/CutMix, with each mixed target's dominant label (the image that covers more).

        `progress` continues an epoch checkpointed inside (its first steps' batches are served
        again, from the same generator states, and skipped); after every step the interrupts
        are asked whether to checkpoint here (`save_inside`) or to stop (Interrupted)."""
        self.model.train()
        progress = progress or EpochProgress(0, [], 0.0)
        totals = EpochTotals(self.device, self.nonfinite_streak)
        if progress.totals is not None:
            totals.load_state_dict(progress.totals)
        started = time.perf_counter()
        for step, group in enumerate(accumulation_groups(batches, self.options.grad_accum_steps)):
            if step < progress.steps:
                continue  # done before the checkpoint (drawn again: the generators move on alike)
            if self.mixup is not None:  # mixed images, soft targets
                group = [self.mixup(images, labels) for images, labels in group]
            first, step_started = not self.warmed_up, time.perf_counter()
            for (_, targets), (logits, loss) in zip(group, self.optimizer_step(group)):
                totals.add(logits, loss, targets)
            if self.bar is not None:  # (every rank's share of the step's images)
                self.bar.update(sum(len(t) for _, t in group) * self.ranks.world_size)
            if first:  # the process's first step: compile, cuDNN autotuning, first allocations
                synchronize(self.device)
                self.warmed_up = True
                self.warmup = (time.perf_counter() - step_started, sum(len(t) for _, t in group))
            answer = self.ask_interrupts(totals.longest)
            if answer != GO_ON:
                synchronize(self.device)
                self.divergence.settle(totals.longest, self.steps_taken)  # (no NaN in a checkpoint)
                progress.steps, progress.totals = step + 1, totals.state_dict()
                progress.seconds += time.perf_counter() - started
                started = time.perf_counter()
                save_inside(progress)
                self.aside_s += time.perf_counter() - started  # (no training time)
                started = time.perf_counter()
                if answer != SAVE:
                    raise Interrupted(answer, f"in epoch {progress.epoch} after step {step + 1}")
        self.nonfinite_streak = totals.streak
        self.divergence.settle(totals.longest, self.steps_taken)  # (after the last step's read)
        return totals.means(self.ranks)

    def evaluate(self, batches, tta: str = "none") -> dict[str, float]:
        """Loss and accuracy of `eval_model` (see `evaluate`)."""
        return evaluate(self.eval_model, batches, device=self.device, amp_dtype=self.amp_dtype,
                        tta=tta, ranks=self.ranks)

    def run_epoch(self, train, val, epoch: int = 0, progress: EpochProgress | None = None,
                  save_inside: Callable[[EpochProgress], None] = lambda p: None) -> dict[str, float]:
        """One epoch of training (timed) and validation (None: not this epoch): the metrics
        every logger records. `progress` continues an epoch checkpointed inside."""
        if progress is None:
            lr = scheduled_lr(self.optimizer)
            progress = EpochProgress.start(epoch, train, lr) if hasattr(train, "generators") else None
        else:
            progress.restore_generators(train)  # the epoch's order and augmentation, from its start
        lr = progress.lr if progress is not None else scheduled_lr(self.optimizer)
        before = progress.seconds if progress is not None else 0.0  # trained before a resume
        self.warmup, self.aside_s = (0.0, 0), 0.0  # this epoch's warm-up step; what was no training
        self.divergence.epoch = epoch or None
        start = time.perf_counter()
        with self.clock("train"):
            train_metrics = self.train_epoch(train, progress, save_inside)
            synchronize(self.device)
        self.clock.move(self.warmup[0], "train", "warmup")
        seconds = time.perf_counter() - start + before - self.aside_s
        metrics = {m.TRAIN_LOSS: train_metrics["loss"], m.TRAIN_ACC: train_metrics["acc"],
                   m.LR: lr, m.BATCH_SIZE: train.batch_size, m.EPOCH_S: seconds,
                   m.IMAGES_PER_S: train.num_images / seconds}
        if val is not None:
            with self.clock("validation"):
                evaluated = self.evaluate(val)
            metrics.update({m.VAL_LOSS: evaluated["loss"], m.VAL_ACC: evaluated["acc"]})
        self.schedule.step_epoch(metrics)
        return metrics

    def monitors(self, state: FitState) -> tuple[Monitor, Monitor | None]:
        """Model selection and early stopping (None: off), continued from `state`."""
        o, es = self.options, self.options.early_stopping
        select = Monitor(o.monitor)
        stopper = Monitor(es.monitor, es.min_delta, es.patience) if es.patience else None
        if state.select:
            select.load_state_dict(state.select)
        if stopper is not None and state.stopper:
            stopper.load_state_dict(state.stopper)
        return select, stopper

    def fit(self, train, val, *, state: FitState | None = None,
            after_epoch: Callable[[FitState, dict[str, float]], None] = lambda s, m: None,
            save: Callable[[FitState], None] = lambda s: None) -> FitState:
        """Train until `options.epochs` are done, keeping the weights of the best validation epoch
        in `state.best_weights` (the model keeps the last epoch's: `use_best_weights` swaps).
        Validation runs every `options.val_every` epochs and at the last.

        `state` continues an earlier, interrupted fit (inside an epoch when `state.progress`
        says so). `after_epoch` sees the state after every epoch (to log it); `save` is asked to
        checkpoint it: every `options.checkpoint_every` epochs, at the last one (and at an
        early stop), and when the interrupts ask, between epochs or inside one (then with
        `state.progress` set). Early stopping fires once its monitor is exhausted. A stop signal
        raises Interrupted, after that checkpoint.
        """
        state = state or FitState()
        shown = self.options.progress and self.ranks.main  # the bars (training/progress.py)
        # on a terminal, log lines go above the bar (tqdm.write), never into it
        with logging_redirect_tqdm() if shown and interactive() else nullcontext():
            return self.fit_epochs(train, val, state, after_epoch, save, shown)

    def fit_epochs(self, train, val, state: FitState, after_epoch, save, shown: bool) -> FitState:
        """`fit`'s loop over the epochs."""
        epochs, started, walls = self.options.epochs, time.perf_counter(), []
        select, stopper = self.monitors(state)

        def save_inside(progress: EpochProgress) -> None:
            state.progress = progress.state_dict()
            save(state)
            self.interrupts.saved()
            state.progress = None

        for epoch in range(state.epoch + 1, epochs + 1) if not state.early_stopped else ():
            resumed = EpochProgress(**state.progress) if state.progress else None
            state.progress = None
            # a resumed epoch's batch size is set again, its lr already scaled (it is restored)
            self.batch_schedule.apply(epoch, train, self.schedule if resumed is None else None)
            job_eta = sum(walls) / len(walls) * (epochs - epoch + 1) if walls else None
            self.bar = EpochBar(epoch, epochs, train.num_images, enabled=shown, job_eta_s=job_eta)
            validates = val is not None and (epoch % self.options.val_every == 0
                                             or epoch == epochs)
            try:
                metrics = self.run_epoch(train, val if validates else None, epoch, resumed, save_inside)
            finally:
                self.bar.close()
                self.bar = None
            state.epoch, state.history = epoch, state.history + [{"epoch": epoch, **metrics}]
            warmup_s, warmup_images = self.warmup
            state.train_time_s += metrics[m.EPOCH_S] - warmup_s
            state.train_images += train.num_images - warmup_images
            state.warmup_s += warmup_s
            if validates and select.update(metrics):
                state.best_weights = {k: v.detach().clone() for k, v in self.eval_weights().items()}
                state.best_epoch = epoch
                state.best_val = {"loss": metrics[m.VAL_LOSS], "acc": metrics[m.VAL_ACC]}
            if stopper is not None and validates:
                stopper.update(metrics)
                state.early_stopped = stopper.exhausted
            state.select = select.state_dict()
            state.stopper = stopper.state_dict() if stopper is not None else {}
            after_epoch(state, metrics)
            answer = self.ask_interrupts()  # e.g. a signal during validation: stop here
            if (answer != GO_ON or epoch % self.options.checkpoint_every == 0 or epoch == epochs
                    or state.early_stopped):
                save(state)
                self.interrupts.saved()
            if answer not in (GO_ON, SAVE):
                raise Interrupted(answer, f"after epoch {epoch}")
            walls.append(time.perf_counter() - started)
            started = time.perf_counter()
            if state.early_stopped:
                log.info("early stopping at epoch %d: %s has not improved for %d epochs",
                         epoch, stopper.key, stopper.patience)
                break
        return state

    def use_best_weights(self, state: FitState) -> None:
        """Load the best validation epoch's weights (no-op without a validation split)."""
        if state.best_weights is not None:
            unwrap(self.eval_model).load_state_dict(state.best_weights)


def tta_log_probs(model: nn.Module, images: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """Log-probabilities of `images` (none), of the mean of the softmax of each image and its
    mirror image (flip), or airbench's: that mean at weight 1/2 for the image, 1/4 for each of
    two copies shifted by one pixel (up-left, down-right; reflect-padded) (flip_translate)."""
    def mirrored(x: torch.Tensor) -> torch.Tensor:
        plain = model(x).float().log_softmax(dim=1)
        if tta == "none":
            return plain
        return torch.logaddexp(plain, model(x.flip(3)).float().log_softmax(dim=1)) - math.log(2)

    if tta != "flip_translate":
        return mirrored(images)
    h, w = images.shape[-2:]
    padded = nn.functional.pad(images, (1, 1, 1, 1), mode="reflect")
    shifted = [mirrored(padded[..., :h, :w]), mirrored(padded[..., 2:, 2:])]
    parts = torch.stack([mirrored(images) + math.log(0.5), *(s + math.log(0.25) for s in shifted)])
    return torch.logsumexp(parts, dim=0)


@torch.inference_mode()
def evaluate(model: nn.Module, batches, *, device: torch.device, amp_dtype=None,
             tta: str = "none", ranks: Ranks = SINGLE) -> dict[str, float]:
    """Loss and accuracy of `model` over `batches`; with `tta` (flip, flip_translate: see
    `tta_log_probs`), of its averaged predictions (reported apart, never mixed into the plain
    accuracy).

    The loss is computed in log space (log-softmax; log-sum-exp for the mean of two
    softmaxes): the log of a clamped softmax capped a confidently wrong prediction at 27.6
    per image (a true 53.4 read 22.7), and val/loss drives selection and stopping."""
    model.eval()
    if ranks.distributed:  # BatchNorm statistics as rank 0 has them, on every rank
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
    # sums in float64: over this rank's batches, then over the ranks, they add up exactly
    # (float32 batch sums) to what one process evaluating every batch would get
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.float64)
    seen = torch.zeros((), device=device, dtype=torch.float64)
    for images, labels in batches:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            log_probs = tta_log_probs(model, images, tta)
        loss_sum += nn.functional.nll_loss(log_probs, labels, reduction="sum")
        correct += (log_probs.argmax(dim=1) == labels).sum()
        seen += len(labels)
    loss_sum, correct, seen = all_reduce(torch.stack([loss_sum, correct, seen]), ranks).tolist()
    return {"loss": loss_sum / seen, "acc": correct / seen}


@dataclass
class EpochProgress:
    """Where an epoch is: enough to redo its first `steps` optimizer steps' batches exactly (the
    training loader's generators as they were at the epoch's start) and to carry on its sums.
    Under DDP each rank has its own (its augmentation's generator, its share of the images' sums):
    a checkpoint holds every rank's (training/checkpoint.py)."""

    epoch: int
    generators: list  # this rank's training loader's generator states at the epoch's start
    lr: float  # the epoch's learning rate as logged (its start's)
    steps: int = 0  # optimizer steps done in this epoch
    seconds: float = 0.0  # training time in this epoch before the last checkpoint inside it
    totals: dict | None = None  # this rank's EpochTotals.state_dict() (None: from zero)

    @classmethod
    def start(cls, epoch: int, loader, lr: float) -> EpochProgress:
        return cls(epoch, [g.get_state() for g in loader.generators], lr)

    def restore_generators(self, loader) -> None:
        for generator, state in zip(loader.generators, self.generators, strict=True):
            generator.set_state(state)

    def state_dict(self) -> dict:
        return dict(vars(self))


def scheduled_lr(optimizer: torch.optim.Optimizer) -> float:
    """optim.lr as scheduled (train/lr): the lr of the first group at optim.lr's own scale
    (fine-tuning's head, airbench's weights, Muon's side of a model), else the highest."""
    for group in optimizer.param_groups:
        if group.get("lr_scale", 1.0) == 1.0:
            return group["lr"]
    return max(group["lr"] for group in optimizer.param_groups)


def accumulation_groups(batches, size: int):
    """The micro-batches of each optimizer step: `size` at a time, the epoch's last group
    possibly shorter (it still steps, with its own mean gradient)."""
    group = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


class EpochTotals:
    """An epoch's running training loss and accuracy, kept on the device (no .item(), so no GPU
    sync, per step), and the non-finite losses in a row (carried across epochs; the epoch's
    longest run is what training/divergence.py reads)."""

    def __init__(self, device: torch.device, streak: torch.Tensor):
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.finite_seen = torch.zeros((), device=device, dtype=torch.long)
        self.streak, self.longest = streak, torch.zeros_like(streak)
        self.seen = 0

    def add(self, logits: torch.Tensor, loss: torch.Tensor, targets: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach())
        self.streak = torch.where(finite, 0, self.streak + 1)
        self.longest = torch.maximum(self.longest, self.streak)
        n = len(targets)
        # a step the fp16 scaler skips (inf loss) must not turn the epoch's mean into inf
        self.loss_sum += torch.where(finite, loss.detach().float(), 0.0) * n
        self.finite_seen += finite * n
        hard = targets.argmax(dim=1) if targets.dim() == 2 else targets
        self.correct += (logits.argmax(dim=1) == hard).sum()
        self.seen += n

    def state_dict(self) -> dict:
        """The running sums, for a checkpoint inside the epoch (on the CPU: it may resume elsewhere)."""
        return {"loss_sum": self.loss_sum.cpu(), "correct": self.correct.cpu(),
                "finite_seen": self.finite_seen.cpu(), "streak": self.streak.cpu(),
                "longest": self.longest.cpu(), "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        device = self.loss_sum.device
        self.loss_sum, self.correct = state["loss_sum"].to(device), state["correct"].to(device)
        self.finite_seen, self.streak = state["finite_seen"].to(device), state["streak"].to(device)
        self.longest, self.seen = state["longest"].to(device), state["seen"]

    @staticmethod
    def merged(states: list[dict]) -> dict:
        """Several ranks' running sums as one rank's, each image counted once (an epoch resumed
        on another number of ranks); the longest non-finite streak of any."""
        out = {key: sum(s[key] for s in states) for key in ("loss_sum", "correct", "finite_seen", "seen")}
        for key in ("streak", "longest"):
            out[key] = torch.stack([s[key] for s in states]).amax()
        return out

    def means(self, ranks: Ranks) -> dict[str, float]:
        """The epoch's mean loss and accuracy over every rank's images."""
        seen = torch.tensor(float(self.seen), device=self.loss_sum.device, dtype=torch.float64)
        totals = torch.stack([self.loss_sum.double(), self.correct.double(),
                              self.finite_seen.double(), seen])
        loss_sum, correct, finite, seen = all_reduce(totals, ranks).tolist()
        return {"loss": loss_sum / finite if finite else float("nan"), "acc": correct / seen}


@contextmanager
def frozen_batchnorm_stats(model: nn.Module):
    """SAM's second pass must not count its batch twice in BatchNorm's running statistics."""
    norms = [n for n in model.modules() if isinstance(n, nn.modules.batchnorm._BatchNorm)]
    momenta = [n.momentum for n in norms]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
