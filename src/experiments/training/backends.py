"""Where and how a job computes: its device, autocast precision, the process-wide backend
switches and torch.compile. Every CUDA-specific decision is made here, once per job.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from experiments.errors import ConfigError, UserError
from experiments.ranks import cores_allotted

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def resolve_device(name: str, slot: int = 0) -> torch.device:
    """auto: CUDA if available, else CPU. With several GPUs visible, processes take them round
    robin by `slot`: a parallel launcher's (joblib) job k of N ranks has slots kN..kN+N-1, so a
    sweep spreads over the GPUs (when the GPUs are not a multiple of N, a job's ranks wrap
    around, and two jobs can share a GPU); under torchrun or Slurm tasks the slot is the local
    rank. A bare `cuda` is GPU 0: always an index, so that the job can make it the process's
    current device."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", slot % torch.cuda.device_count())
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
    """The module itself under a torch.compile wrapper and a DistributedDataParallel one (both
    share its parameters)."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, DistributedDataParallel) else model


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """bf16, fp16 or fp32: what `resolve_precision` chose, as the config spells it."""
    return next(k for k, v in PRECISIONS.items() if v == amp_dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def configure_backends(options, device: torch.device) -> None:
    """Every process-wide switch set to this job's value, before anything touches the GPU: the
    jobs of a sweep share one process, and a switch left as the previous job set it (e.g.
    deterministic mode) would otherwise carry over."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"trainer.device={options.device} but no CUDA GPU is visible; use trainer.device=auto")
        if device.index >= (count := torch.cuda.device_count()):
            raise UserError(f"trainer.device={options.device} but {count} GPU(s) are visible "
                            f"(cuda:0 to cuda:{count - 1}); use one of them or trainer.device=auto")
        # the current device is where stray allocations, the pin-memory thread and capability
        # queries go: GPU 0 in every process unless the job's own GPU is made current
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = options.cudnn_benchmark and not options.deterministic
    torch.backends.cudnn.deterministic = options.deterministic
    torch.use_deterministic_algorithms(options.deterministic, warn_only=True)


def share_cpu(ranks, side_by_side: int = 1) -> None:
    """torch's threads from this process's share of the cores (experiments.ranks.cores_allotted):
    torch takes every core of the machine whatever the process was allotted, and jobs' spinning
    threads then starve each other (two smoke jobs with cpus_per_task=1 on a 2-core Slurm node:
    18.7 img/s each, measured for the preemption issue). OMP_NUM_THREADS, when set, rules."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    torch.set_num_threads(min(torch.get_num_threads(), cores_allotted(ranks, side_by_side)))


def use_channels_last(options, device: torch.device) -> bool:
    """channels_last speeds up convolutions under CUDA AMP; on CPU it is usually slower."""
    return device.type == "cuda" if options.channels_last == "auto" else bool(options.channels_last)


def maybe_compile(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """torch.compile for the forward/backward; state dicts still go through the same module.
    Dynamo's caches live in the process and count recompiles per function across models, so
    the jobs of a sweep would share one recompile budget (8): each job starts from a reset."""
    if not enabled:
        return model
    torch._dynamo.reset()
    return torch.compile(model)


class CompileWatch(logging.Handler):
    """Whether `trainer.compile` really compiled, for summary.json. Past its recompile limit
    Dynamo runs a function uncompiled (eager) for the rest of the process and says so only in
    one warning ("torch._dynamo hit config.recompile_limit (8)"); this handler catches it."""

    LOGGER = "torch._dynamo"

    def __init__(self, enabled: bool):
        super().__init__(logging.WARNING)
        self.enabled, self.fallbacks = enabled, []

    def __enter__(self) -> CompileWatch:
        if self.enabled:
            logging.getLogger(self.LOGGER).addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger(self.LOGGER).removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        lines = record.getMessage().splitlines()
        if lines and "hit config." in lines[0]:  # the limit, then "function: 'forward' (file:line)"
            self.fallbacks.append(" ".join(line.strip() for line in lines[:2]))

    @property
    def status(self) -> str | None:
        """None (not compiled), "compiled", or "eager fallback: <Dynamo's words>"."""
        if not self.enabled:
            return None
        if not self.fallbacks:
            return "compiled"
        more = f" (and {len(self.fallbacks) - 1} more)" if len(self.fallbacks) > 1 else ""
        return f"eager fallback: {self.fallbacks[0]}{more}"
