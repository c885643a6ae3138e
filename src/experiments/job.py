"""One job, read top to bottom: compose-time checks -> build data, batches, model, trainer from
the config -> fit (resuming where a killed run stopped) -> test once -> summary.

`python train.py` (the repo root) calls `run` as its Hydra task function; so does each job of a
multirun, in one process, one after another.
"""

from __future__ import annotations

import functools
import gc
import inspect
import logging
import random
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from timm.utils import ModelEmaV3

import experiments.config  # noqa: F401  (registers the schemas and resolvers with Hydra)
from experiments.batches import Batching, Loaders
from experiments.config.checks import check_config, optimizer_key
from experiments.config.groups import CONFIG_GROUPS
from experiments.config.secrets import redact_overrides, redact_secrets
from experiments.data import Splits, load_splits
from experiments.errors import ConfigError, JobFailed, Refusal, UserError, user_error_in
from experiments.job_dir import JobDir
from experiments.models.pretrained import ModelInput, input_for
from experiments.report.job_summary import COMPLETED, CONFIG_FILE, SummaryFile, completed_summary
from experiments.report.provenance import collect as collect_provenance
from experiments.report.provenance import resumed_code_change
from experiments.report.tracking import Tracker
from experiments.training.backends import (
    CompileWatch,
    configure_backends,
    maybe_compile,
    precision_name,
    resolve_device,
    use_channels_last,
)
from experiments.training.batch_schedule import BatchSchedule
from experiments.training.checkpoint import Checkpoint, fingerprint
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
            overrides=redact_overrides(list(hc.overrides.task)),
            multirun=multirun,
            num=int(hc.job.get("num", 0) or 0) if multirun else 0,
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- building the parts from the config ------------------------------------------------------

def build_loaders(cfg: DictConfig, options: TrainerOptions, splits: Splits,
                  model_input: ModelInput, device: torch.device, channels_last: bool) -> Loaders:
    """The `loader` group's factory (device or DataLoader workers) with the `aug` group's
    augmentation for the training split, serving what the model takes (`model_input`)."""
    batching = Batching(instantiate(cfg.aug), model_input, options.batch_size,
                        options.eval_batch_size, cfg.seed, device, channels_last)
    return instantiate(cfg.loader)(splits, batching)


def build_model(cfg: DictConfig, device: torch.device,
                channels_last: bool) -> tuple[torch.nn.Module, ModelInput]:
    """The `model` group's model on the device, and what it takes (decided here, once: the
    data's size and normalization, or a pretrained model's own)."""
    try:
        model = instantiate(cfg.model).to(device)
    except InstantiationException as err:
        if isinstance(err.__cause__, TypeError) and "unexpected keyword" in str(err.__cause__):
            # timm's models pass **kwargs on: an unknown key shows only here
            raise ConfigError(f"a model key is not one {cfg.model._target_} takes "
                              f"({err.__cause__}): drop it, or see the model's arguments") from None
        inner = user_error_in(err)
        raise (inner if isinstance(inner, UserError) else err) from None
    model_input = input_for(cfg.model, cfg.data, model)
    if model_input.channels != cfg.data.channels:
        log.info("data.channels=%d: the grey images are repeated to the %d channels the "
                 "pretrained model takes", cfg.data.channels, model_input.channels)
    return (model.to(memory_format=torch.channels_last) if channels_last else model), model_input


def build_optimizer(cfg: DictConfig, options: TrainerOptions, model: torch.nn.Module,
                    device: torch.device) -> torch.optim.Optimizer:
    """The `_partial_` optimizer from the config, over the model's parameters or, for
    fine-tuning, groups with their own learning rates (`param_groups`); with fused CUDA kernels
    where it has them and the user chose no implementation (`+optim.foreach=...` or
    `+optim.fused=...`): torch refuses fused together with foreach."""
    factory = instantiate(cfg.optim)
    base = OmegaConf.select(cfg, optimizer_key(cfg))  # under optim=sam: the optimizer it wraps
    params = param_groups(model, base.lr, base.get("weight_decay", 0.0), **cfg.param_groups)
    chosen = "fused" in cfg.optim or "foreach" in cfg.optim
    fused_ok = "fused" in inspect.signature(factory.func).parameters and not chosen
    if options.fused_optimizer and device.type == "cuda" and fused_ok:
        return factory(params, fused=True)
    return factory(params)


