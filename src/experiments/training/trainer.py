"""The one trainer every job uses: CUDA AMP, gradient accumulation and clipping, early stopping,
best-validation weights. The test set never enters here: `fit` selects on validation only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from experiments.errors import ConfigError
from experiments.training.schedules import Schedule

log = logging.getLogger(__name__)

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def resolve_device(name: str, job_num: int = 0) -> torch.device:
    """auto: CUDA if available, else CPU. With several GPUs visible, jobs take them round robin
    by job number, so parallel launchers (joblib) spread a sweep over the GPUs. A bare `cuda` is
    GPU 0: always an index, so that the job can make it the process's current device."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", job_num % torch.cuda.device_count())
    device = torch.device(name)
    return torch.device("cuda", 0) if device.type == "cuda" and device.index is None else device


def has_native_bf16(device: torch.device) -> bool:
    """Ampere (compute capability 8.0) and later run bf16 in hardware. Older GPUs (V100, T4)
    only emulate it, slowly and without cuDNN bf16 convolutions, yet
    `torch.cuda.is_bf16_supported()` says yes there (it counts emulation), and it reads the
    current device rather than this job's: hence the capability of `device` itself."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. auto: bf16 on GPUs with native bf16, fp16
    (with GradScaler) on older ones, fp32 on CPU."""
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if has_native_bf16(device) else torch.float16
    if name not in PRECISIONS:
        raise ConfigError(f"trainer.precision must be one of auto, {', '.join(PRECISIONS)}; "
                          f"got {name!r}")
    return PRECISIONS[name]


def unwrap(model: nn.Module) -> nn.Module:
    """The module itself under a torch.compile wrapper (which shares its parameters)."""
    return getattr(model, "_orig_mod", model)


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """bf16, fp16 or fp32: what `resolve_precision` chose, as the config spells it."""
    return next(k for k, v in PRECISIONS.items() if v == amp_dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Monitor:
    """Tracks the best value of one metric; `improved` says whether the newest value beats it."""

    def __init__(self, key: str, mode: str, min_delta: float = 0.0, patience: int | None = None):
        if mode not in ("min", "max"):
            raise ConfigError(f"the mode for {key} must be min or max, got {mode!r}")
        self.key, self.mode, self.min_delta, self.patience = key, mode, min_delta, patience
        self.best: float | None = None
        self.epochs_since_best = 0

    def update(self, metrics: dict[str, float]) -> bool:
        value = metrics[self.key]
        gain = (value - self.best if self.mode == "max" else self.best - value) if self.best is not None else None
        improved = gain is None or gain > self.min_delta
        if improved:
            self.best, self.epochs_since_best = value, 0
        else:
            self.epochs_since_best += 1
        return improved

    @property
    def exhausted(self) -> bool:
        """True once `patience` epochs in a row brought no improvement (early stopping)."""
        return self.patience is not None and self.epochs_since_best >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "epochs_since_best": self.epochs_since_best}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.epochs_since_best = state["best"], state["epochs_since_best"]


class DivergedError(RuntimeError):
    """The loss stayed NaN/inf for longer than the fp16 loss scaler would explain."""


@dataclass
class FitState:
    """Everything `fit` needs to continue where it stopped (saved in every checkpoint)."""

    epoch: int = 0  # epochs completed
    early_stopped: bool = False
    best_epoch: int | None = None
    best_val: dict[str, float] = field(default_factory=dict)  # validation metrics at best_epoch
    best_weights: dict[str, torch.Tensor] | None = None
    train_time_s: float = 0.0
    train_images: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # metrics of every epoch
    select: dict = field(default_factory=dict)
    stopper: dict = field(default_factory=dict)

    @property
    def images_per_s(self) -> float | None:
        return self.train_images / self.train_time_s if self.train_time_s > 0 else None


