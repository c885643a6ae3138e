"""Hydra callbacks: a sweep's summary kept current, an output directory checked up front, the
stop signals between jobs, and a sweep's record (multirun.yaml) kept from a rerun that ran nothing.

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
from omegaconf import OmegaConf

from experiments.atomic import atomic_write
from experiments.config.optuna import POSITION
from experiments.identity import SUMMARY_FILE, sweep_lock
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

        if not sweep_dir.is_dir() or not any(d.is_dir() and (d / SUMMARY_FILE).exists()
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
    directory when it starts (joblib's jobs run in other processes), with each job of this run
    as it ends: trained, or not (a finished job of an earlier run of the sweep, returning its
    result at once; a refused one). The ETA is this run's time so far per trained job, times
    this run's jobs not ended yet: jobs of an earlier run into the same directory, reused or not,
    are no evidence of how long a job takes. A search's trial shows its place among the study's
    n_trials, which its sweeper gives it (several workers and reruns share a study and its sweep
    directory): the sweeper logs the study's standing and ETA as each trial ends."""

    FILE = ".sweep_progress.json"

    def on_multirun_start(self, config, **kwargs) -> None:
        if not rank_0():
            return
        sweep = Path(config.hydra.sweep.dir)
        try:
            write_state(sweep / self.FILE, {"jobs": count_jobs(config), "started": time.time(), "ended": {}})
        except OSError as err:  # (progress lines must never fail a sweep)
            log.warning("could not record the sweep's progress: %s", err)

    def on_job_start(self, config, **kwargs) -> None:
        from experiments.training.progress import CONSOLE_ONLY

        self.started = time.time()
        self.summary_before = summary_stamp(Path(config.hydra.runtime.output_dir))
        if multirun(config) and rank_0():  # (the sweep's lines: a refused job's train.log is kept)
            log.info("%s", self.job_line(config), extra=CONSOLE_ONLY)

    def on_job_end(self, config, job_return, **kwargs) -> None:
        if not (multirun(config) and rank_0()):
            return
        from experiments.training.progress import CONSOLE_ONLY, duration

        output_dir = Path(config.hydra.runtime.output_dir)
        outcome = job_outcome(job_return, output_dir)
        took = duration(time.time() - getattr(self, "started", time.time()))
        if trial_position(config):  # a search's: its sweeper logs the study's ETA
            eta = None
        else:  # a job that wrote its summary ran in this run; one that did not returned a stored result
            trained = summary_stamp(output_dir) != getattr(self, "summary_before", None)
            eta = self.sweep_eta(self.ended(Path(config.hydra.sweep.dir), int(config.hydra.job.num), trained))
        log.info("%s done: %s (%s%s)", self.job_line(config), outcome, took,
                 f"; sweep ETA {duration(eta)}" if eta is not None else "", extra=CONSOLE_ONLY)

    def job_line(self, config) -> str:
        position = trial_position(config)  # a search's trial: `5/20`
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

    def ended(self, sweep: Path, num: int, trained: bool) -> dict:
        """The state, with job `num` of this run counted as ended (by its number: a job that
        ends twice, requeued by Slurm, counts once)."""
        try:
            with sweep_lock(sweep):
                state = self.state(sweep)
                if state:
                    state.setdefault("ended", {})[str(num)] = trained
                    write_state(sweep / self.FILE, state)
        except OSError as err:
            log.warning("could not record the sweep's progress: %s", err)
            return {}
        return state

    @staticmethod
    def sweep_eta(state: dict) -> float | None:
        """Seconds left: this run's time so far per job it trained (completed or failed; jobs
        side by side count as they end), times its jobs not ended yet; None before a job of
        this run has trained."""
        ended = state.get("ended") or {}
        trained, left = sum(ended.values()), (state.get("jobs") or 0) - len(ended)
        return (time.time() - state["started"]) / trained * left if trained and left > 0 else None


def write_state(path: Path, state: dict) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(state))


def summary_stamp(job_dir: Path) -> tuple | None:
    """What tells a summary.json rewritten from the one before (None: there is none)."""
    try:
        stat = (job_dir / SUMMARY_FILE).stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def trial_position(config) -> str | None:
    """A search's trial: its place among the study's n_trials (`5/20`), which its sweeper gives
    it (experiments/search); None for a grid's job."""
    return OmegaConf.select(config, f"hydra.job.env_set.{POSITION}", default=None)