def build_trainer(cfg: DictConfig, options: TrainerOptions, model: torch.nn.Module,
                  device: torch.device, n_train: int, plan: BatchSchedule) -> Trainer:
    """Optimizer, lr schedule (over the run's real optimizer steps under the batch-size
    schedule `plan`), mixing, EMA and the model, compiled if asked, in one Trainer."""
    optimizer = build_optimizer(cfg, options, model, device)
    ema = ModelEmaV3(model, decay=options.ema_decay) if options.ema_decay else None  # before compiling
    mixup = instantiate(cfg.mix) if cfg.mix.get("_target_") else None
    schedule = instantiate(cfg.sched)(
        optimizer, epochs=options.epochs, steps=functools.partial(plan.steps_until, n_train))
    return Trainer(maybe_compile(model, options.compile), optimizer, schedule, options,
                   device=device, batch_schedule=plan, mixup=mixup, ema=ema)


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

def train(cfg: DictConfig, options: TrainerOptions, job: JobInfo, record: dict,
          checkpoint: Checkpoint, summary: SummaryFile) -> dict:
    """Build everything from the config, train (resuming from `checkpoint` when it holds one),
    test once with the chosen weights. `cfg` is what the parts are instantiated from, `options`
    its trainer group, checked and typed, `record` the resolved config with secrets masked (what
    is saved, logged and fingerprinted); `summary` is rewritten with the progress after every
    epoch."""
    device = resolve_device(options.device, job.num)
    configure_backends(options, device)
    seed_everything(cfg.seed)
    channels_last = use_channels_last(options, device)

    splits = load_splits(cfg.data)
    log.info("data %s: %d train / %d val / %d test images, %d classes", cfg.data.name,
             len(splits.train), len(splits.val or ()), len(splits.test), len(splits.classes))
    plan = BatchSchedule(options)  # the batch size of every epoch: once per job
    plan.check_fits(len(splits.train), cfg.data.val_size)
    provenance = collect_provenance(cfg, device, splits.source)  # after the data: its cache exists
    model, model_input = build_model(cfg, device, channels_last)
    loaders = build_loaders(cfg, options, splits, model_input, device, channels_last)
    trainer = build_trainer(cfg, options, model, device, len(splits.train), plan)
    log.info("model %s (%.2fM parameters) on %s, autocast %s", job.choices.get("model"),
             sum(p.numel() for p in model.parameters()) / 1e6, device, trainer.amp_dtype)

    resumed = checkpoint.resume(trainer, [loaders.train.generator])
    if resumed.state is not None:
        log.info("resuming %s after epoch %d of %d", job.output_dir, resumed.epoch, options.epochs)
        summary.running(resumed.state)
    if resumed.note:
        log.warning("%s", resumed.note)
    code_changed = resumed_code_change(resumed.saved, provenance["code"]) if resumed.state else None
    OmegaConf.save(record, job.output_dir / CONFIG_FILE)  # resolved: every number of this job
    make_tracker = instantiate(cfg.logger)  # a partial: the logger options come from the config
    with (make_tracker(job.output_dir, run_name=job.name, group=job.group, config=record,
                       resumed_after=resumed.epoch,
                       history=resumed.state.history if resumed.state else [],
                       wandb_id=resumed.saved.get("wandb_id"), provenance=provenance) as tracker,
          CompileWatch(options.compile) as compiled):

        def after_epoch(state: FitState, metrics: dict[str, float]) -> None:
            log_epoch(tracker, state.epoch, options.epochs, metrics)  # log first: a kill in
            checkpoint.save(trainer, state, {  # between redoes one epoch
                "wandb_id": tracker.wandb_id, "code": provenance["code"], "code_changed": code_changed})
            summary.running(state)  # after the checkpoint: what it says is done, is saved

        fit = trainer.fit(loaders.train, loaders.val, state=resumed.state, after_epoch=after_epoch)
        test = test_once(trainer, fit, loaders.test, options.tta)
        if compiled.fallbacks:
            log.warning("trainer.compile: part of this job ran uncompiled: %s", compiled.status)
        result = completed_summary(job, fit, test, {
            "device": str(device), "precision": precision_name(trainer.amp_dtype),
            "seed": cfg.seed, "fingerprint": fingerprint(record),
            "resumed_from_epoch": resumed.epoch, "resume_note": resumed.note,
            "compile": compiled.status, "wandb_id": tracker.wandb_id,
            "pretrained": model_input.weights,
            "provenance": provenance, "code_changed_on_resume": code_changed})
        tracker.log_results({"choices": job.choices, **record}, result)
    torch.save(trainer.eval_weights(), job.output_dir / "model.pt")  # the tested weights
    if not options.keep_checkpoint:
        checkpoint.remove()
    return result


