"""The optimizer step, chosen once per job: plain, or SAM's (a second gradient evaluation at the
perturbed weights first). Both end in the same AMP sequence: `unscale_` before clipping, the
scaler's step (skipped when the gradients hold inf/NaN) and update, `zero_grad(set_to_none)`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn as nn

from experiments.training.sam import SAM

Batch = tuple[torch.Tensor, torch.Tensor]
Backward = Callable[[torch.Tensor, torch.Tensor, int], object]  # (images, targets, group_size)


class PlainStep:
    keeps_batches = False  # the step needs nothing but the accumulated gradients

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, grad_clip: float | None):
        self.model, self.optimizer, self.scaler, self.grad_clip = model, optimizer, scaler, grad_clip

    def __call__(self, group: list[Batch], backward: Backward) -> None:
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)  # skipped when unscale_ found inf/NaN (fp16)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)


class SamStep(PlainStep):
    """Move to w + e(w) with the first pass's gradients, redo the group's micro-batches there, come
    back to w holding the new gradients (still scaled) for the base optimizer's plain step."""

    keeps_batches = True  # the second pass evaluates the group's micro-batches again

    def __call__(self, group: list[Batch], backward: Backward) -> None:
        self.second_pass(group, backward)
        super().__call__(group, backward)

    def second_pass(self, group: list[Batch], backward: Backward) -> None:
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
                backward(images, targets, len(group))
        self.optimizer.restore()
        # the usual unscale_ (in clipping or scaler.step) now checks THESE gradients for inf, so
        # an overflow in the second pass also skips the step and lowers the scale


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, grad_clip: float | None) -> PlainStep:
    """SamStep for a SAM optimizer, PlainStep for any other."""
    kind = SamStep if isinstance(optimizer, SAM) else PlainStep
    return kind(model, optimizer, scaler, grad_clip)


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
