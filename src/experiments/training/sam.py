"""Sharpness-Aware Minimization (Foret et al., 2021) around any torch optimizer.

Each update takes two gradient evaluations: the gradient g at w, then the gradient at the
perturbed weights w + rho * g / ||g|| (elementwise |w|-scaled when `adaptive`, ASAM), which the
base optimizer applies at w. The trainer drives the two passes (training/steps.py, `SamStep`), so
gradient accumulation, autocast and fp16 loss scaling work as in ordinary steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from experiments.values import POSITIVE


class SAM(torch.optim.Optimizer):
    """`base` makes the base optimizer from parameter groups: any optimizer option's partial
    (conf/optim/sam.yaml composes one as `optim.base`), e.g. functools.partial(SGD, lr=0.1)."""

    def __init__(self, params, base: Callable[..., torch.optim.Optimizer], rho: float = 0.05,
                 adaptive: bool = False):
        POSITIVE.check("SAM's rho", rho)
        super().__init__(params, dict(rho=rho, adaptive=adaptive))
        self.base_optimizer = base(self.param_groups)  # its defaults fill in every group
        self.param_groups = self.base_optimizer.param_groups  # one lr for schedulers to change
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        norms = [((torch.abs(p) if g["adaptive"] else 1.0) * p.grad).norm(p=2)
                 for g in self.param_groups for p in g["params"] if p.grad is not None]
        return torch.norm(torch.stack(norms), p=2)

    @torch.no_grad()
    def perturb(self, grad_norm: torch.Tensor | None = None) -> None:
        """w <- w + e(w), from the gradients now in .grad (`grad_norm`: their norm, if the caller
        has it already); remembers w."""
        norm = self.grad_norm() if grad_norm is None else grad_norm
        scale_base = 1.0 / (norm + 1e-12)
        for group in self.param_groups:
            scale = group["rho"] * scale_base
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["w"] = p.detach().clone()
                p.add_((torch.pow(p, 2) if group["adaptive"] else 1.0) * p.grad * scale)

    @torch.no_grad()
    def restore(self) -> None:
        """Back to w (the gradients in .grad are now the perturbed point's)."""
        for group in self.param_groups:
            for p in group["params"]:
                if "w" in self.state[p]:
                    p.copy_(self.state[p].pop("w"))

    @torch.no_grad()
    def step(self, closure=None):
        """The base optimizer's step at w (the trainer ran perturb, 2nd pass, restore)."""
        if closure is not None:
            raise TypeError("SAM.step takes no closure: the trainer drives the two passes "
                            "(perturb, second pass, restore)")
        return self.base_optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        """The base optimizer's, as it is: SAM keeps no state between steps (the perturbation
        is undone within each), and its param_groups are the base's, so a checkpoint of SAM
        has the shape of any optimizer's (what resuming on another device adjusts)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        # torch's load_state_dict gives the base NEW group dicts: share them again, or the lr
        # schedules would keep setting the learning rate on the old ones, which no step reads
        self.param_groups = self.base_optimizer.param_groups