def log_epoch(tracker: Tracker, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
    tracker.log_epoch(epoch, metrics)
    log.info("epoch %d/%d %s", epoch, epochs,
             " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))


def stored_result(stored: dict | None, job: JobInfo, record: dict) -> dict | None:
    """The stored summary when this job already ran to the end in its directory; a completed
    job of another config is refused (and left as it is)."""
    if not (stored and stored.get("status") == COMPLETED):
        return None
    if stored.get("fingerprint") != fingerprint(record):
        raise Refusal(
            f"{job.output_dir} holds a completed job with a different config; refusing to mix "
            "them (its files are left as they are). Use a new output directory "
            "(hydra.run.dir=... or hydra.sweep.dir=...), or rerun its own command.")
    log.info("already completed in %s: returning its stored result", job.output_dir)
    return stored


# failures with a message of their own: reported without a traceback
EXPECTED_FAILURES = (UserError, DivergedError, torch.OutOfMemoryError)


def explain(err: BaseException, cfg: DictConfig) -> str:
    """The message a failed job reports: what went wrong, and what to change."""
    if isinstance(err, torch.OutOfMemoryError):
        b, k = cfg.trainer.batch_size, cfg.trainer.grad_accum_steps  # (from any failing run)
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


def start(cfg: DictConfig, job: JobInfo, job_dir: JobDir):
    """The checked options and what the directory holds, read before anything is written: the
    resolved config as recorded (secrets masked), a completed result of this config (returned as
    it is), and the checkpoint to resume. A directory holding a completed job is never written
    by a run that stops here."""
    stored = job_dir.summary()
    try:
        options = check_config(cfg)  # the trainer group as one typed object
        record = redact_secrets(OmegaConf.to_container(cfg, resolve=True))
        result = stored_result(stored, job, record) if options.resume else None
        checkpoint = Checkpoint(job.output_dir, record, options.resume) if result is None else None
    except Refusal:
        raise
    except Exception as err:
        if stored and stored.get("status") == COMPLETED:
            raise Refusal(f"{job.output_dir} holds a completed job, left as it is: this run "
                          f"stopped before it could compare configs: {explain(user_error_in(err), cfg)}") from err
        raise
    return options, record, result, checkpoint


def run(cfg: DictConfig) -> float:
    """The task function. Returns `cfg.optimized_metric` as a float for sweepers such as Optuna."""
    job = JobInfo.current()
    summary = SummaryFile(job)
    try:
        with JobDir(job.output_dir) as job_dir:  # refused while another process trains it
            try:
                options, record, result, checkpoint = start(cfg, job, job_dir)
                if result is None:
                    job_dir.write_hydra_record(cfg)
                    summary.running()
                    result = train(cfg, options, job, record, checkpoint, summary)
                    summary.completed(result)
            except Refusal:
                raise
            except Exception as raised:
                fail(raised, cfg, job, job_dir, summary)
    except Refusal as refused:  # nothing was written: the directory is as it was
        stop(job, str(refused), user_error=True, log_file=False)
    log.info("done: test_acc=%s best_val_acc=%s -> %s", result["test_acc"],
             result["best_val_acc"], job.output_dir)
    value = result.get(cfg.optimized_metric)
    return float("nan") if value is None else float(value)


def fail(raised: Exception, cfg: DictConfig, job: JobInfo, job_dir: JobDir,
         summary: SummaryFile) -> None:
    """A failed job (its directory held no completed job: `start` refuses those): Hydra's record
    and its summary, marked failed with the reason and the epochs it completed, so that a sweep's
    report lists it; its memory released, then `stop`."""
    err = user_error_in(raised)  # e.g. a ConfigError that Hydra's instantiate wrapped
    message = explain(err, cfg)
    try:
        job_dir.write_hydra_record(cfg)
        summary.failed(message)
    except OSError as write_error:  # e.g. the disk is still full
        log.error("could not mark %s failed: %s", summary.path, write_error)
    if not isinstance(err, EXPECTED_FAILURES):
        log.error("job failed", exc_info=raised)  # the full traceback, in the job's log
    release(raised)
    stop(job, message, user_error=isinstance(err, UserError), log_file=isinstance(err, EXPECTED_FAILURES))


def stop(job: JobInfo, message: str, user_error: bool, log_file: bool = True) -> NoReturn:
    """End a job that did not complete: in a single run, exit with the message (2 for the
    user's mistake, else 1), no traceback; in a sweep, fail this job only, so the others run."""
    if log_file:
        log.error("%s", message)
    else:  # a refusal: the job's train.log is left as it was too
        console_only(log.error, "%s", message)
    if not job.multirun:
        sys.exit(2 if user_error else 1)
    raise JobFailed(message) from None


def console_only(emit, *args) -> None:
    """Log without the file handlers Hydra attached (the job's train.log)."""
    root = logging.getLogger()
    files = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    for handler in files:
        root.removeHandler(handler)
    try:
        emit(*args)
    finally:
        for handler in files:
            root.addHandler(handler)
