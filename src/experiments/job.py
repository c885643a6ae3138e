"""Compose and wire one job: config -> data, model, optimizer, schedule, tracking -> trainer -> summary.

`python train.py` (the repo root) calls `run` as its Hydra task function; so does each job of a
multirun, in one process, one after another.
"""

from __future__ import annotations

import gc
import inspect
import logging
import math
import random
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from timm.utils import ModelEmaV3

from experiments.training.checkpoint import (CHECKPOINT_FILE, CheckpointError, fingerprint, load_checkpoint,
                                   restore, save_checkpoint)
from experiments.config.checks import check_config, redact_secrets, register_resolvers
from experiments.data import load_splits
from experiments.errors import JobFailed, UserError, user_error_in
from experiments.config.groups import CONFIG_GROUPS
from experiments.batches.loaders import make_loaders
from experiments.report.provenance import collect as collect_provenance, resumed_code_change
from experiments.training.schedules import BatchSizes
from experiments.report.job_summary import (SUMMARY_FILE, completed_summary, failed_summary,
                                            read_summary, running_summary, write_json)
from experiments.report.tracking import Tracker
from experiments.training.trainer import DivergedError, Monitor, Trainer, precision_name, resolve_device

log = logging.getLogger(__name__)
register_resolvers()


@dataclass
class JobInfo:
    """Where this job writes and how it is named, read from Hydra's runtime config."""

    output_dir: Path
    name: str
    group: str | None  # the sweep's name in a multirun: all its jobs share one W&B group
    choices: dict[str, str | None]  # every config group's option (None: the group is unset)
    overrides: list[str]
    multirun: bool
    num: int  # the job's number in its sweep (0 for a single run)

    @classmethod
    def current(cls) -> JobInfo:
        hc = HydraConfig.get()
        output_dir = Path(hc.runtime.output_dir)
        multirun = hc.mode == RunMode.MULTIRUN
        sweep = Path(hc.sweep.dir)
        return cls(
            output_dir=output_dir,
            name=output_dir.name if multirun else f"{output_dir.parent.name}_{output_dir.name}",
            group=f"{sweep.parent.name}/{sweep.name}" if multirun else None,
            choices={k: hc.runtime.choices.get(k) for k in CONFIG_GROUPS},
            overrides=list(hc.overrides.task),
            multirun=multirun,
            num=int(hc.job.get("num", 0) or 0) if multirun else 0,
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_backends(cfg: DictConfig, device: torch.device) -> None:
    """Every process-wide switch set to this job's value, before anything touches the GPU: the
    jobs of a sweep share one process, and a switch left as the previous job set it (e.g.
    deterministic mode) would otherwise carry over."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"trainer.device={cfg.device} but no CUDA GPU is visible; use trainer.device=auto")
        if device.index >= (count := torch.cuda.device_count()):
            raise UserError(f"trainer.device={cfg.device} but {count} GPU(s) are visible "
                            f"(cuda:0 to cuda:{count - 1}); use one of them or trainer.device=auto")
        # the current device is where stray allocations, the pin-memory thread and capability
        # queries go: GPU 0 in every process unless the job's own GPU is made current
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark and not cfg.deterministic
    torch.backends.cudnn.deterministic = cfg.deterministic
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)


def use_channels_last(cfg: DictConfig, device: torch.device) -> bool:
    """channels_last speeds up convolutions under CUDA AMP; on CPU it is usually slower."""
    return device.type == "cuda" if cfg.channels_last == "auto" else bool(cfg.channels_last)


def build_optimizer(cfg: DictConfig, model: torch.nn.Module, device: torch.device):
    """The `_partial_` optimizer from the config, with fused CUDA kernels where it has them and
    the user chose no implementation (`+optim.foreach=...` or `+optim.fused=...`): torch
    refuses fused together with foreach."""
    factory = instantiate(cfg.optim)
    chosen = "fused" in cfg.optim or "foreach" in cfg.optim
    fused_ok = "fused" in inspect.signature(factory.func).parameters and not chosen
    if cfg.trainer.fused_optimizer and device.type == "cuda" and fused_ok:
        return factory(model.parameters(), fused=True)
    return factory(model.parameters())


def build_model(cfg: DictConfig, device: torch.device, channels_last: bool) -> torch.nn.Module:
    model = instantiate(cfg.model).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


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


def batch_plan(cfg: DictConfig, train_batches) -> tuple[BatchSizes | None, int]:
    """The batch-size schedule (or None) and the run's total optimizer steps under it."""
    t, plan = cfg.trainer, cfg.trainer.batch_schedule
    sizes = BatchSizes(t.batch_size, list(plan.epochs), list(plan.sizes)) if plan else None
    n = train_batches.split_size
    per_epoch = [math.ceil(max(1, n // (sizes(e) if sizes else t.batch_size)) / t.grad_accum_steps)
                 for e in range(1, t.epochs + 1)]
    return sizes, sum(per_epoch)


def build_trainer(cfg: DictConfig, model: torch.nn.Module, device: torch.device,
                  train_batches, total_steps: int) -> Trainer:
    t = cfg.trainer
    optimizer = build_optimizer(cfg, model, device)
    ema = ModelEmaV3(model, decay=t.ema_decay) if t.ema_decay else None  # before compiling
    mixup = instantiate(cfg.mix) if cfg.mix.get("_target_") else None
    schedule = instantiate(cfg.sched)(
        optimizer, epochs=t.epochs, total_steps=total_steps,
        steps_per_epoch=math.ceil(len(train_batches) / t.grad_accum_steps))
    return Trainer(maybe_compile(model, t.compile), optimizer, schedule, device=device,
                   precision=t.precision, grad_accum_steps=t.grad_accum_steps,
                   grad_clip=t.grad_clip, progress=t.progress, mixup=mixup, ema=ema,
                   # with mixing, timm's Mixup smooths the labels: the loss must not do it again
                   label_smoothing=0.0 if mixup else t.label_smoothing,
                   nonfinite_tolerance=t.nonfinite_tolerance)


def test_once(trainer: Trainer, fit, test_batches, tta: str) -> dict[str, float | None]:
    """The test set, evaluated here only: with the final weights, then with the weights chosen
    on validation (the reported test_acc), and with flip TTA as a separate number."""
    final = trainer.evaluate(test_batches)
    trainer.use_best_weights(fit)
    chosen = trainer.evaluate(test_batches)
    tta_acc = trainer.evaluate(test_batches, tta_flip=True)["acc"] if tta == "flip" else None
    return {"acc": chosen["acc"], "loss": chosen["loss"], "acc_final": final["acc"],
            "tta_acc": tta_acc}


def train(cfg: DictConfig, job: JobInfo, config: dict) -> dict:
    """Build everything from the config, train (resuming from a checkpoint if there is one),
    test once with the chosen weights. `config` is the resolved config with secrets redacted."""
    t = cfg.trainer
    device = resolve_device(t.device, job.num)
    configure_backends(t, device)
    seed_everything(cfg.seed)
    channels_last = use_channels_last(t, device)
    splits = load_splits(cfg.data)
    log.info("data %s: %d train / %d val / %d test images, %d classes", cfg.data.name,
             len(splits.train), len(splits.val or ()), len(splits.test), len(splits.classes))
    provenance = collect_provenance(cfg, device)  # after the data: its cache now exists
    train_batches, val_batches, test_batches = make_loaders(cfg, splits, device, channels_last)
    batch_sizes, total_steps = batch_plan(cfg, train_batches)
    model = build_model(cfg, device, channels_last)
    trainer = build_trainer(cfg, model, device, train_batches, total_steps)
    log.info("model %s (%.2fM parameters) on %s, autocast %s", job.choices.get("model"),
             sum(p.numel() for p in model.parameters()) / 1e6, device, trainer.amp_dtype)

    es = t.early_stopping
    checkpoint = job.output_dir / CHECKPOINT_FILE
    payload = load_checkpoint(checkpoint, config) if t.resume and checkpoint.exists() else None
    generators = [train_batches.generator]
    state, resume_note = restore(payload, trainer, generators) if payload else (None, None)
    resumed_from = state.epoch if state else None
    if state is not None:
        log.info("resuming %s after epoch %d of %d", job.output_dir, state.epoch, t.epochs)
    if resume_note:
        log.warning("%s", resume_note)
    code_changed = resumed_code_change(payload, provenance["code"]) if payload else None
    OmegaConf.save(config, job.output_dir / "config.yaml")  # resolved: every number of this job
    make_tracker = instantiate(cfg.logger)  # a partial: the logger options come from the config
    with (make_tracker(job.output_dir, run_name=job.name, group=job.group, config=config,
                       resumed_after=resumed_from, history=state.history if state else [],
                       wandb_id=payload and payload.get("wandb_id"),
                       provenance=provenance) as tracker,
          CompileWatch(t.compile) as compiled):

        def after_epoch(fit_state, metrics):  # log first: a kill in between redoes one epoch
            log_epoch(tracker, fit_state.epoch, t.epochs, metrics)
            save_checkpoint(checkpoint, trainer, fit_state, generators, config,
                            {"wandb_id": tracker.wandb_id, "code": provenance["code"],
                             "code_changed": code_changed})

        fit = trainer.fit(
            train_batches, val_batches, t.epochs, state=state, after_epoch=after_epoch,
            batch_sizes=batch_sizes,
            scale_lr=bool(t.batch_schedule and t.batch_schedule.get("scale_lr")),
            select=Monitor(t.monitor, t.monitor_mode),
            stopper=Monitor(es.monitor, es.mode, es.min_delta, es.patience) if es.patience else None)
        test = test_once(trainer, fit, test_batches, t.tta)
        if compiled.fallbacks:
            log.warning("trainer.compile: part of this job ran uncompiled: %s", compiled.status)
        summary = completed_summary(job, fit, test, {
            "device": str(device), "precision": precision_name(trainer.amp_dtype),
            "seed": cfg.seed, "fingerprint": fingerprint(config),
            "resumed_from_epoch": resumed_from, "resume_note": resume_note,
            "compile": compiled.status, "wandb_id": tracker.wandb_id,
            "provenance": provenance, "code_changed_on_resume": code_changed})
        tracker.log_results({"choices": job.choices, **config}, summary)
    torch.save(trainer.eval_weights(), job.output_dir / "model.pt")  # the tested weights
    if not t.keep_checkpoint:
        checkpoint.unlink(missing_ok=True)
    return summary


def log_epoch(tracker: Tracker, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
    tracker.log_epoch(epoch, metrics)
    log.info("epoch %d/%d %s", epoch, epochs,
             " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))


def stored_result(cfg: DictConfig, job: JobInfo, config: dict) -> dict | None:
    """A completed job's summary when this job already ran to the end in its directory."""
    previous = read_summary(job.output_dir)
    if not (cfg.trainer.resume and previous and previous.get("status") == "completed"):
        return None
    if previous.get("fingerprint") != fingerprint(config):
        raise CheckpointError(
            f"{job.output_dir} holds a completed job with a different config; refusing to mix "
            "them. Use a new output directory (hydra.run.dir=... or hydra.sweep.dir=...).")
    log.info("already completed in %s: returning its stored result", job.output_dir)
    return previous


# failures with a message of their own: reported without a traceback
EXPECTED_FAILURES = (UserError, DivergedError, torch.OutOfMemoryError)


def explain(err: BaseException, cfg: DictConfig) -> str:
    """The message a failed job reports: what went wrong, and what to change."""
    if isinstance(err, torch.OutOfMemoryError):
        b, k = cfg.trainer.batch_size, cfg.trainer.grad_accum_steps
        return (f"out of GPU memory at trainer.batch_size={b}. Use a smaller batch with gradient "
                f"accumulation for the same effective batch, e.g. trainer.batch_size={max(1, b // 2)} "
                f"trainer.grad_accum_steps={2 * k}, or a smaller model.width.")
    return str(err) if isinstance(err, EXPECTED_FAILURES) else f"{type(err).__name__}: {err}"


def release(err: BaseException) -> None:
    """Drop the failed job's frames (its model, optimizer, data) and return GPU memory, so the
    next job of the sweep starts clean. Outside the training loop: the only empty_cache here."""
    traceback.clear_frames(err.__traceback__)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run(cfg: DictConfig) -> float:
    """The task function. Returns `cfg.optimized_metric` as a float for sweepers such as Optuna."""
    job = JobInfo.current()
    try:
        config = redact_secrets(OmegaConf.to_container(cfg, resolve=True))
        summary = stored_result(cfg, job, config)
        if summary is None:
            write_json(job.output_dir / SUMMARY_FILE, running_summary(job))
            check_config(cfg)
            summary = train(cfg, job, config)
            write_json(job.output_dir / SUMMARY_FILE, summary)
    except Exception as raised:
        err = user_error_in(raised)  # e.g. a ConfigError that Hydra's instantiate wrapped
        message = explain(err, cfg)
        write_json(job.output_dir / SUMMARY_FILE, failed_summary(job, message))
        if isinstance(err, EXPECTED_FAILURES):
            log.error("%s", message)
        else:
            log.exception("job failed")  # the full traceback, in the job's log
        release(raised)
        if not job.multirun:
            sys.exit(2 if isinstance(err, UserError) else 1)  # the message, not a traceback
        raise JobFailed(message) from None  # fail this job; the sweep's other jobs still run
    log.info("done: test_acc=%s best_val_acc=%s -> %s", summary["test_acc"],
             summary["best_val_acc"], job.output_dir)
    value = summary.get(cfg.optimized_metric)
    return float("nan") if value is None else float(value)
