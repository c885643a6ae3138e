"""Each job's `summary.json`: one small file a person or a script reads to know how the job went."""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from experiments.atomic import atomic_write

SUMMARY_FILE = "summary.json"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic: a reader never sees half a file, even of a killed job."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def read_summary(job_dir: Path) -> dict[str, Any] | None:
    path = Path(job_dir) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.exists() else None


def base_summary(job, status: str, error: str | None = None) -> dict[str, Any]:
    return {
        "status": status,
        "name": job.name,
        "choices": job.choices,
        "overrides": job.overrides,
        "test_acc": None,
        "test_acc_final": None,
        "test_tta_acc": None,
        "test_loss": None,
        "best_val_acc": None,
        "best_val_loss": None,
        "best_epoch": None,
        "epochs_completed": 0,
        "early_stopped": False,
        "train_time_s": None,
        "images_per_s": None,
        "error": error,
        "resumed_from_epoch": None,
        "provenance": None,  # experiments.report.provenance: code, versions, device, data, command
        "code_changed_on_resume": None,  # set when a checkpoint from other code was resumed
        "output_dir": str(job.output_dir),
        "finished_at": now(),
    }


def completed_summary(job, fit, test: dict[str, float], extra: dict[str, Any]) -> dict[str, Any]:
    """`fit` is the trainer's FitState at the end."""
    summary = base_summary(job, "completed")
    summary.update({
        "test_acc": test["acc"],  # the weights chosen on validation
        "test_acc_final": test["acc_final"],  # the last epoch's weights
        "test_tta_acc": test["tta_acc"],  # chosen weights + flip TTA (null unless trainer.tta=flip)
        "test_loss": test["loss"],
        "best_val_acc": fit.best_val.get("acc"),
        "best_val_loss": fit.best_val.get("loss"),
        "best_epoch": fit.best_epoch,
        "epochs_completed": fit.epoch,
        "early_stopped": fit.early_stopped,
        "train_time_s": round(fit.train_time_s, 3),
        "images_per_s": round(fit.images_per_s, 1) if fit.images_per_s else None,
        **extra,
    })
    return summary


def running_summary(job) -> dict[str, Any]:
    """Written when a job starts: `summarize` shows it as running while this process lives."""
    summary = base_summary(job, "running")
    summary.update(pid=os.getpid(), host=socket.gethostname(), started_at=now())
    return summary


def failed_summary(job, message: str) -> dict[str, Any]:
    return base_summary(job, "failed", message)
