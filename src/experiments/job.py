"""One job, read top to bottom: compose-time checks -> build data, batches, model, trainer from
the config -> fit (resuming where a killed run stopped) -> test once -> summary.

`python train.py` (the repo root) calls `run` as its Hydra task function; so does each job of a
multirun, in one process, one after another.
"""

from __future__ import annotations

import gc
import inspect
import logging
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

import experiments.config  # noqa: F401  (registers the schemas and resolvers with Hydra)
from experiments.batches import Batching, Loaders
from experiments.config.checks import check_config
from experiments.config.groups import CONFIG_GROUPS
from experiments.config.resolvers import redact_secrets
from experiments.data import Splits, load_splits
from experiments.errors import JobFailed, UserError, user_error_in
from experiments.report.provenance import collect as collect_provenance, resumed_code_change
from experiments.report.job_summary import (SUMMARY_FILE, completed_summary, failed_summary,
                                            read_summary, running_summary, write_json)
from experiments.report.tracking import Tracker
from experiments.models.pretrained import input_spec
from experiments.training.backends import (CompileWatch, configure_backends, maybe_compile,
                                           precision_name, resolve_device,
                                           use_channels_last)
from experiments.training.batch_schedule import BatchSchedule
from experiments.training.checkpoint import Checkpoint, CheckpointError, fingerprint
from experiments.training.options import TrainerOptions
from experiments.training.param_groups import param_groups
from experiments.training.trainer import DivergedError, FitState, Trainer

log = logging.getLogger(__name__)


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


# --- building the parts from the config ------------------------------------------------------

def build_loaders(cfg: DictConfig, options: TrainerOptions, splits: Splits, model: torch.nn.Module,
                  device: torch.device, channels_last: bool) -> Loaders:
    """The `loader` group's factory (device or DataLoader workers) with the `aug` group's
    augmentation for the training split. A pretrained model gets its own input size and
    normalization (timm's pretrained config), not the dataset's."""
    data, pretrained = cfg.data, input_spec(model)
    size, mean, std = ((pretrained.size, pretrained.mean, pretrained.std) if pretrained
                       else (data.image_size, data.mean, data.std))
    batching = Batching(instantiate(cfg.aug), mean, std, size, options.batch_size,
                        options.eval_batch_size, cfg.seed, device, channels_last)
    return instantiate(cfg.loader)(splits, batching)


def build_model(cfg: DictConfig, device: torch.device, channels_last: bool) -> torch.nn.Module:
    model = instantiate(cfg.model).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def build_optimizer(cfg: DictConfig, options: TrainerOptions, model: torch.nn.Module,
                    device: torch.device) -> torch.optim.Optimizer:
    """The `_partial_` optimizer from the config, over the model's parameters or, for
    fine-tuning, groups with their own learning rates (`param_groups`); with fused CUDA kernels
    where it has them and the user chose no implementation (`+optim.foreach=...` or
    `+optim.fused=...`): torch refuses fused together with foreach."""
    factory = instantiate(cfg.optim)
    params = param_groups(model, cfg.optim.lr, cfg.optim.get("weight_decay", 0.0),
                          **cfg.param_groups)
    chosen = "fused" in cfg.optim or "foreach" in cfg.optim
    fused_ok = "fused" in inspect.signature(factory.func).parameters and not chosen
    if options.fused_optimizer and device.type == "cuda" and fused_ok:
        return factory(params, fused=True)
    return factory(params)


def build_trainer(cfg: DictConfig, options: TrainerOptions, model: torch.nn.Module,
                  device: torch.device, n_train: int) -> Trainer:
    """Optimizer, lr schedule (over the run's real optimizer steps, batch-size schedule
    included), mixing, EMA and the model, compiled if asked, in one Trainer."""
    optimizer = build_optimizer(cfg, options, model, device)
    ema = ModelEmaV3(model, decay=options.ema_decay) if options.ema_decay else None  # before compiling
    mixup = instantiate(cfg.mix) if cfg.mix.get("_target_") else None
    plan = BatchSchedule(options)
    schedule = instantiate(cfg.sched)(
        optimizer, epochs=options.epochs, total_steps=plan.total_steps(n_train, options.epochs),
        steps_per_epoch=plan.steps_per_epoch(n_train, epoch=1))
    return Trainer(maybe_compile(model, options.compile), optimizer, schedule, options,
                   device=device, mixup=mixup, ema=ema)


