"""Each job's `summary.json`: one small file a person or a script reads to know how the job went.

`JobSummary` defines its keys once, in the file's order, with what each one means. Everything
else that names summary keys (the sweep table's columns, the numbers sent to TensorBoard and W&B,
the types a sweep's DataFrame gives them) picks from these keys with `chosen`, which refuses a
name that is not one of them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from experiments.atomic import atomic_write
from experiments.identity import CONFIG_FILE, SUMMARY_FILE  # noqa: F401  (the job's files, named once)

log = logging.getLogger(__name__)

RUNNING, COMPLETED, FAILED = "running", "completed", "failed"
INTERRUPTED = "interrupted"  # stopped at a signal after a checkpoint: its rerun continues it
PRUNED = "pruned"  # a search's trial its pruner stopped early (experiments/search): neither failed nor a pick


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def only(*statuses: str):
    """A key that only a job with one of these statuses writes."""
    return field(default=None, metadata={"only": statuses})


@dataclass
class JobSummary:
    """summary.json. Accuracies are fractions (0-1); null: not available (yet)."""

    status: str  # running (written at the start), completed, failed, interrupted or pruned
    name: str  # the job directory's name in a sweep, <date>_<time> for one run; its W&B run's name
    choices: dict[str, str | None]  # every config group's option (experiments.config.groups)
    overrides: list[str]  # the job's command-line overrides
    test_acc: float | None = None  # with the weights chosen on validation: THE reported number
    test_acc_final: float | None = None  # with the last epoch's weights
    test_tta_acc: float | None = None  # chosen weights + flip TTA (null unless trainer.tta=flip)
    test_loss: float | None = None  # with the chosen weights
    best_val_acc: float | None = None  # validation metrics of the chosen epoch (trainer.monitor)
    best_val_loss: float | None = None
    best_epoch: int | None = None  # the chosen epoch (null without a validation split)
    epochs_completed: int = 0
    early_stopped: bool = False
    # the job's training passes: of every epoch it completed, by whichever process (a resumed
    # job's include the checkpoint's), validation, test, checkpoints, the warm-up step and the
    # profiler's trace excluded (how the speed runs publish theirs). Equals time_s.train on a
    # job that ran in one process; resumed: the checkpoint's + time_s.train (docs/speed.md)
    train_time_s: float | None = None
    images_per_s: float | None = None  # training images per second over train_time_s
    error: str | None = None  # why the job failed, and what to change
    resumed_from_epoch: int | None = None  # the checkpoint's epoch, when the job resumed
    # the steps already taken in the epoch after it (a checkpoint inside an epoch; else 0)
    resumed_from_step: int | None = only(COMPLETED)
    provenance: dict | None = None  # code, versions, device, data, command (report.provenance)
    code_changed_on_resume: dict | None = None  # set when a checkpoint from other code was resumed
    output_dir: str = ""  # the job's directory
    finished_at: str = field(default_factory=now)  # when this file was written (UTC)
    # completed jobs only
    device: str | None = only(COMPLETED)  # e.g. cuda:0 or cpu (rank 0's, under DDP)
    world_size: int | None = only(COMPLETED)  # the job's processes (DDP ranks); 1 without DDP
    device_batch_size: int | None = only(COMPLETED)  # trainer.batch_size / world_size
    threads: int | None = only(COMPLETED)  # torch's intra-op threads (rank 0's): its CPU allotment
    precision: str | None = only(COMPLETED)  # bf16, fp16 or fp32: what trainer.precision=auto chose
    seed: int | None = only(COMPLETED)
    # the config's hash: a rerun here must match it (a pruned trial's too: its rerun in the search
    # returns it as it is)
    fingerprint: str | None = only(COMPLETED, PRUNED)
    resume_note: str | None = only(COMPLETED)  # resumed on another device setup: not bit-identical
    compile: str | None = only(COMPLETED)  # null (off), compiled, or "eager fallback: ..."
    pretrained: str | None = only(COMPLETED)  # the weights' file or cache entry; null: from scratch
    wandb_id: str | None = only(COMPLETED)
    # seconds of this process's wall time by section, with `rest` and `wall` (experiments/
    # timing.py: SECTIONS); on a resumed job, from its resume on (train_time_s: every epoch's)
    time_s: dict | None = only(COMPLETED)
    # pruned trials only: the monitored metric's value at the report that pruned it
    pruned_value: float | None = only(PRUNED)
    # running jobs only: whose process writes it, so a reader tells running from killed
    pid: int | None = only(RUNNING)
    host: str | None = only(RUNNING)
    started_at: str | None = only(RUNNING)

    def to_json(self) -> dict[str, Any]:
        """The keys this job's status writes, in the file's order."""
        return {name: getattr(self, name) for name in keys_for(self.status)}


KEYS = tuple(f.name for f in fields(JobSummary))


def keys_for(status: str) -> tuple[str, ...]:
    """The keys of a summary.json with this status, in the file's order."""
    return tuple(f.name for f in fields(JobSummary) if status in f.metadata.get("only", (status,)))


def chosen(*names: str) -> tuple[str, ...]:
    """Some of the keys, checked when the module that chooses them is imported."""
    unknown = [name for name in names if name not in KEYS]
    if unknown:
        raise NameError(f"not keys of summary.json (experiments.report.job_summary): {unknown}")
    return names


