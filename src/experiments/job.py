"""One job, read top to bottom: build data, batches, model and trainer from the checked config ->
fit (resuming where a killed run stopped) -> test once -> summary. Under DDP every rank runs
`train`, each with its share of every batch; rank 0 writes the job's files.

The task function that claims the job's directory, checks it and calls `train` (on one process
or several) is experiments/task.py.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import random
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel

import experiments.config  # noqa: F401  (registers the schemas and resolvers with Hydra)
from experiments.batches import Batching, Loaders
from experiments.batches.device import Normalize
from experiments.config.checks import check_mixed_batches, optimizer_key
from experiments.config.groups import CONFIG_GROUPS
from experiments.config.secrets import redact_overrides
from experiments.data import Splits, load_splits
from experiments.errors import ConfigError, UserError, user_error_in
from experiments.identity import fingerprint
from experiments.models.pretrained import ModelInput, input_for
from experiments.ranks import SINGLE, Ranks, cores_allotted
from experiments.report.job_summary import CONFIG_FILE, SummaryFile, completed_summary
from experiments.report.provenance import collect as collect_provenance
from experiments.report.provenance import resumed_code_change
from experiments.report.tracking import NoTracker, Tracker
from experiments.search.trial import Pruned, TrialReport
from experiments.timing import JobClock, NoClock
from experiments.training import metrics as m
from experiments.training.backends import (
    CompileWatch,
    configure_backends,
    maybe_compile,
    precision_name,
    resolve_device,
    share_cpu,
    unwrap,
    use_channels_last,
)
from experiments.training.batch_schedule import BatchSchedule
from experiments.training.checkpoint import Checkpoint
from experiments.training.distributed import join
from experiments.training.interrupts import NEVER, Interrupted, Interrupts
from experiments.training.lookahead import Lookahead
from experiments.training.options import TrainerOptions
from experiments.training.param_groups import param_groups
from experiments.training.profile import StepProfiler
from experiments.training.progress import CONSOLE_ONLY, FILE_ONLY, duration
from experiments.training.trainer import FitState, Trainer

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
    side_by_side: int = 1  # the sweep's jobs running at once on this machine (joblib's n_jobs)

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
            side_by_side=jobs_side_by_side(hc.launcher) if multirun else 1,
        )


def jobs_side_by_side(launcher) -> int:
    """joblib's n_jobs (-1: one per core); other launchers run one job per machine or process
    allotment (the basic one, in turn; Slurm, its own cores)."""
    if "joblib" not in str(launcher.get("_target_", "")):
        return 1
    n = int(launcher.get("n_jobs") or 1)
    return n if n > 0 else max(1, (os.cpu_count() or 1) + 1 + n)  # joblib's rule for n < 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- building the parts from the config ------------------------------------------------------

def build_loaders(cfg: DictConfig, options: TrainerOptions, splits: Splits,
                  model_input: ModelInput, device: torch.device, channels_last: bool,
                  ranks: Ranks = SINGLE, side_by_side: int = 1) -> Loaders:
    """The `loader` group's factory (device or DataLoader workers) with the `aug` group's
    augmentation for the training split, serving what the model takes (`model_input`): under
    DDP, this rank's share of every batch."""
    batching = Batching(instantiate(cfg.aug), model_input, options.batch_size,
                        options.eval_batch_size, cfg.seed, device, channels_last, ranks,
                        cores_allotted(ranks, side_by_side), tuple(options.stop_signals))
    return instantiate(cfg.loader)(splits, batching)