def test_once(trainer: Trainer, fit: FitState, test_batches, tta: str) -> dict[str, float | None]:
    """The test set, evaluated here only: with the final weights, then with the weights chosen
    on validation (the reported test_acc), and with flip TTA as a separate number."""
    final = trainer.evaluate(test_batches)
    trainer.use_best_weights(fit)
    chosen = trainer.evaluate(test_batches)
    tta_acc = trainer.evaluate(test_batches, tta_flip=True)["acc"] if tta == "flip" else None
    return {"acc": chosen["acc"], "loss": chosen["loss"], "acc_final": final["acc"],
            "tta_acc": tta_acc}


# --- the job -------------------------------------------------------------------------------

def train(cfg: DictConfig, job: JobInfo, config: dict) -> dict:
    """Check the config, build everything from it, train (resuming from a checkpoint if there is
    one), test once with the chosen weights. `config` is the resolved config, secrets redacted."""
    options = check_config(cfg)  # the trainer group as one typed object
    device = resolve_device(options.device, job.num)
    configure_backends(options, device)
    seed_everything(cfg.seed)
    channels_last = use_channels_last(options, device)

    splits = load_splits(cfg.data)
    log.info("data %s: %d train / %d val / %d test images, %d classes", cfg.data.name,
             len(splits.train), len(splits.val or ()), len(splits.test), len(splits.classes))
    BatchSchedule(options).check_fits(len(splits.train), cfg.data.val_size)
    provenance = collect_provenance(cfg, device)  # after the data: its cache now exists
    model = build_model(cfg, device, channels_last)
    loaders = build_loaders(cfg, options, splits, model, device, channels_last)
    trainer = build_trainer(cfg, options, model, device, len(splits.train))
    log.info("model %s (%.2fM parameters) on %s, autocast %s", job.choices.get("model"),
             sum(p.numel() for p in model.parameters()) / 1e6, device, trainer.amp_dtype)

    checkpoint = Checkpoint(job.output_dir, config, loaders.train)
    resumed = checkpoint.resume_or_start(trainer, options.resume)
    if resumed.state is not None:
        log.info("resuming %s after epoch %d of %d", job.output_dir, resumed.epoch, options.epochs)
    if resumed.note:
        log.warning("%s", resumed.note)
    code_changed = resumed_code_change(resumed.saved, provenance["code"]) if resumed.state else None
    OmegaConf.save(config, job.output_dir / "config.yaml")  # resolved: every number of this job
    make_tracker = instantiate(cfg.logger)  # a partial: the logger options come from the config
    with (make_tracker(job.output_dir, run_name=job.name, group=job.group, config=config,
                       resumed_after=resumed.epoch,
                       history=resumed.state.history if resumed.state else [],
                       wandb_id=resumed.saved.get("wandb_id"), provenance=provenance) as tracker,
          CompileWatch(options.compile) as compiled):

        def after_epoch(state: FitState, metrics: dict[str, float]) -> None:
            log_epoch(tracker, state.epoch, options.epochs, metrics)  # log first: a kill in
            checkpoint.save(trainer, state, {  # between redoes one epoch
                "wandb_id": tracker.wandb_id, "code": provenance["code"], "code_changed": code_changed})

        fit = trainer.fit(loaders.train, loaders.val, state=resumed.state, after_epoch=after_epoch)
        test = test_once(trainer, fit, loaders.test, options.tta)
        if compiled.fallbacks:
            log.warning("trainer.compile: part of this job ran uncompiled: %s", compiled.status)
        summary = completed_summary(job, fit, test, {
            "device": str(device), "precision": precision_name(trainer.amp_dtype),
            "seed": cfg.seed, "fingerprint": fingerprint(config),
            "resumed_from_epoch": resumed.epoch, "resume_note": resumed.note,
            "compile": compiled.status, "wandb_id": tracker.wandb_id,
            "pretrained": pretrained_source(model),
            "provenance": provenance, "code_changed_on_resume": code_changed})
        tracker.log_results({"choices": job.choices, **config}, summary)
    torch.save(trainer.eval_weights(), job.output_dir / "model.pt")  # the tested weights
    if not options.keep_checkpoint:
        checkpoint.remove()
    return summary


def pretrained_source(model: torch.nn.Module) -> str | None:
    spec = input_spec(model)
    return spec.source if spec else None


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
