"""The task function: `python train.py` calls `run` (Hydra's task function), and so does every
job of a multirun. It decides which process trains which rank of the job, claims the job's
directory and checks what it holds before anything is written, then calls experiments.job's
`train`, and ends a job that did not complete with one message.

- One process (`trainer.devices=1`): this process trains the job.
- `trainer.devices=N`: this process is rank 0, and starts ranks 1..N-1 itself with the resolved
  config (experiments/spawn.py), after its checks.
- Started as ranks by a launcher (torchrun, Slurm tasks): every rank runs this function. They join
  the process group first; rank 0 claims and checks, and tells the others whether to train.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import traceback
from pathlib import Path
from typing import NoReturn

import torch
from omegaconf import DictConfig, OmegaConf

from experiments.config.checks import check_config
from experiments.config.secrets import recorded
from experiments.errors import ConfigError, JobFailed, JobRefused, Refusal, UserError, user_error_in
from experiments.identity import fingerprint
from experiments.job import JobInfo, train
from experiments.job_dir import JobDir
from experiments.ranks import Ranks, launched_ranks
from experiments.report.job_summary import COMPLETED, PRUNED, SummaryFile
from experiments.search.trial import Pruned, search_trial
from experiments.spawn import RankJob, RankProcesses, abort_group
from experiments.timing import JobClock, take_process_start
from experiments.training.backends import resolve_device
from experiments.training.checkpoint import Checkpoint
from experiments.training.distributed import broadcast, join, leave
from experiments.training.divergence import DivergedError
from experiments.training.interrupts import Interrupted, Interrupts

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    """The task function. Returns `cfg.optimized_metric` as a float for sweepers such as Optuna
    (NaN on the ranks other than 0 of a launched job: a launcher reads rank 0's)."""
    clock = JobClock(take_process_start())  # the first job of a process counts its imports
    job = JobInfo.current()
    ranks = launched_ranks()
    if ranks is not None:
        rank_log(job.output_dir, ranks)
        join(ranks, resolve_device(cfg.trainer.device, ranks.gpu_slot(job.num)),
             cfg.trainer.collective_timeout_s)
        if not ranks.main:
            return follow_rank_0(cfg, job, ranks)
    summary, stopped, interrupts = SummaryFile(job), None, None
    try:
        with JobDir(job.output_dir) as job_dir:  # refused while another process trains it
            try:
                options, record, result, checkpoint = start(cfg, job, job_dir)
            except (Refusal, Pruned):  # (a search's pruned trial, returned as it was)
                raise
            except Exception as raised:  # before training: the ranks are told to stop
                tell_the_ranks(ranks, "stop")
                fail(raised, cfg, job, job_dir, summary)
            tell_the_ranks(ranks, "train" if result is None else "done")
            if result is None:
                interrupts = Interrupts(options.stop_signals, options.checkpoint_every_min)
                try:
                    # a signal stops the job where it is, or, when it comes after the test, lets
                    # the job end and then ends the process (`end_completed`)
                    with interrupts:
                        job_dir.write_hydra_record(cfg)
                        summary.running(checkpoint.fit)  # (what the checkpoint holds is done)
                        result = train_ranks(cfg, options, job, record, checkpoint, summary, ranks,
                                             interrupts, clock)
                        result["time_s"] = clock.summary()
                        summary.completed(result)
                        if not options.keep_checkpoint:
                            checkpoint.remove()  # (only now: a kill before redoes the test)
                except Interrupted as signalled:  # checkpointed, and the summary says so
                    stopped = signalled
                except Pruned as pruned:  # checkpointed, the summary says so; for the sweeper
                    release(pruned)  # the trial's model and data, before the search's next trial
                    raise
                except Exception as raised:  # while training: the others' collectives end
                    if ranks is not None:
                        abort_group()
                    fail(raised, cfg, job, job_dir, summary, interrupts.signum)
    except Refusal as refused:  # nothing was written: the directory is as it was
        tell_the_ranks(ranks, "stop")
        stop(job, str(refused), user_error=isinstance(user_error_in(refused.__cause__ or refused), UserError),
             log_file=False, refused=True)
    if stopped is not None:  # (the job's directory is released by now)
        end_interrupted(stopped, interrupts)
    if interrupts is not None and interrupts.signum is not None:  # it came after the test
        end_completed(interrupts)
    log.info("done: test %s (best val %s) -> %s", percent(result["test_acc"]),
             percent(result["best_val_acc"]), job.output_dir)
    value = result.get(cfg.optimized_metric)
    return float("nan") if value is None else float(value)


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def start(cfg: DictConfig, job: JobInfo, job_dir: JobDir):
    """The checked options and what the directory holds, read before anything is written: the
    resolved config as recorded (secrets masked), a completed result of this config (returned as
    it is), and the checkpoint to resume. A directory that holds a job, whatever its state, is
    never written by a run that stops here (a Refusal); a new one gets a failed summary (`fail`),
    so that a sweep's report lists the job."""
    stored = job_dir.summary()
    try:
        options = check_config(cfg, job.overrides)  # the trainer group as one typed object
        record = recorded(cfg)
        result = stored_result(stored, job, record) if options.resume else None
        checkpoint = Checkpoint(job.output_dir, record, options.resume) if result is None else None
    except (Refusal, Pruned):
        raise
    except Exception as err:
        held = job_dir.holds_a_job()
        if held is not None:
            raise Refusal(f"{job.output_dir} holds {held}, left as it is: this run stopped before "
                          f"it could compare configs: {explain(user_error_in(err), cfg)}") from err
        raise
    return options, record, result, checkpoint


def stored_result(stored: dict | None, job: JobInfo, record: dict) -> dict | None:
    """The stored summary when this job already ran to the end in its directory; a completed
    job of another config is refused (and left as it is). A search's trial that its pruner
    stopped is returned as it ended (Pruned); run outside a search, it resumes to its end."""
    status = (stored or {}).get("status")
    if not (status == COMPLETED or (status == PRUNED and search_trial() is not None)):
        return None
    if stored.get("fingerprint") != fingerprint(record):
        raise Refusal(
            f"{job.output_dir} holds a {status} job with a different config; refusing to mix "
            "them (its files are left as they are). Use a new output directory "
            "(hydra.run.dir=... or hydra.sweep.dir=...), or rerun its own command.")
    if status == PRUNED:
        log.info("already pruned in %s: returning it as it ended", job.output_dir)
        raise Pruned(stored["epochs_completed"], stored["pruned_value"], record["trainer"]["monitor"])
    log.info("already completed in %s: returning its stored result", job.output_dir)
    return stored


# --- several ranks ---------------------------------------------------------------------------

def train_ranks(cfg: DictConfig, options, job: JobInfo, record: dict, checkpoint: Checkpoint,
                summary: SummaryFile, launched: Ranks | None, interrupts: Interrupts,
                clock: JobClock) -> dict:
    """`train` as rank 0: alone, among a launcher's ranks, or starting ranks 1..N-1 itself."""
    if launched is not None:
        if options.devices not in (1, launched.world_size):
            raise ConfigError(f"trainer.devices={options.devices}, but the launcher started "
                              f"{launched.world_size} ranks: leave it at 1 (the launcher's count "
                              "rules) or make it equal")
        return train(cfg, options, job, record, checkpoint, summary, launched,
                     interrupts=interrupts, clock=clock)
    if options.devices == 1:
        return train(cfg, options, job, record, checkpoint, summary, Ranks(),
                     interrupts=interrupts, clock=clock)
    ranks = Ranks(0, options.devices, 0, options.devices)
    rank_job = RankJob(OmegaConf.to_container(cfg, resolve=True), record, options, job)
    processes = RankProcesses(options.devices, rank_job, options.collective_timeout_s, run_rank)
    # (their start is start-up; waiting for them to exit at the end is `shutdown`)
    with clock.around("shutdown", processes, entering=False) as others:
        try:
            return train(cfg, options, job, record, checkpoint, summary, ranks, others.store,
                         interrupts, clock)
        except (Interrupted, *EXPECTED_FAILURES):  # rank 0's own (every rank diverges at once)
            raise
        except Exception as err:  # a broken collective, or rank 0's own error
            failed = others.failure()
            if failed is None:
                raise
            raise RankFailed(failed) from err  # the root cause, not rank 0's broken collective
        finally:
            leave()


def run_rank(rank_job: RankJob, ranks: Ranks, store, failures) -> None:
    """A spawned rank's whole life (experiments/spawn.py): its log file, the job's training,
    and on failure its message to rank 0."""
    rank_log(Path(rank_job.job.output_dir), ranks)
    cfg = OmegaConf.create(rank_job.config)
    options = rank_job.options
    for name in options.stop_signals:  # rank 0 decides when to stop (Ctrl-C reaches every rank)
        signal.signal(signal.Signals[name], signal.SIG_IGN)
    try:
        train_as_rank(cfg, rank_job, ranks, store, Interrupts((), options.checkpoint_every_min))
    except Interrupted:  # with rank 0, at the same step, after the same checkpoint
        pass
    except BaseException as err:  # noqa: BLE001  (any failure: reported to rank 0, then exit 1)
        log.error("rank %d failed", ranks.rank, exc_info=err)  # the traceback, in its own log
        failures.put((ranks.rank, explain(user_error_in(err), cfg)))
        failures.close()
        raise SystemExit(1) from None
    finally:
        leave()


class RankFailed(RuntimeError):
    """Another rank failed first: its message is the job's."""


def train_as_rank(cfg: DictConfig, rank_job: RankJob, ranks: Ranks, store,
                  interrupts: Interrupts) -> None:
    """A rank other than 0 that rank 0 started (experiments/spawn.py): it trains its share and
    writes nothing but its log."""
    checkpoint = Checkpoint(rank_job.job.output_dir, rank_job.record, rank_job.options.resume)
    train(cfg, rank_job.options, rank_job.job, rank_job.record, checkpoint, None, ranks, store,
          interrupts)


def follow_rank_0(cfg: DictConfig, job: JobInfo, ranks: Ranks) -> float:
    """A launcher's rank other than 0: it trains when rank 0 found the job to train (the same
    command line or submitit job: the same config, so the same checks pass), and writes
    nothing but its log."""
    if broadcast(None, ranks) != "train":
        leave()
        return float("nan")
    options = check_config(cfg, job.overrides)
    record = recorded(cfg)
    checkpoint = Checkpoint(job.output_dir, record, options.resume)
    with Interrupts(options.stop_signals, options.checkpoint_every_min) as interrupts:
        try:  # (a launcher signals every rank; they stop at the step the ranks agree on)
            train(cfg, options, job, record, checkpoint, None, ranks, interrupts=interrupts)
        except Interrupted as stopped:
            leave()
            sys.exit(128 + stopped.signum)
    if interrupts.signum is not None:  # after the test: ends as rank 0 does
        leave()
        sys.exit(128 + interrupts.signum)
    return float("nan")


def tell_the_ranks(ranks: Ranks | None, decision: str) -> None:
    """Rank 0 of a launcher's ranks: "train", "done" (a stored result) or "stop" (refused or
    failed before training), so that every rank leaves the same way."""
    if ranks is not None and ranks.distributed:
        broadcast(decision, ranks)
        if decision != "train":
            leave()


def rank_log(job_dir: Path, ranks: Ranks) -> None:
    """Ranks other than 0 log to their own file, train.rank<r>.log: rank 0 owns train.log."""
    if ranks.main:
        return
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)  # Hydra's train.log handler (a launcher's rank)
        handler.close()
    # (opened at its first line: a rank of a refused rerun leaves no file behind)
    handler = logging.FileHandler(Path(job_dir) / f"train.rank{ranks.rank}.log", delay=True)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