def build_model(cfg: DictConfig, device: torch.device, channels_last: bool, ranks: Ranks = SINGLE,
                sync_batchnorm: bool = False) -> tuple[torch.nn.Module, ModelInput]:
    """The `model` group's model on the device, and what it takes (decided here, once: the
    data's size and normalization, or a pretrained model's own). With `sync_batchnorm` under
    DDP its BatchNorm layers compute their statistics over every rank's batch."""
    try:
        model = instantiate(cfg.model)
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
    if sync_batchnorm and ranks.distributed:
        if device.type != "cuda":
            raise ConfigError("trainer.sync_batchnorm=true runs on GPUs only (torch's "
                              "SyncBatchNorm); on a CPU each rank keeps its own statistics")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
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
                  device: torch.device, n_train: int, plan: BatchSchedule,
                  ranks: Ranks = SINGLE, interrupts: Interrupts = NEVER,
                  clock: JobClock | None = None, trace_dir: Path | None = None) -> Trainer:
    """Optimizer, lr schedule (over the run's real optimizer steps under the batch-size
    schedule `plan`), mixing, EMA or lookahead, the profiler (into `trace_dir`, when
    trainer.profile asks and this rank writes) and the model (under DDP wrapped, then compiled
    if asked) in one Trainer."""
    optimizer = build_optimizer(cfg, options, model, device)
    if ranks.distributed:  # wrapping broadcasts rank 0's weights and buffers into every rank's
        model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    # the lookahead's copy is taken after that broadcast: a copy of a rank's own start, where it
    # differed from rank 0's, was written back into that rank's weights (frozen ones too, which
    # no gradient all-reduce brings back), and the ranks trained apart. (The EMA copies the
    # weights at its first update; taken here too, it starts from the same weights.)
    module = unwrap(model)
    ema = ModelEmaV3(module, decay=options.ema_decay) if options.ema_decay else None
    steps = functools.partial(plan.steps_until, n_train)
    lookahead = Lookahead(module, options.lookahead, steps(options.epochs)) if options.lookahead else None
    mixup = instantiate(cfg.mix) if cfg.mix.get("_target_") else None
    schedule = instantiate(cfg.sched)(optimizer, epochs=options.epochs, steps=steps)
    profiler = (StepProfiler(options.profile, trace_dir, device, clock, steps(options.epochs))
                if options.profile and trace_dir is not None else None)
    return Trainer(maybe_compile(model, options.compile), optimizer, schedule, options,
                   device=device, batch_schedule=plan, mixup=mixup, ema=ema, lookahead=lookahead,
                   ranks=ranks, interrupts=interrupts, clock=clock, profiler=profiler)


def init_from_data(model: torch.nn.Module, splits: Splits, model_input: ModelInput,
                   device: torch.device) -> None:
    """A model that computes part of its initialization from the training images (airbench's
    whitening filters: `init_from_data`, from its first `init_images`) gets them here, as the
    model takes them (normalized), unaugmented, in the split's order; the same on every rank."""
    if hasattr(model, "init_from_data"):
        images = splits.train.images[:model.init_images].to(device)
        model.init_from_data(Normalize(model_input.mean, model_input.std, device)(images))


def test_once(trainer: Trainer, fit: FitState, test_batches, tta: str) -> dict[str, float | None]:
    """The test set, evaluated here only: with the final weights, then with the weights chosen
    on validation (the reported test_acc), and with TTA (trainer.tta) as a separate number.

    A stop signal ends the test after the pass it came in (Interrupted), the fit's final
    checkpoint being where its rerun starts: it tests again, and only tests. One that comes in
    the last pass lets the test end: the result is saved, then the process stops."""
    where = f"during the test after the last epoch ({fit.epoch})"
    final = trainer.evaluate(test_batches)
    trainer.stop_if_asked(where)
    trainer.use_best_weights(fit)
    chosen = trainer.evaluate(test_batches)
    tta_acc = None
    if tta != "none":
        trainer.stop_if_asked(where)
        tta_acc = trainer.evaluate(test_batches, tta=tta)["acc"]
    return {"acc": chosen["acc"], "loss": chosen["loss"], "acc_final": final["acc"],
            "tta_acc": tta_acc}


# --- the job -------------------------------------------------------------------------------

