"""`trainer.profile=N`: where an epoch's time goes, answered by the job itself.

torch.profiler records N optimizer steps after one warm-up step (the first step compiles and
autotunes: it would dominate the table); the trace (Chrome trace format) goes into the job's
TensorBoard run directory (`tb/`, read by TensorBoard's profiler plugin, or by
https://ui.perfetto.dev), the table of the top ops by their own time into the job's log. On
rank 0 only under DDP. The profiled steps run slower: this is a diagnostic, not a timing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

log = logging.getLogger(__name__)

WARMUP_STEPS = 1  # recorded but not reported: the profiler's own start-up
TOP_OPS = 15


class StepProfiler:
    """Stepped after every optimizer step (Trainer.optimizer_step); stops itself when done."""

    def __init__(self, steps: int, trace_dir: Path, device: torch.device):
        self.cuda = device.type == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self.trace_dir = Path(trace_dir)
        self.profiler = profile(
            activities=activities,
            schedule=schedule(wait=1, warmup=WARMUP_STEPS, active=steps, repeat=1),
            on_trace_ready=self.report)
        self.steps, self.done = steps, False
        self.profiler.start()

    def report(self, prof) -> None:
        tensorboard_trace_handler(str(self.trace_dir), worker_name="profile")(prof)
        key = "self_cuda_time_total" if self.cuda else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=key, row_limit=TOP_OPS)
        log.info("trainer.profile: %d training steps (trace in %s)\n%s", self.steps,
                 self.trace_dir, table)
        self.done = True

    def step(self) -> None:
        if not self.done:
            self.profiler.step()
            if self.done:
                self.profiler.stop()

    def close(self) -> None:
        """A run shorter than the profile's steps: report what was recorded."""
        if not self.done:
            self.profiler.stop()
            self.done = True
