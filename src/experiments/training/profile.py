"""`trainer.profile=N`: where an epoch's time goes, answered by the job itself.

torch.profiler records N optimizer steps after two that it skips: the job's first step
(compile, autotuning: it would dominate the table), then one warm-up step of the profiler's own.
The trace (Chrome trace format) goes into the job's TensorBoard run directory (`tb/`, read by
TensorBoard's profiler plugin, or by https://ui.perfetto.dev), the table of the top ops by their
own time into the job's log. On rank 0 only under DDP. The profiled steps run slower: this is a
diagnostic, not a timing.

Collecting and writing the trace takes seconds (3.5 s of a 16.9 s `experiment=smoke` job with
trainer.profile=100 on this 2-core machine, loaded by other work, 2026-12-07: docs/speed.md): it
is charged to the job's `profile` section (experiments/timing.py) and left out of the epoch's
training time, not to the training pass it ends in, nor to no section at all (`rest`), where a
run shorter than N had left it. N is clipped up front to the steps the run has (with a
warning), and the log says how many steps were recorded.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

from experiments.timing import JobClock, NoClock

log = logging.getLogger(__name__)

WAIT_STEPS = 1  # the job's first step: compile, autotuning, first allocations
WARMUP_STEPS = 1  # recorded but not reported: the profiler's own start-up
SKIPPED = WAIT_STEPS + WARMUP_STEPS
TOP_OPS = 15


class StepProfiler:
    """Stepped after every optimizer step (Trainer.optimizer_step); stops itself when done.
    `run_steps`: the optimizer steps the run will take, to clip `steps` to (None: unknown)."""

    def __init__(self, steps: int, trace_dir: Path, device: torch.device,
                 clock: JobClock | None = None, run_steps: int | None = None):
        self.cuda = device.type == "cuda"
        self.trace_dir, self.clock = Path(trace_dir), clock or NoClock()
        self.asked, self.active = steps, steps
        if run_steps is not None and SKIPPED + steps > run_steps:
            self.active = max(0, run_steps - SKIPPED)
            log.warning("trainer.profile=%d: the run has %d optimizer steps and the first %d are not "
                        "recorded: %s", steps, run_steps, SKIPPED,
                        f"recording {self.active}" if self.active else "nothing to record")
        self.taken, self.done = 0, self.active == 0
        if self.done:
            return
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self.profiler = profile(
            activities=activities,
            schedule=schedule(wait=WAIT_STEPS, warmup=WARMUP_STEPS, active=self.active, repeat=1),
            on_trace_ready=self.report)
        self.profiler.start()

    @property
    def recorded(self) -> int:
        """The steps recorded so far (the skipped ones not counted)."""
        return min(max(0, self.taken - SKIPPED), self.active)

    def report(self, prof) -> None:
        tensorboard_trace_handler(str(self.trace_dir), worker_name="profile")(prof)
        key = "self_cuda_time_total" if self.cuda else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=key, row_limit=TOP_OPS)
        short = "" if self.recorded == self.asked else f" of the {self.asked} asked"
        log.info("trainer.profile: %d training steps recorded%s (trace in %s)\n%s", self.recorded,
                 short, self.trace_dir, table)

    def step(self) -> float:
        """After an optimizer step; returns the seconds spent finishing the trace (the step that
        ends the recording collects and writes it; 0 at every other), which are no training."""
        if self.done:
            return 0.0
        self.taken += 1
        if self.taken < SKIPPED + self.active:
            self.profiler.step()
            return 0.0
        return self.finish()

    def close(self) -> None:
        """The run ended (or stopped early) before the recording did: report what was recorded."""
        if not self.done:
            self.finish()

    def finish(self) -> float:
        """Stop: torch collects the trace and calls `report` (nothing recorded: no trace)."""
        started = time.perf_counter()
        with self.clock("profile"):
            self.profiler.stop()
        if not self.recorded:
            log.warning("trainer.profile=%d: the run ended before a step was recorded (the first "
                        "%d are not)", self.asked, SKIPPED)
        self.done = True
        return time.perf_counter() - started
