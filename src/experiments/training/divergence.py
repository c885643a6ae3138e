"""A loss that goes NaN/inf stops the job at that step, with what to change for its precision.

bf16 and fp32 stop at the first non-finite loss: its gradient puts NaN into the weights, and
every step after it is lost time. fp16 stops after `trainer.nonfinite_tolerance` in a row: its
GradScaler skips a step whose gradients overflow and lowers its scale, so a few are normal there.

The count of non-finite losses in a row stays on the device (EpochTotals, trainer.py), as the
running loss does: reading it on the host after every step (`.item()`) makes the CPU wait for
the GPU to finish that step before it queues the next one, the wait the trainer avoids
everywhere else. So it is read where reading is free:
- one process on CUDA: each step queues a copy into pinned host memory, and the count is read
  once a CUDA event says the copy has landed (the next copy is queued then): nothing waits, and
  the job stops within the few steps the GPU runs behind the CPU. A checkpoint written inside an
  epoch, and the epoch's end, read it for certain first (the trainer waits for the GPU there
  anyway): no checkpoint holds weights from after a divergence.
- under DDP: in the small all-reduce that every step already does for the stop signals
  (trainer.ask_interrupts), which waits for its result anyway: every rank reads the same maximum
  over the ranks after the same step, and they stop together.
- on a CPU: read after every step; the CPU computed it, so there is nothing to wait for (MPS too:
  not a speed target here).
Measured on this 2-core CPU (2026-12-07, shared with other work): a read after every step costs
0.3-0.5 us (`timeit` of `NonfiniteWatch.after_step` with a CPU count), against about 30 ms a
step of an `experiment=smoke model.width=4` job (its train_time_s over its steps): read every
step there. On CUDA the lazy read queues one 8-byte copy and
one event per step and never waits; that, and what a per-step `.item()` would cost instead, has
not been measured: no GPU was lent to this session (bench/gpu.sh's train-step row, the
framework against a bare loop, includes it; docs/speed.md "On a GPU").
"""

from __future__ import annotations

import torch

from experiments.training.options import TrainerOptions


class DivergedError(RuntimeError):
    """The loss went NaN/inf (for longer than the fp16 loss scaler would explain)."""


def advice(precision: str, options: TrainerOptions) -> str:
    """What to change, for the precision the job ran in (`auto` resolved)."""
    clip = (f"a lower trainer.grad_clip (now {options.grad_clip})" if options.grad_clip
            else "set trainer.grad_clip (e.g. 1.0)")
    changes = ["lower optim.lr", clip]
    if precision == "fp16":  # bf16 has fp32's range: no overflow to skip
        changes.append("use trainer.precision=bf16 (on GPUs of compute capability 8.0 or more) or fp32")
    elif precision == "bf16":
        changes.append("try trainer.precision=fp32 (bf16 keeps 8 bits of mantissa)")
    return ", ".join(changes[:-1]) + " or " + changes[-1]


class NonfiniteWatch:
    """Raises DivergedError once a count of non-finite losses in a row exceeds the tolerance (0
    but under fp16). `lazy` (default: on CUDA) reads the device's count without waiting for it;
    `event` makes the marker a landed copy is checked with (torch.cuda.Event)."""

    def __init__(self, device: torch.device, precision: str, options: TrainerOptions,
                 lazy: bool | None = None, event=None):
        self.precision, self.options = precision, options
        self.tolerated = options.nonfinite_tolerance if precision == "fp16" else 0
        self.lazy = device.type == "cuda" if lazy is None else lazy
        if self.lazy:
            self.host = torch.zeros((), dtype=torch.long, pin_memory=device.type == "cuda")
            self.landed = (event or torch.cuda.Event)()
        self.in_flight: int | None = None  # the step whose count is on its way to `host`
        self.epoch: int | None = None  # the epoch being trained, for the message (trainer sets it)

    def after_step(self, longest: torch.Tensor, step: int) -> None:
        """After optimizer step `step` (of the run): `longest`, on the device, is the longest run
        of non-finite losses so far in the epoch (the streak carries over from the last one)."""
        if not self.lazy:
            self.check(int(longest), step)
            return
        if self.in_flight is not None and self.landed.query():
            self.check(int(self.host), self.in_flight)
            self.in_flight = None
        if self.in_flight is None:  # (`longest` only grows in an epoch: a later read misses none)
            self.host.copy_(longest, non_blocking=True)
            self.landed.record()
            self.in_flight = step

    def settle(self, longest: torch.Tensor, step: int) -> None:
        """Where the trainer waits for the GPU anyway (before a checkpoint inside an epoch, at the
        epoch's end): the count after `step`, for certain."""
        self.in_flight = None
        self.check(int(longest), step)

    def check(self, longest: int, step: int) -> None:
        if longest <= self.tolerated:
            return
        where = f"step {step}" + (f" (epoch {self.epoch})" if self.epoch else "")
        count = ("" if not self.tolerated else
                 f" for {longest} losses in a row, more than fp16's loss scaler skips "
                 f"(trainer.nonfinite_tolerance={self.tolerated}),")
        raise DivergedError(f"training diverged: the loss was NaN/inf{count} by {where} in "
                            f"{self.precision}. To change: {advice(self.precision, self.options)}.")
