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


@dataclass
class FitResult:
    epochs_completed: int = 0
    early_stopped: bool = False
    best_epoch: int | None = None
    best_val: dict[str, float] = field(default_factory=dict)  # validation metrics at best_epoch
    train_time_s: float = 0.0
    train_images: int = 0

    @property
    def images_per_s(self) -> float | None:
        return self.train_images / self.train_time_s if self.train_time_s > 0 else None


class Trainer:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule, *,
                 device: torch.device, precision: str = "auto", grad_accum_steps: int = 1,
                 grad_clip: float | None = None, label_smoothing: float = 0.0,
                 progress: bool = True):
        self.model, self.optimizer, self.schedule, self.device = model, optimizer, schedule, device
        self.amp_dtype = resolve_precision(precision, device)
        # fp16 needs loss scaling to keep small gradients; bf16 has fp32's range and does not
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.grad_accum_steps, self.grad_clip = grad_accum_steps, grad_clip
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.progress = progress

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

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
        seen, last = 0, len(batches) - 1
        for i, (images, labels) in enumerate(batches):
            with self.autocast():
                logits = self.model(images)
                loss = self.loss_fn(logits, labels)
            self.scaler.scale(loss / self.grad_accum_steps).backward()
            if (i + 1) % self.grad_accum_steps == 0 or i == last:
                self.optimizer_step()
            loss_sum += loss.detach().float() * len(labels)
            correct += (logits.argmax(dim=1) == labels).sum()
            seen += len(labels)
        return {"loss": loss_sum.item() / seen, "acc": correct.item() / seen}

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

    def fit(self, train, val, epochs: int, *, select: Monitor, stopper: Monitor | None = None,
            on_epoch: Callable[[int, dict[str, float]], None] = lambda e, m: None) -> FitResult:
        """Train for `epochs`; keep the weights of the best validation epoch (by `select`).

        Early stopping fires once `stopper` is exhausted (its patience ran out). Without a
        validation split the last epoch's weights are the chosen ones.
        """
        result, best_state = FitResult(), None
        bar = tqdm(range(1, epochs + 1), desc="epochs", unit="epoch", disable=not self.progress,
                   dynamic_ncols=True)
        for epoch in bar:
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
            result.epochs_completed, result.train_time_s = epoch, result.train_time_s + seconds
            result.train_images += train.num_images
            if val is not None and select.update(metrics):
                best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                result.best_epoch = epoch
                result.best_val = {k[4:]: v for k, v in metrics.items() if k.startswith("val/")}
            on_epoch(epoch, metrics)
            bar.set_postfix({k.split("/")[-1] if k.startswith("train") else k: f"{v:.3g}"
                             for k, v in metrics.items() if k in ("train/loss", "val/acc")})
            if stopper is not None and val is not None:
                stopper.update(metrics)
                if stopper.exhausted:
                    result.early_stopped = True
                    log.info("early stopping at epoch %d: %s has not improved for %d epochs",
                             epoch, stopper.key, stopper.patience)
                    break
        bar.close()
        if best_state is not None:
            self.model.load_state_dict(best_state)
        return result
