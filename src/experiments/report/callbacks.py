"""Hydra callbacks: a sweep's summary kept current, and an output directory checked up front.

After every job (completed or failed) the sweep's report (summary.md, summary.csv, effects.csv)
is rebuilt from disk, so it is complete even when a job fails: Hydra then skips
`on_multirun_end`. The plots (matplotlib takes seconds: drawn once), the final report and the
printed table come from an exit hook registered when the multirun starts, which runs whichever
way the sweep ends.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback

from experiments.config.optuna import POSITION
from experiments.ranks import launched_ranks

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    """Where the jobs of a sweep share a process (the basic launcher), the jobs that ended are
    read once (`cache`), and a rebuild waits until the sweep has run REBUILD_SHARE times as long
    as the last one took: in a 1,024-job sweep a rebuild took 1.1 s (0.5 s with the cache,
    2-core CPU, 2026-12-01), which after every job grew with the square of the sweep; this way
    it costs at most ~1/REBUILD_SHARE of the sweep's time, and a small sweep's report is rebuilt
    after every job."""

    REBUILD_SHARE = 10

    def __init__(self, plots: bool = True):
        self.plots = plots
        self.cache: dict = {}
        self.next_rebuild = 0.0  # time.monotonic() after which the next job end rebuilds

    def on_multirun_start(self, config, **kwargs) -> None:
        if rank_0():
            atexit.register(self.final_report, Path(config.hydra.sweep.dir))

    def on_job_end(self, config, job_return, **kwargs) -> None:
        if not (rank_0() and multirun(config)) or time.monotonic() < self.next_rebuild:
            return
        from experiments.report.sweep import load_sweeps
        from experiments.report.sweep_report import write_tables

        sweep, started = Path(config.hydra.sweep.dir), time.monotonic()
        try:
            write_tables([sweep], sweep, jobs=load_sweeps([sweep], self.cache))
        except Exception as err:  # a summary must never fail a training job
            log.warning("could not update the sweep summary: %s", err)
        took = time.monotonic() - started
        self.next_rebuild = time.monotonic() + (self.REBUILD_SHARE - 1) * took

    def final_report(self, sweep_dir: Path) -> None:
        from experiments.report.command import summarize

        if not sweep_dir.is_dir() or not any(d.is_dir() and (d / "summary.json").exists()
                                             for d in sweep_dir.iterdir()):
            return  # no job ran (a search refused before its first trial): nothing to report
        try:
            table = summarize([sweep_dir], sweep_dir, plots=self.plots)
        except Exception as err:
            print(f"could not summarize {sweep_dir}: {err}")
            return
        print(f"\n{table}\nSweep summary: {sweep_dir}/summary.md (plots in {sweep_dir}/plots/)",
              flush=True)


class SweepProgress(Callback):
    """A line at each job's start and end in a multirun, so that a sweep says where it is:

        job 3/8 2-resnet18-adamw-basic
        job 3/8 2-resnet18-adamw-basic done: test 61.2% (4m12s; sweep ETA 21m)

    The count comes from the sweep's overrides (the basic sweeper's grid), written to the sweep
    directory when it starts (joblib's jobs run in other processes); the ETA is the sweep's time
    so far per finished job, times the jobs left. A search's trial shows its place among the
    study's n_trials, which its sweeper gives it (several workers and reruns share a study and
    its sweep directory): the sweeper logs the study's standing and ETA as each trial ends."""

    FILE = ".sweep_progress.json"

    def on_multirun_start(self, config, **kwargs) -> None:
        if not rank_0():
            return
        sweep = Path(config.hydra.sweep.dir)
        try:
            sweep.mkdir(parents=True, exist_ok=True)
            (sweep / self.FILE).write_text(json.dumps({"jobs": count_jobs(config), "started": time.time()}))
        except OSError as err:  # (progress lines must never fail a sweep)
            log.warning("could not record the sweep's progress: %s", err)

    def on_job_start(self, config, **kwargs) -> None:
        self.started = time.time()
        if multirun(config) and rank_0():
            log.info("%s", self.job_line(config))

    def on_job_end(self, config, job_return, **kwargs) -> None:
        if not (multirun(config) and rank_0()):
            return
        from experiments.report.job_summary import read_summary
        from experiments.training.progress import duration

        summary = read_summary(Path(config.hydra.runtime.output_dir)) or {}
        status = summary.get("status", "failed")
        test = summary.get("test_acc")
        outcome = f"test {100 * test:.1f}%" if status == "completed" and test is not None else status
        took = duration(time.time() - getattr(self, "started", time.time()))
        eta = None if config.hydra.job.env_set.get(POSITION) else self.sweep_eta(Path(config.hydra.sweep.dir))
        log.info("%s done: %s (%s%s)", self.job_line(config), outcome, took,
                 f"; sweep ETA {duration(eta)}" if eta is not None else "")

    def job_line(self, config) -> str:
        position = config.hydra.job.env_set.get(POSITION)  # a search's trial: `5/20`
        if position:
            return f"job {position} {Path(config.hydra.runtime.output_dir).name}"
        total = self.state(Path(config.hydra.sweep.dir)).get("jobs")
        number = int(config.hydra.job.num) + 1
        return f"job {number}/{total or '?'} {Path(config.hydra.runtime.output_dir).name}"

    def state(self, sweep: Path) -> dict:
        try:
            return json.loads((sweep / self.FILE).read_text())
        except (OSError, ValueError):
            return {}

    def sweep_eta(self, sweep: Path) -> float | None:
        """Seconds left: the sweep's time so far per ended job (completed or failed; jobs side
        by side count as they end), times the jobs not ended yet."""
        from experiments.report.job_summary import COMPLETED, FAILED, read_summary

        state = self.state(sweep)
        if not state.get("jobs"):
            return None
        ended = sum(1 for d in sweep.iterdir() if d.is_dir()
                    and (read_summary(d) or {}).get("status") in (COMPLETED, FAILED))
        left = state["jobs"] - ended
        return (time.time() - state["started"]) / ended * left if ended and left > 0 else None


def count_jobs(config) -> int | None:
    """How many jobs the sweep runs: Optuna's n_trials, or the basic sweeper's grid of the
    command line's sweeps (and hydra.sweeper.params); None when it cannot tell (a glob)."""
    sweeper = config.hydra.sweeper
    if "n_trials" in sweeper:
        return int(sweeper.n_trials)
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    arguments = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    arguments += list(config.hydra.overrides.task)
    try:
        batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(arguments), None)
    except Exception:  # noqa: BLE001  (e.g. glob(*) needs the config loader: no count, no ETA)
        return None
    return sum(len(batch) for batch in batches)


def multirun(config) -> bool:
    return config.hydra.mode is not None and str(config.hydra.mode).endswith("MULTIRUN")


def rank_0() -> bool:
    """Whether this process writes the sweep's report: every process but the other ranks of a
    job a launcher started as several (torchrun, Slurm tasks), which run the same sweep."""
    ranks = launched_ranks()
    return ranks is None or ranks.main


class WritableOutput(Callback):
    """Check the run or sweep directory before Hydra creates it, so an unwritable location gives
    one clear line instead of a traceback from inside Hydra."""

    def on_run_start(self, config, **kwargs) -> None:
        self.check(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        self.check(Path(config.hydra.sweep.dir), "hydra.sweep.dir")

    @staticmethod
    def check(path: Path, key: str) -> None:
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as err:
            print(f"cannot write the output directory {path} ({err.strerror or err}). "
                  f"Choose a writable one with {key}=...", file=sys.stderr)
            sys.exit(2)
