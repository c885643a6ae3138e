"""airbench94's lookahead of the weights (github.com/KellerJordan/cifar10-airbench,
legacy/airbench94.py), an option of the trainer (`trainer.lookahead`).

Every `every` optimizer steps the slow copy moves towards the weights and the weights are set to
it: slow = d * slow + (1 - d) * weights; weights = slow, with d = decay * (step / total) ** power.
d grows from 0 (the weights are copied as they are) to `decay` at the run's end, cubically
(power 3), so the averaging matters late, when the lr is low. The last step of the run ends on
the slow weights (d = 1 there: the source's final update). Unlike an EMA (trainer.ema_decay) the
average is written back into the weights the optimizer steps on. Every float tensor of the
state dict takes part, BatchNorm's running statistics included, as in the source.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from experiments.training.options import LookaheadOptions


class Lookahead:
    def __init__(self, model: nn.Module, options: LookaheadOptions, total_steps: int):
        self.model, self.options, self.total = model, options, max(1, total_steps)
        self.slow = {k: v.detach().clone() for k, v in self.tensors().items()}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if v.is_floating_point()}

    def decay_at(self, step: int) -> float:
        """The slow copy's share after optimizer step `step` (1-based)."""
        if step >= self.total:
            return 1.0
        return self.options.decay * (step / self.total) ** self.options.warmup_power

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        if step % self.options.every and step < self.total:
            return
        d = self.decay_at(step)
        for name, weights in self.tensors().items():
            slow = self.slow[name]
            slow.lerp_(weights, 1 - d)
            weights.copy_(slow)

    def state_dict(self) -> dict:
        return {"slow": self.slow}

    def load_state_dict(self, state: dict) -> None:
        for name, tensor in state["slow"].items():
            self.slow[name].copy_(tensor)