# the results a sweep's job table shows after each job's configuration and seed: validation
# first, since that is what a configuration is chosen on
RESULT_COLUMNS = chosen("status", "best_val_acc", "test_acc", "test_acc_final", "test_tta_acc",
                        "epochs_completed", "early_stopped", "train_time_s", "images_per_s",
                        "error")
# the final numbers a job sends to TensorBoard (hparam/<key>) and to its W&B run's summary
LOGGED_RESULTS = chosen("test_acc", "test_acc_final", "test_tta_acc", "best_val_acc",
                        "epochs_completed")
# numbers that are null in some jobs, typed in a sweep's DataFrame: floats (NaN for null, so
# means work) and whole numbers (pandas' Int64, so an epoch never reads 3.0)
FLOATS = chosen("best_val_acc", "test_acc", "test_acc_final", "test_tta_acc", "train_time_s",
                "images_per_s")
COUNTS = chosen("epochs_completed", "best_epoch", "resumed_from_epoch")
# dicts: dotted columns in a sweep's DataFrame (`provenance.code.commit`), left out when null
NESTED = chosen("provenance", "code_changed_on_resume", "time_s")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic: a reader never sees half a file, even of a killed job."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def read_summary(job_dir: Path) -> dict[str, Any] | None:
    """summary.json, or None when there is none or it does not parse (a torn file from a killed
    writer of an older version, or a truncated disk: the job's state is then unknown)."""
    path = Path(job_dir) / SUMMARY_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        log.warning("%s is unreadable (%s): the job's state is unknown", path, err)
        return None


def identity(job) -> dict[str, Any]:
    """What every summary says about the job (a JobInfo) itself."""
    return {"name": job.name, "choices": job.choices, "overrides": job.overrides,
            "output_dir": str(job.output_dir)}


def progress(fit) -> dict[str, Any]:
    """What the fit (the trainer's FitState, None before the first epoch) has done and chosen
    so far: a running, failed or interrupted summary carries it too, so a reader sees the
    epochs that are done and checkpointed and the job's own selection, never a re-derivation."""
    if fit is None:
        return {}
    return {"best_val_acc": fit.best_val.get("acc"), "best_val_loss": fit.best_val.get("loss"),
            "best_epoch": fit.best_epoch, "epochs_completed": fit.epoch,
            "early_stopped": fit.early_stopped, "train_time_s": round(fit.train_time_s, 3),
            "images_per_s": round(fit.images_per_s, 1) if fit.images_per_s else None}


def completed_summary(job, fit, test: dict[str, float], extra: dict[str, Any]) -> dict[str, Any]:
    """`fit` is the trainer's FitState at the end, `test` what the job measured on the test set,
    `extra` the other keys the job knows (a name that is no key raises a TypeError)."""
    return JobSummary(
        COMPLETED, **identity(job), **progress(fit),
        test_acc=test["acc"], test_acc_final=test["acc_final"], test_tta_acc=test["tta_acc"],
        test_loss=test["loss"], **extra).to_json()


def running_summary(job, fit=None, started_at: str | None = None) -> dict[str, Any]:
    """Written when a job starts, and after every epoch with its progress: `summarize` shows it
    as running while this process lives."""
    return JobSummary(RUNNING, **identity(job), **progress(fit), pid=os.getpid(),
                      host=socket.gethostname(), started_at=started_at or now()).to_json()


def interrupted_summary(job, message: str, fit=None) -> dict[str, Any]:
    """Stopped at a signal, after a checkpoint of where it was (`error` says which and where)."""
    return JobSummary(INTERRUPTED, **identity(job), **progress(fit), error=message).to_json()


def pruned_summary(job, fit, value: float, fingerprint: str) -> dict[str, Any]:
    """Stopped by the search's pruner after the epochs `fit` says are done (and checkpointed), at
    the monitored metric's `value`: the study was told PRUNED (experiments/search)."""
    return JobSummary(PRUNED, **identity(job), **progress(fit), pruned_value=value,
                      fingerprint=fingerprint).to_json()


def failed_summary(job, message: str, fit=None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """With the progress made before the failure (the epochs done and checkpointed)."""
    return JobSummary(FAILED, **identity(job), **progress(fit), error=message,
                      **(extra or {})).to_json()


def pid_alive(pid: int) -> bool:
    """Whether a process of this host with that pid lives (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SummaryFile:
    """One job's summary.json through its life: running (with the progress after every epoch),
    then completed, failed, interrupted or pruned. The start time and the last progress are kept here, so a failed
    summary still says how far the job got."""

    def __init__(self, job):
        self.job, self.path = job, Path(job.output_dir) / SUMMARY_FILE
        self.started_at, self.fit = now(), None

    def running(self, fit=None) -> None:
        self.fit = fit if fit is not None else self.fit
        write_json(self.path, running_summary(self.job, self.fit, self.started_at))

    def completed(self, summary: dict[str, Any]) -> None:
        write_json(self.path, summary)

    def interrupted(self, message: str) -> None:
        write_json(self.path, interrupted_summary(self.job, message, self.fit))

    def failed(self, message: str) -> None:
        write_json(self.path, failed_summary(self.job, message, self.fit))

    def pruned(self, value: float, fingerprint: str) -> None:
        write_json(self.path, pruned_summary(self.job, self.fit, value, fingerprint))