def job_outcome(job_return, job_dir: Path) -> str:
    """What a job's end line says: `refused` (it wrote nothing: the summary.json there is an
    earlier run's), `failed`, or, for a job that returned, its summary's test accuracy (`pruned
    after N epochs` for a search's pruned trial)."""
    from hydra.core.utils import JobStatus

    from experiments.errors import JobRefused
    from experiments.report.job_summary import read_summary

    if job_return.status == JobStatus.FAILED and isinstance(job_return._return_value, JobRefused):
        return "refused"  # (`return_value` would raise the job's error)
    summary = read_summary(job_dir) or {}
    if summary.get("status") == "pruned":  # by the search's pruner (its job raises): no failure
        return f"pruned after {summary.get('epochs_completed') or 0} epochs"
    if job_return.status == JobStatus.FAILED:
        return "failed"
    test = summary.get("test_acc")
    return f"test {100 * test:.1f}%" if test is not None else summary.get("status", "done")


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


BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


class StopBetweenJobs(Callback):
    """Where a run's or a sweep's jobs run in this process (a single run; a sweep of Hydra's basic
    launcher), a stop signal that comes while no job runs (between two jobs, after the last, during
    the report) ends the process at once with 128 + its number (training/interrupts.py
    BetweenJobs); each job's own handlers take over while it runs. Other launchers run the jobs
    in their own processes, which this leaves to the launcher (submitit requeues at USR2)."""

    def on_run_start(self, config, **kwargs) -> None:
        self.install(config)

    def on_multirun_start(self, config, **kwargs) -> None:
        if config.hydra.launcher.get("_target_") == BASIC_LAUNCHER:
            self.install(config)

    @staticmethod
    def install(config) -> None:
        import signal

        from experiments.training.interrupts import BetweenJobs

        names = OmegaConf.select(config, "trainer.stop_signals", default=None) or ()
        known = [name for name in names if name in signal.Signals.__members__]  # (the job refuses
        BetweenJobs(known).install()  # a wrong one, with its message)


class SweepRecord(Callback):
    """Hydra's record of a sweep, multirun.yaml, is written by its sweeper (Hydra's
    BasicSweeper.sweep) before any job starts, so a rerun whose every job was refused (another
    config's results, bad values) would leave the record of a config that no job ran. The record
    found when the sweep starts is put back, as it was, when the sweep ends without any job
    having written its own (`.hydra/`, which a job writes once it runs: experiments/job_dir.py)."""

    FILE = "multirun.yaml"

    def on_multirun_start(self, config, **kwargs) -> None:
        if not rank_0():
            return
        sweep = Path(config.hydra.sweep.dir)
        try:
            record, stat = (sweep / self.FILE).read_bytes(), (sweep / self.FILE).stat()
        except OSError:  # a new sweep: nothing to keep
            return
        atexit.register(self.keep_unless_a_job_ran, sweep, record, stat.st_mtime_ns, job_records(sweep))

    def keep_unless_a_job_ran(self, sweep: Path, record: bytes, mtime_ns: int, before: dict) -> None:
        path = sweep / self.FILE
        try:
            if job_records(sweep) != before or (path.read_bytes() == record
                                                 and path.stat().st_mtime_ns == mtime_ns):
                return
            with atomic_write(path) as tmp:
                tmp.write_bytes(record)
            os.utime(path, ns=(mtime_ns, mtime_ns))
        except OSError as err:
            log.warning("could not keep %s as it was: %s", path, err)


HYDRA_RECORD = ".hydra/hydra.yaml"  # a job's (experiments/job_dir.py)


def job_records(sweep: Path) -> dict[str, tuple[int, int]]:
    """Each job directory's record (.hydra/hydra.yaml, written atomically: a new file each time):
    its inode and modification time."""
    records = {}
    for path in sweep.glob(f"*/{HYDRA_RECORD}"):
        stat = path.stat()
        records[str(path)] = (stat.st_ino, stat.st_mtime_ns)
    return records