# --- failures --------------------------------------------------------------------------------

# failures with a message of their own: reported without a traceback
EXPECTED_FAILURES = (UserError, DivergedError, torch.OutOfMemoryError, RankFailed)


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


def fail(raised: Exception, cfg: DictConfig, job: JobInfo, job_dir: JobDir,
         summary: SummaryFile, signum: int | None = None) -> None:
    """A failed job (that trained, or a new directory's: `start` refuses the others): Hydra's
    record and its summary, marked failed with the reason and the epochs done and checkpointed,
    so that a sweep's report lists it; its memory released, then `stop` (`signum`: a stop signal
    had come too)."""
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
    stop(job, message, user_error=isinstance(err, UserError), log_file=isinstance(err, EXPECTED_FAILURES),
         signum=signum)


def end_interrupted(stopped: Interrupted, interrupts: Interrupts) -> NoReturn:
    """A job stopped at a signal, its checkpoint and `interrupted` summary written: the signal
    goes on to the handler it replaced (submitit's requeues the job, and exits), then this
    process exits with 128 + the signal's number, in a sweep too (the sweep stops; its rerun
    skips the completed jobs and continues this one)."""
    log.warning("%s", stopped)
    interrupts.chain()
    sys.exit(128 + stopped.signum)


def end_completed(interrupts: Interrupts) -> NoReturn:
    """A signal that came after the test (the job writing its result): the job has ended, its
    result saved, and the process ends as at any stop signal, a sweep's with it (its rerun
    returns this result and runs the rest)."""
    log.warning("%s after the test: the job's result is saved; stopping",
                signal.Signals(interrupts.signum).name)
    interrupts.chain()
    sys.exit(128 + interrupts.signum)


def stop(job: JobInfo, message: str, user_error: bool, log_file: bool = True,
         refused: bool = False, signum: int | None = None) -> NoReturn:
    """End a job that did not complete: in a single run, exit with the message (2 for the
    user's mistake, else 1), no traceback; in a sweep, fail this job only, so the others run
    (JobRefused when it wrote nothing: `refused`). After a stop signal (`signum`) the process
    exits with 128 + its number all the same, a sweep's too."""
    if log_file:
        log.error("%s", message)
    else:  # a refusal: the job's train.log is left as it was too
        console_only(log.error, "%s", message)
    if signum is not None:
        log.warning("%s had come too: stopping", signal.Signals(signum).name)
        sys.exit(128 + signum)
    if not job.multirun:
        sys.exit(2 if user_error else 1)
    raise (JobRefused if refused else JobFailed)(message) from None


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