def train(cfg: DictConfig, options: TrainerOptions, job: JobInfo, record: dict,
          checkpoint: Checkpoint, summary: SummaryFile | None, ranks: Ranks = SINGLE,
          store=None, interrupts: Interrupts = NEVER, clock: JobClock | None = None) -> dict | None:
    """Build everything from the config, train (resuming from `checkpoint` when it holds one),
    test once with the chosen weights. `cfg` is what the parts are instantiated from, `options`
    its trainer group, checked and typed, `record` the resolved config with secrets masked (what
    is saved, logged and fingerprinted); `summary` is rewritten with the progress after every
    epoch. Under DDP (`ranks`) this rank joins the job's process group (at `store`, or from the
    environment) and trains its share; only rank 0 writes, and returns the summary.
    `interrupts` (training/interrupts.py) stop the fit at a signal, after a checkpoint of where
    it was (Interrupted: the summary says `interrupted`). `clock` is charged with where the
    time goes (experiments/timing.py)."""
    clock = clock or NoClock()
    # a trial of a search with a pruner reports to its study (experiments/search): checked first
    trial = TrialReport.for_job(cfg, options, ranks.world_size) if ranks.main else None
    device = resolve_device(options.device, ranks.gpu_slot(job.num))
    configure_backends(options, device)
    share_cpu(ranks, job.side_by_side)
    if ranks.distributed:  # (under torchrun or Slurm tasks the launcher's count is known here)
        options.check_ranks_divide(ranks.world_size)
        check_mixed_batches(cfg, options, ranks.world_size)
        join(ranks, device, options.collective_timeout_s, store)
    seed_everything(cfg.seed)
    channels_last = use_channels_last(options, device)

    splits = load_splits(cfg.data)
    log.info("data %s: %d train / %d val / %d test images, %d classes", cfg.data.name,
             len(splits.train), len(splits.val or ()), len(splits.test), len(splits.classes))
    plan = BatchSchedule(options)  # the batch size of every epoch: once per job
    plan.check_fits(len(splits.train), cfg.data.val_size)
    provenance = collect_provenance(cfg, device, splits.source, splits.classes)  # (after the data: its cache)
    model, model_input = build_model(cfg, device, channels_last, ranks, options.sync_batchnorm)
    init_from_data(model, splits, model_input, device)
    loaders = build_loaders(cfg, options, splits, model_input, device, channels_last, ranks,
                            job.side_by_side)
    writes = ranks.main  # rank 0 owns the job's files
    trainer = build_trainer(cfg, options, model, device, len(splits.train), plan, ranks, interrupts,
                            clock, job.output_dir / "tb" if writes else None)
    log.info("model %s (%.2fM parameters) on %s%s, autocast %s", job.choices.get("model"),
             sum(p.numel() for p in model.parameters()) / 1e6, device,
             f" (rank {ranks.rank} of {ranks.world_size})" if ranks.distributed else "",
             trainer.amp_dtype)

    resumed = checkpoint.resume(trainer, loaders.train.generators)
    # the steps already taken inside the epoch it resumes (0: at an epoch's end)
    resumed_step = (resumed.state.progress or {}).get("steps", 0) if resumed.state else None
    if resumed.state is not None:
        log.info("resuming %s after epoch %d of %d%s", job.output_dir, resumed.epoch, options.epochs,
                 f", at step {resumed_step} of epoch {resumed.epoch + 1}" if resumed_step else "")
        if writes:
            summary.running(resumed.state)
    if resumed.note:
        log.warning("%s", resumed.note)
    code_changed = resumed_code_change(resumed.saved, provenance["code"]) if resumed.state else None
    if writes:
        OmegaConf.save(record, job.output_dir / CONFIG_FILE)  # resolved: every number of this job
    make_tracker = instantiate(cfg.logger) if writes else lambda *a, **k: NoTracker()
    tracker = make_tracker(job.output_dir, run_name=job.name, group=job.group, config=record,
                           resumed_after=resumed.epoch,
                           history=resumed.state.history if resumed.state else [],
                           wandb_id=resumed.saved.get("wandb_id"), provenance=provenance)
    with closing(loaders), clock.around("logging", tracker), CompileWatch(options.compile) as compiled:

        def after_epoch(state: FitState, metrics: dict[str, float]) -> None:
            if writes:  # logged first: a kill before the next checkpoint redoes these epochs
                with clock("logging"):
                    log_epoch(tracker, state.epoch, options.epochs, metrics)
            last = state.epoch >= options.epochs or state.early_stopped
            if trial is not None and trial.should_stop(state.history, last):  # the study's pruner says so
                save(state)  # this epoch's checkpoint, kept
                raise trial.pruned()

        def save(state: FitState) -> None:  # every rank (rank 0 writes)
            with clock("checkpoint"):
                checkpoint.save(trainer, state, {"wandb_id": tracker.wandb_id,
                                                 "code": provenance["code"], "code_changed": code_changed})
            if writes and state.progress is None:  # at an epoch's end
                with clock("logging"):
                    summary.running(state)  # after the checkpoint: what it says is done, is saved

        clock.started_fit()
        try:
            try:
                fit = trainer.fit(loaders.train, loaders.val, state=resumed.state,
                                  after_epoch=after_epoch, save=save)
            finally:
                if trainer.profiler is not None:
                    trainer.profiler.close()
            with clock("test"):
                test = test_once(trainer, fit, loaders.test, options.tta)
        except Interrupted as stopped:
            if writes:
                summary.interrupted(str(stopped))  # with the epochs done and checkpointed
            raise
        except Pruned as pruned:  # neither failed nor a result: the sweeper tells the study
            log.info("%s", pruned)
            if writes:
                summary.pruned(pruned.value, fingerprint(record))
            raise
        if compiled.fallbacks:
            log.warning("trainer.compile: part of this job ran uncompiled: %s", compiled.status)
        if not writes:
            return None
        result = completed_summary(job, fit, test, {
            "device": str(device), "world_size": ranks.world_size,
            "device_batch_size": options.batch_size // ranks.world_size,
            "threads": torch.get_num_threads(),
            "precision": precision_name(trainer.amp_dtype),
            "seed": cfg.seed, "fingerprint": fingerprint(record),
            "resumed_from_epoch": resumed.epoch, "resumed_from_step": resumed_step,
            "resume_note": resumed.note,
            "compile": compiled.status, "wandb_id": tracker.wandb_id,
            "pretrained": model_input.weights,
            "provenance": provenance, "code_changed_on_resume": code_changed})
        with clock("logging"):
            tracker.log_results({"choices": job.choices, **record}, result)
    with clock("checkpoint"):
        torch.save(trainer.eval_weights(), job.output_dir / "model.pt")  # the tested weights
    # (the checkpoint goes once the summary says completed: experiments/task.py)
    return result


def log_epoch(tracker: Tracker, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
    """Every metric by its full name to the trackers and train.log; one short line to the
    console (above the progress bar: training/progress.py)."""
    tracker.log_epoch(epoch, metrics)
    log.info("epoch %d/%d %s", epoch, epochs, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()),
             extra=FILE_ONLY)
    log.info("%s", epoch_line(epoch, epochs, metrics), extra=CONSOLE_ONLY)


def epoch_line(epoch: int, epochs: int, metrics: dict[str, float]) -> str:
    """`epoch 3/30  loss 1.234  acc 61.2%  val 58.9%  lr 0.087  1.9 s`: what the console shows."""
    parts = [f"epoch {epoch}/{epochs}", f"loss {metrics[m.TRAIN_LOSS]:.3f}",
             f"acc {100 * metrics[m.TRAIN_ACC]:.1f}%"]
    if m.VAL_ACC in metrics:
        parts.append(f"val {100 * metrics[m.VAL_ACC]:.1f}%")
    parts += [f"lr {metrics[m.LR]:.3g}", duration(metrics[m.EPOCH_S])]
    return "  ".join(parts)
