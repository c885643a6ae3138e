"""The one trainer every job uses: CUDA AMP, gradient accumulation and clipping, early stopping,
best-validation weights. The test set never enters here: `fit` selects on validation only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from experiments.schedules import Schedule

log = logging.getLogger(__name__)

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def resolve_device(name: str, job_num: int = 0) -> torch.device:
    """auto: CUDA if available, else CPU. With several GPUs visible, jobs take them round robin
    by job number, so parallel launchers (joblib) spread a sweep over the GPUs."""
    if name != "auto":
        return torch.device(name)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", job_num % torch.cuda.device_count())


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. auto: bf16 if the GPU has it, else fp16; fp32 on CPU."""
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert name in PRECISIONS, f"unknown precision {name!r}; known: auto, {', '.join(PRECISIONS)}"
    return PRECISIONS[name]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Monitor:
    """Tracks the best value of one metric; `improved` says whether the newest value beats it."""

    def __init__(self, key: str, mode: str, min_delta: float = 0.0, patience: int | None = None):
        assert mode in ("min", "max"), f"mode must be min or max, not {mode!r}"
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


class Trainer:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule, *,
                 device: torch.device, precision: str = "auto", grad_accum_steps: int = 1,
                 grad_clip: float | None = None, label_smoothing: float = 0.0,
                 progress: bool = True, nonfinite_tolerance: int = 20):
        self.model, self.optimizer, self.schedule, self.device = model, optimizer, schedule, device
        self.amp_dtype = resolve_precision(precision, device)
        # fp16 needs loss scaling to keep small gradients; bf16 has fp32's range and does not
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.grad_accum_steps, self.grad_clip = grad_accum_steps, grad_clip
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.progress, self.nonfinite_tolerance = progress, nonfinite_tolerance
        self.nonfinite_streak = torch.zeros((), device=device, dtype=torch.long)

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
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])

    def optimizer_step(self) -> None:
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step_batch()

    def train_epoch(self, batches) -> dict[str, float]:
        self.model.train()
        # running sums stay on the device: no .item() (and no GPU sync) per step
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        streak = self.nonfinite_streak  # non-finite losses in a row, carried across epochs
        longest = torch.zeros_like(streak)
        seen, finite_seen, last = 0, torch.zeros_like(streak), len(batches) - 1
        for i, (images, labels) in enumerate(batches):
            with self.autocast():
                logits = self.model(images)
                loss = self.loss_fn(logits, labels)
            self.scaler.scale(loss / self.grad_accum_steps).backward()
            if (i + 1) % self.grad_accum_steps == 0 or i == last:
                self.optimizer_step()
            finite = torch.isfinite(loss.detach())
            streak = torch.where(finite, 0, streak + 1)
            longest = torch.maximum(longest, streak)
            # a step the fp16 scaler skips (inf loss) must not turn the epoch's mean into inf
            loss_sum += torch.where(finite, loss.detach().float(), 0.0) * len(labels)
            finite_seen += finite * len(labels)
            correct += (logits.argmax(dim=1) == labels).sum()
            seen += len(labels)
        self.nonfinite_streak = streak
        self.check_finite(longest.item(), seen - finite_seen.item() > 0)
        mean_loss = loss_sum.item() / finite_seen.item() if finite_seen.item() else float("nan")
        return {"loss": mean_loss, "acc": correct.item() / seen}

    @torch.inference_mode()
    def evaluate(self, batches) -> dict[str, float]:
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        for images, labels in batches:
            with self.autocast():
                logits = self.model(images)
            loss_sum += nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
            correct += (logits.argmax(dim=1) == labels).sum()
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
                   "train/lr": lr, "time/epoch_s": seconds,
                   "time/images_per_s": train.num_images / seconds}
        if val is not None:
            metrics.update({f"val/{k}": v for k, v in self.evaluate(val).items()})
        self.schedule.step_epoch(metrics)
        return metrics

    def fit(self, train, val, epochs: int, *, select: Monitor, stopper: Monitor | None = None,
            state: FitState | None = None,
            after_epoch: Callable[[FitState, dict[str, float]], None] = lambda s, m: None) -> FitState:
        """Train until `epochs` are done; keep the weights of the best validation epoch.

        `state` continues an earlier, interrupted fit. `after_epoch` sees the state after every
        epoch (to log it and checkpoint it). Early stopping fires once `stopper` is exhausted.
        Without a validation split the last epoch's weights are the chosen ones.
        """
        state = state or FitState()
        if state.select:
            select.load_state_dict(state.select)
        if stopper is not None and state.stopper:
            stopper.load_state_dict(state.stopper)
        bar = tqdm(range(state.epoch + 1, epochs + 1), desc="epochs", unit="epoch",
                   initial=state.epoch, total=epochs, disable=not self.progress, dynamic_ncols=True)
        for epoch in bar if not state.early_stopped else ():
            metrics = self.run_epoch(train, val)
            state.epoch, state.history = epoch, state.history + [{"epoch": epoch, **metrics}]
            state.train_time_s += metrics["time/epoch_s"]
            state.train_images += train.num_images
            if val is not None and select.update(metrics):
                state.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
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
        if state.best_weights is not None:
            self.model.load_state_dict(state.best_weights)
        return state