@contextmanager
def frozen_batchnorm_stats(model: nn.Module):
    """SAM's second pass must not count its batch twice in BatchNorm's running statistics."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


class Trainer:
    """Optional parts: `mixup` (timm Mixup: mixed images, soft targets), `ema` (timm ModelEmaV3:
    the averaged weights are the ones validated, selected and tested), a SAM optimizer (two
    gradient evaluations per step), a batch-size schedule (`fit(batch_sizes=...)`)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule, *,
                 device: torch.device, precision: str = "auto", grad_accum_steps: int = 1,
                 grad_clip: float | None = None, label_smoothing: float = 0.0,
                 progress: bool = True, nonfinite_tolerance: int = 20, mixup=None, ema=None):
        self.model, self.optimizer, self.schedule, self.device = model, optimizer, schedule, device
        self.amp_dtype = resolve_precision(precision, device)
        # fp16 needs loss scaling to keep small gradients; bf16 has fp32's range and does not
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.grad_accum_steps, self.grad_clip = grad_accum_steps, grad_clip
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)  # takes soft targets too
        self.progress, self.nonfinite_tolerance = progress, nonfinite_tolerance
        self.nonfinite_streak = torch.zeros((), device=device, dtype=torch.long)
        self.mixup, self.ema, self.steps = mixup, ema, 0
        self.sam = hasattr(optimizer, "perturb")

    @property
    def eval_model(self) -> nn.Module:
        """What is validated, selected and tested: the EMA weights when there are any."""
        return self.ema.module if self.ema is not None else self.model

    def eval_weights(self) -> dict[str, torch.Tensor]:
        """`eval_model`'s state dict with plain names (no torch.compile `_orig_mod.` prefix), so
        that saved weights load into the model as the config builds it."""
        return unwrap(self.eval_model).state_dict()

    def check_finite(self, longest_streak: int, any_nonfinite: bool) -> None:
        """fp16's GradScaler skips steps with inf gradients and lowers its scale, so a few
        non-finite losses in a row are normal there; anywhere else one means NaN weights."""
        tolerated = self.nonfinite_tolerance if self.scaler.is_enabled() else 0
        if any_nonfinite and longest_streak > tolerated:
            raise DivergedError(
                f"training diverged: the loss was NaN/inf for {longest_streak} steps in a row. "
                "Lower optim.lr, set trainer.grad_clip (e.g. 1.0), or use trainer.precision=bf16/fp32.")

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def state_dict(self) -> dict:
        state = {"model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                 "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
                 "steps": self.steps}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.steps = state["steps"]
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])

    def backward(self, images: torch.Tensor, targets: torch.Tensor,
                 group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Add this micro-batch's share of its group's mean-loss gradient (scaled for fp16)."""
        with self.autocast():
            logits = self.model(images)
            loss = self.loss_fn(logits, targets)
        # divided by the group's real size: an epoch's last group can be short, and dividing it
        # by grad_accum_steps would shrink its gradient (to half, for 3 micro-batches and accum 2)
        self.scaler.scale(loss / group_size).backward()
        return logits, loss

    def sam_second_pass(self, group: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Move to w + e(w) using the first pass's gradients, redo the step's micro-batches there,
        and come back to w holding the new gradients (still scaled) for the base optimizer."""
        norm = self.optimizer.grad_norm()
        if self.scaler.is_enabled() and not torch.isfinite(norm):
            # the first pass overflowed (fp16): a perturbation of inf * 0 would put NaN in the
            # weights and, through the second forward, in BatchNorm's running statistics. Skip
            # the second pass: scaler.step finds the inf, skips this step and lowers its scale.
            return  # (the check syncs with the GPU once per step, and only under fp16)
        # e(w) = rho * g / ||g|| is the same for scaled gradients: no unscale_ needed here
        self.optimizer.perturb(norm)
        self.optimizer.zero_grad(set_to_none=True)
        with frozen_batchnorm_stats(self.model):
            for images, targets in group:
                self.backward(images, targets, len(group))
        self.optimizer.restore()
        # the usual unscale_ (in clipping or scaler.step) now checks THESE gradients for inf, so
        # an overflow in the second pass also skips the step and lowers the scale

    def optimizer_step(self, group: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """One optimizer step from the accumulated gradients of `group` (SAM re-evaluates it)."""
        if self.sam:
            self.sam_second_pass(group)
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)  # skipped when unscale_ found inf/NaN (fp16)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step_batch()
        self.steps += 1
        if self.ema is not None:
            self.ema.update(unwrap(self.model), step=self.steps)

    def train_epoch(self, batches) -> dict[str, float]:
        """One pass over `batches`. train/acc compares predictions with the labels; under
        MixUp/CutMix, with each mixed target's dominant label (the image that covers more)."""
        self.model.train()
        # running sums stay on the device: no .item() (and no GPU sync) per step
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        streak = self.nonfinite_streak  # non-finite losses in a row, carried across epochs
        longest = torch.zeros_like(streak)
        seen, finite_seen, count = 0, torch.zeros_like(streak), len(batches)
        group = []  # this step's micro-batches (SAM evaluates them a second time)
        for i, (images, labels) in enumerate(batches):
            targets = labels
            if self.mixup is not None:  # mixed images, soft targets
                images, targets = self.mixup(images, labels)
            first = i - i % self.grad_accum_steps  # this group's first micro-batch
            group_size = min(self.grad_accum_steps, count - first)
            logits, loss = self.backward(images, targets, group_size)
            group.append((images, targets) if self.sam else None)  # SAM needs them again
            if len(group) == group_size:
                self.optimizer_step(group)
                group = []
            finite = torch.isfinite(loss.detach())
            streak = torch.where(finite, 0, streak + 1)
            longest = torch.maximum(longest, streak)
            # a step the fp16 scaler skips (inf loss) must not turn the epoch's mean into inf
            loss_sum += torch.where(finite, loss.detach().float(), 0.0) * len(labels)
            finite_seen += finite * len(labels)
            hard = targets.argmax(dim=1) if targets.dim() == 2 else targets
            correct += (logits.argmax(dim=1) == hard).sum()
            seen += len(labels)
        self.nonfinite_streak = streak
        self.check_finite(longest.item(), seen - finite_seen.item() > 0)
        mean_loss = loss_sum.item() / finite_seen.item() if finite_seen.item() else float("nan")
        return {"loss": mean_loss, "acc": correct.item() / seen}

    @torch.inference_mode()
    def evaluate(self, batches, tta_flip: bool = False) -> dict[str, float]:
        """Loss and accuracy of `eval_model`; with tta_flip, of the mean of the softmax of each
        image and its mirror image (reported apart, never mixed into the plain accuracy)."""
        model = self.eval_model
        model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        for images, labels in batches:
            with self.autocast():
                probs = model(images).float().softmax(dim=1)
                if tta_flip:
                    probs = (probs + model(images.flip(3)).float().softmax(dim=1)) / 2
            loss_sum += nn.functional.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum")
            correct += (probs.argmax(dim=1) == labels).sum()
            seen += len(labels)
        return {"loss": loss_sum.item() / seen, "acc": correct.item() / seen}

    def run_epoch(self, train, val) -> dict[str, float]:
        """One epoch of training (timed) and validation: the metrics every logger records."""
        lr = self.optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        train_metrics = self.train_epoch(train)
        synchronize(self.device)
        seconds = time.perf_counter() - start
        metrics = {"train/loss": train_metrics["loss"], "train/acc": train_metrics["acc"],
                   "train/lr": lr, "train/batch_size": train.batch_size, "time/epoch_s": seconds,
                   "time/images_per_s": train.num_images / seconds}
        if val is not None:
            metrics.update({f"val/{k}": v for k, v in self.evaluate(val).items()})
        self.schedule.step_epoch(metrics)
        return metrics

    def resize_batches(self, train, epoch: int, batch_sizes: Callable[[int], int] | None,
                       scale_lr: bool) -> None:
        """Apply the batch-size schedule; with scale_lr, the lr follows the batch (linear rule)."""
        if batch_sizes is None or batch_sizes(epoch) == train.batch_size:
            return
        new, before = batch_sizes(epoch), batch_sizes(epoch - 1) if epoch > 1 else train.batch_size
        if scale_lr and new != before:  # only where the schedule steps (not again on resume)
            self.schedule.scale_lr(new / before)
        log.info("epoch %d: batch size %d -> %d", epoch, train.batch_size, new)
        train.set_batch_size(new)

    def fit(self, train, val, epochs: int, *, select: Monitor, stopper: Monitor | None = None,
            state: FitState | None = None, batch_sizes: Callable[[int], int] | None = None,
            scale_lr: bool = False,
            after_epoch: Callable[[FitState, dict[str, float]], None] = lambda s, m: None) -> FitState:
        """Train until `epochs` are done, keeping the weights of the best validation epoch in
        `state.best_weights` (the model keeps the last epoch's: `use_best_weights` swaps).

        `state` continues an earlier, interrupted fit. `after_epoch` sees the state after every
        epoch (to log it and checkpoint it). Early stopping fires once `stopper` is exhausted.
        """
        state = state or FitState()
        if state.select:
            select.load_state_dict(state.select)
        if stopper is not None and state.stopper:
            stopper.load_state_dict(state.stopper)
        bar = tqdm(range(state.epoch + 1, epochs + 1), desc="epochs", unit="epoch",
                   initial=state.epoch, total=epochs, disable=not self.progress, dynamic_ncols=True)
        for epoch in bar if not state.early_stopped else ():
            self.resize_batches(train, epoch, batch_sizes, scale_lr)
            metrics = self.run_epoch(train, val)
            state.epoch, state.history = epoch, state.history + [{"epoch": epoch, **metrics}]
            state.train_time_s += metrics["time/epoch_s"]
            state.train_images += train.num_images
            if val is not None and select.update(metrics):
                state.best_weights = {k: v.detach().clone() for k, v in self.eval_weights().items()}
                state.best_epoch = epoch
                state.best_val = {k[4:]: v for k, v in metrics.items() if k.startswith("val/")}
            if stopper is not None and val is not None:
                stopper.update(metrics)
                state.early_stopped = stopper.exhausted
            state.select = select.state_dict()
            state.stopper = stopper.state_dict() if stopper is not None else {}
            after_epoch(state, metrics)
            bar.set_postfix({"loss": f"{metrics['train/loss']:.3g}",
                             **({"val_acc": f"{metrics['val/acc']:.3g}"} if "val/acc" in metrics else {})})
            if state.early_stopped:
                log.info("early stopping at epoch %d: %s has not improved for %d epochs",
                         epoch, stopper.key, stopper.patience)
                break
        bar.close()
        return state

    def use_best_weights(self, state: FitState) -> None:
        """Load the best validation epoch's weights (no-op without a validation split)."""
        if state.best_weights is not None:
            unwrap(self.eval_model).load_state_dict(state.best_weights)
