"""Per-job experiment tracking: TensorBoard events, a W&B run and a plain metrics.csv.

Used as a context manager so every exit path closes the writer and finishes the W&B run: in one
multirun process an unfinished `wandb.init` run would be returned again to the next job.
"""

from __future__ import annotations

import csv
import json
import logging
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from experiments.errors import DiskFull, out_of_space
from experiments.report.job_summary import LOGGED_RESULTS
from experiments.training.metrics import EPOCH

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.csv"


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}; lists and None become strings (for TB hparams).
    Not pandas.json_normalize: importing pandas costs every job 0.4-0.6 s here (measured
    2026-12-01, 2-core CPU), for what these lines do."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


class MetricsCSV:
    """One row per epoch, flushed as it is written, so a running or killed job can be read."""

    def __init__(self, path: Path, history: list[dict[str, Any]] = ()):
        self.path, self.columns = path, None
        for row in history:  # a resumed job: the checkpoint's epochs, not what a killed job left
            self.write(row)

    def write(self, row: dict[str, Any]) -> None:
        try:
            if self.columns is None or not row.keys() <= set(self.columns):
                self.start(row)
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, self.columns, extrasaction="ignore").writerow(row)
        except OSError as err:  # a full disk's write error names no file: say which
            if out_of_space(err):
                raise DiskFull(self.path) from err
            raise

    def start(self, row: dict[str, Any]) -> None:
        """The header, written first, and again with the new columns when a row brings some (an
        epoch that validates after some that did not: trainer.val_every): the rows so far stay,
        with those cells empty."""
        rows = list(csv.DictReader(open(self.path, newline=""))) if self.columns else []
        self.columns = [*(self.columns or []), *(k for k in row if k not in (self.columns or []))]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(rows)


class Tracker:
    """The `logger` config group's target, a partial: its `tensorboard` and `wandb` options come
    from the config, the job adds the rest when it starts:

        make_tracker = hydra.utils.instantiate(cfg.logger)
        with make_tracker(output_dir, run_name=..., group=..., config=...) as tracker: ...

    `resumed_after` (an epoch) continues an interrupted job's runs: TensorBoard drops what
    the killed job logged after that epoch, W&B resumes the run with id `wandb_id`; `history`
    is the checkpoint's epochs, rewritten to metrics.csv. `provenance`
    (experiments.report.provenance) goes into the W&B config and a TensorBoard text."""

    def __init__(self, out_dir: Path, *, run_name: str, group: str | None, config: dict,
                 tensorboard: Mapping[str, Any], wandb: Mapping[str, Any],
                 resumed_after: int | None = None, history: list[dict] = (),
                 wandb_id: str | None = None, provenance: dict | None = None):
        self.out_dir, self.tensorboard_options, self.wandb_options = out_dir, tensorboard, wandb
        self.run_name, self.group, self.config = run_name, group, config
        self.provenance = provenance or {}
        self.resumed_after, self.wandb_id = resumed_after, wandb_id
        self.csv = MetricsCSV(out_dir / METRICS_FILE, history)
        self.tb = None
        self.wandb_run = None

    def __enter__(self) -> Tracker:
        if self.tensorboard_options["enabled"]:
            from torch.utils.tensorboard import SummaryWriter

            purge = self.resumed_after + 1 if self.resumed_after is not None else None
            self.tb = SummaryWriter(log_dir=str(self.out_dir / "tb"), purge_step=purge)
            if self.provenance:  # TensorBoard renders text as Markdown: indented = verbatim
                text = json.dumps(self.provenance, indent=2, default=str)
                self.tb.add_text("provenance", "    " + text.replace("\n", "\n    "), 0)
        if self.wandb_options["enabled"]:
            self.wandb_run = self._start_wandb()
        return self

    def _start_wandb(self):
        import wandb

        w = self.wandb_options
        self.wandb_id = self.wandb_id or uuid.uuid4().hex[:12]  # ours, so a resume can reuse it
        return wandb.init(
            project=w["project"], entity=w["entity"], group=w["group"] or self.group,
            name=self.run_name, tags=list(w["tags"]), mode=w["mode"], dir=str(self.out_dir),
            config={**self.config, "provenance": self.provenance},
            job_type="train", reinit="finish_previous", id=self.wandb_id, resume="allow",
            settings=wandb.Settings(console="off", silent=True,
                                    x_disable_stats=not w["system_stats"]))

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.csv.write({EPOCH: epoch, **metrics})
        if self.tb is not None:
            for tag, value in metrics.items():
                self.tb.add_scalar(tag, value, epoch)
            self.tb.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({EPOCH: epoch, **metrics}, step=epoch)

    def log_results(self, hparams: dict[str, Any], summary: dict[str, Any]) -> None:
        """The job's final numbers (LOGGED_RESULTS of its summary), and TB hparams in the same
        run (run_name='.' avoids a second run dir)."""
        final = {k: summary[k] for k in LOGGED_RESULTS if summary[k] is not None}
        if self.tb is not None:
            self.tb.add_hparams(flatten(hparams), {f"hparam/{k}": v for k, v in final.items()},
                                run_name=".")
        if self.wandb_run is not None:
            self.wandb_run.summary.update(final)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=0 if exc_type is None else 1)


class NoTracker:
    """What ranks other than 0 of a DDP job log to: nothing (rank 0 owns metrics.csv, the
    TensorBoard run and the W&B run; one of each per job, whatever the number of ranks)."""

    wandb_id = None

    def __enter__(self) -> NoTracker:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def log_results(self, hparams: dict[str, Any], summary: dict[str, Any]) -> None:
        pass
