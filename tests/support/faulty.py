"""A model that fails on one rank of a DDP job, for the failure tests: a subprocess job reaches
it through the config (`model._target_=support.faulty.FailingLeNet`, with tests/ on PYTHONPATH,
which the ranks it spawns inherit), as any user model is reached."""

from __future__ import annotations

import os
import signal

import torch
import torch.distributed as dist

from experiments.models.small import LeNet


class FailingLeNet(LeNet):
    """LeNet whose rank `fail_rank` fails at its `after`-th training forward: `fault=raise` an
    error, `kill` SIGKILL itself (a rank that dies silently), `none` never."""

    def __init__(self, *args, fault: str = "raise", fail_rank: int = 1, after: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        self.fault, self.fail_rank, self.after, self.calls = fault, fail_rank, after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and dist.is_initialized() and dist.get_rank() == self.fail_rank:
            self.calls += 1
            if self.calls == self.after and self.fault == "raise":
                raise RuntimeError(f"injected failure on rank {self.fail_rank}")
            if self.calls == self.after and self.fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x)
